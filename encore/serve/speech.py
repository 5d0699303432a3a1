"""OpenAI's audio routes for a Whisper model: `POST /v1/audio/transcriptions` and
`/v1/audio/translations`.

    multipart form: file, model, language, prompt, response_format (json | text | srt | vtt |
    verbose_json), temperature, timestamp_granularities[] (segment, word) -> {"text"}, the text,
    subtitles, or verbose_json {"task", "language", "duration", "text", "segments": [... avg_logprob,
    compression_ratio, no_speech_prob], "words": [{"word", "start", "end"}] (with word granularity)}

Transcriptions are batched continuously: one thread owns the model and an `encore.Engine`, and
`encore.audio.batching.TranscriptionRunner` runs every request's windows through it, so windows of
different requests (each at its own point of its audio, its own temperature or beam) share each decode
step, and a request that arrives joins the next step (the event loop keeps answering /health and
queueing). A full queue is a 429, a request past the server's timeout a 408 (its windows leave the
engine), audio that does not decode a 400 naming the upload, a transcription that fails its own 4xx /
500 while the others go on. The API key, body limit and CORS are the same `Guard` the text routes have.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from encore.audio.formats import render
from encore.serve.completions import APIError

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


@dataclass
class _Ask:
    options: dict[str, Any]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    cancelled: bool = False


class SpeechWorker:
    """The thread that owns a Whisper model and its engine and runs every transcription through them
    (the scheduler's place for a speech server: `start`, `stop`, `close` as `serve` calls them)."""

    def __init__(self, model: Any, engine: Any, max_queue: int, options: dict[str, Any], metrics: Any):
        """`options`: the server's transcription settings (`beam_size`, `vad_filter`), beside each request's."""
        from encore.audio.batching import TranscriptionRunner

        self.model, self.max_queue, self.options, self.metrics = model, max_queue, options, metrics
        self.runner = TranscriptionRunner(engine)
        self.closing = False
        self.running = 0  # requests in the server (queued or transcribing)
        self._lock = threading.Lock()
        self._inbox: queue.SimpleQueue[_Ask | None] = queue.SimpleQueue()
        self._asks: dict[int, _Ask] = {}  # the runner's handle -> its request
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="encore-speech", daemon=True)
        metrics.slots_total.set(engine.max_batch)
        metrics.kv_reserved.set(engine.cache.nbytes)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._inbox.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def close(self, grace_s: float = 0.0) -> None:
        self.closing = True

    async def run(self, timeout_s: float | None, **options: Any) -> dict[str, Any]:
        if self.closing or not self._thread.is_alive():
            raise APIError(503, "the server is shutting down", None, "server_error")
        with self._lock:
            if self.running > self.max_queue + self.runner.engine.max_batch:
                raise APIError(429, f"{self.running} transcriptions are queued; try again", None, "rate_limit_exceeded")
            self.running += 1
        self.metrics.queue_depth.set(self.running)
        ask = _Ask(options)
        self._inbox.put(ask)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(ask.future), timeout_s)
        except (TimeoutError, asyncio.CancelledError) as e:
            ask.cancelled = True  # (the engine thread takes its windows out)
            self._inbox.put(None)
            if isinstance(e, asyncio.CancelledError):
                raise
            raise APIError(408, f"the transcription ran past the server's timeout ({timeout_s:g} s)", None,
                           "timeout") from None  # fmt: skip
        finally:
            with self._lock:
                self.running -= 1
            self.metrics.queue_depth.set(self.running)

    # --- the engine's thread ----------------------------------------------------------------------------

    def _loop(self) -> None:
        from encore.audio.transcribe import Transcription

        while not self._stop:
            for ask in self._arrivals():
                if ask.cancelled:
                    continue
                try:
                    job = Transcription(self.model, **self.options, **ask.options)
                    self._asks[self.runner.add(job)] = ask
                except Exception as e:  # a bad language or task: that request's answer
                    ask.future.set_exception(e)
            for handle in [h for h, ask in self._asks.items() if ask.cancelled]:
                del self._asks[handle]
                self.runner.cancel(handle)
            try:
                ended = self.runner.step()
            except Exception as e:  # the engine itself failed: every request running gets the error
                ended = [(handle, e) for handle in list(self._asks)]
                for handle, _ in ended:
                    self.runner.cancel(handle)
            for handle, result in ended:
                ask = self._asks.pop(handle, None)
                if ask is not None and not ask.future.done():
                    (ask.future.set_exception if isinstance(result, Exception) else ask.future.set_result)(result)
            self.metrics.slots_in_use.set(self.runner.engine.running)
        for ask in self._asks.values():
            ask.future.cancel()

    def _arrivals(self) -> list[_Ask]:
        """What arrived: waits for it when nothing runs; takes what is there when something does."""
        arrived = []
        try:
            if not self.runner.has_work():
                arrived.append(self._inbox.get(timeout=0.5))
            while True:
                arrived.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        return [a for a in arrived if a is not None]


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
