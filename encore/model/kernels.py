"""The kernel behind every projection: `linear(x, weight)`.

fp32 CPU inference goes through oneDNN (`mkldnn::_linear_pointwise`, the kernel torch.compile emits
for CPU linears) on x86-64, where it was measured; everything else is `F.linear`.
"""

from __future__ import annotations

import os
import platform

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CPU_LINEAR_BACKENDS = ("onednn", "aten")


def _find_onednn_linear():
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without the op
        return None


_onednn_linear = _find_onednn_linear()
_PLAIN = (Tensor, nn.Parameter)  # not DTensor (FSDP2), FakeTensor (torch.compile), ...
_use_onednn = False


def set_cpu_linear(backend: str) -> str:
    """Which kernel runs fp32 projections on the CPU at inference: "onednn" (falls back to "aten"
    where torch has no oneDNN) or "aten" (F.linear, i.e. the BLAS torch was built with). The default
    is "onednn" on x86-64, where it was measured, "aten" elsewhere; the environment variable
    ENCORE_CPU_LINEAR sets it at import. Returns the previous one."""
    global _use_onednn
    previous = cpu_linear()
    if backend not in CPU_LINEAR_BACKENDS:
        raise ValueError(
            f"CPU linear backend (ENCORE_CPU_LINEAR) must be one of {CPU_LINEAR_BACKENDS}, got {backend!r}"
        )
    _use_onednn = backend == "onednn" and _onednn_linear is not None
    return previous


def cpu_linear() -> str:
    """The kernel fp32 CPU inference uses for projections now: "onednn" or "aten"."""
    return "onednn" if _use_onednn else "aten"


_X86 = platform.machine().lower() in ("x86_64", "amd64")
set_cpu_linear(os.environ.get("ENCORE_CPU_LINEAR", "onednn" if _X86 else "aten"))


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """x [.., in] @ weight[out, in].T -> [.., out].

    fp32 on the CPU with no autograd goes through oneDNN (`mkldnn::_linear_pointwise`, the kernel
    torch.compile emits for CPU linears) on the unchanged weight. F.linear's fp32 route is MKL sgemm,
    which on AMD Zen runs at about half of oneDNN's speed: ~23 vs ~36 GB/s for decoding's
    matrix-vector products, ~200 vs ~440 GFLOP/s for prefill's matrices (docs/bench.md). Everything else
    (training, GPU, other dtypes, tensor subclasses) is F.linear."""
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and _use_onednn
        and type(x) in _PLAIN
        and type(weight) in _PLAIN
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    ):
        return _onednn_linear(x, weight, None, "none", [], "")
    return F.linear(x, weight)
