"""Kernel choices measured on the machine, once: whether csrc/attend.c's bf16 products beat fp32 SDPA
for a prefill's attention (`prefill_attention="auto"`)."""

from __future__ import annotations

import functools
import hashlib
import json
import statistics
import time
from pathlib import Path

import torch

from encore.files import atomic_write, cache_dir
from encore.model import native
from encore.model.fused import FusedAttend, bf16_attention_available
from encore.model.layers import attend


def bf16_prefill_by_default(quantized: bool, fused: bool, encoder_input: str = "tokens") -> bool:
    """`prefill_attention="auto"`'s choice: bf16 products for a quantized model whose attention is fused,
    where this CPU runs them faster than fp32 SDPA (`bf16_attention_faster`; its int8 activations are
    coarser than bf16's rounding); fp32 otherwise, and for a speech encoder (`encoder_input="audio"`):
    Whisper tiny.en int8 loops in a window of the clip of docs/results.md with bf16 attention over its
    1,500 frames (261 words for 184 spoken) and does not with fp32's (196)."""
    return quantized and fused and encoder_input != "audio" and bf16_attention_faster()


PROBE_SHAPE = (1, 8, 512, 64)  # [B, H, T, Dh]: a 512-token prefill's attention
PROBE_MIN_GAIN = 1.25  # bf16 must beat SDPA by this much (a margin over the VMs' noise)


def bf16_attention_faster() -> bool:
    """Whether csrc/attend.c's bf16 products beat fp32 SDPA on a 512-token attention here by
    PROBE_MIN_GAIN: measured once per machine and kernel (CPU flags, torch, threads, csrc/'s sources;
    ~0.1 s) and recorded in $ENCORE_CACHE/kernels/attention_probe.json (delete it to measure again).
    Measured: ~4x on an AMD EPYC (Zen 4, AVX512-BF16 dot products); on an Intel Xeon with AMX 0.7x with
    those, 3.8-5.5x since the kernel runs on the AMX tiles there (docs/engine.md)."""
    if not bf16_attention_available():
        return False
    machine = f"{native.cpu_flags()}|{torch.__version__}|{torch.get_num_threads()}|{native.sources_digest()}"
    key = hashlib.sha256(machine.encode()).hexdigest()
    return _probe_record(key)["bf16_faster"]


@functools.cache
def _probe_record(key: str) -> dict:
    path = cache_dir() / "kernels" / "attention_probe.json"
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        records = {}
    if isinstance(records.get(key), dict) and "bf16_faster" in records[key]:
        return records[key]
    bf16, sdpa = _time_attention()
    records[key] = {"bf16_ms": bf16 * 1e3, "sdpa_ms": sdpa * 1e3, "bf16_faster": sdpa >= PROBE_MIN_GAIN * bf16}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(records, indent=2)))
    except OSError:  # a read-only cache: measure again next time
        pass
    return records[key]


def _time_attention(rounds: int = 7) -> tuple[float, float]:
    """(bf16 kernel, fp32 SDPA) median seconds on PROBE_SHAPE, interleaved."""
    B, H, T, Dh = PROBE_SHAPE
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, Dh, generator=g) for _ in range(3))
    fused = FusedAttend(bf16_prefill=True)
    times: dict[str, list[float]] = {"bf16": [], "sdpa": []}
    with torch.inference_mode():
        for i in range(rounds + 1):
            for name, run in (("bf16", fused), ("sdpa", attend)):
                start = time.perf_counter()
                run(q, k, v, None, False, 0.0)
                if i:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
    return statistics.median(times["bf16"]), statistics.median(times["sdpa"])
