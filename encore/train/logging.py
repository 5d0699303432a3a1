"""What a training run writes as it goes: metrics.jsonl (one JSON object per optimizer step, plus
eval records), optionally TensorBoard; and the GPU peaks behind the MFU figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, bad setup); the message says why and what is kept."""


class MetricsLog:
    """metrics.jsonl (one JSON object per optimizer step, plus eval records), optionally TensorBoard."""

    def __init__(self, out_dir: Path, resume_step: int | None, tensorboard: bool):
        self.path = out_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # a killed run may have logged steps after its last checkpoint: drop them, they rerun
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")
        self.file = open(self.path, "a")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise TrainingError(
                    "--tensorboard needs the tensorboard package: pip install 'encore[tensorboard]'"
                ) from e
            self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the GPU, for MFU; None where unknown (CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12), ("A10", 125e12)):
        if key in name:
            return flops
    return None
