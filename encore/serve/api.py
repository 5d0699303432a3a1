"""The HTTP API (FastAPI): OpenAI's completions shape, health, models and Prometheus metrics.

    POST /v1/completions   prompt (str | list[str]), max_tokens, temperature, top_p, top_k, seed,
                           stop, n, stream (+ ignore_eos, as vLLM's) -> choices[i].text, finish_reason
                           ("stop" | "length"), usage;
                           stream: Server-Sent Events, one chunk per token, then `data: [DONE]`
    GET  /v1/models, /health, /metrics

Bad input gets a 400 with OpenAI's error object naming the field (`param`); a full queue a 429 with
Retry-After; a server shutting down a 503. `temperature` 0 is greedy; above it samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from encore.data.collate import prompt_ids
from encore.serve.scheduler import Choice, Closed, Job, QueueFull

RETRY_AFTER_S = 1


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = None
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    ignore_eos: bool = False  # an extension (vLLM's name): generate max_tokens whatever comes; for benchmarks


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _error(status: int, message: str, param: str | None, kind: str, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


class Completions:
    """`POST /v1/completions` for one served model: a request checked against the server's limits
    becomes a scheduler `Job`; its text deltas become one JSON answer or a stream of SSE chunks."""

    def __init__(self, scheduler: Any, model_name: str, max_input_len: int, max_tokens: int):
        self.scheduler, self.model, self.name = scheduler, scheduler.model, model_name
        self.max_input_len, self.max_tokens = max_input_len, max_tokens

    async def __call__(self, body: CompletionRequest, request: Request) -> Any:
        job, prompt_tokens = self.job(body)
        try:
            self.scheduler.submit(job)
        except QueueFull:
            message = f"too many requests waiting (--max-queue {self.scheduler.max_queue}); retry later"
            raise APIError(429, message, None, "rate_limit_error") from None
        except Closed:
            raise APIError(503, "the server is shutting down", None, "server_error") from None
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        head["model"] = self.name
        if body.stream:
            return StreamingResponse(self.stream(job, head), media_type="text/event-stream")
        return await self.collect(job, request, head, prompt_tokens)

    def job(self, body: CompletionRequest) -> tuple[Job, int]:
        """The request checked against what this server serves, as a scheduler job; its prompt tokens."""
        if body.model is not None and body.model != self.name:
            raise APIError(400, f"model {body.model!r} is not served here; this server serves {self.name!r}", "model")
        for name, value in (body.model_extra or {}).items():
            if name in ("logprobs", "echo", "suffix", "best_of") and value not in (None, False, 0, 1):
                raise APIError(400, f"{name} is not supported by this server", name)
        if body.max_tokens > self.max_tokens:
            message = f"max_tokens {body.max_tokens} is more than this server's limit {self.max_tokens}"
            raise APIError(400, message, "max_tokens")
        slots = self.scheduler.engine.max_batch
        if body.n > slots:
            raise APIError(400, f"n {body.n} is more than this server's {slots} slots", "n")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise APIError(400, "prompt is an empty list", "prompt")
        encoded = []
        for i, text in enumerate(prompts):
            ids = prompt_ids(self.model.tokenizer, text, self.model.config)
            if len(ids) > self.max_input_len:
                where = "prompt" if isinstance(body.prompt, str) else f"prompt[{i}]"
                message = f"{where} is {len(ids)} tokens; this server's limit is {self.max_input_len}"
                raise APIError(400, message, "prompt")
            encoded.append(ids)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if any(not s for s in stop):
            raise APIError(400, "stop strings must not be empty", "stop")
        sampling = {"do_sample": body.temperature > 0, "temperature": body.temperature or 1.0}
        sampling.update(top_k=body.top_k, top_p=body.top_p if body.top_p < 1.0 else None)
        if body.ignore_eos:
            sampling["eos_token_id"] = None
        choices = [
            Choice(p * body.n + k, ids, None if body.seed is None else body.seed + k)
            for p, ids in enumerate(encoded)
            for k in range(body.n)
        ]
        job = Job(choices, body.max_tokens, sampling, stop, asyncio.get_running_loop(), asyncio.Queue())
        return job, sum(len(ids) for ids in encoded) * body.n

    async def collect(self, job: Job, request: Request, head: dict, prompt_tokens: int) -> Any:
        """Wait for every choice to finish; one JSON answer. A client gone meanwhile frees its slots."""
        texts = {c.index: "" for c in job.choices}
        reasons: dict[int, str] = {}
        try:
            while len(reasons) < len(job.choices):
                try:
                    index, delta, reason = await asyncio.wait_for(job.updates.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        self.scheduler.cancel(job)
                        return Response(status_code=499)
                    continue
                texts[index] += delta
                if reason is not None:
                    reasons[index] = reason
        except asyncio.CancelledError:
            self.scheduler.cancel(job)
            raise
        if "error" in reasons.values():
            raise APIError(500, "generation failed on the server (see its log)", None, "server_error")
        completion_tokens = sum(len(c.tokens) for c in job.choices)
        choices = [{"index": i, "text": texts[i], "logprobs": None, "finish_reason": reasons[i]} for i in sorted(texts)]
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        usage["total_tokens"] = prompt_tokens + completion_tokens
        return {**head, "choices": choices, "usage": usage}

    async def stream(self, job: Job, head: dict) -> AsyncIterator[str]:
        """One SSE chunk per text delta, then `data: [DONE]`; a client gone frees its slots."""
        finished = 0
        try:
            while finished < len(job.choices):
                index, delta, reason = await job.updates.get()
                finished += reason is not None
                choice = {"index": index, "text": delta, "logprobs": None, "finish_reason": reason}
                yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if finished < len(job.choices):  # the client went away (or the server stopped)
                self.scheduler.cancel(job)


def create_app(scheduler: Any, model_name: str, max_input_len: int, max_tokens: int) -> FastAPI:
    """The app serving `scheduler`'s model as `model_name`; prompts up to `max_input_len` tokens,
    completions up to `max_tokens`. Its lifespan starts and stops the scheduler's thread."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        scheduler.stop()  # cuts what still runs (uvicorn waited for the connections first)

    app = FastAPI(title="encore", docs_url=None, redoc_url=None, lifespan=lifespan)
    metrics, config, engine = scheduler.metrics, scheduler.model.config, scheduler.engine
    started = int(time.time())

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        metrics.requests.labels("rejected").inc()
        headers = {"Retry-After": str(RETRY_AFTER_S)} if e.status == 429 else None
        return _error(e.status, e.message, e.param, e.kind, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        metrics.requests.labels("rejected").inc()
        first = e.errors()[0]
        if first.get("type") == "json_invalid":
            message = f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}"
            return _error(400, message, None, "invalid_request_error")
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        return _error(400, f"{where}: {first['msg']}", loc[0] if loc else None, "invalid_request_error")

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {"status": "shutting down" if scheduler.closing else "ok", "model": model_name}
        body.update(running=engine.running, waiting=scheduler.waiting(), slots=engine.max_batch)
        body.update(arch=config.arch, vocab_size=config.vocab_size, kv_bytes=engine.cache.nbytes)
        body.update(max_input_len=max_input_len, max_tokens=max_tokens)
        return JSONResponse(body, status_code=503 if scheduler.closing else 200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": started, "owned_by": "encore"}
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    completions = Completions(scheduler, model_name, max_input_len, max_tokens)

    @app.post("/v1/completions")
    async def create_completion(body: CompletionRequest, request: Request) -> Any:
        return await completions(body, request)

    return app
