"""Ctrl-C and SIGTERM (a cluster's preemption) during training: finish the step, save, stop.

The first signal sets a flag that the loop reads after each optimizer step: it writes a checkpoint
at that step and raises `TrainingInterrupted` (the CLI prints the resume command and exits with
128 + the signal's number, no traceback). A second signal stops at once (KeyboardInterrupt), as a
user pressing Ctrl-C twice expects. Under torchrun every rank agrees on the step to stop at (the
flag is all-reduced), so the checkpoint is consistent.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from encore.train.logging import TrainingError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(TrainingError):
    """Training stopped on a signal after saving a checkpoint at `step`."""

    def __init__(self, step: int, checkpoint: Path, signum: int):
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: checkpoint saved in {checkpoint}")
        self.step, self.checkpoint, self.signum = step, checkpoint, signum


class GracefulStop:
    """A context in which SIGINT / SIGTERM request a stop at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # the second one: stop now
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint (again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def requested(self, world_size: int, device: torch.device) -> int | None:
        """The signal to stop on, agreed by every rank; None to go on."""
        if world_size == 1:
            return self.signum
        flag = torch.tensor([self.signum or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag) or None
