"""`encore transcribe`: speech files -> text, subtitles or JSON through a Whisper model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from encore.cli.common import add_quantize_flag, load_for_inference, nonnegative_int, positive_int


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="a Whisper checkpoint: a transformers directory, a CTranslate2 / faster-whisper directory, "
        "hf:openai/whisper-*, or its ONNX export (`encore export`; run by onnxruntime)",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (anything FFmpeg decodes)")
    p.add_argument("--language", default=None, help="the spoken language's code (en, de, ...); default: detected")
    p.add_argument("--task", choices=["transcribe", "translate"], default="transcribe", help="(%(default)s)")
    p.add_argument("--output-format", choices=["txt", "srt", "vtt", "json"], default="txt", help="(%(default)s)")
    p.add_argument("--out", type=Path, default=None, help="a folder for FILE's stem + the format's extension; "
                   "default: print to stdout")  # fmt: skip
    p.add_argument("--beam-size", type=positive_int, default=5, help="(%(default)s; 1: greedy)")
    p.add_argument(
        "--temperature",
        type=float,
        nargs="+",
        default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        help="the fallback temperatures, tried in order (%(default)s)",
    )
    p.add_argument("--initial-prompt", default=None, help="text that conditions the first window (names, style)")
    p.add_argument("--no-condition-on-previous-text", action="store_true", help="do not prompt with the text so far")
    p.add_argument("--without-timestamps", action="store_true", help="no timestamp tokens (segments span windows)")
    p.add_argument(
        "--word-timestamps", action="store_true", help="each segment's words with their times (json: 'words')"
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        help="windows decoded together (faster-whisper's batched mode: no previous text) (%(default)s)",
    )
    p.add_argument(
        "--vad-filter",
        action="store_true",
        help="transcribe only the speech Silero VAD finds, times kept (pip install 'encore[vad]')",
    )
    p.add_argument(
        "--vad-min-silence-ms",
        type=positive_int,
        default=2000,
        help="--vad-filter: silences shorter than this stay (%(default)s)",
    )
    p.add_argument("--seed", type=nonnegative_int, default=0, help="for the sampled fallbacks (%(default)s)")
    p.add_argument("--device", default="cpu", help="(%(default)s)")
    p.add_argument("--provider", default="cpu", help="an ONNX export: onnxruntime's execution provider (cpu, cuda, "
                   "openvino, coreml, ...) (%(default)s)")  # fmt: skip
    add_quantize_flag(p)


def run(args: argparse.Namespace) -> int:
    from encore.audio.formats import render

    if args.out is not None and args.out.exists() and not args.out.is_dir():  # before the model loads
        raise ValueError(f"--out {args.out}: a file is there; --out names a folder for the transcripts")
    if args.vad_filter:  # before the model loads
        from encore.lazy import require

        require("silero_vad", "vad")
    model = _model(args)
    if getattr(model.config, "encoder_input", "tokens") != "audio":
        raise ValueError(f"--model {args.model} is a text model: encore transcribe takes a speech model (Whisper)")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    for file in args.files:
        result = model.transcribe(
            file,
            language=args.language,
            task=args.task,
            beam_size=args.beam_size,
            temperature=tuple(args.temperature),
            initial_prompt=args.initial_prompt,
            condition_on_previous_text=not args.no_condition_on_previous_text,
            without_timestamps=args.without_timestamps,
            word_timestamps=args.word_timestamps,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=True,
            vad_filter=args.vad_filter,
            vad_parameters={"min_silence_duration_ms": args.vad_min_silence_ms},
        )
        text = render(result, args.output_format)
        if args.out is None:
            sys.stdout.write(text)
        else:
            target = args.out / f"{Path(file).stem}.{args.output_format}"
            target.write_text(text, encoding="utf-8")
            print(f"{file} -> {target}", file=sys.stderr)
    return 0


def _model(args: argparse.Namespace):
    """The torch model --model names, or an `OnnxWhisper` on its ONNX export."""
    from encore.onnx.manifest import MANIFEST

    quantize = None if args.quantize == "none" else args.quantize
    if (Path(args.model) / MANIFEST).is_file():
        from encore.audio.onnx import OnnxWhisper
        from encore.lazy import require

        require("onnxruntime", "runtime")

        if quantize:
            raise ValueError(f"--quantize: --model {args.model} is an ONNX export; quantize it with encore export "
                             f"--model {args.model} --quantize {quantize} --out DIR")  # fmt: skip
        if args.word_timestamps or args.batch_size > 1:
            flag = "--word-timestamps" if args.word_timestamps else "--batch-size"
            raise ValueError(f"{flag} runs on the torch model, not on an ONNX export")
        return OnnxWhisper(args.model, provider=args.provider)
    return load_for_inference(
        args.model,
        None,
        args.device,
        quantize,
        kv_cache_dtype=args.kv_cache_dtype,
        prefill_products=args.prefill_products,
    )
