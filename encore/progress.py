"""Progress for the long-running commands (training, bench, generate, eval), everywhere they run.

On a terminal: a tqdm bar. Elsewhere (a log file, CI, `nohup`, a cluster's job log): one plain line
to stderr every `every_s` seconds and at the end, so a redirected run is never silent until it ends.
Nothing with `enabled=False` or under ENCORE_QUIET (the test suite).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def progress_enabled(requested: bool | None = None) -> bool:
    """Whether to draw a *bar*: never when `requested` is False, under CI or with ENCORE_QUIET set,
    or when stderr is not a terminal (a redirected log gets lines instead: `Progress`)."""
    if requested is False:
        return False
    quiet = os.environ.get("CI") or os.environ.get("ENCORE_QUIET")
    return not quiet and sys.stderr.isatty()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """`update(n, **figures)` as work is done; `describe(text)` for what runs now; `close()` at the end."""

    def __init__(
        self,
        total: int,
        initial: int = 0,
        unit: str = "step",
        desc: str = "",
        enabled: bool | None = True,
        every_s: float = 30.0,
    ):
        self.total, self.done, self.unit, self.desc, self.every_s = total, initial, unit, desc, every_s
        self.figures: dict[str, Any] = {}
        self._bar = None
        self._lines = enabled is not False and not os.environ.get("ENCORE_QUIET")
        if self._lines and progress_enabled(enabled):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, file=sys.stderr)
            self._lines = False
        self._start, self._start_done = time.monotonic(), initial
        self._last_line = self._start

    def describe(self, desc: str) -> None:
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def update(self, n: int = 1, **figures: Any) -> None:
        self.done += n
        self.figures = figures
        if self._bar is not None:
            self._bar.update(n)
            if figures:
                self._bar.set_postfix({k: _fmt(v) for k, v in figures.items()})
        elif self._lines and time.monotonic() - self._last_line >= self.every_s:
            self._line()

    def _line(self) -> None:
        now = time.monotonic()
        self._last_line = now
        rate = (self.done - self._start_done) / max(now - self._start, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        figures = "".join(f" {k} {_fmt(v)}" for k, v in self.figures.items())
        eta = f", ETA {_duration(left)}" if left != float("inf") and self.done < self.total else ""
        head = f"{self.desc}: " if self.desc else ""
        print(
            f"{head}{self.unit} {self.done}/{self.total}{figures} ({rate:.3g} {self.unit}/s{eta})",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._lines and self.done > self._start_done:
            self._line()
            self._lines = False


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
