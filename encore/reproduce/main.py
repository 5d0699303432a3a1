"""The orchestration of `encore reproduce`: check the run folder, run each claim, write the report."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from encore.reproduce import measures, quality, scale
from encore.reproduce.context import Context
from encore.reproduce.report import write_results
from encore.reproduce.runner import Runner
from encore.reproduce.scales import SCALES

CLAIMS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "efficiency": measures.efficiency,
    "architecture": quality.architecture,
    "split": quality.split,
    "kd": quality.kd,
    "long_context": measures.long_context,
    "vision": measures.vision,
    "scale": scale.scale,
}
SETTINGS_FILE = "reproduce.json"


def _machine(device: str) -> str:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def _claim_folder(root: Path, settings: dict[str, Any]) -> None:
    """A folder holds one reproduction: the same scale, seeds and device, or nothing earlier."""
    path = root / SETTINGS_FILE
    if path.is_file():
        earlier = json.loads(path.read_text())
        changed = [f"{k}: {earlier.get(k)!r} there, {v!r} now" for k, v in settings.items() if earlier.get(k) != v]
        if changed:
            raise ValueError(
                f"--out {root} holds a reproduction with other settings ({'; '.join(changed)}): use another --out"
            )
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def reproduce(
    scale: str,
    out: str | Path,
    only: list[str] | None = None,
    seeds: int = 2,
    device: str = "cpu",
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the claims (`only`, default all) at `scale` into `out`; returns the results document."""
    if scale not in SCALES:
        raise ValueError(f"--scale {scale!r}: one of {', '.join(SCALES)}")
    names = list(CLAIMS) if not only else only
    unknown = [n for n in names if n not in CLAIMS]
    if unknown:
        raise ValueError(f"--only {' '.join(unknown)}: not a claim; claims: {', '.join(CLAIMS)}")
    if seeds < 2:
        raise ValueError(f"--seeds {seeds}: every quality comparison needs at least 2 seeds")
    root = Path(out)
    _claim_folder(root, {"scale": scale, "seeds": seeds, "device": device})
    import torch

    ctx = Context(root, SCALES[scale], list(range(seeds)), device, Runner(root, log))
    earlier = root / "results.json"
    doc = json.loads(earlier.read_text()) if earlier.is_file() else {"claims": {}}
    for name in [n for n in CLAIMS if n in names]:  # the report keeps the paper's order
        start, first = time.perf_counter(), len(ctx.runner.done_records)
        log(f"== {name}")
        claim = CLAIMS[name](ctx)
        records = ctx.runner.done_records[first:]
        claim["seconds"] = sum(r["seconds"] for r in records) or time.perf_counter() - start
        claim["commands"] = [{"name": r["name"], "command": r["command"], "seconds": r["seconds"]} for r in records]
        # the claims of one report may run on different days and machines
        claim["ran_on"] = {
            "machine": _machine(device),
            "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
        doc["claims"][name] = claim
        doc["claims"] = {n: doc["claims"][n] for n in CLAIMS if n in doc["claims"]}
        doc["run"] = {
            "command": command or f"encore reproduce --scale {scale} --out {root} --seeds {seeds} --device {device}",
            "scale": scale,
            "seeds": ctx.seeds,
            "device": device,
            "machine": _machine(device),
            "torch": torch.__version__,
            "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "minutes": sum(c["seconds"] for c in doc["claims"].values()) / 60,
            "expected": SCALES[scale].expected_minutes,
        }
        write_results(root, doc)
        log(f"   {name}: {claim['verdict']} ({claim['why']})")
    return doc
