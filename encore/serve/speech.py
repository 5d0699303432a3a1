"""OpenAI's audio routes for a Whisper model: `POST /v1/audio/transcriptions` and
`/v1/audio/translations`.

    multipart form: file, model, language, prompt, response_format (json | text | srt | vtt |
    verbose_json), temperature, timestamp_granularities[] (segment, word) -> {"text"}, the text,
    subtitles, or verbose_json {"task", "language", "duration", "text", "segments": [... avg_logprob,
    compression_ratio, no_speech_prob], "words": [{"word", "start", "end"}] (with word granularity)}

Transcriptions run on one thread that owns the model, one request at a time, in arrival order (the
event loop keeps answering /health and queueing); a full queue is a 429, a request past the server's
timeout a 408, audio that does not decode a 400 naming the upload. The API key, body limit and CORS
are the same `Guard` the text routes have.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from encore.audio.formats import render
from encore.serve.completions import APIError

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


class SpeechWorker:
    """The thread that owns a Whisper model and runs one transcription at a time (the scheduler's
    place for a speech server: `start`, `stop`, `close` as `serve` calls them)."""

    def __init__(self, model: Any, max_queue: int, beam_size: int, metrics: Any):
        self.model, self.max_queue, self.beam_size, self.metrics = model, max_queue, beam_size, metrics
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.closing = False
        self.running = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="encore-speech")

    def stop(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    def close(self, grace_s: float = 0.0) -> None:
        self.closing = True

    async def run(self, timeout_s: float | None, **options: Any) -> dict[str, Any]:
        if self.closing or self.executor is None:
            raise APIError(503, "the server is shutting down", None, "server_error")
        with self._lock:
            if self.running > self.max_queue:
                raise APIError(429, f"{self.running} transcriptions are queued; try again", None, "rate_limit_exceeded")
            self.running += 1
        self.metrics.queue_depth.set(self.running)
        try:
            call = lambda: self.model.transcribe(beam_size=self.beam_size, **options)
            future = asyncio.get_running_loop().run_in_executor(self.executor, call)
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise APIError(408, f"the transcription ran past the server's timeout ({timeout_s:g} s)", None,
                           "timeout") from None  # fmt: skip
        finally:
            with self._lock:
                self.running -= 1
            self.metrics.queue_depth.set(self.running)


class AudioRoutes:
    """A multipart request -> checked fields -> the worker -> the response format asked for."""

    def __init__(self, worker: SpeechWorker, timeout_s: float | None):
        self.worker, self.timeout_s = worker, timeout_s

    async def __call__(self, request: Request, task: str) -> Response:
        from encore.audio.io import load_audio

        try:
            form = await request.form()
        except Exception as e:  # a body that is not a multipart form
            raise APIError(400, f"expected a multipart/form-data body with a 'file' ({e})", "file",
                           "invalid_request_error") from None  # fmt: skip
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise APIError(400, "file: an audio file is required (multipart field 'file')", "file",
                           "invalid_request_error")  # fmt: skip
        name = upload.filename or "file"
        fmt = _field(form, "response_format", "json")
        if fmt not in RESPONSE_FORMATS:
            raise APIError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}",
                           "response_format", "invalid_request_error")  # fmt: skip
        granularities = form.getlist("timestamp_granularities[]") or form.getlist("timestamp_granularities")
        if set(granularities) - {"segment", "word"}:
            raise APIError(400, f"timestamp_granularities: 'segment' and / or 'word', got {granularities}",
                           "timestamp_granularities[]", "invalid_request_error")  # fmt: skip
        temperature = _temperature(_field(form, "temperature", "0"))
        try:
            samples = load_audio(await upload.read())
        except ValueError as e:
            raise APIError(
                400, f"file: {str(e).replace('the upload', name, 1)}", "file", "invalid_request_error"
            ) from None
        language = _field(form, "language", None) if task == "transcribe" else None
        words = "word" in granularities and fmt == "verbose_json"  # (OpenAI: words need verbose_json)
        options = dict(audio=samples, task=task, language=language, initial_prompt=_field(form, "prompt", None),
                       temperature=temperature, word_timestamps=words)  # fmt: skip
        try:
            result = await self.worker.run(self.timeout_s, **options)
        except ValueError as e:  # an unknown language code, an English-only model asked to translate
            raise APIError(400, str(e), "language", "invalid_request_error") from None
        self.worker.metrics.requests.labels("finished").inc()
        return _respond(result, fmt, task)


def _field(form: Any, key: str, default: str | None) -> str | None:
    value = form.get(key)
    return default if value is None or (isinstance(value, str) and not value.strip()) else str(value)


def _temperature(text: str) -> tuple[float, ...] | float:
    """OpenAI's: 0 lets the model raise the temperature on its own (Whisper's fallback); above, that one."""
    try:
        value = float(text)
    except ValueError:
        raise APIError(400, f"temperature must be a number, got {text!r}", "temperature",
                       "invalid_request_error") from None  # fmt: skip
    if not 0.0 <= value <= 1.0:
        raise APIError(400, f"temperature must be in [0, 1], got {value:g}", "temperature", "invalid_request_error")
    from encore.audio.transcribe import TEMPERATURES

    return TEMPERATURES if value == 0.0 else value


def _respond(result: dict[str, Any], fmt: str, task: str) -> Response:
    if fmt == "json":
        return JSONResponse({"text": result["text"]})
    if fmt == "text":
        return PlainTextResponse(result["text"])
    if fmt in ("srt", "vtt"):
        return PlainTextResponse(render(result, fmt))
    keys = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
            "no_speech_prob")  # fmt: skip
    segments = [{k: s[k] for k in keys} for s in result["segments"]]
    body = {"task": task, "language": language_name(result["language"]), "duration": result["duration"],
            "text": result["text"], "segments": segments}  # fmt: skip
    if any("words" in s for s in result["segments"]):  # OpenAI's verbose_json lists them beside the segments
        body["words"] = [{k: w[k] for k in ("word", "start", "end")} for s in result["segments"] for w in s["words"]]
    return JSONResponse(body)


def language_name(code: str) -> str:
    """Whisper's name of a language code ("en" -> "english"), as OpenAI's verbose_json says it."""
    try:
        from transformers.models.whisper.tokenization_whisper import LANGUAGES
    except ImportError:
        return code
    return LANGUAGES.get(code, code)
