"""`encore convert --model SRC --out DIR [--to encore|hf] [--dtype fp32|bf16]`: a checkpoint from one
layout to the other (a transformers family's, or encore's own)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="what to convert: an encore or transformers checkpoint directory, hf:ORG/NAME, or a .gguf file",
    )
    p.add_argument("--out", required=True, help="the directory to write (created; existing files are replaced)")
    p.add_argument(
        "--to",
        choices=["encore", "hf"],
        default="encore",
        help="encore: encore's config.json + model.safetensors; hf: the family's transformers layout "
        "(AutoModelForCausalLM / AutoModelForSeq2SeqLM load it)",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="the weights' dtype on disk")


def run(args: argparse.Namespace) -> int:
    from encore.convert import load, resolve_model

    _, checkpoint = resolve_model(args.model)
    if checkpoint is None:
        raise ValueError(f"--model {args.model}: a preset or config file has no weights to convert")
    out = Path(args.out).expanduser()
    if out.resolve() == Path(checkpoint).resolve():
        raise ValueError(f"--out {args.out}: the same directory as --model; write the conversion elsewhere")
    model = load(checkpoint)
    model.save_pretrained(out, format=args.to, dtype=DTYPES[args.dtype])
    size = sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")
    print(f"encore convert: {args.model} -> {out} ({args.to}, {args.dtype}, {size / 2**20:.1f} MiB of weights)")
    return 0
