"""`encore bench` on a Whisper model (a preset of the released shapes with random weights, or a
checkpoint): per 30-s window, the time to the first token (the encoder and the decoder's prompt), the
decode rate over `output_len` tokens (end-of-text suppressed, so every engine writes as many), and the
real-time factor of a window that holds `WINDOW_TOKENS` tokens of speech. `--vs-ct2` runs CTranslate2's
Whisper (what faster-whisper runs) on the same weights, in its own process (two OpenMP runtimes in one
process slow each other down)."""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

WINDOW_TOKENS = 110  # ~2.6 words a second over 30 s: a window of ordinary speech
WINDOW_SECONDS = 30.0


@dataclass
class SpeechBenchConfig:
    model: str
    quantize: list[str] = field(default_factory=lambda: ["none"])
    output_len: int = 128
    repeats: int = 5
    audio: str | None = None  # a file whose first 30 s are the window (default: noise; decode is forced)
    vs_ct2: bool = False
    vs_hf: bool = False
    threads: int | None = None
    json_path: str | None = "bench_speech.json"


def run_speech_bench(cfg: SpeechBenchConfig) -> dict[str, Any]:
    """Time encore at each --quantize (and CTranslate2 at the same precisions); print and save a table."""
    import torch

    from encore.audio import load_audio, window_features

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    samples = load_audio(cfg.audio) if cfg.audio else np.random.RandomState(0).randn(16000 * 30).astype(np.float32)
    rows = [_encore_row(cfg, q, samples) for q in cfg.quantize]
    features = window_features(samples, rows[0]["n_mels"])
    if cfg.vs_hf:
        rows.append(_hf_row(cfg, features))
    if cfg.vs_ct2:
        rows += [_ct2_row(cfg, q, features.numpy()) for q in cfg.quantize]
    doc = {"kind": "speech", "model": cfg.model, "output_len": cfg.output_len, "repeats": cfg.repeats, "rows": rows}
    print(format_speech_report(doc))
    if cfg.json_path:
        Path(cfg.json_path).write_text(json.dumps(doc, indent=2))
    return doc


def _row(engine: str, quantize: str, first: list[float], decode: list[float], n: int) -> dict[str, Any]:
    """`first`: seconds to the first token; `decode`: seconds for the next `n` tokens (one run each)."""
    first_s = statistics.median(first)
    decode_rate = n / max(1e-9, statistics.median(decode))
    rtf = (first_s + WINDOW_TOKENS / decode_rate) / WINDOW_SECONDS
    return {"engine": engine, "quantize": quantize, "first_token_s": first_s, "decode_tok_s": decode_rate, "rtf": rtf}


def _encore_row(cfg: SpeechBenchConfig, quantize: str, samples: np.ndarray) -> dict[str, Any]:
    import torch

    import encore
    from encore.audio import window_features
    from encore.convert import resolve_model

    config, checkpoint = resolve_model(cfg.model)
    # a preset keeps its released vocabulary (51,865): the output head is a third of tiny's decode step
    model = encore.load(checkpoint) if checkpoint is not None else encore.EncoderDecoder(config)
    model = encore.optimize(model, quantize=None if quantize == "none" else quantize)
    if model.config.encoder_input != "audio":
        raise ValueError(f"--model {cfg.model}: not a speech model")
    features = window_features(samples, model.config.audio_mels)
    prompt = torch.tensor([_prompt(model)])
    eot = model.config.eos_token_id
    first, full = [], []
    with torch.inference_mode():
        for i in range(cfg.repeats + 1):  # the first run warms up
            start = time.perf_counter()
            logits, cache = model.prefill(features, None, cfg.output_len + 1, decoder_prompt=prompt)
            mid = time.perf_counter()
            for _ in range(cfg.output_len):
                logits[:, eot] = float("-inf")
                logits = model.decode_step(logits.argmax(-1), cache)
            if i:
                first.append(mid - start)
                full.append(time.perf_counter() - mid)
    row = _row("encore", quantize, first, full, cfg.output_len)
    return {**row, "n_mels": model.config.audio_mels}


def _hf_row(cfg: SpeechBenchConfig, features: Any) -> dict[str, Any]:
    """transformers' WhisperForConditionalGeneration, fp32, on the same weights (a checkpoint's own
    directory, or the preset's random weights written in transformers' layout), its own KV-cached loop."""
    import tempfile

    import torch
    import transformers

    import encore
    from encore.convert import resolve_model

    config, checkpoint = resolve_model(cfg.model)
    ours = encore.load(checkpoint) if checkpoint is not None else encore.EncoderDecoder(config)
    prompt = torch.tensor([_prompt(ours)])
    with tempfile.TemporaryDirectory() as directory:
        ours.tokenizer = None
        ours.save_pretrained(directory, format="hf")  # (also a CTranslate2 directory: transformers' copy of it)
        hf = transformers.WhisperForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    del ours
    eot = config.eos_token_id
    first, decode = [], []
    with torch.inference_mode():
        for i in range(cfg.repeats + 1):  # the first run warms up
            start = time.perf_counter()
            encoded = hf.model.encoder(features).last_hidden_state
            out = hf(encoder_outputs=(encoded,), decoder_input_ids=prompt, use_cache=True)
            mid = time.perf_counter()
            past, logits = out.past_key_values, out.logits[:, -1]
            for _ in range(cfg.output_len):
                logits[:, eot] = float("-inf")
                out = hf(encoder_outputs=(encoded,), decoder_input_ids=logits.argmax(-1)[:, None],
                         past_key_values=past, use_cache=True)  # fmt: skip
                past, logits = out.past_key_values, out.logits[:, -1]
            if i:
                first.append(mid - start)
                decode.append(time.perf_counter() - mid)
    return _row("transformers", "float32", first, decode, cfg.output_len)


def _prompt(model: Any) -> list[int]:
    """<|startoftranscript|> (<|en|> <|transcribe|>) <|notimestamps|> from the tokenizer, or the start
    token alone for a preset without Whisper's tokenizer."""
    from encore.audio.tokens import WhisperTokens

    try:
        return WhisperTokens.from_model(model).start("en", "transcribe", timestamps=False)
    except ValueError:
        return [model.config.bos_token_id]


def _ct2_row(cfg: SpeechBenchConfig, quantize: str, features: np.ndarray) -> dict[str, Any]:
    directory = ct2_directory(cfg.model, quantize)
    compute = {"none": "float32", "int8": "int8", "int4": "int8"}[quantize]
    context = mp.get_context("spawn")
    with context.Pool(1) as pool:
        first, full, n = pool.apply(
            _time_ct2, (str(directory), compute, features, cfg.output_len, cfg.repeats, cfg.threads)
        )  # fmt: skip
    label = "CTranslate2" if quantize != "int4" else "CTranslate2 (int8: it has no int4)"
    return _row(label, compute, first, full, n)


def ct2_directory(spec: str, quantize: str) -> Path:
    """A CTranslate2 Whisper directory of `spec`'s weights: the directory itself, or CTranslate2's own
    converter of a transformers directory (cached); a preset has no tokenizer to convert with."""
    from encore.convert.ctranslate2 import is_ct2_directory
    from encore.files import cache_dir

    path = Path(spec).expanduser()
    if path.is_dir() and is_ct2_directory(path):
        return path
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise ValueError(
            f"--vs-ct2 on --model {spec}: needs a Whisper checkpoint directory (transformers' or CTranslate2's); "
            "a preset has no tokenizer for CTranslate2's converter"
        )
    from ctranslate2.converters import TransformersConverter

    out = cache_dir() / "ct2" / f"{path.resolve().name}-{abs(hash(str(path.resolve())))}"
    if not (out / "model.bin").is_file():
        TransformersConverter(str(path)).convert(str(out), force=True)
    return out


def _time_ct2(directory: str, compute: str, features: np.ndarray, n: int, repeats: int, threads: int | None):
    """In a process of its own: CTranslate2's Whisper, the first token and 1 + n tokens (EOT suppressed)."""
    import ctranslate2

    model = ctranslate2.models.Whisper(directory, device="cpu", compute_type=compute, intra_threads=threads or 0)
    view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32))
    prompt, eot = ct2_prompt(Path(directory), model.is_multilingual)
    run = lambda length: model.generate(view, [prompt], beam_size=1, max_length=length, suppress_blank=False,
                                        suppress_tokens=[-1, eot])  # fmt: skip
    # (max_length counts the prompt, and this CTranslate2 returns about one token per two of it past the
    # prompt: the tokens written are counted from the result, not assumed)
    first, full = [], []
    for i in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        run(len(prompt) + 1)
        mid = time.perf_counter()
        generated = run(len(prompt) + 2 * n)
        if i:
            first.append(mid - start)
            full.append((time.perf_counter() - mid) - (mid - start))  # the tokens after the first
    return first, full, max(1, len(generated[0].sequences_ids[0]) - 1)


def ct2_prompt(directory: Path, multilingual: bool) -> tuple[list[int], int]:
    """(the window's prompt without timestamps, <|endoftext|>) from the directory's vocabulary."""
    from encore.convert.ctranslate2 import vocabulary

    vocab = vocabulary(directory)
    if not vocab and (directory / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab()
    names = ["<|startoftranscript|>", *(["<|en|>", "<|transcribe|>"] if multilingual else []), "<|notimestamps|>"]
    missing = [n for n in [*names, "<|endoftext|>"] if n not in vocab]
    if missing:
        raise ValueError(f"{directory}: its vocabulary lacks Whisper's {', '.join(missing)}")
    return [vocab[n] for n in names], vocab["<|endoftext|>"]


def format_speech_report(doc: dict[str, Any]) -> str:
    lines = [
        f"encore bench (speech): {doc['model']}, one 30-s window, {doc['output_len']} tokens forced, "
        f"median of {doc['repeats']}",
        "",
        f"| engine | weights | first token | decode tok/s | real-time factor (a window of {WINDOW_TOKENS} tokens) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['engine']} | {r['quantize']} | {r['first_token_s'] * 1000:.0f} ms | {r['decode_tok_s']:.0f} | "
            f"{r['rtf']:.4f} |"
        )
    return "\n".join(lines)
