"""csrc/layer.c as ctypes sees it: its `Proj`, `Norm` and `Layer` structures and the library (which
includes csrc/decode.c, fp32.c, int4.c and int8.c), built once per set of compiler flags. What the fused
decoder layer (`encore.model.fused_layer`) and the few-row projections (`encore.model.fused`'s
`FusedLinear`, `encore.model.fused_rows`) call."""

from __future__ import annotations

import ctypes
import functools

from encore.model import native

_I64, _PTR, _F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float


class Proj(ctypes.Structure):  # a projection: an Int4Linear's tensors, an Int8Linear's rows(), or fp32
    _fields_ = [("bits", _I64), *((name, _PTR) for name in ("w", "scales", "mins", "sums", "bias"))]
    _fields_ += [("N", _I64), ("K", _I64), ("group", _I64)]


class Norm(ctypes.Structure):  # a block's norm: its scale (None: the block has none) and LayerNorm's bias
    _fields_ = [("w", _PTR), ("b", _PTR)]


NORMS = ("attn_norm", "post_attn_norm", "cross_norm", "post_cross_norm", "mlp_norm", "post_mlp_norm")
HEAD_NORMS = ("q_norm", "k_norm", "cross_q_norm")  # per-head RMSNorms (Qwen3, Gemma 3): their scales
PROJS = ("qkv", "out", "cross_q", "cross_out", "up", "down")


class Layer(ctypes.Structure):
    _fields_ = [
        *((name, _I64) for name in ("D", "H", "KH", "Dh", "F", "gated", "act", "cross", "merged")),
        *((name, _I64) for name in ("layernorm", "post", "rope")),
        *((name, _F32) for name in ("eps", "scale", "softcap", "cross_scale", "cross_softcap")),
        *((name, Norm) for name in NORMS),
        *((name, _PTR) for name in HEAD_NORMS),
        *((name, Proj) for name in PROJS),
    ]


@functools.cache
def library(flags: tuple[str, ...] = tuple(native.FLAGS)) -> ctypes.CDLL | None:
    """csrc/layer.c, built once per `flags`; None where it cannot be."""
    lib = native.load("layer", list(flags))
    if lib is None:
        return None
    lib.encore_decode_layer.restype = ctypes.c_int
    lib.encore_decode_layer.argtypes = [ctypes.POINTER(Layer), _PTR, _I64, _PTR, _PTR, _PTR, *[_I64] * 3, _PTR]
    lib.encore_decode_layer.argtypes += [*[_I64] * 3, _PTR, _I64, _PTR, _I64]  # v, length, T, mask, mask_b
    lib.encore_decode_layer.argtypes += [_PTR, _I64, _I64]  # bias, bias_b, bias_h
    lib.encore_decode_layer.argtypes += [_PTR, *[_I64] * 3, _PTR, *[_I64] * 3]  # cross K, V
    lib.encore_decode_layer.argtypes += [_I64, _PTR, _I64, _PTR, _I64]  # S, cmask, cmask_b, crows, kv16
    lib.encore_int8_has_vnni.restype = ctypes.c_int
    lib.encore_int8_has_simd.restype = ctypes.c_int
    lib.encore_int8_has_amx.restype = ctypes.c_int
    lib.encore_fp32_linear.restype = None
    lib.encore_fp32_linear.argtypes = [_PTR, *[_I64] * 3, _PTR, _PTR, _PTR]
    return lib
