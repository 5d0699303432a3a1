"""Training checkpoints that survive crashes: written atomically, resumed exactly.

A checkpoint is a directory `step-N/` holding the model (`save_pretrained`: config.json +
model.safetensors), `trainer.pt` (optimizer, scheduler, RNG states: tensors and plain containers
only, read back with `weights_only=True`) and `state.json` (step, data position). It is written
into a hidden temporary directory, every file fsynced, then renamed into place: a kill or a full
disk mid-save leaves the previous checkpoints untouched, and a half-written one is never listed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encore.files import fsync_dir, fsync_tree
from encore.model.io import read_state

log = logging.getLogger("encore.train")
STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "state.json"
TRAINER_FILE = "trainer.pt"


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict[str, Any]:
    # stored as a tensor + plain values: weights_only loading refuses numpy arrays
    _, key, pos, has_gauss, gauss = np.random.get_state()
    return {"key": torch.from_numpy(key.astype(np.int64)), "rest": [int(pos), int(has_gauss), float(gauss)]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"]["key"].numpy().astype(np.uint32), *state["numpy"]["rest"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: str | Path,
    step: int,
    model,
    trainer_state: dict[str, Any],
    state: dict[str, Any],
    keep_last: int = 3,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `root/step-{step}` atomically and keep only the newest `keep_last` checkpoints; `weights`:
    the model's gathered from shards (FSDP2), else its own."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-step-{step}-"))
    try:
        model.save_pretrained(tmp, state=weights)
        torch.save(trainer_state, tmp / TRAINER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
        fsync_tree(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (temporary directories are not listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / STATE_FILE).exists() and (p / TRAINER_FILE).exists()]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer_state, state) of a checkpoint directory; the model is loaded with `encore.load`."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise ValueError(f"{path / STATE_FILE}: unreadable checkpoint state ({e})") from None
    trainer_state = torch.load(path / TRAINER_FILE, map_location="cpu", weights_only=True)
    return trainer_state, state


def clean_temporaries(root: str | Path) -> None:
    """Remove what a killed save left behind (never a complete checkpoint)."""
    root = Path(root)
    if root.is_dir():
        for p in root.glob(".tmp-step-*"):
            shutil.rmtree(p, ignore_errors=True)


def load_newest(root: str | Path, quarantine: bool = True) -> tuple[Path, dict, dict, dict] | None:
    """(path, trainer_state, state, model weights) of the newest checkpoint under `root` that loads, or
    None. A checkpoint that fails to load (truncated weights, broken trainer state, missing files) is
    reported by path and skipped; with `quarantine` it is renamed `step-N.damaged` (kept for a look,
    never listed or pruned again)."""
    for path in reversed(list_checkpoints(root)):
        try:
            trainer_state, state = load_checkpoint(path)
            weights = read_state(path)
            return path, trainer_state, state, weights
        except Exception as e:  # any damage: a truncated zip / safetensors, a missing file
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            moved = ""
            if quarantine:
                target = path.with_name(path.name + ".damaged")
                shutil.rmtree(target, ignore_errors=True)
                os.replace(path, target)
                moved = f"; moved to {target.name}"
            log.warning("warning: checkpoint %s does not load (%s): skipped%s", path, reason, moved)
    return None
