"""A run folder belongs to one run.

`claim_run_dir` decides, before any work, what `--out` means: a fresh run refuses a folder that holds
an earlier run's metrics, checkpoints or final model (unless `overwrite`, which clears them first);
`resume` needs a checkpoint there (`resume="auto"`: resume when there is one, else start fresh).

Each checkpoint records the run's identity (`run_identity`: the model config, the tokenizer, the
batch, the seed and the data settings the caller names); `check_identity` refuses to resume a
different model, and refuses changed settings unless the user allows them explicitly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from encore.train.checkpoint import STEP_DIR

log = logging.getLogger("encore.train")
RUN_FILES = ("metrics.jsonl", "checkpoints", "final", "train_config.json", "tensorboard")
RESUME = (False, True, "auto")


def _what_is_there(out: Path) -> list[str]:
    found = []
    metrics = out / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append("metrics.jsonl")
    checkpoints = out / "checkpoints"
    if checkpoints.is_dir():
        steps = sorted(p.name for p in checkpoints.iterdir() if STEP_DIR.match(p.name.split(".")[0]))
        if steps:
            found.append(f"checkpoints/ ({', '.join(steps[-3:])}{', ...' if len(steps) > 3 else ''})")
    if (out / "final").is_dir():
        found.append("final/")
    return found


def claim_run_dir(out: str | Path, resume: bool | str = False, overwrite: bool = False) -> bool:
    """Check `out` for this run; returns whether the run resumes. Raises ValueError (naming what is
    there and the way out) when `out` holds an earlier run and neither `resume` nor `overwrite` says
    what to do with it, or when `resume` finds nothing to resume."""
    if resume not in RESUME:
        raise ValueError(f"--resume takes no value or 'auto', got {resume!r}")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: pick one")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: a file, not a directory")
    there = _what_is_there(out) if out.is_dir() else []
    has_checkpoint = any(s.startswith("checkpoints/") for s in there)
    if resume is True and not has_checkpoint:
        raise ValueError(
            f"--resume: no checkpoint in {out / 'checkpoints'} to resume from; drop --resume to start fresh "
            "(or pass --resume=auto: resume when there is one)"
        )
    if resume and has_checkpoint:
        return True
    if there and not overwrite:
        raise ValueError(
            f"--out {out} holds an earlier run ({'; '.join(there)}): pass --resume to continue it, --overwrite "
            "to replace it, or another --out"
        )
    if there:
        for name in RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    return False


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any] | None:
    if tokenizer is None:
        return None
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), separators=(",", ":"))
    return {"size": len(tokenizer), "sha256": hashlib.sha256(vocab.encode()).hexdigest()[:16]}


def run_identity(model: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """What defines a run: the model's config and tokenizer (never changeable on resume), and the
    `settings` that would silently change the run if they changed (batch, seed, data)."""
    return {
        "model": model.config.to_json_dict(),
        "tokenizer": tokenizer_fingerprint(getattr(model, "tokenizer", None)),
        "settings": settings,
    }


def _diff(saved: dict, now: dict, prefix: str) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)} in the checkpoint, {json.dumps(b)} now")
    return out


def check_identity(saved: dict | None, now: dict, checkpoint: Path, allow_changes: bool = False) -> None:
    """Refuse to resume `checkpoint` (whose identity is `saved`) as the run `now` when the model or
    tokenizer differs, or a setting differs and `allow_changes` is off."""
    if saved is None:
        log.warning("warning: %s was written before runs recorded their identity; not checked", checkpoint)
        return
    model = _diff(saved.get("model", {}), now["model"], "model.")
    if saved.get("tokenizer") and now.get("tokenizer") and saved["tokenizer"] != now["tokenizer"]:
        model.append("the tokenizer differs (vocabulary size or content)")
    if model:
        raise ValueError(
            f"--resume: {checkpoint} is another model ({'; '.join(model[:3])}): resume with the same --model "
            "and --tokenizer, or start a new --out"
        )
    changed = _diff(saved.get("settings", {}), now["settings"], "--")
    if changed and not allow_changes:
        raise ValueError(
            f"--resume: the run's settings changed ({'; '.join(changed[:3])}), which would silently change the run: "
            "resume with the same settings, or pass --allow-changed-settings"
        )
    if changed:
        log.warning("warning: resuming %s with changed settings: %s", checkpoint, "; ".join(changed))
