"""Kernel choices measured on the machine, once: whether csrc/attend.c's bf16 products beat fp32 SDPA
for a prefill's attention (`prefill_attention="auto"`), and whether an int8 projection's many rows run
fast enough as bf16 products where the CPU has no AMX (`prefill_products="auto"`)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import torch

from encore.files import atomic_write, cache_dir
from encore.model import native
from encore.model.fused import FusedAttend, bf16_attention_available


def bf16_prefill_by_default(quantized: bool, fused: bool, encoder_input: str = "tokens") -> bool:
    """`prefill_attention="auto"`'s choice: bf16 products for a quantized model whose attention is fused,
    where this CPU runs them faster than fp32 (`bf16_attention_faster`; its int8 activations are
    coarser than bf16's rounding); fp32 otherwise, and for a speech encoder (`encoder_input="audio"`):
    Whisper tiny.en int8 loops in a window of the clip of docs/results.md with bf16 attention over its
    1,500 frames (261 words for 184 spoken) and does not with fp32's (196)."""
    return quantized and fused and encoder_input != "audio" and bf16_attention_faster()


PROBE_SHAPE = (1, 8, 512, 64)  # [B, H, T, Dh]: a 512-token prefill's attention
PROBE_MIN_GAIN = 1.25  # bf16 must beat fp32 by this much (a margin over the VMs' noise)


def bf16_attention_faster() -> bool:
    """Whether csrc/attend.c's bf16 products beat fp32 (the same loops in fp32 where the CPU has AVX-512,
    else SDPA) on a 512-token attention here by
    PROBE_MIN_GAIN: measured once per machine and kernel (CPU flags, torch, threads, csrc/'s sources,
    `ENCORE_DISABLE_AMX` and `ONEDNN_MAX_CPU_ISA`; ~0.1 s) and recorded in
    $ENCORE_CACHE/kernels/attention_probe.json (delete it to measure again).
    Measured: ~4x on an AMD EPYC (Zen 4, AVX512-BF16 dot products); on an Intel Xeon with AMX 0.7x with
    those, 3.8-5.5x since the kernel runs on the AMX tiles there (docs/engine.md)."""
    if not bf16_attention_available():
        return False
    return _probe_record(_machine_key("attention"), "attention")["bf16_faster"]


PRODUCTS_MAX_LOSS = 1.25  # bf16 products (nearer the float product) unless int8 rows are this much faster


def bf16_products_by_default() -> bool:
    """`prefill_products="auto"`'s choice for an int8 projection's many rows: bf16 products where the
    CPU runs them (closer to the float product: docs/engine.md's quality table) and they are not much
    slower than int8 rows. With AMX always (csrc/rows.c's tiles); elsewhere measured once per machine
    and kernel, as `bf16_attention_faster` is: the weight unpacked to bf16 and oneDNN's GEMM against
    the int8 rows' products on a 512 x 1024 -> 4096 projection, bf16 unless int8 is PRODUCTS_MAX_LOSS
    times faster. (This Xeon with AMX masked, `ENCORE_DISABLE_AMX=1 ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`:
    oneDNN's bf16 at 0.19 TFLOP/s against int8 rows' 0.5-0.7; Zen 4's oneDNN bf16 ran ~0.66.)"""
    from encore.model.kernels import _amx_bf16, int8_bf16_many_rows

    if not int8_bf16_many_rows():
        return False
    return _amx_bf16() or _probe_record(_machine_key("products"), "products")["bf16_faster"]


def _machine_key(what: str) -> str:
    """What a measured choice depends on: the CPU, torch, threads, csrc/'s sources and the variables
    that change which instructions run (`ENCORE_DISABLE_AMX`, oneDNN's `ONEDNN_MAX_CPU_ISA`, the kernels'
    `ENCORE_MARCH`)."""
    names = ("ENCORE_DISABLE_AMX", "ONEDNN_MAX_CPU_ISA")
    isa = "|".join(os.environ.get(name, "") for name in names) + (
        "" if native.MARCH == "native" else f"|{native.MARCH}"
    )
    machine = f"{native.cpu_flags()}|{torch.__version__}|{torch.get_num_threads()}|{native.sources_digest()}|{isa}"
    prefix = "" if what == "attention" else f"{what}|"  # (the attention's records predate the others)
    return hashlib.sha256((prefix + machine).encode()).hexdigest()


@functools.cache
def _probe_record(key: str, what: str) -> dict:
    path = cache_dir() / "kernels" / "attention_probe.json"
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        records = {}
    if isinstance(records.get(key), dict) and "bf16_faster" in records[key]:
        return records[key]
    if what == "attention":
        bf16, fp32 = _time_attention()
        records[key] = {"bf16_ms": bf16 * 1e3, "fp32_ms": fp32 * 1e3, "bf16_faster": fp32 >= PROBE_MIN_GAIN * bf16}
    else:
        bf16, int8 = _time_products()
        records[key] = {"what": what, "bf16_ms": bf16 * 1e3, "int8_ms": int8 * 1e3}
        records[key]["bf16_faster"] = bf16 <= PRODUCTS_MAX_LOSS * int8
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(records, indent=2)))
    except OSError:  # a read-only cache: measure again next time
        pass
    return records[key]


def _interleaved(runs: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each of `runs` (name -> callable), interleaved, after a warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for i in range(rounds + 1):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                if i:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _time_products(rounds: int = 5) -> tuple[float, float]:
    """(bf16 products, int8 rows) median seconds of a 512 x 1024 -> 4096 int8 projection, interleaved,
    each through the path an optimized model takes (no fbgemm copy where `rows_only_available`)."""
    from encore.model.kernels import Int8Linear, rows_only_available

    g = torch.Generator().manual_seed(0)
    weight, x = torch.randn(4096, 1024, generator=g) * 0.02, torch.randn(512, 1024, generator=g)
    layers = {name: Int8Linear(weight, rows_only=rows_only_available()) for name in ("bf16", "int8")}
    layers["int8"].bf16_many_rows = False
    seconds = _interleaved({name: lambda layer=layer: layer(x) for name, layer in layers.items()}, rounds)
    return seconds["bf16"], seconds["int8"]


def _time_attention(rounds: int = 7) -> tuple[float, float]:
    """(bf16 kernel, fp32: what runs without it) median seconds on PROBE_SHAPE, interleaved."""
    B, H, T, Dh = PROBE_SHAPE
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, Dh, generator=g) for _ in range(3))
    bf16, fp32 = FusedAttend(bf16_prefill=True), FusedAttend()
    runs = {"bf16": lambda: bf16(q, k, v, None, False, 0.0), "fp32": lambda: fp32(q, k, v, None, False, 0.0)}
    seconds = _interleaved(runs, rounds)
    return seconds["bf16"], seconds["fp32"]
