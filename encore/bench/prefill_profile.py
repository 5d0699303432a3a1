"""Where a prefill's time goes (`encore bench --profile-prefill`): one prefill of the bench's point, its
wall time split into

- **products**: the projections (fp32, int8, int4 and their fused forms), with their operations and
  the rate they ran at against the probed peak of the model's kernel;
- **attention**: the attention products (`Attend` and its fused forms), with their operations (dense:
  a causal prefill computes about half) and rate;
- **other work**: every other module's own time (norms, activations, embeddings, positions, residuals,
  the glue inside a layer's `forward`);
- **overhead**: what runs outside every module (the prefill's masks, positions and cache set-up; an
  un-optimized model's tied output head, `F.linear` over the embedding: `encore.optimize` makes it a
  module).

Each module's own time is its call's time less its children's (forward hooks, one `perf_counter` per
call; on a 512-token prefill of `encdec-330m` the hooks cost well under 1% of it). The median of a few
prefills per part.

    profile = profile_prefill(model, ids, peak_ops=1.15e12)   # {"wall_s", "parts": {...}, "peak_ops"}
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import Tensor, nn

from encore.model.int4 import Int4Linear
from encore.model.kernels import Int8Linear, OneDNNLinear
from encore.model.layers import Attend

PARTS = ("products", "attention", "other", "overhead")


def _part(module: nn.Module) -> str:
    if isinstance(module, (nn.Linear, Int8Linear, Int4Linear, OneDNNLinear)):
        return "products"
    if isinstance(module, Attend):
        return "attention"
    return "other"


def _operations(part: str, args: tuple, output: Any) -> float:
    """Multiply-adds x 2 of one call: a projection's rows x in x out; attention's QK^T and PV, dense."""
    if part == "products" and args and hasattr(output, "shape"):  # (a Tensor, or rows packed as `BF16Tiles`)
        return 2.0 * args[0].numel() * output.shape[-1]
    if part == "attention" and len(args) >= 2:
        q, k = args[0], args[1]  # [B, H, T, Dh], [B, KH, S, Dh]
        return 4.0 * q.numel() * k.shape[-2]
    return 0.0


class _Timer:
    """Forward hooks on every module of a model: each module's own time, summed by part."""

    def __init__(self, model: nn.Module):
        self.stack: list[list[float]] = []  # [start, children's time] of each open call
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.ops = dict.fromkeys(PARTS, 0.0)
        self.handles = []
        for module in model.modules():
            part = _part(module)
            self.handles.append(module.register_forward_pre_hook(self._enter))
            self.handles.append(module.register_forward_hook(lambda m, a, o, part=part: self._leave(part, a, o)))

    def _enter(self, module: nn.Module, args: tuple) -> None:
        self.stack.append([time.perf_counter(), 0.0])

    def _leave(self, part: str, args: tuple, output: Any) -> None:
        start, children = self.stack.pop()
        spent = time.perf_counter() - start
        self.seconds[part] += spent - children
        self.ops[part] += _operations(part, args, output)
        if self.stack:
            self.stack[-1][1] += spent

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.inference_mode()
def profile_prefill(model: nn.Module, ids: Tensor, peak_ops: float | None = None, repeats: int = 3) -> dict[str, Any]:
    """One prefill of `ids` [B, S] (after a warm-up), `repeats` times: the median wall time and each
    part's median seconds, share of the wall time, operations and rate (and its share of `peak_ops`,
    the probed peak of the model's matrix kernel, where given)."""
    model.prefill(ids, None, 1)  # warm-up: first-call allocations, kernels built, probes run
    runs = []
    for _ in range(repeats):
        timer = _Timer(model)
        try:
            start = time.perf_counter()
            model.prefill(ids, None, 1)
            wall = time.perf_counter() - start
        finally:
            timer.close()
        timer.seconds["overhead"] = max(wall - sum(timer.seconds[p] for p in PARTS[:3]), 0.0)
        runs.append((wall, timer.seconds, timer.ops))
    wall = statistics.median(r[0] for r in runs)
    parts = {}
    for part in PARTS:
        seconds = statistics.median(r[1][part] for r in runs)
        entry: dict[str, Any] = {"seconds": seconds, "share": seconds / wall if wall > 0 else None}
        if part in ("products", "attention"):
            ops = runs[0][2][part]
            rate = ops / seconds if seconds > 0 else None
            entry.update(ops=ops, rate=rate, peak_share=rate / peak_ops if rate and peak_ops else None)
        parts[part] = entry
    return {"wall_s": wall, "batch_size": ids.shape[0], "input_len": ids.shape[1], "peak_ops": peak_ops, "parts": parts}
