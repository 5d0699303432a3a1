"""Running exported encore models with onnxruntime, without torch.

    from encore.onnx import OnnxGenerator
    gen = OnnxGenerator("exported/", provider="cpu")    # written by `encore export --format onnx`

This package imports numpy, onnxruntime and tokenizers only: `pip install 'encore[onnx]'`, and a
deployment may leave torch out.
"""

from encore.onnx.manifest import MANIFEST, Manifest
from encore.onnx.runtime import PROVIDERS, OnnxGenerator, provider_name

__all__ = ["MANIFEST", "Manifest", "OnnxGenerator", "PROVIDERS", "provider_name"]
