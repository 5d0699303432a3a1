"""int4 weight-only projections for CPU inference: `Int4Linear`, what `encore.optimize(quantize="int4")` swaps in.

Weights are 4-bit, in groups of `group_size` inputs (32, or a multiple of 64), each group with an fp16
scale and, asymmetric (the default), an fp16 minimum: w ~= q * scale + min, the group's range in 16
levels (llama.cpp's Q4_1); symmetric: w ~= (q - 8) * scale, the largest magnitude at -8 (Q4_0). About
0.6 of int8's bytes per decode step at the default groups of 32. Activations are quantized to int8
per row and per group at each call, and the products run as u8 x s8 dot products (AVX-512 VNNI) in
a small C kernel (`csrc/int4.c`), compiled on first use with the machine's C compiler and cached
under `$ENCORE_CACHE/kernels`. Measurements, the choice of defaults and the alternatives tried
(torch's `_weight_int4pack_mm_for_cpu`, torchao, onnxruntime's MatMulNBits) are in docs/engine.md.

    qweight, scales, mins = quantize_int4(weight)                     # uint8 [N, K/2], fp16 [N, K/32] x 2
    qweight, scales, mins = quantize_int4(weight, 128, symmetric=True)  # mins None
    layer = Int4Linear.from_quantized(qweight, scales, bias, mins)      # what a quantized checkpoint loads
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch import Tensor, nn

from encore.model import native
from encore.model.kernels import (
    DEFAULT_GROUP_SIZE,
    DEFAULT_SYMMETRIC,
    BF16Tiles,
    int4_amx_bf16,
    int4_amx_bf16_rows,
    onednn_available,
)
from encore.model.native import FLAGS

CHUNK = 64  # inputs per 32 packed bytes: the kernel's unit, so the inputs are a multiple of it


def valid_group_size(group_size: int) -> bool:
    """32 (half a chunk, llama.cpp's block), or a positive multiple of 64."""
    return group_size == 32 or (group_size > 0 and group_size % CHUNK == 0)


def int4_divides(in_features: int, group_size: int) -> bool:
    """Whether a projection with `in_features` inputs can be held in int4 groups of `group_size`."""
    return valid_group_size(group_size) and in_features % CHUNK == 0 and in_features % group_size == 0


def quantize_int4(
    weight: Tensor, group_size: int = DEFAULT_GROUP_SIZE, symmetric: bool = DEFAULT_SYMMETRIC
) -> tuple[Tensor, Tensor, Tensor | None]:
    """weight [N, K] -> (qweight uint8 [N, K/2] in the kernel's nibble order, scales fp16 [N, K/group_size],
    mins fp16 [N, K/group_size], or None when `symmetric`). The levels are set with the fp16 scales and
    mins the kernel reads."""
    n, k = weight.shape
    if not int4_divides(k, group_size):
        raise ValueError(
            f"int4: {k} input features do not divide into groups of {group_size} (group_size must be 32 or a "
            f"multiple of {CHUNK} dividing the input features, which must be a multiple of {CHUNK})"
        )
    w = weight.detach().to("cpu", torch.float32).reshape(n, k // group_size, group_size)
    if symmetric:
        extreme = w.gather(2, w.abs().argmax(dim=2, keepdim=True))  # the signed value of largest magnitude
        scale, low = (extreme / -8.0).half(), None
        inverse = torch.where(scale == 0, 0.0, 1.0 / scale.float())
        q = w * inverse + 8.0
    else:  # the group's [min, max] in 16 levels
        low = w.amin(dim=2, keepdim=True).half()
        scale = ((w.amax(dim=2, keepdim=True) - low.float()) / 15.0).half()
        q = (w - low.float()) * torch.where(scale == 0, 0.0, 1.0 / scale.float())
    q = q.round().clamp(0, 15).to(torch.uint8).reshape(n, k // CHUNK, 2, CHUNK // 2)
    qweight = q[:, :, 0] | (q[:, :, 1] << 4)  # byte i of a chunk: inputs i (low nibble) and i + 32 (high)
    groups = (n, k // group_size)
    mins = None if low is None else low.reshape(groups).contiguous()
    return qweight.reshape(n, k // 2).contiguous(), scale.reshape(groups).contiguous(), mins


def dequantize_int4(qweight: Tensor, scales: Tensor, mins: Tensor | None = None) -> Tensor:
    """The fp32 weight [N, K] that int4 `qweight` / `scales` (/ `mins`: asymmetric) stand for."""
    n, half = qweight.shape
    k = 2 * half
    packed = qweight.reshape(n, k // CHUNK, 1, CHUNK // 2)
    q = torch.cat([packed & 0x0F, packed >> 4], dim=2).reshape(n, -1, k // scales.shape[1]).float()
    scales = scales.float()
    low = -8.0 * scales if mins is None else mins.float()
    return (q * scales.unsqueeze(-1) + low.unsqueeze(-1)).reshape(n, k)


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernel (built once per source, compiler, flags and CPU; cached), or None where no C
    compiler is found or it fails to build."""
    path = build_kernel(FLAGS)
    return None if path is None else open_kernel(path)


def build_kernel(flags: list[str]) -> Path | None:
    """Compile csrc/int4.c with `flags` (`encore.model.native`); its path, or None."""
    return native.build("int4", flags)


def open_kernel(path: Path) -> ctypes.CDLL:
    """Load a built kernel. After torch: the libgomp torch loaded (same soname) is the one it uses, so
    its threads are torch's threads."""
    lib = ctypes.CDLL(str(path))
    lib.encore_int4_linear.restype = ctypes.c_int
    lib.encore_int4_linear.argtypes = [ctypes.c_void_p, *[ctypes.c_int64] * 3, *[ctypes.c_void_p] * 3]
    lib.encore_int4_linear.argtypes += [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    lib.encore_int4_has_vnni.restype = ctypes.c_int
    lib.encore_int4_simd.restype = ctypes.c_int
    lib.encore_int4_to_fp32.restype = None
    lib.encore_int4_to_fp32.argtypes = [*[ctypes.c_void_p] * 3, *[ctypes.c_int64] * 3, ctypes.c_void_p]
    lib.encore_int4_to_bf16.restype = ctypes.c_int
    lib.encore_int4_to_bf16.argtypes = [*[ctypes.c_void_p] * 3, *[ctypes.c_int64] * 3, ctypes.c_void_p]
    return lib


def int4_linear(
    lib: ctypes.CDLL, x: Tensor, qweight: Tensor, scales: Tensor, bias: Tensor | None, mins: Tensor | None = None
) -> Tensor:
    """x [..., K] fp32 -> [..., N] through kernel `lib` (contiguous uint8 / fp32 tensors on the CPU)."""
    return _call(lib.encore_int4_linear, x, qweight, scales, mins, bias)


def _call(fn, x: Tensor, qweight: Tensor, scales: Tensor, mins: Tensor | None, bias: Tensor | None) -> Tensor:
    # the decode step makes ~70 of these calls: no more tensor ops around the kernel than needed
    n, k = qweight.shape[0], x.shape[-1]
    if x.dtype != torch.float32 or not x.is_contiguous():
        x = x.to(torch.float32).contiguous()
    y = torch.empty(*x.shape[:-1], n)
    group = k // scales.shape[1]
    if fn(x.data_ptr(), x.numel() // k, k, n, qweight.data_ptr(), scales.data_ptr(),
          None if mins is None else mins.data_ptr(), group, None if bias is None else bias.data_ptr(),
          y.data_ptr()):  # fmt: skip
        raise MemoryError("int4 linear: out of memory for the activation workspace")
    return y


def int4_available() -> bool:
    """Whether the int4 kernel could be built here (a C compiler on Linux)."""
    return _library() is not None


def int4_fast() -> bool:
    """Whether the kernel runs SIMD products: AVX-512 VNNI or AVX2 (otherwise plain C: correct, slow)."""
    return int4_simd() != "c"


def int4_simd() -> str:
    """Which products the kernel runs here: "vnni", "avx2" or "c" (plain C)."""
    lib = _library()
    return ("c", "avx2", "vnni")[lib.encore_int4_simd()] if lib is not None else "c"


# rows a call from which the weight goes through bf16 and oneDNN's GEMM instead of the int4 products:
# SmolLM2-360M's 2560 x 960 and 960 x 2560 at 512 rows 3.8 / 3.5 ms against 10.8 / 11.4, at 64 rows
# 1.8-2.8x, at 32 1.2-1.7x, at 16 the products are as fast (relative error 0.0029 against 0.0053)
MANY_ROWS = 32
# rows a call from which, on a CPU without bf16 products, the weight is unpacked to fp32 and oneDNN's fp32
# GEMM runs the rows: 0.31-0.58x the int4 products' time from 128 rows on an AVX-512 VNNI Xeon without
# BF16, 0.56-0.83x as an AVX2 CPU; at 32 rows 1.08-1.17x (docs/engine.md's int4 section)
FP32_MANY_ROWS = 64


@functools.cache
def bf16_many_rows() -> bool:
    """Whether many-row calls (a prefill) run as bf16 GEMMs here: csrc/int4.c built for AVX512-BF16,
    and oneDNN's fp32 / bf16 linear available."""
    lib = _library()
    if lib is None or not onednn_available():
        return False
    out = torch.empty(1, CHUNK, dtype=torch.bfloat16)
    qweight, scales = torch.zeros(1, CHUNK // 2, dtype=torch.uint8), torch.ones(1, 1, dtype=torch.float16)
    return lib.encore_int4_to_bf16(qweight.data_ptr(), scales.data_ptr(), None, 1, CHUNK, CHUNK, out.data_ptr()) == 0


def unpacked_weight(
    lib: ctypes.CDLL, qweight: Tensor, scales: Tensor, mins: Tensor | None, dtype: torch.dtype
) -> Tensor:
    """The weight [N, K] int4 `qweight` / `scales` (/ `mins`) stand for, in one C pass, as bf16
    (`encore_int4_to_bf16`: rounded to nearest even) or fp32 (`encore_int4_to_fp32`: exactly)."""
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    out = torch.empty(n, k, dtype=dtype)
    unpack = {torch.bfloat16: lib.encore_int4_to_bf16, torch.float32: lib.encore_int4_to_fp32}[dtype]
    unpack(qweight.data_ptr(), scales.data_ptr(), None if mins is None else mins.data_ptr(), n, k,
           k // scales.shape[1], out.data_ptr())  # fmt: skip
    return out


class Int4Linear(native.Handles, nn.Module):
    """y ~= x @ weight.T with int4 weights (groups of `group_size` inputs, fp16 scales; symmetric, or
    with fp16 mins too) and int8 activations quantized per call, row and group; fp32 in and out. A call
    of `MANY_ROWS` rows or more (a prefill) on a CPU with AVX512-BF16 multiplies the weight unpacked to
    bf16 through oneDNN's bf16 GEMM instead (activations and outputs rounded to bf16: finer than the
    products' int8 activations); on a CPU without bf16 products a call of `FP32_MANY_ROWS` rows or more
    multiplies the weight unpacked to fp32 through oneDNN's fp32 GEMM. Inference only."""

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None = None,
        group_size: int = DEFAULT_GROUP_SIZE,
        symmetric: bool = DEFAULT_SYMMETRIC,
    ):
        super().__init__()
        qweight, scales, mins = quantize_int4(weight, group_size, symmetric)
        self._set(qweight, scales, bias, mins)

    @classmethod
    def from_quantized(
        cls, qweight: Tensor, scales: Tensor, bias: Tensor | None = None, mins: Tensor | None = None
    ) -> Int4Linear:
        """An Int4Linear of already-quantized weights (a quantized checkpoint's tensors)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._set(qweight, scales, bias, mins)
        return layer

    def _set(self, qweight: Tensor, scales: Tensor, bias: Tensor | None, mins: Tensor | None) -> None:
        if _library() is None:
            raise ValueError("quantize='int4' needs a C compiler (cc / gcc, or $CC) on Linux to build its kernel")
        self.out_features, half = qweight.shape
        self.in_features = 2 * half
        self.group_size = self.in_features // scales.shape[1]
        if mins is not None and mins.shape != scales.shape:
            raise ValueError(f"int4: mins have shape {tuple(mins.shape)}, scales {tuple(scales.shape)}")
        self.register_buffer("qweight", qweight.to("cpu", torch.uint8).contiguous())
        self.register_buffer("scales", scales.to("cpu", torch.float16).contiguous())
        self.register_buffer("mins", None if mins is None else mins.to("cpu", torch.float16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to("cpu", torch.float32).contiguous())
        self._bind()

    _handles = ("_fn", "_lib")

    def _bind(self) -> None:
        self._lib = _library()
        self._fn = self._lib.encore_int4_linear
        self._many = bf16_many_rows()
        self._amx = self._many and int4_amx_bf16_rows(self.in_features, self.out_features, self.group_size)
        self._fp32_many = not self._many and onednn_available()

    def _apply(self, fn, recurse: bool = True):
        """`Module.to(dtype)` / `.float()` cast floating buffers; the fp16 scales and minimums are the
        kernel's format, not a dtype to follow (`encore.optimize` of a loaded int4 checkpoint moved them
        to fp32, which the kernel then read as fp16 bits), so they are left as they are."""
        order = list(self._buffers)
        kept = {name: self._buffers.pop(name) for name in ("scales", "mins")}
        try:
            super()._apply(fn, recurse)
        finally:
            self._buffers.update(kept)
            self._buffers.update([(name, self._buffers.pop(name)) for name in order])  # the original order
        return self

    @property
    def symmetric(self) -> bool:
        return self.mins is None

    def quantized(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """(packed uint8 [N, K/2], fp16 scales [N, K/group_size], bias or None): what a checkpoint stores
        (beside `mins` when asymmetric)."""
        return self.qweight, self.scales, self.bias

    def on_tiles(self, rows: int) -> bool:
        """Whether a call of `rows` rows runs on AMX's bf16 tiles in one C call (as `Int8Linear.on_tiles`)."""
        return self._amx and rows >= MANY_ROWS

    def forward(self, x: Tensor | BF16Tiles, act: int = -1, tiles: bool = False) -> Tensor | BF16Tiles:
        """x [..., K] -> [..., N]; `act`, `tiles` and packed x as `Int8Linear.forward`'s (where `on_tiles`)."""
        b = self._buffers  # (not four trips through nn.Module.__getattr__: ~70 calls a decode step)
        if isinstance(x, BF16Tiles) or act >= 0 or tiles:
            return int4_amx_bf16(x, b["qweight"], b["scales"], b["mins"], b["bias"], act, tiles)
        if self._many and x.numel() >= MANY_ROWS * self.in_features and x.dtype == torch.float32:
            if self._amx:  # the same product in one C call, the weight unpacked a block at a time
                y = int4_amx_bf16(x.reshape(-1, self.in_features), b["qweight"], b["scales"], b["mins"], b["bias"])
                return y.view(*x.shape[:-1], self.out_features)
            w = unpacked_weight(self._lib, b["qweight"], b["scales"], b["mins"], torch.bfloat16)
            y = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), w, None, "none", [], "").float()
            return y if b["bias"] is None else y.add_(b["bias"])
        if self._fp32_many and x.numel() >= FP32_MANY_ROWS * self.in_features and x.dtype == torch.float32:
            w = unpacked_weight(self._lib, b["qweight"], b["scales"], b["mins"], torch.float32)  # (no bf16 products)
            return torch.ops.mkldnn._linear_pointwise(x, w, b["bias"], "none", [], "")
        return _call(self._fn, x, b["qweight"], b["scales"], b["mins"], b["bias"])

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}{'' if self.symmetric else ', asymmetric'}, "
            f"kernel=int4-{int4_simd()}"
        )
