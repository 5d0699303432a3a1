"""Vision-language evidence on shapesvqa (README, docs/vision.md): the encoder-decoder VLM against the
decoder-only VLM at matched size, data and steps, and the token-compression ablation (image_keep 1.0 /
0.33 / 0.1 x variance / uniform / learned) on the encoder-decoder, with first-token latency from
`encore bench --vision`.

    python examples/shapesvqa_vlm.py [--steps 300] [--out runs/shapesvqa_vlm] [--json docs/vision_results.json]

Every run goes through the CLI users run (`encore finetune`, `encore eval`, `encore bench`); a finished
run is not run again (its eval metrics exist), so a killed script continues where it stopped.
~30 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CELLS = [  # (arch preset, image_keep, selection)
    ("encdec-tiny", 1.0, "variance"),
    ("deconly-tiny", 1.0, "variance"),
    ("encdec-tiny", 1.0, "learned"),
    *[("encdec-tiny", keep, sel) for keep in (0.33, 0.1) for sel in ("variance", "uniform", "learned")],
]


def encore(*args: str) -> None:
    print("+ encore", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "encore", *args], check=True)


def run_cell(model: str, keep: float, selection: str, args: argparse.Namespace) -> dict:
    run = Path(args.out) / f"{model}-keep{keep}-{selection}-seed{args.seed}"
    metrics = run / "eval.metrics.json"
    if not metrics.exists():
        encore(
            "finetune",
            "--model",
            model,
            "--task",
            "shapesvqa",
            "--vision",
            "vit-tiny",
            "--image-keep",
            str(keep),
            "--selection",
            selection,
            "--out",
            str(run),
            "--resume=auto",
            "--max-steps",
            str(args.steps),
            "--batch-size",
            "32",
            "--micro-batch-size",
            "32",
            "--max-source-len",
            "32",
            "--max-target-len",
            "8",
            "--lr",
            "1e-2",
            "--seed",
            str(args.seed),
        )
        encore(
            "eval",
            "--model",
            str(run / "final"),
            "--task",
            "shapesvqa",
            "--split",
            "validation",
            "--out",
            str(run / "eval.jsonl"),
            "--max-new-tokens",
            "4",
            "--batch-size",
            "64",
        )
    scores = json.loads(metrics.read_text())
    return {
        **scores,
        "model": model,
        "checkpoint": scores["model"],
        "image_keep": keep,
        "selection": selection,
        "seed": args.seed,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/shapesvqa_vlm")
    p.add_argument("--json", default="docs/vision_results.json")
    args = p.parse_args()
    results = [run_cell(*cell, args) for cell in CELLS]
    latency = Path(args.out) / "bench_vision_tiny.json"
    if not latency.exists():
        encore(
            "bench",
            "--vision",
            "vit-tiny",
            "--model",
            "encdec-tiny",
            "--baseline",
            "deconly-tiny",
            "--image-keep",
            "1.0",
            "0.33",
            "0.1",
            "--output-len",
            "8",
            "--repeats",
            "9",
            "--json",
            str(latency),
        )
    bench = json.loads(latency.read_text())
    first = {(r["model"], r["image_keep"]): r["first_token_s"] for r in bench["rows"]}
    print(
        "\n| model | image_keep | selection | accuracy | colour | count | exists | relation | size | first token ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        types = [r[f"accuracy_{t}"] for t in ("colour", "count", "exists", "relation", "size")]
        ms = 1e3 * first[(r["model"], r["image_keep"])]
        print(
            f"| {r['model']} | {r['image_keep']} | {r['selection']} | {r['accuracy']:.1f} | "
            + " | ".join(f"{t:.1f}" for t in types)
            + f" | {ms:.1f} |"
        )
    Path(args.json).write_text(json.dumps({"steps": args.steps, "runs": results, "latency": bench}, indent=2) + "\n")


if __name__ == "__main__":
    main()
