"""encore's C kernels: each `csrc/*.c` is compiled on first use with the machine's C compiler
(`cc -O3 -march=native -fopenmp`, about a second; `$ENCORE_MARCH` names another CPU), cached under
`$ENCORE_CACHE/kernels` by a hash of every source in csrc/ (one may include another), compiler, flags
and CPU, and opened through ctypes after torch, so that its OpenMP runtime (same soname) is the one
torch loaded and its threads are torch's.

    path = build("int4", FLAGS)        # Path of the shared library, or None (no compiler, not Linux)
    lib = ctypes.CDLL(str(path))
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from encore.files import atomic_write, cache_dir

CSRC = Path(__file__).parent / "csrc"
# $ENCORE_MARCH: the CPU the kernels are built for (gcc's -march; default this one, "native"). Another
# x86-64 level measures a CPU without this one's instructions on this one: x86-64-v3 is AVX2 and FMA
# without AVX-512 (AMD Zen 2 / 3), as the kernels' own paths for it run there.
MARCH = os.environ.get("ENCORE_MARCH") or "native"
FLAGS = ["-O3", f"-march={MARCH}", "-fopenmp", "-shared", "-fPIC"]


@functools.cache
def cpu_flags() -> str:
    """The CPU's feature line of /proc/cpuinfo ("flags" on x86, "Features" on Arm); "" where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def compiler() -> str | None:
    """The C compiler kernels are built with ($CC, cc or gcc), or None where there is none or the
    system is not Linux."""
    if platform.system() != "Linux":
        return None
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


@functools.cache
def sources_digest() -> str:
    """A hash of every source in csrc/ (one may include another): what a built kernel, and a choice
    measured on it (`encore.model.probes`), is keyed by."""
    return hashlib.sha256(b"".join(path.read_bytes() for path in sorted(CSRC.glob("*.[ch]")))).hexdigest()


def build(name: str, flags: list[str]) -> Path | None:
    """Compile csrc/`name`.c with `flags` into $ENCORE_CACHE/kernels (once); its path, or None (said once
    per process and kernel, on stderr: encore then runs that kernel's PyTorch path, slower)."""
    cc = compiler()
    if cc is None:
        _say_once(name, "no C compiler ($CC, cc or gcc on Linux): install gcc (apt-get install gcc) for them")
        return None
    source = CSRC / f"{name}.c"
    key = hashlib.sha256((sources_digest() + " ".join([cc, *flags, cpu_flags()])).encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"{name}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    compile_to = lambda tmp: subprocess.run(  # noqa: E731
        [cc, *flags, "-o", tmp, str(source)], check=True, capture_output=True, timeout=120
    )
    try:  # atomic: a concurrent build or reader never sees half a library
        atomic_write(target, compile_to)
    except (OSError, subprocess.SubprocessError) as e:
        lines = (getattr(e, "stderr", b"") or b"").decode(errors="replace").strip().splitlines()
        errors = [line for line in lines if "error" in line]  # (gcc's last line is often a note or a caret)
        why = (errors or lines[-1:] or [type(e).__name__])[0][:160]
        chosen = "" if MARCH == "native" else f"; $ENCORE_MARCH is {MARCH!r}"
        _say_once(name, f"{cc} could not build it ({why}){chosen}")
        return None
    return target


_SAID: set[str] = set()


def _say_once(name: str, why: str) -> None:
    """One line on stderr per kernel and process: which fast kernel is missing and how to get it."""
    if name in _SAID or os.environ.get("ENCORE_QUIET"):
        return
    _SAID.add(name)
    print(f"encore: the C kernel csrc/{name}.c is not built: {why}; running the slower PyTorch path", file=sys.stderr)


def load(name: str, flags: list[str] = FLAGS) -> ctypes.CDLL | None:
    """csrc/`name`.c built (`build`) and opened; None where it cannot be built. Open it after torch: the
    libgomp torch loaded (same soname) is then the one it uses, so its threads are torch's."""
    path = build(name, flags)
    return None if path is None else ctypes.CDLL(str(path))


class Handles:
    """Mixin for modules that hold ctypes handles (a library, a function of it, a description of
    tensors by address), which neither pickle nor survive a copy: `copy.deepcopy` and pickling leave
    out the attributes named in `_handles`, and the copy's `_bind()` makes them again."""

    _handles: tuple[str, ...] = ("_lib",)

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key not in self._handles}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._bind()

    def _bind(self) -> None:
        raise NotImplementedError
