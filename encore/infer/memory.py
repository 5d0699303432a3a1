"""Keeping freed memory for reuse: the CPU deployment setting for glibc's allocator.

Between two requests glibc gives large freed blocks back to the operating system (it unmaps blocks
above its mmap threshold and trims the heap's top above its trim threshold); the next prefill then
faults every page of its activations in again, which costs a 330M encoder ~100 ms per 512-token
prefill in a VM (docs/bench.md). `retain_freed_memory()` raises both thresholds, so the process keeps
its peak memory mapped and reuses it: a server, the bench's workers and `encore generate / eval` call
it. It changes the process's allocator, so it is explicit: a library user calls it, or not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # allocations below 32 MiB come from the heap, which is reused
TRIM_THRESHOLD = 2**31 - 1  # and the heap is trimmed only above 2 GiB free (mallopt takes an int)


def _libc() -> ctypes.CDLL | None:
    """glibc, where this is Linux (None elsewhere)."""
    if platform.system() != "Linux":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def retain_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (what `MALLOC_MMAP_THRESHOLD_=33554432` and a
    large `MALLOC_TRIM_THRESHOLD_` do in the environment). Returns False where it does not apply (not
    Linux / not glibc): other allocators keep their own caches."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def release_freed_memory() -> bool:
    """Give the pages of freed memory back to the operating system now (glibc's `malloc_trim`, after a
    garbage collection): what `optimize(keep_originals=False)` freed of a model quantized in memory, or
    a bench worker's model once it is done, which `retain_freed_memory` would otherwise keep mapped.
    Returns False where it does not apply."""
    gc.collect()
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    return malloc_trim is not None and bool(malloc_trim(0))
