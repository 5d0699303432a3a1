"""`POST /v1/completions`: OpenAI's completions shape, and the request -> scheduler job -> response
path the chat route shares (`encore.serve.chat`).

    prompt (str | list[str]), max_tokens, temperature, top_p, top_k, seed, stop, n, best_of, logprobs,
    stream (+ stream_options.include_usage), frequency_penalty, presence_penalty (+ vLLM's ignore_eos,
    repetition_penalty, no_repeat_ngram_size, min_tokens, and num_beams, length_penalty,
    early_stopping) -> choices[i].text, logprobs, finish_reason ("stop" | "length"), usage; stream:
    Server-Sent Events, one chunk per token, then `data: [DONE]`

`temperature` 0 is greedy; above it samples. `num_beams` K > 1 is beam search (transformers' results,
`encore.infer.beam`): greedy over the beams (a `temperature` above 0 is refused), `n` <= K of its best
sequences returned; streamed, its text comes as one chunk when the search ends. `best_of` > `n` samples
best_of completions and returns the n with the highest mean token log-probability (not streamed, as
OpenAI). Log-probs are the model's own (before penalties and temperature, as vLLM reports them); beam
requests carry none.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from encore.data.collate import prompt_ids
from encore.infer.generate import beam_settings
from encore.infer.pipeline import source_language, target_language
from encore.serve.logprobs import completion_logprobs
from encore.serve.scheduler import Choice, Closed, Job, QueueFull

MAX_LOGPROBS = 20  # OpenAI's bound on top_logprobs


class GenerationRequest(BaseModel):
    """What the completions and chat requests share: the model and the sampling settings."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    ignore_eos: bool = False  # an extension (vLLM's name): generate max_tokens whatever comes; for benchmarks
    # extensions, as vLLM names them; None: the checkpoint's generation config
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    no_repeat_ngram_size: int | None = Field(None, ge=0)
    min_tokens: int | None = Field(None, ge=0)
    source_lang: str | None = None  # a multilingual model's languages (NLLB: fra_Latn); the server's defaults
    target_lang: str | None = None
    num_beams: int | None = Field(None, ge=1)  # beam search (None: the checkpoint's, when greedy)
    length_penalty: float | None = None
    early_stopping: bool | None = None
    best_of: int | None = Field(None, ge=1)


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # the chosen token's and this many likeliest

    def top_logprobs_asked(self) -> int | None:
        return self.logprobs


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code


def error_body(message: str, param: str | None, kind: str, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def encodable(text: str, where: str) -> str:
    """`text`, or a 400 naming `where` when it cannot be UTF-8 (a lone surrogate such as "\\udcff", which
    JSON can carry and no tokenizer can read)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise APIError(400, f"{where}: not valid Unicode text ({e.reason} at character {e.start})", where) from None
    return text


def error_response(
    status: int, message: str, param: str | None, kind: str, headers: dict | None = None, code: str | None = None
) -> JSONResponse:
    return JSONResponse(error_body(message, param, kind, code), status_code=status, headers=headers)


class Completions:
    """`POST /v1/completions` for one served model: a request checked against the server's limits
    becomes a scheduler `Job`; its text deltas become one JSON answer or a stream of SSE chunks."""

    def __init__(
        self, scheduler: Any, model_name: str, max_input_len: int, max_tokens: int, timeout_s: float | None = None
    ):
        self.scheduler, self.model, self.name = scheduler, scheduler.model, model_name
        self.max_input_len, self.max_tokens, self.timeout_s = max_input_len, max_tokens, timeout_s

    kind, chunk_kind, prefix = "text_completion", "text_completion", "cmpl"

    async def __call__(self, body: Any, request: Request) -> Any:
        job = self.job(body)
        try:
            self.scheduler.submit(job)
        except QueueFull:
            message = f"too many requests waiting (--max-queue {self.scheduler.max_queue}); retry later"
            raise APIError(429, message, None, "rate_limit_error") from None
        except Closed:
            raise APIError(503, "the server is shutting down", None, "server_error") from None
        kind = self.chunk_kind if body.stream else self.kind
        head = {"id": f"{self.prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time())}
        head["model"] = self.name
        if body.stream:
            return StreamingResponse(self.stream(job, head, body), media_type="text/event-stream")
        return await self.collect(job, request, head)

    def prompts(self, body: Any) -> list[tuple[str, list[int]]]:
        """(where, input ids) of each prompt of the request."""
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise APIError(400, "prompt is an empty list", "prompt")
        where = ["prompt"] if isinstance(body.prompt, str) else [f"prompt[{i}]" for i in range(len(prompts))]
        lang = None if body.source_lang is None else self.language(source_language, body.source_lang, "source_lang")
        tokenizer, config = self.model.tokenizer, self.model.config
        return [(w, prompt_ids(tokenizer, encodable(text, w), config, lang)) for w, text in zip(where, prompts)]

    def language(self, resolve: Any, code: str, field: str) -> int:
        """`resolve(model, code, field)` (`source_language` / `target_language`), or a 400 naming the field."""
        try:
            return resolve(self.model, code, field)
        except ValueError as e:
            raise APIError(400, str(e), field) from None

    def processing(self, body: Any) -> dict[str, Any]:
        """The request's logits processors (`Engine.add`'s keywords) over the checkpoint's defaults."""
        given = dict(
            repetition_penalty=body.repetition_penalty,
            no_repeat_ngram_size=body.no_repeat_ngram_size,
            min_new_tokens=body.min_tokens,
            frequency_penalty=body.frequency_penalty or None,
            presence_penalty=body.presence_penalty or None,
        )
        if body.target_lang is not None:
            given["forced_bos_token_id"] = self.language(target_language, body.target_lang, "target_lang")
        return {k: v for k, v in given.items() if v is not None}

    def max_new(self, body: Any) -> tuple[int, str]:
        """(the request's max new tokens, the field that set it)."""
        return body.max_tokens, "max_tokens"

    def job(self, body: Any) -> Job:
        """The request checked against what this server serves, as a scheduler job."""
        if body.model is not None and body.model != self.name:
            raise APIError(400, f"model {body.model!r} is not served here; this server serves {self.name!r}", "model")
        for name, value in (body.model_extra or {}).items():
            if name in ("echo", "suffix") and value not in (None, False, ""):
                raise APIError(400, f"{name} is not supported by this server", name)
        max_tokens, field = self.max_new(body)
        if max_tokens > self.max_tokens:
            message = f"{field} {max_tokens} is more than this server's limit {self.max_tokens}"
            raise APIError(400, message, field)
        encoded = []
        for where, ids in self.prompts(body):
            if len(ids) > self.max_input_len:
                message = f"{where} is {len(ids)} tokens; this server's limit is {self.max_input_len}"
                raise APIError(400, message, where.split("[")[0])
            encoded.append(ids)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if any(not s for s in stop):
            raise APIError(400, "stop strings must not be empty", "stop")
        sampling = {"do_sample": body.temperature > 0, "temperature": body.temperature or 1.0}
        sampling.update(top_k=body.top_k, top_p=body.top_p if body.top_p < 1.0 else None)
        if body.ignore_eos:
            sampling["eos_token_id"] = None
        sampling.update(self.processing(body))
        per_request, width = self.decoding(body, sampling)
        choices = [
            Choice(p * width + k, ids, None if body.seed is None else body.seed + k)
            for p, ids in enumerate(encoded)
            for k in range(width)
        ]
        keep = body.n if width > body.n else 0
        loop, report = asyncio.get_running_loop(), body.top_logprobs_asked() is not None
        return Job(choices, max_tokens, sampling, stop, loop, asyncio.Queue(), per_request=per_request,
                   group=width, keep=keep, report_logprobs=report)  # fmt: skip

    def decoding(self, body: Any, sampling: dict[str, Any]) -> tuple[int, int]:
        """Beams, `n`, `best_of` and log-probs checked and put in `sampling` (`Engine.add`'s keywords):
        (choices one engine request serves, choices per prompt)."""
        slots, n, top = self.scheduler.engine.max_batch, body.n, body.top_logprobs_asked()
        if body.num_beams is not None and body.num_beams > 1:
            if "temperature" in body.model_fields_set and body.temperature > 0:
                message = "temperature must be 0 or left out with num_beams > 1 (beams search greedily)"
                raise APIError(400, message, "temperature")
            sampling["do_sample"] = False
        given = {k: getattr(body, k) for k in ("num_beams", "length_penalty", "early_stopping")}
        given = {k: v for k, v in given.items() if v is not None}
        try:
            beams = beam_settings(self.model, dict(given), sampling["do_sample"])
        except ValueError as e:
            raise APIError(400, str(e), "num_beams") from None
        if beams.num_beams > slots:
            raise APIError(400, f"num_beams {beams.num_beams} is more than this server's {slots} slots", "num_beams")
        if beams.num_beams > 1:
            if n > beams.num_beams:
                raise APIError(400, f"n {n} is more than num_beams {beams.num_beams}: beams return their n best", "n")
            if body.best_of not in (None, beams.num_beams):
                raise APIError(
                    400, "best_of with num_beams is the beam width: leave it out or equal num_beams", "best_of"
                )
            if top is not None:
                why = "" if "num_beams" in given else " (this model's generation config: send num_beams 1 for greedy)"
                raise APIError(
                    400, f"logprobs are not given for beam search (num_beams {beams.num_beams}){why}", "logprobs"
                )
            sampling.update(given, num_beams=beams.num_beams, num_return_sequences=n)
            return n, n
        best_of = n if body.best_of is None else body.best_of
        if best_of < n:
            raise APIError(400, f"best_of {best_of} must be at least n {n}", "best_of")
        if best_of > n and body.stream:
            raise APIError(400, "best_of > n cannot be streamed (the best are known at the end)", "best_of")
        if best_of > slots:
            field = "best_of" if body.best_of is not None else "n"
            raise APIError(400, f"{field} {best_of} is more than this server's {slots} slots", field)
        if top is not None or best_of > n:
            sampling["logprobs"] = top or 0
        sampling["num_beams"] = 1
        return 1, best_of

    def remaining(self, job: Job) -> float | None:
        """Seconds left before `job` passes the request timeout (None: no timeout)."""
        if self.timeout_s is None:
            return None
        return max(0.0, job.t_arrival + self.timeout_s - time.perf_counter())

    def timed_out(self, job: Job) -> bool:
        return self.timeout_s is not None and self.remaining(job) <= 0.0

    def timeout_message(self) -> str:
        return f"the request ran past this server's timeout of {self.timeout_s:g} s (--request-timeout)"

    def choice(self, index: int, text: str, reason: str | None, logprobs: Any = None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    def chunks(
        self, index: int, delta: str, reason: str | None, first: bool, logprobs: Any = None
    ) -> list[dict[str, Any]]:
        """The stream's choice objects for one text delta (and its tokens' log-probs)."""
        return [self.choice(index, delta, reason, logprobs)]

    def logprobs(self, entries: list, offset: int) -> dict[str, Any]:
        """The tokens' log-probs in this route's shape; `offset`: the choice's text before them."""
        return completion_logprobs(self.model.tokenizer, entries, offset)

    async def collect(self, job: Job, request: Request, head: dict) -> Any:
        """Wait for every choice to finish; one JSON answer. A client gone meanwhile frees its slots."""
        texts = {c.index: "" for c in job.choices}
        entries: dict[int, list] = {c.index: [] for c in job.choices}
        reasons: dict[int, str] = {}
        try:
            while len(reasons) < len(job.choices):
                try:
                    index, delta, reason, logprobs = await asyncio.wait_for(job.updates.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        self.scheduler.cancel(job)
                        return Response(status_code=499)
                    if self.timed_out(job):
                        self.scheduler.cancel(job)
                        raise APIError(408, self.timeout_message(), None, "timeout_error") from None
                    continue
                texts[index] += delta
                entries[index] += logprobs
                if reason is not None:
                    reasons[index] = reason
        except asyncio.CancelledError:
            self.scheduler.cancel(job)
            raise
        if "error" in reasons.values():
            raise APIError(500, "generation failed on the server (see its log)", None, "server_error")
        kept = best_of(job) if job.keep else [c.index for c in job.choices]
        choices = [
            self.choice(j, texts[i], reasons[i], self.logprobs(entries[i], 0) if job.report_logprobs else None)
            for j, i in enumerate(kept)
        ]
        return {**head, "choices": choices, "usage": usage(job)}

    async def stream(self, job: Job, head: dict, body: Any) -> AsyncIterator[str]:
        """One SSE chunk per text delta, then `data: [DONE]`; a client gone frees its slots. With
        `stream_options.include_usage`, a last chunk carries the usage (OpenAI's)."""
        finished, started, sent = 0, set(), {c.index: 0 for c in job.choices}
        try:
            while finished < len(job.choices):
                try:
                    update = await asyncio.wait_for(job.updates.get(), timeout=self.remaining(job))
                    index, delta, reason, entries = update
                except asyncio.TimeoutError:
                    yield f"data: {json.dumps(error_body(self.timeout_message(), None, 'timeout_error'))}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                finished += reason is not None
                logprobs = self.logprobs(entries, sent[index]) if job.report_logprobs else None
                sent[index] += len(delta)
                for choice in self.chunks(index, delta, reason, index not in started, logprobs):
                    yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
                started.add(index)
            if (getattr(body, "stream_options", None) or {}).get("include_usage"):
                yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage(job)})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if finished < len(job.choices):  # the client went away (or the server stopped)
                self.scheduler.cancel(job)


def best_of(job: Job) -> list[int]:
    """The indices of each prompt's `job.keep` best choices (highest mean token log-prob), prompt by prompt."""
    kept = []
    for start in range(0, len(job.choices), job.group):
        group = job.choices[start : start + job.group]
        ranked = sorted(group, key=lambda c: -c.logprob_sum / max(1, len(c.tokens)))
        kept += [c.index for c in ranked[: job.keep]]
    return kept


def usage(job: Job) -> dict[str, int]:
    prompt_tokens = sum(len(c.ids) for c in job.choices)
    completion_tokens = sum(len(c.tokens) for c in job.choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
