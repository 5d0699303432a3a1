"""Roofline probes: what this machine sustains for a prefill-like matrix product (FLOP/s) and a
decode-like matrix-vector product (bytes/s), measured through the models' own kernel."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encore.bench.costmodel import Machine, dtype_bytes
from encore.model.int4 import Int4Linear
from encore.model.kernels import (
    DEFAULT_GROUP_SIZE,
    DEFAULT_SYMMETRIC,
    Int8Linear,
    OneDNNLinear,
    bytes_per_weight,
    onednn_available,
    rows_only_available,
)
from encore.model.probes import bf16_products_by_default


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


KERNELS = ("aten", "onednn", "int8", "int8rows", "int4")


def probe_kernel(weight: Tensor, kernel: str) -> Callable[[Tensor], Tensor]:
    """The projection a model optimized with `kernel` runs, over `weight` [out, in]."""
    if kernel in ("int8", "int8rows"):  # "int8rows": optimize(prefill_products="int8"): many rows as int8 rows
        layer = Int8Linear(weight, rows_only=rows_only_available())  # as optimize makes it
        layer.bf16_many_rows = kernel == "int8" and bf16_products_by_default()  # as optimize's "auto" chooses
        return layer
    if kernel == "int4":
        return Int4Linear(weight)
    if kernel == "onednn":
        return OneDNNLinear(nn.Parameter(weight, requires_grad=False))
    return lambda x: F.linear(x, weight)


def roofline_kernel(device: torch.device | str, dtype: torch.dtype, quantize: str | None, linear: str = "auto") -> str:
    """The matrix kernel encore's models run on `device` at `dtype` / `quantize` (`encore.optimize`'s
    choice), which the roofline is probed through: "int8" / "int4" (int4: the decoding layers' kernel;
    "int8rows" where a prefill's products are int8 rows, `optimize(prefill_products="int8")`),
    "onednn" (CPU fp32 where oneDNN is there, unless `linear` is "aten") or "aten"."""
    if quantize:
        return quantize
    cpu_fp32 = torch.device(device).type == "cpu" and dtype == torch.float32
    return "onednn" if cpu_fp32 and linear != "aten" and onednn_available() else "aten"


def machine_for(
    kernel: str, device: str, dtype: torch.dtype, peak_flops: float | None = None, mem_bandwidth: float | None = None
) -> Machine:
    """The roofline for `kernel`: the given figures, or probed through it (a given figure overrides its
    probed one)."""
    if peak_flops and mem_bandwidth:
        return Machine(peak_flops, mem_bandwidth, measured=False)
    probed = measure_machine(device, dtype, kernel=kernel)
    return Machine(peak_flops or probed.peak_flops, mem_bandwidth or probed.mem_bandwidth, measured=True)


def measure_machine(
    device: str = "cpu", dtype: torch.dtype = torch.float32, budget_s: float = 0.3, kernel: str = "aten"
) -> Machine:
    """Probe peak FLOP/s with a [512 x D] @ [D x 4D] matmul (prefill-like) and bandwidth with a
    matrix-vector product over a matrix far larger than the caches (decode-like: each weight read once,
    2 FLOPs per element read), both through the kernel the models run (`kernel`: "aten" = F.linear,
    "onednn", "int8" / "int4": integer operations per second and packed weight bytes per second). Each probe runs
    for about `budget_s` seconds."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        return Machine(
            peak_flops=_probe_flops(dev, dtype, budget_s, sync, kernel),
            mem_bandwidth=_probe_bandwidth(dev, dtype, budget_s, sync, kernel),
            measured=True,
        )


def _probe_flops(dev: torch.device, dtype: torch.dtype, budget_s: float, sync, kernel: str) -> float:
    k = 4096 if dev.type == "cuda" else 1024
    a = torch.randn(8192 if dev.type == "cuda" else 512, k, device=dev, dtype=dtype)
    w = torch.randn(4 * k, k, device=dev, dtype=dtype) * 0.02
    project = probe_kernel(w, kernel)
    return 2 * a.shape[0] * k * w.shape[0] / _median_call(lambda: project(a), budget_s, sync)


def _probe_bandwidth(dev: torch.device, dtype: torch.dtype, budget_s: float, sync, kernel: str) -> float:
    if kernel == "int4":  # packed weights made directly: quantizing 256 MiB of int4 from fp32 takes seconds
        rows = (1 << 28) * 2 // 4096
        scales = torch.full((rows, 4096 // DEFAULT_GROUP_SIZE), 0.01)
        mins = None if DEFAULT_SYMMETRIC else torch.zeros_like(scales)  # the layout optimize gives
        project = Int4Linear.from_quantized(torch.full((rows, 2048), 0x9A, dtype=torch.uint8), scales, None, mins)
        x = torch.full((1, 4096), 0.5)
        return rows * 4096 * bytes_per_weight("int4") / _median_call(lambda: project(x), budget_s, sync)
    weight_bytes = 1 if kernel in ("int8", "int8rows") else dtype_bytes(dtype)
    rows = (1 << 30 if dev.type == "cuda" else 1 << 28) // (4096 * weight_bytes)  # 1 GiB / 256 MiB of weights
    x = torch.full((1, 4096), 0.5, device=dev, dtype=dtype)
    if kernel in ("int8", "int8rows") and rows_only_available():  # int8 rows made directly, as for int4
        weight = torch.full((rows, 4096), 64, dtype=torch.int8)  # written, so every page is really mapped
        project = Int8Linear.from_quantized(weight, torch.full((rows,), 0.01), rows_only=True)
    else:
        project = probe_kernel(torch.full((rows, 4096), 0.5, device=dev, dtype=dtype), kernel)  # (a packed copy)
    return rows * 4096 * weight_bytes / _median_call(lambda: project(x), budget_s, sync)
