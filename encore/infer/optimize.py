"""`encore.optimize(model, ...)`: a model made ready for inference by explicit, visible module swaps.

    model = encore.optimize(model)                    # CPU fp32: oneDNN projections (x86-64)
    model = encore.optimize(model, quantize="int8")   # CPU: int8 weights, dynamic int8 activations
    model = encore.optimize(model, device="cuda")     # GPU: bf16 weights; SDPA's fused kernels
    encore.deoptimize(model)                          # the plain Linear modules back, as they were

Every projection (`layers.Linear`) is swapped for the kernel module that runs it
(`encore.model.kernels`), and so is the output head, tied to the embedding or not; `print(model)` shows
each. The swaps are recorded on the model, so `deoptimize` restores the very modules (and weights)
the model had. Nothing global changes: two models in one process can run different kernels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from encore.model.kernels import Int8Linear, OneDNNLinear, int8_available, onednn_available
from encore.model.layers import Linear
from encore.model.vlm import VisionLanguageModel

QUANTIZE = (None, "int8")
CPU_LINEAR = ("auto", "onednn", "aten")


def optimize(
    model: Any,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
    linear: str = "auto",
) -> Any:
    """Move `model` to `device` / `dtype` (default: its device; fp32 on CPU, bf16 on CUDA), put it in
    eval mode without gradients, and swap its projections for the fastest inference kernels there:

    - CPU, `quantize=None`: fp32 through oneDNN where it was measured faster (x86-64; `linear="aten"`
      keeps F.linear, i.e. torch's BLAS);
    - CPU, `quantize="int8"`: `Int8Linear` (fbgemm VNNI): int8 per-channel weights, activations
      quantized per call; the output head too (the embedding lookup stays fp32);
    - CUDA: bf16 weights, F.linear (cuBLAS); int8 is a CPU path and is refused here.

    Returns the model (changed in place). Calling it again first undoes the previous swaps."""
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    if linear not in CPU_LINEAR:
        raise ValueError(f"linear must be one of {CPU_LINEAR}, got {linear!r}")
    if isinstance(model, VisionLanguageModel):  # the text model gets the kernels; the tower follows its device/dtype
        optimize(model.lm, device, dtype, quantize, linear)
        weight = model.lm.embed.weight
        model.vision.to(device=weight.device, dtype=weight.dtype).eval().requires_grad_(False)
        return model
    deoptimize(model)
    device = torch.device(device) if device is not None else model.embed.weight.device
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if quantize == "int8":
        if device.type != "cpu" or dtype != torch.float32:
            raise ValueError(
                f"quantize='int8' is a CPU path (fp32 activations, int8 weights); got device {device}, dtype {dtype}. "
                "On a GPU use dtype=torch.bfloat16"
            )
        if not int8_available():
            raise ValueError("quantize='int8' needs a torch with the x86 / fbgemm quantized engine (CPU x86-64 builds)")
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    kernel = _kernel(device, dtype, quantize, linear)
    swaps: list[tuple[nn.Module, str, nn.Module | None]] = []
    if kernel is not None:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is Linear:
                    setattr(parent, name, kernel(child.weight, child.bias))
                    swaps.append((parent, name, child))
        if model.lm_head is None:  # the tied head: the embedding's weight, as a projection
            model.lm_head = kernel(model.embed.weight)
            swaps.append((model, "lm_head", None))
    model._encore_swaps = swaps
    model._encore_optimized = {"device": str(device), "dtype": str(dtype), "quantize": quantize, "linear": linear}
    return model


def _kernel(device: torch.device, dtype: torch.dtype, quantize: str | None, linear: str):
    if quantize == "int8":
        return Int8Linear
    if device.type == "cpu" and dtype == torch.float32 and linear != "aten" and onednn_available():
        return OneDNNLinear
    if linear == "onednn" and device.type == "cpu":
        raise ValueError("linear='onednn' needs an x86-64 CPU and a torch built with oneDNN (mkldnn)")
    return None


def deoptimize(model: Any) -> Any:
    """Undo `optimize`'s module swaps (the original modules and weights come back); device and dtype
    stay. Returns the model."""
    if isinstance(model, VisionLanguageModel):
        deoptimize(model.lm)
        return model
    for parent, name, original in reversed(getattr(model, "_encore_swaps", [])):
        setattr(parent, name, original)
    model._encore_swaps = []
    model._encore_optimized = None
    return model


def optimized(model: Any) -> dict[str, Any] | None:
    """How `optimize` last set the model up (device, dtype, quantize, linear), or None."""
    return getattr(model, "_encore_optimized", None)
