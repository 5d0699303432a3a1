"""Roofline probes: what this machine sustains for a prefill-like matrix product (FLOP/s) and a
decode-like matrix-vector product (bytes/s), measured through the models' own kernel."""

from __future__ import annotations

import statistics
import time

import torch

from encore.bench.costmodel import Machine, dtype_bytes
from encore.model.kernels import linear


def _median_call(fn, budget_s: float, sync) -> float:
    """Median seconds per call over the calls that fit in `budget_s`: on a shared machine one call
    can catch a burst of other load or an idle moment of the memory system, the median neither
    (and the bench reports medians too)."""
    fn()  # warm-up: first-call allocation and thread start-up stay out of the measurement
    sync()
    start, times = time.perf_counter(), []
    while not times or times[-1][1] - start < budget_s:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((t0, time.perf_counter()))
    return statistics.median(end - begin for begin, end in times)


def measure_machine(device: str = "cpu", dtype: torch.dtype = torch.float32, budget_s: float = 0.3) -> Machine:
    """Probe peak FLOP/s with a [512 x D] @ [D x 4D] matmul (prefill-like) and bandwidth with a
    matrix-vector product over a matrix far larger than the caches (decode-like: each weight read once,
    2 FLOPs per element read), both through the models' own `linear` kernel. Each probe runs for
    about `budget_s` seconds."""
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        return Machine(
            peak_flops=_probe_flops(dev, dtype, budget_s, sync),
            mem_bandwidth=_probe_bandwidth(dev, dtype, budget_s, sync),
            measured=True,
        )


def _probe_flops(dev: torch.device, dtype: torch.dtype, budget_s: float, sync) -> float:
    k = 4096 if dev.type == "cuda" else 1024
    a = torch.randn(8192 if dev.type == "cuda" else 512, k, device=dev, dtype=dtype)
    w = torch.randn(4 * k, k, device=dev, dtype=dtype)
    return 2 * a.shape[0] * k * w.shape[0] / _median_call(lambda: linear(a, w), budget_s, sync)


def _probe_bandwidth(dev: torch.device, dtype: torch.dtype, budget_s: float, sync) -> float:
    rows = (1 << 30 if dev.type == "cuda" else 1 << 28) // (4096 * dtype_bytes(dtype))  # 1 GiB / 256 MiB
    w = torch.full((rows, 4096), 0.5, device=dev, dtype=dtype)  # written, so every page is really mapped
    x = torch.full((1, 4096), 0.5, device=dev, dtype=dtype)
    return w.numel() * w.element_size() / _median_call(lambda: linear(x, w), budget_s, sync)
