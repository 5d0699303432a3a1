"""What the example scripts share: run one `encore` command as a user would, its output in a log."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path


def encore(log: Path, *argv: str) -> None:
    """`encore ARGV`, printed before it runs, its output to `log`; stops the script if it fails."""
    print(f"\n$ encore {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-m", "encore", *argv], stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}); see {log}")
    print(f"  {time.perf_counter() - start:.0f} s", flush=True)
