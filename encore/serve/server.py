"""`encore serve`: a model, its engine sized by the KV budget, the scheduler thread, the HTTP app, uvicorn.

Capacity is memory: every slot of the engine's cache holds one request at the server's limits
(`max_input_len` prompt tokens, `max_tokens` new ones), so the number of requests in flight is
`--kv-budget-mb` over the bytes of one slot (`GenerationCache.bytes_for`), capped by `--max-batch`.
An encoder-decoder's slot is its decoder layers' self K/V over the outputs plus cross K/V over the
input; a decoder-only model's is every layer's K/V over prompt + outputs: for the 330M presets at
512 -> 128, 9.4 MiB against 29.1 MiB, so the same budget holds 3.1x the requests.

Shutdown (SIGTERM, or Ctrl-C): uvicorn stops accepting connections, the scheduler stops admitting and
gives running requests `--shutdown-grace` seconds to finish before cutting them (finish_reason
"length", the text so far), the responses complete, and the process exits 0.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, replace
from typing import Any

from encore.lazy import require
from encore.model.cache import GenerationCache

log = logging.getLogger("encore.serve")
MiB = 1 << 20


@dataclass
class ServerConfig:
    model: str
    tokenizer: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 64  # at most this many requests in flight, whatever the budget
    kv_budget_mb: float = 1024.0  # K/V memory for the slots
    max_queue: int = 256  # requests waiting for a slot before the server answers 429
    quantize: str | None = None  # "int8" / "int4": quantized weights on the CPU (encore.optimize)
    device: str = "cpu"
    max_input_len: int | None = None  # prompt tokens; None: min(1024, what the model holds)
    max_tokens: int = 256  # the largest `max_tokens` a request may ask for
    max_prefill_tokens: int | None = None  # prompt tokens prefilled per step; None: max_input_len
    prefill_chunk: int | None = None  # prefill a longer prompt in pieces of this many tokens' worth; None: whole
    prefix_cache_mb: float = 256.0  # decoder-only: K/V of earlier prompts and replies kept for reuse (0: off)
    served_model_name: str | None = None  # the name clients send as `model`; None: the --model's name
    shutdown_grace_s: float = 30.0
    api_key: str | None = None  # every route but /health needs `Authorization: Bearer <key>`
    max_body_mb: float | None = None  # larger request bodies get a 413 (None: 1; 25 for a speech model's audio)
    beam_size: int = 5  # a Whisper model's beam size for transcriptions
    vad_filter: bool = False  # a Whisper model: transcribe only the speech Silero VAD finds
    request_timeout_s: float | None = 600.0  # a request running longer is cut (None: never)
    allow_origin: list[str] | None = None  # CORS origins (None: no CORS headers)
    chat_template: str | None = None  # a Jinja file replacing the tokenizer's chat template
    src_lang: str | None = None  # a multilingual model's default source / target languages (requests'
    tgt_lang: str | None = None  # `source_lang` / `target_lang` replace them)
    access_log: bool = True
    log_level: str = "info"


def slots_for(config: Any, kv_budget_bytes: float, max_input_len: int, max_tokens: int, dtype_bytes: int) -> int:
    """How many requests at these limits the budget holds (0 if not one)."""
    return int(kv_budget_bytes // GenerationCache.bytes_for(config, max_input_len, max_tokens, dtype_bytes))


def _limits(cfg: ServerConfig, model_config: Any) -> tuple[int, int]:
    """(max_input_len, max_tokens), checked against what the model's positions hold."""
    flags = ("--max-tokens-limit", cfg.max_tokens), ("--max-input-len", cfg.max_input_len)
    flags += ("--max-prefill-tokens", cfg.max_prefill_tokens), ("--prefill-chunk", cfg.prefill_chunk)
    for name, value in flags:
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    room = model_config.max_input_len(cfg.max_tokens)
    if room < 1 or cfg.max_tokens > model_config.max_seq_len:
        raise ValueError(
            f"--max-tokens-limit {cfg.max_tokens} leaves no room in max_seq_len {model_config.max_seq_len}"
        )
    max_input_len = cfg.max_input_len or min(1024, room)
    if max_input_len > room:
        raise ValueError(
            f"--max-input-len {max_input_len} with --max-tokens-limit {cfg.max_tokens} does not fit the model's "
            f"max_seq_len {model_config.max_seq_len}"
        )
    return max_input_len, cfg.max_tokens


def build_app(cfg: ServerConfig, model: Any) -> tuple[Any, Any]:
    """(the FastAPI app, its scheduler) serving `model` (loaded, with its tokenizer, ready for
    inference: `encore.optimize`). The app's lifespan starts and stops the scheduler's thread."""
    from encore.infer.engine import Engine
    from encore.infer.pipeline import apply_languages
    from encore.model.io import spec_label
    from encore.serve.api import Guard, create_app
    from encore.serve.metrics import ServerMetrics
    from encore.serve.scheduler import Scheduler
    from encore.tokenizer import read_template

    if cfg.max_batch < 1 or cfg.max_queue < 0 or cfg.kv_budget_mb <= 0:
        raise ValueError("--max-batch must be >= 1, --max-queue >= 0 and --kv-budget-mb > 0")
    speech = model.config.encoder_input == "audio"
    if cfg.max_body_mb is None:
        cfg = replace(cfg, max_body_mb=25.0 if speech else 1.0)
    if cfg.beam_size < 1:
        raise ValueError(f"--beam-size must be >= 1, got {cfg.beam_size}")
    if cfg.max_body_mb <= 0 or (cfg.request_timeout_s is not None and cfg.request_timeout_s <= 0):
        raise ValueError("--max-body-mb and --request-timeout must be positive")
    if cfg.api_key is not None and not cfg.api_key.strip():
        raise ValueError("--api-key is empty")
    if model.tokenizer is None:
        raise ValueError(f"--model {cfg.model!r} has no tokenizer; pass --tokenizer")
    guard = Guard(
        api_key=cfg.api_key,
        max_body_bytes=int(cfg.max_body_mb * MiB),
        request_timeout_s=cfg.request_timeout_s,
        allow_origins=list(cfg.allow_origin or []),
    )
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and cfg.api_key is None:
        log.warning("listening on %s without an API key: anyone who reaches it can use it (--api-key)", cfg.host)
    name = cfg.served_model_name or spec_label(cfg.model)
    if speech:  # Whisper: OpenAI's audio routes (`encore.serve.speech`)
        from encore.serve.api import create_speech_app
        from encore.serve.speech import SpeechWorker

        engine = _speech_engine(cfg, model)
        if cfg.vad_filter:
            require("silero_vad", "vad")
        options = {"beam_size": cfg.beam_size, "vad_filter": cfg.vad_filter}
        worker = SpeechWorker(model, engine, cfg.max_queue, options, ServerMetrics())
        log.info("serving %s (speech): /v1/audio/transcriptions, /v1/audio/translations; %d slots (beam %d) in "
                 "%.0f MiB of K/V", name, engine.max_batch, cfg.beam_size, engine.cache.nbytes / MiB)  # fmt: skip
        return create_speech_app(worker, name, guard), worker
    apply_languages(model, cfg.src_lang, cfg.tgt_lang)
    max_input_len, max_tokens = _limits(cfg, model.config)
    dtype_bytes = model.kv_dtype.itemsize
    slots = min(cfg.max_batch, slots_for(model.config, cfg.kv_budget_mb * MiB, max_input_len, max_tokens, dtype_bytes))
    if slots < 1:
        need = GenerationCache.bytes_for(model.config, max_input_len, max_tokens, dtype_bytes) / MiB
        raise ValueError(
            f"--kv-budget-mb {cfg.kv_budget_mb:g} holds no request of {max_input_len} input + {max_tokens} new tokens "
            f"(one needs {need:.1f} MiB); raise it or lower --max-input-len / --max-tokens-limit"
        )
    prefill = cfg.max_prefill_tokens or max_input_len
    if cfg.prefix_cache_mb < 0:
        raise ValueError(f"--prefix-cache-mb must be >= 0, got {cfg.prefix_cache_mb:g}")
    engine = Engine(
        model,
        slots,
        max_input_len,
        max_tokens,
        max_prefill_tokens=prefill,
        prefix_cache_bytes=int(cfg.prefix_cache_mb * MiB),
        prefill_chunk=cfg.prefill_chunk,
    )
    scheduler = Scheduler(model, model.tokenizer, engine, cfg.max_queue, ServerMetrics())
    log.info(
        "serving %s (%s): %d slots of %d input + %d new tokens in %.0f MiB of K/V",
        name,
        model.config.arch,
        slots,
        max_input_len,
        max_tokens,
        engine.cache.nbytes / MiB,
    )
    template = read_template(cfg.chat_template)
    return create_app(scheduler, name, max_input_len, max_tokens, guard, template), scheduler


def _speech_engine(cfg: ServerConfig, model: Any) -> Any:
    """A Whisper model's engine: slots of one 30-s window (the encoder's positions of cross K/V) and the
    decoder's positions, as many as --kv-budget-mb holds up to --max-batch (a beam takes --beam-size of
    them); one window's encoder pass admitted per step, so arrivals do not stall the others' decoding."""
    from encore.audio.batching import speech_engine

    frames, positions = model.config.encoder_config().max_seq_len, model.config.max_seq_len
    dtype_bytes = model.kv_dtype.itemsize
    slots = min(cfg.max_batch, slots_for(model.config, cfg.kv_budget_mb * MiB, frames, positions, dtype_bytes))
    if slots < cfg.beam_size:
        one = GenerationCache.bytes_for(model.config, frames, positions, dtype_bytes)
        raise ValueError(
            f"--kv-budget-mb {cfg.kv_budget_mb:g} holds {slots} window(s) of {one / MiB:.1f} MiB; --beam-size "
            f"{cfg.beam_size} needs {cfg.beam_size} (raise --kv-budget-mb or --max-batch, or lower --beam-size)"
        )
    return speech_engine(model, slots, max_prefill_tokens=frames)


def serve(cfg: ServerConfig, model: Any) -> int:
    """Serve `model` until SIGTERM / Ctrl-C; returns 0 after a graceful shutdown."""
    try:
        import uvicorn
    except ImportError:
        raise ValueError("encore serve needs uvicorn: pip install 'encore[serve]'") from None

    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper(), logging.INFO), format="%(levelname)s: %(message)s"
    )
    app, scheduler = build_app(cfg, model)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            scheduler.close(cfg.shutdown_grace_s)  # stop admitting; cut what runs past the grace
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level=cfg.log_level,
        access_log=cfg.access_log,
        timeout_graceful_shutdown=int(cfg.shutdown_grace_s) + 10,
    )
    # uvicorn re-raises the signal it shut down on; with these handlers that ends the process with 0
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
