"""`encore bench` on a Whisper model (a preset of the released shapes with random weights, or a
checkpoint): per 30-s window, the time to the first token (the encoder and the decoder's prompt), the
decode rate over `output_len` tokens (end-of-text suppressed, so every engine writes as many), and the
real-time factor of a window that holds `WINDOW_TOKENS` tokens of speech. `--vs-ct2` runs CTranslate2's
Whisper (what faster-whisper runs) on the same weights, in its own process (two OpenMP runtimes in one
process slow each other down); `--vs-whispercpp` whisper.cpp on a ggml file of the same weights, in its
own process too (`encore.bench.whispercpp`); `--backend onnx` also encore's ONNX export of them on
onnxruntime (`encore.audio.onnx`)."""

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
    vs_whispercpp: bool = False
    onnx: bool = False  # also encore's ONNX export on onnxruntime (`encore.audio.onnx`) at each quantize
    threads: int | None = None
    seed: int = 0  # a preset's random weights (the same in every engine)
    json_path: str | None = "bench_speech.json"


def run_speech_bench(cfg: SpeechBenchConfig) -> dict[str, Any]:
    """Time encore at each --quantize (and the anchors on the same weights); print and save a table."""
    import torch

    from encore.audio import load_audio, window_features
    from encore.convert import resolve_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    config, checkpoint = resolve_model(cfg.model)
    if config.encoder_input != "audio":
        raise ValueError(f"--model {cfg.model}: not a speech model")
    if cfg.vs_whispercpp:  # before anything is timed
        from encore.bench.whispercpp import check_whispercpp

        check_whispercpp(config)
    samples = load_audio(cfg.audio) if cfg.audio else np.random.RandomState(0).randn(16000 * 30).astype(np.float32)
    features = window_features(samples, config.audio_mels)
    rows, prompt = [], None
    for quantize in cfg.quantize:  # a fresh copy of the weights each (optimize swaps modules in place)
        model = _encore_model(config, checkpoint, quantize, cfg.seed)
        prompt = prompt or _prompt(model)
        rows.append(_encore_row(cfg, model, quantize, features, prompt))
        del model
    if cfg.onnx:
        for quantize in cfg.quantize:
            model = _onnx_model(cfg, config, checkpoint, quantize)
            rows.append(_encore_row(cfg, model, quantize, features, prompt, "encore (onnxruntime)"))
    if cfg.vs_hf:
        rows.append(_hf_row(cfg, config, checkpoint, features, prompt))
    if cfg.vs_ct2:
        directory = _ct2_directory(cfg, config, checkpoint)
        rows += [_ct2_row(cfg, directory, q, features.numpy()) for q in cfg.quantize]
    if cfg.vs_whispercpp:
        rows += [_whispercpp_row(cfg, config, checkpoint, q, features.numpy(), prompt) for q in cfg.quantize]
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


def _encore_model(config: Any, checkpoint: Path | None, quantize: str, seed: int) -> Any:
    """The checkpoint, or the preset's random weights seeded as the anchors' are (its released vocabulary
    of 51,865 kept: the head is a third of tiny's decode step), optimized."""
    import encore
    from encore.model.io import build

    model = encore.load(checkpoint) if checkpoint is not None else build(config, seed=seed)
    return encore.optimize(model, quantize=None if quantize == "none" else quantize, keep_originals=False)


def _onnx_model(cfg: SpeechBenchConfig, config: Any, checkpoint: Path | None, quantize: str) -> Any:
    """The weights' ONNX export (cached: `backends.cached_onnx_export`) on onnxruntime's CPU provider."""
    import torch

    import encore
    from encore.audio.onnx import OnnxWhisper
    from encore.bench.backends import cached_onnx_export
    from encore.model.io import build

    source = str(checkpoint.resolve()) if checkpoint is not None else config.to_json()
    model = lambda: encore.load(checkpoint) if checkpoint is not None else build(config, seed=cfg.seed)
    directory = cached_onnx_export(source, cfg.seed, None if quantize == "none" else quantize, model)
    return OnnxWhisper(directory, threads=cfg.threads or torch.get_num_threads())


def _encore_row(
    cfg: SpeechBenchConfig, model: Any, quantize: str, features: Any, prompt: list[int], engine: str = "encore"
) -> dict:
    import torch

    ids = torch.tensor([prompt])
    eot = model.config.eos_token_id
    first, decode = [], []
    with torch.inference_mode():
        for i in range(cfg.repeats + 1):  # the first run warms up
            start = time.perf_counter()
            logits, cache = model.prefill(features, None, cfg.output_len + 1, decoder_prompt=ids)
            mid = time.perf_counter()
            for _ in range(cfg.output_len):
                logits[:, eot] = float("-inf")
                logits = model.decode_step(logits.argmax(-1), cache)
            if i:
                first.append(mid - start)
                decode.append(time.perf_counter() - mid)
    return _row(engine, quantize, first, decode, cfg.output_len)


def _hf_row(cfg: SpeechBenchConfig, config: Any, checkpoint: Path | None, features: Any, prompt: list[int]) -> dict:
    """transformers' WhisperForConditionalGeneration, fp32, on the same weights (`same_weights.hf_directory`:
    a transformers checkpoint as it is, others written in its layout, cached), its own KV-cached loop."""
    import torch
    import transformers

    from encore.bench.same_weights import hf_directory

    directory = hf_directory(config, cfg.seed, checkpoint)
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    eot = config.eos_token_id
    first, decode = [], []
    with torch.inference_mode():
        for i in range(cfg.repeats + 1):  # the first run warms up
            start = time.perf_counter()
            encoded = hf.model.encoder(features).last_hidden_state
            out = hf(encoder_outputs=(encoded,), decoder_input_ids=ids, use_cache=True)
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


def _ct2_row(cfg: SpeechBenchConfig, directory: Path, quantize: str, features: np.ndarray) -> dict[str, Any]:
    compute = {"none": "float32", "int8": "int8", "int4": "int8"}[quantize]
    context = mp.get_context("spawn")
    with context.Pool(1) as pool:
        first, full, n = pool.apply(
            _time_ct2, (str(directory), compute, features, cfg.output_len, cfg.repeats, cfg.threads)
        )  # fmt: skip
    label = "CTranslate2" if quantize != "int4" else "CTranslate2 (int8: it has no int4)"
    return _row(label, compute, first, full, n)


def _ct2_directory(cfg: SpeechBenchConfig, config: Any, checkpoint: Path | None) -> Path:
    """A CTranslate2 Whisper directory of the weights: a CTranslate2 directory itself, else CTranslate2's
    own converter of them (`same_weights.ct2_directory`, cached); a preset has no Whisper tokenizer for
    the converter."""
    from encore.bench.same_weights import ct2_directory
    from encore.convert.ctranslate2 import is_ct2_directory

    if checkpoint is None:
        raise ValueError(
            f"--vs-ct2 on --model {cfg.model}: needs a Whisper checkpoint directory (transformers' or CTranslate2's); "
            "a preset has no tokenizer for CTranslate2's converter"
        )
    return checkpoint if is_ct2_directory(checkpoint) else ct2_directory(config, cfg.seed, checkpoint)


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


def _whispercpp_row(cfg: SpeechBenchConfig, config: Any, checkpoint: Path | None, quantize: str, features, prompt):
    """whisper.cpp on the weights written as its ggml file (none: F16, int8: Q8_0, int4: Q4_0), cached."""
    from encore.bench.whispercpp import FILE_TYPES, whispercpp_file, whispercpp_row

    qtype = FILE_TYPES[quantize]
    path = whispercpp_file(config, cfg.seed, checkpoint, qtype)
    eot = config.eos_token_id
    return whispercpp_row(path, qtype, features, prompt, eot, cfg.output_len, cfg.repeats, cfg.threads)


def ct2_prompt(directory: Path, multilingual: bool) -> tuple[list[int], int]:
    """(the window's prompt without timestamps, <|endoftext|>) from the directory's vocabulary."""
    from encore.convert.ctranslate2 import vocabulary

    vocab = vocabulary(directory)
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
