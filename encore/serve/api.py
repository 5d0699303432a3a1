"""The HTTP app (FastAPI): OpenAI's completions and chat completions, health, models, Prometheus metrics.

    POST /v1/completions        `encore.serve.completions`
    POST /v1/chat/completions   `encore.serve.chat` (the checkpoint's chat template, or --chat-template)
    POST /v1/audio/transcriptions, /v1/audio/translations   a Whisper model (`create_speech_app`)
    GET  /v1/models, /health, /metrics
    GET  /                      a chat page (static/chat.html: streamed replies, sampling settings, speed)

Bad input gets a 400 with OpenAI's error object naming the field (`param`); a full queue a 429 with
Retry-After; a server shutting down a 503. What makes it safe to expose (`Guard`): with an API key
every route but /health and the page needs `Authorization: Bearer KEY` (401 otherwise); a body over
the limit is a 413 and a POST without Content-Length a 411; a request running past its timeout is cut (408, or an
error event on a stream); no CORS headers unless origins are allowed.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from encore import __version__
from encore.serve.chat import ChatCompletions, ChatRequest
from encore.serve.completions import APIError, CompletionRequest, Completions, error_response

RETRY_AFTER_S = 1


@dataclass
class Guard:
    """What a server someone may reach needs (see the module docstring)."""

    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    request_timeout_s: float | None = None
    allow_origins: list[str] = field(default_factory=list)


def create_app(
    scheduler: Any,
    model_name: str,
    max_input_len: int,
    max_tokens: int,
    guard: Guard | None = None,
    chat_template: str | None = None,
) -> FastAPI:
    """The app serving `scheduler`'s model as `model_name`; prompts up to `max_input_len` tokens,
    completions up to `max_tokens`; `guard` for what exposing it needs; `chat_template` replaces the
    tokenizer's. Its lifespan starts and stops the scheduler's thread."""
    guard = guard or Guard()
    app = _base_app(scheduler, model_name, scheduler.metrics)
    metrics, config, engine = scheduler.metrics, scheduler.model.config, scheduler.engine

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        metrics.requests.labels("rejected").inc()
        first = e.errors()[0]
        if first.get("type") == "json_invalid":
            message = f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}"
            return error_response(400, message, None, "invalid_request_error")
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        return error_response(400, f"{where}: {first['msg']}", loc[0] if loc else None, "invalid_request_error")

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {"status": "shutting down" if scheduler.closing else "ok", "model": model_name, "version": __version__}
        body.update(running=engine.running, waiting=scheduler.waiting(), slots=engine.max_batch)
        body.update(arch=config.arch, vocab_size=config.vocab_size, kv_bytes=engine.cache.nbytes)
        body.update(max_input_len=max_input_len, max_tokens=max_tokens)
        if engine.prefix is not None:
            store = engine.prefix
            body.update(
                prefix_cache_bytes=store.nbytes, prefix_hits=store.hits, prefix_reused_tokens=store.reused_tokens
            )
        return JSONResponse(body, status_code=503 if scheduler.closing else 200)

    page = (Path(__file__).parent / "static" / "chat.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    async def chat_page() -> HTMLResponse:
        """A chat page (one static file, no external assets) talking to /v1/chat/completions."""
        return HTMLResponse(page)

    completions = Completions(scheduler, model_name, max_input_len, max_tokens, guard.request_timeout_s)
    chat = ChatCompletions(scheduler, model_name, max_input_len, max_tokens, guard.request_timeout_s, chat_template)

    @app.post("/v1/completions")
    async def create_completion(body: CompletionRequest, request: Request) -> Any:
        return await completions(body, request)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(body: ChatRequest, request: Request) -> Any:
        return await chat(body, request)

    _guard(app, guard, metrics)
    return app


def _base_app(owner: Any, model_name: str, metrics: Any) -> FastAPI:
    """What every encore app has: a lifespan that starts and stops `owner`'s thread (the scheduler, or
    a speech worker), OpenAI's error objects, /v1/models and /metrics."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owner.start()
        yield
        owner.stop()  # cuts what still runs (uvicorn waited for the connections first)

    app = FastAPI(title="encore", docs_url=None, redoc_url=None, lifespan=lifespan)
    started = int(time.time())

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        metrics.requests.labels("rejected").inc()
        headers = {"Retry-After": str(RETRY_AFTER_S)} if e.status == 429 else None
        return error_response(e.status, e.message, e.param, e.kind, headers, e.code)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": started, "owned_by": "encore"}
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def create_speech_app(worker: Any, model_name: str, guard: Guard | None = None) -> FastAPI:
    """The app serving a Whisper model (`encore.serve.speech`): OpenAI's audio routes, health, models,
    metrics, behind the same `Guard`. Its lifespan starts and stops the worker's thread."""
    from encore.serve.speech import AudioRoutes

    guard = guard or Guard()
    app = _base_app(worker, model_name, worker.metrics)
    routes = AudioRoutes(worker, guard.request_timeout_s)

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {"status": "shutting down" if worker.closing else "ok", "model": model_name, "version": __version__}
        body["task"] = "speech"
        body.update(running=worker.running)
        return JSONResponse(body, status_code=503 if worker.closing else 200)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        return await routes(request, "transcribe")

    @app.post("/v1/audio/translations")
    async def translations(request: Request) -> Response:
        return await routes(request, "translate")

    _guard(app, guard, worker.metrics)
    return app


def _guard(app: FastAPI, guard: Guard, metrics: Any) -> None:
    """The API key, the body limit and CORS, checked before a route sees the request."""

    def refuse(status: int, message: str, code: str | None = None) -> JSONResponse:
        metrics.requests.labels("rejected").inc()
        return error_response(status, message, None, "invalid_request_error", code=code)

    @app.middleware("http")
    async def check(request: Request, call_next: Any) -> Response:
        open_paths = ("/health", "/")  # the page holds no data; it asks for the key itself
        if guard.api_key is not None and request.url.path not in open_paths and request.method != "OPTIONS":
            sent = request.headers.get("authorization", "")
            scheme, _, token = sent.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), guard.api_key):
                return refuse(401, "missing or wrong API key: send Authorization: Bearer <key>", "invalid_api_key")
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return refuse(411, "a request body needs a Content-Length header")
            if not length.isdigit() or int(length) > guard.max_body_bytes:
                return refuse(413, f"the request body is {length} bytes; this server's limit is {guard.max_body_bytes}")
        return await call_next(request)

    if guard.allow_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=guard.allow_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
