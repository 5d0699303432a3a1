"""The engine's decode step captured once and replayed: CUDA graphs (GPU) or `torch.compile`.

A decode step over the engine's whole cache (`model.decode_step(tokens[:n], cache.view(n))`) reads and
writes only preallocated tensors, with fixed shapes and no host read, so it can be captured. One capture
per *batch bucket* (1, 2, 4, ... up to the engine's slots): a step with `rows` slots in use replays the
smallest bucket that covers them. Between replays the engine only writes the input tokens and installs
new requests into the cache; the graph's own `cache.length += 1` advances every slot.

- `mode="cuda_graph"` (the default on CUDA): `torch.cuda.CUDAGraph` per bucket, sharing one memory pool.
  A replay launches the whole step (30 layers' kernels) at once: at batch 1 decode is launch-bound
  without it.
- `mode="compile"`: `torch.compile(..., fullgraph=True, dynamic=False)` per bucket (inductor by
  default; any backend). Works on the CPU too; the tests use it to prove the step has no graph break.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def buckets(max_batch: int) -> list[int]:
    """1, 2, 4, ... and `max_batch` itself."""
    out, n = [], 1
    while n < max_batch:
        out.append(n)
        n *= 2
    return [*out, max_batch]


class GraphedStep:
    """Replays a captured decode step over the first `bucket` slots of `cache`; returns logits [rows, V]."""

    def __init__(
        self,
        model: Any,
        cache: Any,
        tokens: Tensor,
        mode: str | None = None,
        backend: str = "inductor",
        warmup: int = 3,
    ):
        self.model, self.cache, self.tokens = model, cache, tokens
        self.mode = mode or ("cuda_graph" if tokens.device.type == "cuda" else "compile")
        if self.mode not in ("cuda_graph", "compile"):
            raise ValueError(f"graph mode must be 'cuda_graph' or 'compile', got {self.mode!r}")
        if self.mode == "cuda_graph" and tokens.device.type != "cuda":
            raise ValueError("CUDA graphs need the model and its cache on a CUDA device")
        if self.mode == "compile" and any(type(m).__name__ == "Int8Linear" for m in model.modules()):
            raise ValueError("the int8 (fbgemm) kernels cannot be compiled or captured: run the int8 engine eagerly")
        self.buckets = buckets(cache.batch_size)
        self._replay: dict[int, Callable[[], Tensor]] = {}
        saved = cache.length.clone()
        with torch.inference_mode():
            for n in self.buckets:
                self._replay[n] = self._capture(n, backend, warmup)
        cache.length.copy_(saved)  # warm-up and capture advanced every slot: no slot is in use yet

    def _step(self, n: int) -> Tensor:
        return self.model.decode_step(self.tokens[:n], self.cache.view(n))

    def _capture(self, n: int, backend: str, warmup: int) -> Callable[[], Tensor]:
        if self.mode == "compile":
            compiled = torch.compile(lambda: self._step(n), fullgraph=True, dynamic=False, backend=backend)
            compiled()  # compile now, not at the first request
            return compiled
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the main stream, as CUDA graph capture requires
            for _ in range(warmup):
                self._step(n)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        self._pool = getattr(self, "_pool", None) or torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._step(n)

        def replay() -> Tensor:
            graph.replay()
            return out

        return replay

    def __call__(self, rows: int) -> Tensor:
        bucket = next(b for b in self.buckets if b >= rows)
        return self._replay[bucket]()[:rows]
