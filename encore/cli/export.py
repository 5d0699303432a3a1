"""`encore export --model M --format onnx --out DIR [--quantize int8 | int4 | qdq-int8] [--static]`.

`--model` may be an fp32 export itself (a directory with encore_onnx.json): `--quantize int8 / int4`
then quantizes its graphs without torch's export (`encore.export.quantize_onnx`)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from encore.cli.common import add_model_args, build_model, text_only


def configure(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--format", choices=["onnx"], default="onnx", help="the export format (%(default)s)")
    p.add_argument("--out", required=True, help="output directory: graphs, tokenizer.json, encore_onnx.json")
    p.add_argument(
        "--quantize",
        choices=["none", "int8", "int4", "qdq-int8"],
        default="none",
        help="int8: dynamic int8 MatMuls (CPUs); int4: MatMulNBits 4-bit decoding layers, encoder and head int8 "
        "(CPUs); qdq-int8: static QuantizeLinear/DequantizeLinear with ranges "
        "from --calibration (NPU execution providers) (default: %(default)s)",
    )
    p.add_argument("--static", action="store_true", help="fix batch and lengths (what NPU compilers need)")
    p.add_argument("--batch-size", type=int, default=1, help="--static: rows per call (%(default)s)")
    p.add_argument("--max-input-len", type=int, default=512, help="--static: input tokens (%(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="--static: generated tokens (%(default)s)")
    p.add_argument(
        "--calibration",
        help="qdq-int8: a task name (code2doc, synthqa, ...) or a file of inputs (.txt, one per line; .jsonl with "
        "'source') whose sources calibrate the activation ranges",
    )
    p.add_argument("--calibration-samples", type=int, default=32, help="inputs used for calibration (%(default)s)")
    p.add_argument(
        "--opset",
        type=int,
        choices=[20, 23],
        help="ONNX opset (default: 23, attention as one Attention op; 20 with --static: attention as MatMul / "
        "Softmax, what NPU compilers take)",
    )


def run(args: argparse.Namespace) -> int:
    from encore.export import export_onnx
    from encore.infer.pipeline import encode_sources
    from encore.onnx.manifest import MANIFEST

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"encore export needs {', '.join(missing)}: pip install 'encore[onnx]'")

    if (Path(args.model) / MANIFEST).is_file():
        return _quantize_export(args)
    if args.quantize == "qdq-int8" and not args.calibration:
        raise ValueError("--quantize qdq-int8 needs --calibration TASK_OR_FILE")
    for flag in ("batch_size", "max_input_len", "max_new_tokens", "calibration_samples"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    model = build_model(args.model, args.tokenizer, trust_remote_code=args.trust_remote_code)
    text_only(model, args.model, "export")
    static = None
    if args.static:
        static = {"batch_size": args.batch_size, "max_input_len": args.max_input_len}
        static["max_new_tokens"] = args.max_new_tokens
    prompts = None
    if args.calibration:
        sources = _calibration_sources(args.calibration, args.calibration_samples)
        prompts, _ = encode_sources(model, sources, args.max_input_len)
    quantize = None if args.quantize == "none" else args.quantize
    manifest = export_onnx(model, args.out, quantize=quantize, static=static, calibration=prompts, opset=args.opset)
    files = ", ".join(g["file"] for g in manifest.graphs.values())
    print(f"exported {model.config.arch} to {Path(args.out)}: {files}, encore_onnx.json")
    return 0


def _quantize_export(args: argparse.Namespace) -> int:
    """--model names an fp32 export: quantize its graphs into --out."""
    from encore.export import quantize_onnx
    from encore.onnx.manifest import MANIFEST

    if args.quantize == "none":
        raise ValueError(f"--model {args.model} is an ONNX export already: give --quantize int8 or int4")
    if args.static or args.calibration:
        flag = "--static" if args.static else "--calibration"
        raise ValueError(f"{flag}: an existing export keeps its shapes and needs no calibration; export from the model")
    manifest = quantize_onnx(args.model, args.out, args.quantize)
    files = ", ".join(g["file"] for g in manifest.graphs.values())
    print(f"quantized {args.model} ({args.quantize}) to {Path(args.out)}: {files}, {MANIFEST}")
    return 0


def _calibration_sources(spec: str, limit: int) -> list[str]:
    from encore.cli.infer import read_inputs

    path = Path(spec)
    if path.suffix in (".txt", ".jsonl") and path.is_file():
        return read_inputs(path)[:limit]
    from encore.data import load_task

    return [e["source"] for e in load_task(spec, split="train", limit=limit)]
