"""Export: an encore model as files another runtime runs (ONNX graphs + manifest for onnxruntime and
NPU compilers). The runtime side, without torch, is `encore.onnx`."""

from encore.export.onnx import export_onnx
from encore.export.quantize import quantize_onnx

__all__ = ["export_onnx", "quantize_onnx"]
