"""`encore reproduce`: flags -> `encore.reproduce.reproduce`."""

from __future__ import annotations

import argparse
import shlex
import sys

from encore.reproduce import CLAIMS
from encore.reproduce.scales import SCALES


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Re-measure every claim of the paper on this machine: efficiency, architecture, split, kd, long_context, "
        "vision. Writes OUT/REPORT.md and OUT/results.json; a finished experiment is never run again, so the same "
        "command continues a killed run."
    )
    p.add_argument(
        "--scale",
        choices=list(SCALES),
        default="tiny",
        help="smoke: minutes; tiny: <= 90 min on 2 cores; 330m: the paper's scale, for a GPU",
    )
    p.add_argument("--out", required=True, help="the run folder (runs/, results.json, REPORT.md, plots/)")
    p.add_argument("--only", nargs="+", choices=list(CLAIMS), metavar="CLAIM", help=f"some claims: {', '.join(CLAIMS)}")
    p.add_argument("--seeds", type=int, default=2, help="seeds per quality comparison (>= 2)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")


def run(args: argparse.Namespace) -> int:
    from encore.reproduce import reproduce

    command = shlex.join(["encore", "reproduce", *sys.argv[2:]]) if sys.argv[1:2] == ["reproduce"] else None
    doc = reproduce(args.scale, args.out, args.only, args.seeds, args.device, command=command)
    for name, claim in doc["claims"].items():
        print(f"{name:<13} {claim['verdict']}")
    print(f"report: {args.out}/REPORT.md")
    return 0
