"""`encore convert --model SRC --out DIR [--to encore|hf] [--dtype fp32|bf16] [--quantize int8|int4]`: a
checkpoint from one layout to the other (a transformers family's, or encore's own), or to a quantized
encore checkpoint that loads ready to run (encore.model.quantized)."""

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
    p.add_argument(
        "--text-only",
        action="store_true",
        help="leave out the checkpoint's image tower (T5Gemma 2's SigLIP), which is otherwise converted with it",
    )
    p.add_argument(
        "--quantize",
        choices=["none", "int8", "int4"],
        default="none",
        help="write a quantized encore checkpoint (CPU kernels; encore.optimize's default policy): packed weights "
        "and scales, loaded without re-quantizing",
    )
    p.add_argument("--group-size", type=int, default=None, help="int4: inputs per scale, 32 or a multiple of 64 (32)")
    p.add_argument(
        "--symmetric",
        action="store_true",
        help="int4: Q4_0's levels, no minimum per group (faster, coarser; docs/engine.md) instead of Q4_1's",
    )


def run(args: argparse.Namespace) -> int:
    from encore.convert import load, resolve_model
    from encore.convert.checkpoint import has_image_tower, is_hf_checkpoint

    _, checkpoint = resolve_model(args.model)
    if checkpoint is None:
        raise ValueError(f"--model {args.model}: a preset or config file has no weights to convert")
    out = Path(args.out).expanduser()
    if out.resolve() == Path(checkpoint).resolve():
        raise ValueError(f"--out {args.out}: the same directory as --model; write the conversion elsewhere")
    quantize = None if args.quantize == "none" else args.quantize
    if quantize and (args.to != "encore" or args.dtype != "fp32"):
        raise ValueError(f"--quantize {quantize}: writes an encore checkpoint (--to encore, --dtype fp32)")
    for flag, given in (("--group-size", args.group_size is not None), ("--symmetric", args.symmetric)):
        if given and quantize != "int4":
            raise ValueError(f"{flag}: only with --quantize int4")
    model = load(checkpoint, vision=not args.text_only and is_hf_checkpoint(checkpoint) and has_image_tower(checkpoint))
    if args.text_only:
        model = getattr(model, "lm", model)  # an encore vision checkpoint loads with its tower: its text model
    if quantize:
        from encore.infer.optimize import optimize
        from encore.model.kernels import DEFAULT_GROUP_SIZE, DEFAULT_SYMMETRIC

        group_size = args.group_size or DEFAULT_GROUP_SIZE
        symmetric = args.symmetric or DEFAULT_SYMMETRIC
        optimize(model, "cpu", quantize=quantize, group_size=group_size, symmetric=symmetric, keep_originals=False)
        model.save_pretrained(out)
    else:
        model.save_pretrained(out, format=args.to, dtype=DTYPES[args.dtype])
    size = sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")
    what = quantize or f"{args.to}, {args.dtype}"
    print(f"encore convert: {args.model} -> {out} ({what}, {size / 2**20:.1f} MiB of weights)")
    return 0
