"""Progress display shared by the long-running commands (training, bench, eval)."""

from __future__ import annotations

import os
import sys


def progress_enabled(requested: bool | None = None) -> bool:
    """Whether to draw a progress bar: never when `requested` is False, under CI or with ENCORE_QUIET
    set, or when stderr is not a terminal (a redirected log gets no bar characters)."""
    if requested is False:
        return False
    quiet = os.environ.get("CI") or os.environ.get("ENCORE_QUIET")
    return not quiet and sys.stderr.isatty()
