"""`encore adapt --from SRC --out DIR`: a decoder-only checkpoint -> an encoder-decoder; an encoder-decoder ->
the same with fewer layers, e.g. `--decoder-layers 2` (distil-whisper's recipe) (`encore.adapt`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        help="a decoder-only model, or an encoder-decoder to make shallower: a transformers directory, "
        "hf:ORG/NAME, a .gguf file or an encore checkpoint",
    )
    p.add_argument("--out", required=True, help="the directory to write the encoder-decoder to")
    p.add_argument(
        "--encoder-layers",
        default="all",
        help="all, a count N (the first 40%% and the last 60%% of N: the middle goes) or indices i,j,...",
    )
    p.add_argument(
        "--decoder-layers",
        default="all",
        help="all (T5Gemma's balanced pair), a count N (the ends of the stack: the paper's 2/3 : 1/3 is N = "
        "layers / 3; from an encoder-decoder, 2 keeps its first and last: distil-whisper) or indices i,j,...",
    )
    p.add_argument(
        "--cross-init",
        choices=["self", "zero", "random"],
        default="self",
        help="cross-attention starts as the layer's self-attention (T5Gemma's), as that with its output "
        "projection zero (the model starts as the source reading the target; docs/adapt.md), or fresh (then warm "
        "it up with --train-only cross_attention)",
    )
    p.add_argument(
        "--sentinels",
        type=int,
        default=0,
        help="add N T5 sentinels and UL2's mode tokens to the tokenizer (span corruption and UL2 need them)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds a random cross-attention")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")


def run(args: argparse.Namespace) -> int:
    from encore.adapt import adapt

    out = Path(args.out).expanduser()
    if (out / "config.json").exists() and not args.overwrite:
        raise FileExistsError(f"--out {args.out}: a model is already there (pass --overwrite to replace it)")
    model = adapt(
        args.source,
        encoder_layers=args.encoder_layers,
        decoder_layers=args.decoder_layers,
        cross_init=args.cross_init,
        sentinels=args.sentinels,
        seed=args.seed,
    )
    model.save_pretrained(out)
    (out / "adapt.json").write_text(json.dumps(model.adapted_from, indent=2) + "\n")
    c = model.config
    total = sum(p.numel() for p in model.parameters())
    enc, dec = model.adapted_from["encoder_layers"], model.adapted_from["decoder_layers"]
    print(
        f"encore adapt: {args.source} -> {out}: {c.n_encoder_layers} encoder + {c.n_decoder_layers} decoder layers "
        f"({total / 1e6:.1f}M parameters; encoder from layers {_span(enc)}, decoder from {_span(dec)}; "
        f"cross-attention {model.adapted_from['cross_init']})"
    )
    return 0


def _span(layers: list[int]) -> str:
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))
