"""encore: encoder-decoder small language models (Return of the Encoder, arXiv 2501.16273).

    from encore import ModelConfig, EncoderDecoder, DecoderOnly, load, Engine, optimize, deoptimize
    from encore import VisionConfig, VisionLanguageModel

Names are imported on first use, so `import encore.onnx` (the torch-free runtime) never imports torch.
"""

from __future__ import annotations

from encore.lazy import lazy_exports

__version__ = "0.1.0"

_WHERE = {
    "ModelConfig": "encore.config",
    "EncoderDecoder": "encore.model",
    "DecoderOnly": "encore.model",
    "VisionLanguageModel": "encore.model",
    "VisionConfig": "encore.vision",
    "load": "encore.convert",
    "from_hf": "encore.convert",
    "adapt": "encore.adapt",
    "Engine": "encore.infer.engine",
    "Event": "encore.infer.engine",
    "optimize": "encore.infer.optimize",
    "deoptimize": "encore.infer.optimize",
}
__all__ = [*_WHERE, "__version__"]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _WHERE)
