"""int4 weight-only projections for CPU inference: `Int4Linear`, what `encore.optimize(quantize="int4")` swaps in.

Weights are 4-bit, symmetric, one fp32 scale per `group_size` inputs (w ~= (q - 8) * scale, the
scale set so the group's largest magnitude maps to -8, as llama.cpp's Q4_0 does): half of int8's
bytes per decode step. Activations are quantized to int8 per row and per group at each call, and the
products run as u8 x s8 dot products (AVX-512 VNNI) in a small C kernel (`csrc/int4.c`), compiled on
first use with the machine's C compiler and cached under `$ENCORE_CACHE/kernels`. Measurements and the
alternatives tried (torch's `_weight_int4pack_mm_for_cpu`, torchao, onnxruntime's MatMulNBits) are in
docs/engine.md.

    qweight, scales = quantize_int4(weight, group_size=128)    # uint8 [N, K/2], fp32 [N, K/128]
    layer = Int4Linear.from_quantized(qweight, scales, bias)    # what a quantized checkpoint loads
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch
from torch import Tensor, nn

from encore.files import atomic_write, cache_dir
from encore.model.kernels import DEFAULT_GROUP_SIZE, cpu_flags

SOURCE = Path(__file__).parent / "csrc" / "int4.c"
CHUNK = 64  # inputs per 32 packed bytes: the kernel's unit, so a group size is a multiple of it


def int4_divides(in_features: int, group_size: int) -> bool:
    """Whether a projection with `in_features` inputs can be held in int4 groups of `group_size`."""
    return group_size % CHUNK == 0 and in_features % group_size == 0


def quantize_int4(weight: Tensor, group_size: int = DEFAULT_GROUP_SIZE) -> tuple[Tensor, Tensor]:
    """weight [N, K] -> (qweight uint8 [N, K/2] in the kernel's nibble order, scales fp32 [N, K/group_size])."""
    n, k = weight.shape
    if not int4_divides(k, group_size):
        raise ValueError(
            f"int4: {k} input features do not divide into groups of {group_size} "
            f"(group_size must be a multiple of {CHUNK} dividing the input features)"
        )
    w = weight.detach().to("cpu", torch.float32).reshape(n, k // group_size, group_size)
    extreme = w.gather(2, w.abs().argmax(dim=2, keepdim=True))  # the signed value of largest magnitude
    scale = extreme / -8.0
    inverse = torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)
    q = (w * inverse + 8.0).round().clamp(0, 15).to(torch.uint8).reshape(n, k // CHUNK, 2, CHUNK // 2)
    qweight = q[:, :, 0] | (q[:, :, 1] << 4)  # byte i of a chunk: inputs i (low nibble) and i + 32 (high)
    return qweight.reshape(n, k // 2).contiguous(), scale.reshape(n, k // group_size).contiguous()


def dequantize_int4(qweight: Tensor, scales: Tensor) -> Tensor:
    """The fp32 weight [N, K] that int4 `qweight` / `scales` stand for."""
    n, half = qweight.shape
    k = 2 * half
    packed = qweight.reshape(n, k // CHUNK, 1, CHUNK // 2)
    q = torch.cat([packed & 0x0F, packed >> 4], dim=2).reshape(n, k).float()
    group_size = k // scales.shape[1]
    return ((q - 8.0).reshape(n, -1, group_size) * scales.unsqueeze(-1)).reshape(n, k)


FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernel (built once per source, compiler, flags and CPU; cached), or None where no C
    compiler is found or it fails to build."""
    path = build_kernel(FLAGS)
    return None if path is None else open_kernel(path)


def build_kernel(flags: list[str]) -> Path | None:
    """Compile csrc/int4.c with `flags` into $ENCORE_CACHE/kernels (once); its path, or None."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.system() != "Linux":
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *flags, cpu_flags()]).encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"int4-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    compile_to = lambda tmp: subprocess.run(  # noqa: E731
        [compiler, *flags, "-o", tmp, str(SOURCE)], check=True, capture_output=True, timeout=120
    )
    try:  # atomic: a concurrent build or reader never sees half a library
        atomic_write(target, compile_to)
    except (OSError, subprocess.SubprocessError):
        return None
    return target


def open_kernel(path: Path) -> ctypes.CDLL:
    """Load a built kernel. After torch: the libgomp torch loaded (same soname) is the one it uses, so
    its threads are torch's threads."""
    lib = ctypes.CDLL(str(path))
    lib.encore_int4_linear.restype = ctypes.c_int
    lib.encore_int4_linear.argtypes = [ctypes.c_void_p, *[ctypes.c_int64] * 3, *[ctypes.c_void_p] * 2]
    lib.encore_int4_linear.argtypes += [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    lib.encore_int4_has_vnni.restype = ctypes.c_int
    return lib


def int4_linear(lib: ctypes.CDLL, x: Tensor, qweight: Tensor, scales: Tensor, bias: Tensor | None) -> Tensor:
    """x [..., K] fp32 -> [..., N] through kernel `lib` (contiguous uint8 / fp32 tensors on the CPU)."""
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    rows = x.reshape(-1, k).to(torch.float32).contiguous()
    y = torch.empty(rows.shape[0], n)
    args = (rows.shape[0], k, n, qweight.data_ptr(), scales.data_ptr(), k // scales.shape[1])
    if lib.encore_int4_linear(rows.data_ptr(), *args, None if bias is None else bias.data_ptr(), y.data_ptr()):
        raise MemoryError("int4 linear: out of memory for the activation workspace")
    return y.view(*x.shape[:-1], n)


def int4_available() -> bool:
    """Whether the int4 kernel could be built here (a C compiler on Linux)."""
    return _library() is not None


def int4_fast() -> bool:
    """Whether the kernel runs its AVX-512 VNNI path (otherwise plain C: correct, slow)."""
    lib = _library()
    return lib is not None and bool(lib.encore_int4_has_vnni())


class Int4Linear(nn.Module):
    """y ~= x @ weight.T with int4 weights (symmetric groups of `group_size` inputs, fp32 scales) and
    int8 activations quantized per call and group; fp32 in and out. Inference only."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, group_size: int = DEFAULT_GROUP_SIZE):
        super().__init__()
        qweight, scales = quantize_int4(weight, group_size)
        self._set(qweight, scales, bias)

    @classmethod
    def from_quantized(cls, qweight: Tensor, scales: Tensor, bias: Tensor | None = None) -> Int4Linear:
        """An Int4Linear of already-quantized weights (a quantized checkpoint's tensors)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._set(qweight, scales, bias)
        return layer

    def _set(self, qweight: Tensor, scales: Tensor, bias: Tensor | None) -> None:
        if _library() is None:
            raise ValueError("quantize='int4' needs a C compiler (cc / gcc, or $CC) on Linux to build its kernel")
        self.out_features, half = qweight.shape
        self.in_features = 2 * half
        self.group_size = self.in_features // scales.shape[1]
        self.register_buffer("qweight", qweight.to("cpu", torch.uint8).contiguous())
        self.register_buffer("scales", scales.to("cpu", torch.float32).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to("cpu", torch.float32).contiguous())

    def quantized(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """(packed uint8 [N, K/2], fp32 scales [N, K/group_size], bias or None): what a checkpoint stores."""
        return self.qweight, self.scales, self.bias

    def forward(self, x: Tensor) -> Tensor:
        return int4_linear(_library(), x, self.qweight, self.scales, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}, kernel=int4-{'vnni' if int4_fast() else 'c'}"
        )
