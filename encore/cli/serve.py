"""`encore serve --model CHECKPOINT [--host 127.0.0.1] [--port 8000] [--max-batch N] [--kv-budget-mb MB]
[--max-queue Q] [--quantize int8|int4] [--device cpu|cuda]`: the OpenAI-compatible server (`encore.serve`)."""

from __future__ import annotations

import argparse
import os

from encore.cli.common import add_model_args, add_quantize_flag, from_args, load_for_inference, text_only


def configure(p: argparse.ArgumentParser) -> None:
    add_model_args(p, training=False)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (%(default)s; 0.0.0.0 exposes the server)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (%(default)s)")
    p.add_argument("--max-batch", type=int, default=64, help="requests in flight at most (%(default)s)")
    _scheduling_flags(p.add_argument_group("scheduling: slots, K/V memory, prefill"))
    add_quantize_flag(p)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="(%(default)s)")
    p.add_argument("--src-lang", default=None, help="a multilingual model's default source language (NLLB: fra_Latn)")
    p.add_argument("--tgt-lang", default=None, help="... and target language (requests' target_lang replaces it)")
    p.add_argument("--served-model-name", default=None, help="the name clients send as `model` (default: --model's)")
    p.add_argument(
        "--shutdown-grace",
        dest="shutdown_grace_s",
        type=float,
        default=30.0,
        help="seconds running requests get to finish after SIGTERM before they are cut (%(default)s)",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="serve a preset or config untrained (capacity benchmarks; its text is noise)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("ENCORE_API_KEY"),
        help="require `Authorization: Bearer KEY` on every route but /health (default: $ENCORE_API_KEY; none)",
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=None,
        help="larger request bodies get a 413 (default: 1; 25 for a Whisper model's audio uploads, as OpenAI's)",
    )
    _speech_flags(p.add_argument_group("a Whisper model's transcriptions"))
    p.add_argument(
        "--request-timeout",
        dest="request_timeout_s",
        type=float,
        default=600.0,
        help="seconds a request may run before it is cut: 408, or an error event on a stream (%(default)s)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="send CORS headers for this origin (repeat for more; '*' for any); none by default",
    )
    p.add_argument(
        "--chat-template",
        default=None,
        metavar="FILE",
        help="a Jinja chat template for /v1/chat/completions (default: the checkpoint tokenizer's)",
    )
    p.add_argument("--no-access-log", dest="access_log", action="store_false", help="no line per request")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="(%(default)s)")


def _scheduling_flags(p: argparse._ArgumentGroup) -> None:
    """How many requests run, with how much K/V memory, and how their prompts are prefilled."""
    p.add_argument(
        "--kv-budget-mb",
        type=float,
        default=1024.0,
        help="K/V cache memory: a request runs when its cache at --max-input-len + --max-tokens-limit fits "
        "(%(default)s)",
    )
    p.add_argument(
        "--max-queue", type=int, default=256, help="requests waiting for a slot before 429 Retry-After (%(default)s)"
    )
    p.add_argument(
        "--max-input-len", type=int, default=None, help="prompt tokens at most (default: min(1024, the model's room))"
    )
    p.add_argument(
        "--max-tokens-limit",
        dest="max_tokens",
        type=int,
        default=256,
        help="the largest max_tokens a request may ask for (%(default)s)",
    )
    p.add_argument(
        "--max-prefill-tokens",
        type=int,
        default=None,
        help="prompt tokens prefilled per step at most, so arrivals do not stall the running requests for all "
        "their prefills at once (default: --max-input-len, one longest prompt per step)",
    )
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=None,
        metavar="N",
        help="prefill a prompt longer than N tokens over several steps, about N tokens' worth each, so the "
        "running requests still get a token every step (an encoder-decoder's encoder: a few layers per step); "
        "default: each prompt in one step",
    )
    p.add_argument(
        "--prefix-cache-mb",
        type=float,
        default=256.0,
        help="decoder-only models: keep the K/V of earlier prompts and replies (blocks of 32 tokens, LRU) so a "
        "request that starts with one (a chat's next turn) prefills only the rest; 0 turns it off (%(default)s)",
    )


def _speech_flags(p: argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--beam-size", type=int, default=5, help="a Whisper model's beam size for transcriptions (%(default)s)"
    )
    p.add_argument(
        "--vad-filter",
        action="store_true",
        help="a Whisper model: transcribe only the speech Silero VAD finds, times kept (pip install 'encore[vad]')",
    )


def run(args: argparse.Namespace) -> int:
    try:
        from encore.serve import ServerConfig, serve
    except ImportError as e:
        raise ValueError(f"encore serve needs the serve extra: pip install 'encore[serve]' ({e})") from None

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    cfg = from_args(ServerConfig, args, quantize=None if args.quantize == "none" else args.quantize)
    model = load_for_inference(
        args.model,
        args.tokenizer,
        args.device,
        cfg.quantize,
        args.random_weights,
        kv_cache_dtype=args.kv_cache_dtype,
        prefill_products=args.prefill_products,
    )
    return serve(cfg, text_only(model, args.model, "serve"))
