"""Inference: the generation loop and sampling (`generate`), and text in / text out (`pipeline`).

Names are imported on first use, so `encore.infer.search` (beam search's bookkeeping, numpy only)
serves the torch-free ONNX runtime without importing torch."""

from encore.lazy import lazy_exports

_WHERE = {name: "encore.infer.generate" for name in ("generate", "generate_stream", "sample_next")}
__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _WHERE)
