"""The matrix-product kernels behind the projections, as modules `encore.optimize` swaps in.

Every projection of a model is a `layers.Linear`: plain `F.linear`, what training, autograd and GPUs
use. For inference on the CPU, `encore.optimize` swaps each (and the tied output head) for the
fastest kernel measured on this kind of machine (docs/engine.md has the measurements):

- `OneDNNLinear`: fp32 through oneDNN (`mkldnn::_linear_pointwise`, the kernel torch.compile emits
  for CPU linears) on the unchanged weight. On AMD Zen it reads weights at ~36 GB/s where MKL's
  sgemv (F.linear) reads ~23 GB/s, and runs prefill's matrices at ~2x MKL's FLOP/s.
- `Int8Linear`: weights int8 per output channel (symmetric), activations quantized per call
  (dynamic), through fbgemm's VNNI kernels (`quantized::linear_dynamic`): a quarter of fp32's bytes
  per decode step, and int8 dot products for prefill. 2-9x oneDNN fp32 per projection.

Both are plain `nn.Module`s with an `in_features` / `out_features` and a readable `repr`, so a user
sees what runs; `encore.deoptimize` puts the `Linear`s back.
"""

from __future__ import annotations

import functools
import platform
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encore.model import layers, native
from encore.model.native import cpu_flags

PLAIN_TENSORS = (Tensor, nn.Parameter)  # not DTensor (FSDP2), FakeTensor (torch.compile), ...


@functools.cache
def onednn_available() -> bool:
    """oneDNN's fp32 linear is used on x86-64 (where it was measured) with a torch built with it."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018 (a build without the op raises here)
    except (AttributeError, RuntimeError):
        return False
    return True


@functools.cache
def int8_available() -> bool:
    """Whether this torch has the fbgemm / x86 dynamic-int8 linear (CPU builds on x86-64 do)."""
    engines = torch.backends.quantized.supported_engines
    return any(e in engines for e in ("x86", "fbgemm")) and hasattr(torch.ops.quantized, "linear_dynamic")


# int4's defaults, llama.cpp's Q4_1 layout: groups of 32 inputs, an fp16 scale and minimum each. Chosen by
# measurement (docs/engine.md): SmolLM2's perplexity +1.3% with the head int8, against +35% for
# symmetric groups of 128, whose decode step is 1.15x faster
DEFAULT_GROUP_SIZE = 32
DEFAULT_SYMMETRIC = False


def _has_vnni() -> bool:
    """AVX-512 VNNI / AVX-VNNI: u8 x s8 dot products accumulate in int32 without int16 saturation."""
    flags = cpu_flags()
    return "avx512_vnni" in flags or "avx_vnni" in flags


class OneDNNLinear(nn.Module):
    """y = x @ weight.T through oneDNN for fp32 CPU inference; F.linear for anything else (autograd,
    other dtypes, tensor subclasses). Holds the very `weight` Parameter it was made from."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None = None):
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.out_features, self.in_features = weight.shape

    def inference_call(self, x: Tensor) -> bool:
        """Whether this call is fp32 CPU inference on plain tensors (else: F.linear)."""
        w = self.weight
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and type(x) in PLAIN_TENSORS
            and type(w) in PLAIN_TENSORS
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
            and not torch.compiler.is_compiling()  # inductor emits its own (oneDNN) kernel for F.linear
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.inference_call(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel=onednn-fp32"


def _check_shapes(weight: Tensor, scales: Tensor, bias: Tensor | None) -> None:
    """An int8 projection's tensors where they enter: weight [N, K], scales [N], bias [N] or None (the C
    kernels read them unchecked), refused in one line naming the shapes."""
    rows = weight.shape[0] if weight.dim() == 2 else -1
    if rows < 0 or tuple(scales.shape) != (rows,) or (bias is not None and tuple(bias.shape) != (rows,)):
        bias_shape = None if bias is None else list(bias.shape)
        raise ValueError(
            f"int8 weight {list(weight.shape)} needs 2 dimensions, scales [{max(rows, 0)}] and a bias of as "
            f"many or none; got scales {list(scales.shape)}, bias {bias_shape}"
        )


class Int8Linear(nn.Module):
    bf16_many_rows = True  # many rows (a prefill) as bf16 products where the CPU has them; False: int8 rows
    """y ~= x @ weight.T with int8 weights (per output channel, symmetric) and int8 activations
    quantized per call and row (dynamic quantization), int32 accumulation, fp32 out. Inference only:
    the packed weight is not a Parameter and has no gradient.

    fbgemm's dynamic linear gives the activations one scale per call; over a prefill's rows, one token
    with massive activations (a model's first token often has them) then flattens every other row's:
    SmolLM2's perplexity went from 9.97 (fp32) to 16.4. Several rows are therefore each scaled to [-1, 1]
    before fbgemm's linear with a given activation scale (1/127) and scaled back after it (exact: a
    projection acts row by row), which makes the scale one per row (10.40; docs/engine.md) and a row's
    result independent of the rows beside it. A single row (decoding) is the dynamic linear's case
    already, and takes it (fewer ops)."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, rows_only: bool = False):
        """`rows_only`: the weight held once, as csrc/int8.c's rows, never packed for fbgemm (as
        `release_packed` leaves it; only where `rows_only_available`)."""
        super().__init__()
        w = weight.detach().to("cpu", torch.float32)
        scale = row_scales(w).double()
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # torch deprecates quantized tensors: docs/NOTES.md ("int8")
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            qweight = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
        _check_shapes(w, scale, bias)
        if rows_only:
            self._hold_rows(qweight.int_repr(), qweight.q_per_channel_scales().float(), bias)
        else:
            self._pack(qweight, bias)

    @classmethod
    def from_quantized(
        cls, qweight: Tensor, scales: Tensor, bias: Tensor | None = None, rows_only: bool = False
    ) -> Int8Linear:
        """An Int8Linear of already-quantized weights: int8 [N, K] and per-channel scales [N] (a
        quantized checkpoint's tensors); nothing is rounded again. `rows_only` as in `__init__`."""
        _check_shapes(qweight, scales, bias)
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        if rows_only:
            layer._hold_rows(qweight.to(torch.int8), scales.float(), bias)
            return layer
        zero = torch.zeros(qweight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # as in __init__
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            layer._pack(
                torch._make_per_channel_quantized_tensor(qweight.to(torch.int8), scales.double(), zero, 0), bias
            )
        return layer

    def _pack(self, qweight: Tensor, bias: Tensor | None) -> None:
        """fbgemm's packed form of a per-channel qint8 weight [N, K] (and the fp32 bias)."""
        self.out_features, self.in_features = qweight.shape
        bias = None if bias is None else bias.detach().to("cpu", torch.float32)
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self._bias = bias
        # without VNNI, fbgemm's u8 x s8 pairs can saturate int16: quantize activations to 7 bits there
        self.reduce_range = not _has_vnni()

    def _hold_rows(self, qweight: Tensor, scales: Tensor, bias: Tensor | None) -> None:
        """The weight as csrc/int8.c's rows alone (int8 [N, K], fp32 scales [N]), with no fbgemm copy."""
        self.out_features, self.in_features = qweight.shape
        self._packed = None
        self._bias = None if bias is None else bias.detach().to("cpu", torch.float32)
        self.reduce_range = False
        self._set_rows(qweight.contiguous(), scales.contiguous())

    def _set_rows(self, qweight: Tensor, scales: Tensor) -> None:
        self.register_buffer("row_weight", qweight, persistent=False)
        self.register_buffer("row_scales", scales, persistent=False)
        self.register_buffer("row_sums", qweight.sum(dim=1, dtype=torch.int32), persistent=False)

    def quantized(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """(int8 weight [N, K], fp32 per-channel scales [N], bias or None): what a checkpoint stores."""
        if self._packed is None:  # rows only (`release_packed`)
            return self.row_weight, self.row_scales, self._bias
        qweight, bias = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.int_repr(), qweight.q_per_channel_scales().float(), bias

    def release_packed(self) -> None:
        """Keep the weight once, as csrc/int8.c's rows (`rows`), without fbgemm's packed copy: one byte
        a weight less. Every call then runs encore's kernels: csrc/int8.c (VNNI; from 16 rows AMX's int8
        tiles or 48 packed rows a pass), or the bf16 products for many rows where the CPU has them.
        Only where csrc/int8.c is built with VNNI (`rows_only_available`): `encore.optimize` calls it
        there."""
        self.rows()
        self._packed = None

    def rows(self) -> tuple[Tensor, Tensor, Tensor]:
        """(int8 weight [N, K], fp32 scales [N], int32 row sums [N]): the weight as csrc/int8.c reads it,
        for the fused decoder layer (encore.model.fused). Made once and kept beside fbgemm's packed
        copy until `release_packed` drops that: non-persistent buffers."""
        if "row_weight" not in self._buffers:
            qweight, scales, _ = self.quantized()
            self._set_rows(qweight.contiguous(), scales.contiguous())
        return self.row_weight, self.row_scales, self.row_sums

    def _many(self, rows: int) -> bool:
        """Whether `rows` rows go through the bf16 products (a prefill, where the CPU has them)."""
        return rows >= MANY_ROWS and self.bf16_many_rows and int8_bf16_many_rows() and not torch.is_grad_enabled()

    def on_tiles(self, rows: int) -> bool:
        """Whether a call of `rows` rows runs on AMX's bf16 tiles in one C call (a prefill's rows): the
        path that applies an MLP activation as it writes its outputs (`act`), and reads or writes the
        rows packed (`BF16Tiles`: an MLP's hidden activations never written as fp32)."""
        return self._many(rows) and amx_bf16_rows(self.in_features, self.out_features)

    def applies_act(self, rows: int) -> bool:
        """Whether a call of `rows` rows can apply an MLP activation as it writes its outputs (`forward`'s
        `act`): on AMX's bf16 tiles (`on_tiles`), or through csrc/int8.c (its many rows on VNNI in the
        products' own epilogue)."""
        return self.on_tiles(rows) or (self._packed is None and not self._many(rows))

    def forward(self, x: Tensor | BF16Tiles, act: int = -1, tiles: bool = False) -> Tensor | BF16Tiles:
        """x [..., K] -> [..., N]. `act`, `encore.model.fused.ACT`'s number: the activation of the outputs
        in the same call, where `applies_act` (the caller checks). Where `on_tiles`: `tiles=True`, the
        outputs packed for a next projection; x may be such packed rows (-> [rows, N])."""
        if isinstance(x, BF16Tiles) or tiles or (act >= 0 and self.on_tiles(x.numel() // x.shape[-1])):
            return int8_amx_bf16(x, *self.rows()[:2], self._bias, act, tiles)
        rows = x.reshape(-1, self.in_features)
        many = self._many(rows.shape[0])
        if self._packed is None and not many:  # rows only: csrc/int8.c, each row's own int8 scale
            y = int8_rows_linear(rows, *self.rows(), self._bias, act)
            return y.view(*x.shape[:-1], self.out_features)
        if act >= 0:
            raise ValueError("Int8Linear: this call cannot apply an activation (check applies_act first)")
        if rows.shape[0] == 1:
            y = torch.ops.quantized.linear_dynamic(rows, self._packed, self.reduce_range)
            return y.view(*x.shape[:-1], self.out_features)
        if many:
            if amx_bf16_rows(self.in_features, self.out_features):  # the same product, in one C call
                return int8_amx_bf16(rows, *self.rows()[:2], self._bias).view(*x.shape[:-1], self.out_features)
            w = int8_bf16_weight(*self.rows()[:2])  # AMX / AVX512-BF16: ~2x fbgemm's products at 512 rows
            y = torch.ops.mkldnn._linear_pointwise(rows.to(torch.bfloat16), w, None, "none", [], "").float()
            y = y if self._bias is None else y.add_(self._bias)
            return y.view(*x.shape[:-1], self.out_features)
        # each row onto [-1, 1] (symmetric: one pass over the output to scale back; a row's [min, max]
        # onto 256 levels needed two and made a 512-token prefill 1.45x slower, for no measured gain)
        unit, peak = unit_rows(rows)
        levels, zero = (63, 64) if self.reduce_range else (127, 128)  # 7 bits without VNNI (see _pack)
        y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(unit, 1 / levels, zero, self._packed)
        y = y.mul_(peak) if self._bias is None else y.sub_(self._bias).mul_(peak).add_(self._bias)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        many = "" if self.bf16_many_rows else ", many rows: int8"
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel=int8-dynamic{many}"


@functools.cache
def _rows_library():
    """csrc/rows.c, built once; None where it cannot be (no C compiler, not Linux)."""
    import ctypes

    lib = native.load("rows")
    if lib is not None:
        lib.encore_int8_to_bf16.restype = ctypes.c_int
        lib.encore_int8_to_bf16.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
        lib.encore_int8_to_bf16.argtypes += [ctypes.c_void_p]
        lib.encore_int8_linear_amx_bf16.restype = ctypes.c_int
        lib.encore_int8_linear_amx_bf16.argtypes = [
            *[ctypes.c_void_p] * 2,
            *[ctypes.c_int64] * 3,
            *[ctypes.c_void_p] * 3,
        ]
        lib.encore_int8_linear_amx_bf16.argtypes += [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
        lib.encore_int8_linear_amx_bf16_available.restype = ctypes.c_int
        lib.encore_int4_linear_amx_bf16.restype = ctypes.c_int
        lib.encore_int4_linear_amx_bf16.argtypes = [
            *[ctypes.c_void_p] * 2,
            *[ctypes.c_int64] * 3,
            *[ctypes.c_void_p] * 3,
        ]
        lib.encore_int4_linear_amx_bf16.argtypes += [
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_int64,
            *[ctypes.c_void_p] * 2,
        ]
        lib.encore_unit_rows.restype = None
        lib.encore_unit_rows.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
    return lib


# rows a call from which an int8 weight goes through bf16 and oneDNN's GEMM (AMX or AVX512-BF16) instead
# of fbgemm's int8 products (as `int4.MANY_ROWS`): 1.7-1.9x fbgemm's time at 512 rows on an AMX Xeon, and
# nearer the float product (docs/results.md: SmolLM2-135M int8 perplexity +0.4% of fp32, +3.8% before)
MANY_ROWS = 32


@functools.cache
def int8_bf16_many_rows() -> bool:
    """Whether many-row int8 calls (a prefill) run as bf16 GEMMs here: csrc/rows.c built for AVX512-BF16
    and oneDNN's linear available."""
    lib = _rows_library()
    if lib is None or not onednn_available():
        return False
    w, scale, out = torch.zeros(1, 16, dtype=torch.int8), torch.ones(1), torch.empty(1, 16, dtype=torch.bfloat16)
    return lib.encore_int8_to_bf16(w.data_ptr(), scale.data_ptr(), 1, 16, out.data_ptr()) == 0


@functools.cache
def _int8_rows_library():
    """csrc/layer.c (which includes csrc/int8.c) for `encore_int8_linear`, where it is built with SIMD
    products (AVX-512 VNNI, or AVX2: the same outputs); else None."""
    import ctypes

    lib = native.load("layer")
    if lib is None:
        return None
    lib.encore_int8_has_vnni.restype = ctypes.c_int
    lib.encore_int8_has_simd.restype = ctypes.c_int
    lib.encore_int8_has_amx.restype = ctypes.c_int
    lib.encore_int8_linear.restype = ctypes.c_int
    lib.encore_int8_linear.argtypes = [ctypes.c_void_p, *[ctypes.c_int64] * 3, *[ctypes.c_void_p] * 5]
    lib.encore_int8_linear_act.restype = ctypes.c_int
    lib.encore_int8_linear_act.argtypes = [ctypes.c_void_p, *[ctypes.c_int64] * 3, *[ctypes.c_void_p] * 4]
    lib.encore_int8_linear_act.argtypes += [ctypes.c_int64, ctypes.c_void_p]
    return lib if lib.encore_int8_has_simd() else None


def rows_only_available() -> bool:
    """Whether an `Int8Linear` can run every call from its int8 rows alone (`release_packed`): csrc/int8.c
    built with VNNI, whose many-row products (AMX's int8 tiles, or VNNI against 48 packed rows at a
    time) beat fbgemm's packed GEMM over a prefill's rows (docs/engine.md), and the bf16 products where
    the CPU has them. With AVX2 alone a decode step's few rows run csrc/int8.c, a prefill's fbgemm."""
    lib = _int8_rows_library()
    return lib is not None and bool(lib.encore_int8_has_vnni())


def int8_rows_linear(
    rows: Tensor, weight: Tensor, scales: Tensor, sums: Tensor, bias: Tensor | None, act: int = -1
) -> Tensor:
    """act(rows [M, K] fp32 @ (weight * scales).T (+ bias)) -> [M, N] through csrc/int8.c: each row
    quantized to int8 with its own scale, int32 products (VNNI; from 16 rows AMX's tiles or 16 packed
    rows a `vpdpbusd`, whose epilogue applies `act`, `encore.model.fused.ACT`'s number; -1: none)."""
    rows = rows.contiguous()
    out = torch.empty(rows.shape[0], weight.shape[0])
    status = _int8_rows_library().encore_int8_linear_act(
        rows.data_ptr(), rows.shape[0], weight.shape[1], weight.shape[0], weight.data_ptr(), scales.data_ptr(),
        sums.data_ptr(), None if bias is None else bias.data_ptr(), act, out.data_ptr(),
    )  # fmt: skip
    if status:
        raise MemoryError("csrc/int8.c: out of memory for a call's int8 activations")
    return out


@functools.cache
def _amx_bf16() -> bool:
    lib = _rows_library()
    return lib is not None and bool(lib.encore_int8_linear_amx_bf16_available())


def amx_bf16_rows(in_features: int, out_features: int) -> bool:
    """Whether a many-row int8 product of this shape runs on AMX's bf16 tiles here (csrc/rows.c's
    `encore_int8_linear_amx_bf16`: a CPU with AMX, inputs a multiple of 32, outputs a multiple of 16).
    Against unpacking the weight to bf16 and oneDNN's GEMM, on this 2-vCPU Xeon (`python
    examples/prefill_measurements.py amx`): 1.2-1.9x at 128-1024 rows; within 0.8-1.1x of oneDNN's GEMM
    over a bf16 weight it had been given (no unpacking), at the cost of no bf16 copy of the weight."""
    return in_features % 32 == 0 and out_features % 16 == 0 and _amx_bf16()


@dataclass
class BF16Tiles:
    """Rows packed as bf16 in the first operand's tiles of csrc/rows.c's AMX product (per 16 rows and 32
    columns, 1 KiB row-major; rows past `rows` zero): what one `int8_amx_bf16` / `int4_amx_bf16` call
    writes for the next to read (an MLP's hidden activations: no fp32 copy, no packing pass)."""

    data: Tensor  # int16 [rows rounded up to 16, width], tile by tile
    rows: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.data.shape[1])

    def numel(self) -> int:
        return self.rows * self.data.shape[1]


def _amx_call(fn, rows: Tensor | BF16Tiles, weight: tuple[int, int], weight_args: list, bias, act: int, tiles: bool):
    """One csrc/rows.c AMX product over a [N, K] `weight`: fp32 rows or packed `BF16Tiles` in; fp32 [M, N]
    or `BF16Tiles` out."""
    n, in_features = weight
    packed = rows if isinstance(rows, BF16Tiles) else None
    x = None if packed is not None else rows.reshape(-1, rows.shape[-1]).contiguous()  # [M, K]
    m, k = (packed.rows, packed.data.shape[1]) if packed is not None else x.shape
    if k != in_features:
        raise ValueError(f"rows of {k} inputs for a [{n}, {in_features}] weight")
    out = None if tiles else torch.empty(m, n)
    out_tiles = BF16Tiles(torch.empty((m + 15) // 16 * 16, n, dtype=torch.int16), m) if tiles else None
    status = fn(
        None if x is None else x.data_ptr(), None if packed is None else packed.data.data_ptr(), m, k, n,
        *weight_args, None if bias is None else bias.data_ptr(), act,
        None if out is None else out.data_ptr(), None if out_tiles is None else out_tiles.data.data_ptr(),
    )  # fmt: skip
    if status == -2:
        raise ValueError(f"no AMX bf16 product for a [{n}, {k}] weight here (amx_bf16_rows says where)")
    if status:
        raise MemoryError("csrc/rows.c: out of memory for a prefill's bf16 activations")
    return out_tiles if tiles else out


def int8_amx_bf16(
    rows: Tensor | BF16Tiles, weight: Tensor, scales: Tensor, bias: Tensor | None, act: int = -1, tiles: bool = False
) -> Tensor | BF16Tiles:
    """rows [M, K] fp32 (or packed) @ bf16(weight * scales).T (+ bias) -> [M, N] fp32 on AMX's bf16 tiles:
    the bf16 GEMM path's product without writing the bf16 weight out or rounding the output to bf16.
    `act`: an MLP activation applied as the outputs are written (`encore.model.fused.ACT`'s numbers; -1
    none); `tiles`: the outputs as `BF16Tiles` for the next projection."""
    args = [weight.data_ptr(), scales.data_ptr()]
    return _amx_call(_rows_library().encore_int8_linear_amx_bf16, rows, weight.shape, args, bias, act, tiles)


def int4_amx_bf16_rows(in_features: int, out_features: int, group_size: int) -> bool:
    """Whether a many-row int4 product of this shape runs on AMX's bf16 tiles here (`int4_amx_bf16`)."""
    return in_features % 64 == 0 and group_size % 32 == 0 and out_features % 16 == 0 and _amx_bf16()


def int4_amx_bf16(
    rows: Tensor | BF16Tiles,
    qweight: Tensor,
    scales: Tensor,
    mins: Tensor | None,
    bias: Tensor | None,
    act: int = -1,
    tiles: bool = False,
) -> Tensor | BF16Tiles:
    """`int8_amx_bf16` for `Int4Linear`'s weight: packed nibbles, fp16 `scales` (and `mins`) unpacked into
    the tiles a block at a time."""
    k = 2 * qweight.shape[1]
    args = [qweight.data_ptr(), scales.data_ptr(), None if mins is None else mins.data_ptr(), k // scales.shape[1]]
    shape = (qweight.shape[0], k)
    return _amx_call(_rows_library().encore_int4_linear_amx_bf16, rows, shape, args, bias, act, tiles)


def int8_bf16_weight(weight: Tensor, scales: Tensor) -> Tensor:
    """The bf16 weight [N, K] an int8 `weight` with per-row `scales` stands for, in one C pass."""
    out = torch.empty(weight.shape, dtype=torch.bfloat16)
    _rows_library().encore_int8_to_bf16(weight.data_ptr(), scales.data_ptr(), *weight.shape, out.data_ptr())
    return out


def unit_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    """rows [M, K] -> (rows / peak, peak [M, 1]), peak = max |row| (at least 1e-12): each row onto
    [-1, 1], in one C pass over fp32 CPU rows (csrc/rows.c; ~3x the eager abs, amax and division),
    eagerly otherwise."""
    lib = _rows_library() if rows.dtype == torch.float32 and rows.device.type == "cpu" else None
    if lib is None or (torch.is_grad_enabled() and rows.requires_grad) or type(rows) not in PLAIN_TENSORS:
        peak = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12)  # [M, 1]
        return rows / peak, peak
    rows = rows.contiguous()
    unit, peak = torch.empty_like(rows), torch.empty(rows.shape[0], 1)
    lib.encore_unit_rows(rows.data_ptr(), rows.shape[0], rows.shape[1], unit.data_ptr(), peak.data_ptr())
    return unit, peak


def bytes_per_weight(
    quantize: str | None,
    dtype: torch.dtype = torch.float32,
    group_size: int = DEFAULT_GROUP_SIZE,
    symmetric: bool = DEFAULT_SYMMETRIC,
) -> float:
    """Bytes one weight costs a decode step in each kernel (scales included): what the bench's cost
    model and roofline price. int4: half a byte plus an fp16 scale (and an fp16 minimum when
    asymmetric) per `group_size` weights."""
    if quantize == "int4":
        return 0.5 + (2 if symmetric else 4) / group_size
    if quantize == "int8":
        return 1.0
    if quantize is None:
        return float(dtype.itemsize)
    raise ValueError(f"quantize must be None, 'int8' or 'int4', got {quantize!r}")


def row_scales(w: Tensor) -> Tensor:
    """fp32 [N]: each row's scale to int8, absmax / 127 (an int8 weight's per output channel)."""
    return (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)


class Int8Embedding(nn.Module):
    """A token table as int8 rows with one fp32 scale each (absmax / 127, as CTranslate2's and llama.cpp's
    int8 embeddings): a lookup gathers each row's bytes and scales them back. A quarter of the fp32
    table's memory (NLLB's 256k x 1024: 1 GiB -> 256 MiB). What the original module does after its lookup
    stays: `ScaledEmbedding`'s sqrt(d) and `EoiEmbedding`'s own end-of-image vector.

    `weight` is what callers read for the model's device, dtype and table shape: a [V, D] fp32 view of
    one zero row, never the table's values (`quantized()` gives those)."""

    def __init__(self, qweight: Tensor, scales: Tensor, like: nn.Embedding, eoi_embedding: Tensor | None = None):
        super().__init__()
        self.register_buffer("qweight", qweight)  # int8 [V, D]
        self.register_buffer("scales", scales)  # fp32 [V]
        V, D = qweight.shape
        self.num_embeddings, self.embedding_dim = V, D
        self.factor = D**0.5 if isinstance(like, layers.ScaledEmbedding) else None
        self.eoi_id = getattr(like, "eoi_id", None)
        if self.eoi_id is not None:
            self.register_buffer("eoi_embedding", eoi_embedding.detach().float().clone())
        self.weight = torch.zeros(1, D, device=qweight.device).expand(V, D)

    @classmethod
    @torch.no_grad()
    def quantize(cls, embedding: nn.Embedding) -> Int8Embedding:
        w = embedding.weight.detach().float()
        scales = row_scales(w)
        qweight = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(qweight, scales, embedding, getattr(embedding, "eoi_embedding", None))

    def quantized(self) -> tuple[Tensor, Tensor, None]:
        return self.qweight, self.scales, None

    def forward(self, ids: Tensor) -> Tensor:
        x = F.embedding(ids, self.qweight).float() * self.scales[ids].unsqueeze(-1)  # [..., D]
        if self.factor is not None:
            x = x * torch.tensor(self.factor, dtype=x.dtype)
        if self.eoi_id is not None:
            x = torch.where((ids == self.eoi_id)[..., None], self.eoi_embedding, x)
        return x

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"
