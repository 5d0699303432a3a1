"""Fused fp32 CPU modules for inference, what `encore.optimize` swaps in on the CPU beside the
projection kernels: `FusedRMSNorm` (one pass instead of ~8 aten calls), `FusedAttend` (attention for
one query per head, the decode step's, in one call instead of SDPA's flash kernel; a prefill's with
bf16 products where asked), `FusedSelfAttention` (the decode step's q/k norms, RoPE and cache write in
one call), `FusedMLP` (an MLP's activation in one pass) and `FusedDecoderLayer` (a whole decoder
layer's decode step in one call; fp32, int4 or int8 projections).
They run `csrc/decode.c`, `csrc/attend.c` and `csrc/layer.c`, built on first use
(`encore.model.native`). Measured in docs/engine.md.

    swaps = fuse(model)    # [(parent, name, original)]: what encore.deoptimize puts back, in reverse
"""

from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encore.model import native
from encore.model.int4 import Int4Linear
from encore.model.kernels import PLAIN_TENSORS, Int8Linear, OneDNNLinear
from encore.model.layers import (
    MLP,
    Attend,
    DecoderLayer,
    MergedAttention,
    MergedDecoderLayer,
    OffsetRMSNorm,
    RMSNorm,
    Rope,
    SelfAttention,
    SoftCap,
    attend,
    gelu_tanh,
)

_I64, _PTR, _F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float


@functools.cache
def _library() -> ctypes.CDLL | None:
    """csrc/decode.c, built once (cached); None where no C compiler is found or it fails to build."""
    lib = native.load("decode")
    if lib is None:
        return None
    lib.encore_rms_norm.restype = None
    lib.encore_rms_norm.argtypes = [_PTR, _I64, _I64, _I64, _PTR, _F32, _PTR]
    lib.encore_attend_one.restype = ctypes.c_int
    lib.encore_attend_one.argtypes = [_PTR, *[_I64] * 7, _PTR, *[_I64] * 3, _PTR, *[_I64] * 3, _PTR, _I64]
    lib.encore_attend_one.argtypes += [_PTR, _F32, _F32, _PTR, _PTR, _I64]  # rows, scale, softcap, out, lse, kv16
    lib.encore_rope_store.restype = None
    lib.encore_rope_store.argtypes = [_PTR, *[_I64] * 5, *[_PTR] * 4, _F32, _PTR, *[_I64] * 3, _PTR, *[_I64] * 3]
    lib.encore_rope_store.argtypes += [_PTR, _I64, _PTR, _I64]
    lib.encore_glu_rows.restype = None
    lib.encore_glu_rows.argtypes = [_PTR, *[_I64] * 4, _PTR]
    lib.encore_act_rows.restype = None
    lib.encore_act_rows.argtypes = [_PTR, *[_I64] * 3]
    lib.encore_norm_rope_rows.restype = None
    lib.encore_norm_rope_rows.argtypes = [_PTR, *[_I64] * 7, _PTR, _PTR, _I64, _PTR, _PTR, _F32, _PTR, _PTR]
    return lib


@functools.cache
def _attend_library(flags: tuple[str, ...] = tuple(native.FLAGS)) -> ctypes.CDLL | None:
    """csrc/attend.c (a prefill's attention with bf16 products), built once per `flags`; None where it
    cannot be built or the CPU (or `flags`) has no AVX512-BF16."""
    lib = native.load("attend", list(flags))
    if lib is None or not lib.encore_attend_bf16_built():
        return None
    lib.encore_attend_bf16.restype = ctypes.c_int
    lib.encore_attend_bf16.argtypes = [_PTR, *[_I64] * 9, _PTR, *[_I64] * 3, _PTR, *[_I64] * 3, _PTR, *[_I64] * 3]
    lib.encore_attend_bf16.argtypes += [_F32, _F32, _PTR]
    return lib


def bf16_attention_available() -> bool:
    """Whether a prefill's attention can run with bf16 products here (csrc/attend.c: a C compiler on
    Linux and a CPU with AVX512-BF16, e.g. AMD Zen 4, Intel Sapphire Rapids)."""
    return _attend_library() is not None


def fused_available() -> bool:
    """Whether the fused kernels could be built here (a C compiler on Linux)."""
    return _library() is not None


def _mask_rows(mask: Tensor | None, keys: int) -> tuple[Tensor | None, int, int]:
    """A boolean mask [B | 1, 1, T | 1, keys] as the C kernels read it: its rows of `keys` bytes (a tensor
    the caller keeps through the call; None for no mask), the batch stride and the row stride (0 where
    the mask broadcasts)."""
    if mask is None:
        return None, 0, 0
    rows = mask.reshape(mask.shape[0], -1, keys)  # [B | 1, T | 1, keys]
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    return rows, rows.stride(0) if rows.shape[0] > 1 else 0, rows.stride(1) if rows.shape[1] > 1 else 0


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _adopt(cls: type[nn.Module], module: nn.Module) -> nn.Module:
    """A `cls` (a fused subclass of `module`'s class) holding `module`'s very submodules, parameters and
    public attributes: nothing copied, so the state dict and the weights stay the module's."""
    fused = cls.__new__(cls)
    nn.Module.__init__(fused)
    for key, value in vars(module).items():
        if not key.startswith("_"):
            setattr(fused, key, value)
    for name, child in module.named_children():
        setattr(fused, name, child)
    return fused


class FusedRMSNorm(native.Handles, nn.Module):
    """x / rms(x) * scale for fp32 CPU inference, in one pass. Holds the norm's own `weight` (so the
    state dict is the norm's) and `scale`, the factor it applies: w, or 1 + w for Gemma's offset norm
    (folded once, when made)."""

    def __init__(self, norm: RMSNorm):
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.eps
        scale = norm.weight + 1.0 if isinstance(norm, OffsetRMSNorm) else norm.weight
        self.register_buffer("scale", scale.detach().to("cpu", torch.float32).contiguous(), persistent=False)
        self._bind()

    def _bind(self) -> None:
        self._lib = _library()

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        dim = x.shape[-1]
        scale = self._buffers["scale"]  # (not through nn.Module.__getattr__: ~30 norms a decode step)
        self._lib.encore_rms_norm(x.data_ptr(), x.numel() // dim, dim, dim, scale.data_ptr(), self.eps, y.data_ptr())
        return y

    def extra_repr(self) -> str:
        return f"{self.scale.shape[0]}, eps={self.eps}, kernel=c"


# fp32 layers in one call: 1.20-1.45x the modules at 1 row a step, 1.09-1.24x at 4, 0.88-1.09x at 16
# (T5Gemma 2 270M, SmolLM2-360M shapes; oneDNN's GEMM wins once the weights are reused enough)
FP32_MAX_ROWS = 8


class FusedLinear(native.Handles, OneDNNLinear):
    """`OneDNNLinear` whose products for up to FP32_MAX_ROWS rows (a decode step's output head) stream the
    weights through csrc/fp32.c: 1.12-1.19x oneDNN's read rate on T5Gemma 2's 262k-word head, 1.25x on
    SmolLM2's 49k (docs/engine.md). More rows (a prefill) run oneDNN. Holds the very weight."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None = None):
        super().__init__(weight, bias)
        self._bind()

    def _bind(self) -> None:
        self._lib = _layer_library()

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        w = self.weight
        if rows > FP32_MAX_ROWS or not self.inference_call(x) or not w.is_contiguous():
            return super().forward(x)
        x = x.contiguous()
        y = torch.empty(*x.shape[:-1], self.out_features)
        self._lib.encore_fp32_linear(
            x.data_ptr(), rows, self.in_features, self.out_features, w.data_ptr(), _ptr(self.bias), y.data_ptr()
        )
        return y

    def extra_repr(self) -> str:
        few = f"up to {FP32_MAX_ROWS} rows: c-fp32"
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel=onednn-fp32, {few}"


class FusedAttend(native.Handles, Attend):
    """`Attend` through encore's C kernels: one query per head (decoding) in one fp32 call (GQA, boolean
    key masks, a query scale, soft-capped logits); with `bf16_prefill`, many queries (a prefill, an
    encoder) through csrc/attend.c's bf16 products, fp32 accumulation and softmax (~4x SDPA's flash
    kernel on a T5Gemma 2 encoder layer; docs/engine.md). Anything else runs `attend`."""

    _handles = ("_lib", "_prefill_lib")

    def __init__(self, bf16_prefill: bool = False):
        super().__init__()
        self.bf16_prefill = bf16_prefill
        self._bind()

    def _bind(self) -> None:
        self._lib = _library()
        self._prefill_lib = _attend_library() if self.bf16_prefill else None

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        causal: bool,
        dropout: float,
        scale: float | None = None,
        softcap: SoftCap | None = None,
    ) -> Tensor:
        B, H, T, Dh = q.shape
        kv16 = k.dtype == torch.float16  # a half-precision cache (optimize(kv_dtype=torch.float16))
        if T != 1 or (causal and mask is None) or (mask is not None and mask.dtype != torch.bool) or v.dtype != k.dtype:
            k, v = k.to(q.dtype), v.to(q.dtype)
            out = self._prefill(q, k, v, mask, causal, dropout, scale, softcap)
            return out if out is not None else attend(q, k, v, mask, causal, dropout, scale, softcap)
        KH, S = k.shape[1], k.shape[2]
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        out = torch.empty(B, 1, H * Dh)
        rows, mask_b, _ = _mask_rows(mask, S)  # [B | 1, 1, S]
        failed = self._lib.encore_attend_one(
            q.data_ptr(), B, H, KH, S, Dh, q.stride(0), q.stride(1),
            k.data_ptr(), k.stride(0), k.stride(1), k.stride(2),
            v.data_ptr(), v.stride(0), v.stride(1), v.stride(2),
            _ptr(rows), mask_b, None, Dh**-0.5 if scale is None else scale, 0.0 if softcap is None else softcap.cap,
            out.data_ptr(), None, kv16,
        )  # fmt: skip
        if failed:
            raise MemoryError("fused attention: out of memory for the scores")
        return out

    def _prefill(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        causal: bool,
        dropout: float,
        scale: float | None,
        softcap: SoftCap | None,
    ) -> Tensor | None:
        """q [B, H, T, Dh], k / v [B, KH, S, Dh] -> [B, T, H * Dh] through csrc/attend.c; None where it
        does not take the call (no `bf16_prefill`, not fp32, dropout or gradients wanted, a mask not
        boolean or per head, a causal call over a cache, Dh not a multiple of 32)."""
        B, H, T, Dh = q.shape
        KH, S = k.shape[1], k.shape[2]
        if (
            self._prefill_lib is None
            or q.dtype != torch.float32
            or k.dtype != torch.float32
            or dropout != 0.0
            or (torch.is_grad_enabled() and q.requires_grad)
            or (mask is not None and (mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1))
            or (causal and mask is None and T != S)
        ):
            return None
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        rows, mask_b, mask_t = _mask_rows(mask, S)  # [B | 1, T | 1, S]
        out = torch.empty(B, T, H * Dh)
        failed = self._prefill_lib.encore_attend_bf16(
            q.data_ptr(), B, H, KH, T, S, Dh, q.stride(0), q.stride(1), q.stride(2),
            k.data_ptr(), k.stride(0), k.stride(1), k.stride(2), v.data_ptr(), v.stride(0), v.stride(1), v.stride(2),
            _ptr(rows), mask_b, mask_t, causal and mask is None, Dh**-0.5 if scale is None else scale,
            0.0 if softcap is None else softcap.cap, out.data_ptr(),
        )  # fmt: skip
        if failed == -1:
            raise MemoryError("bf16 prefill attention: out of memory for its packed K / V")
        return out if failed == 0 else None

    def extra_repr(self) -> str:
        many = "bf16 products (c)" if self.bf16_prefill else "scaled_dot_product_attention"
        return f"kernel=c (one query per head), many queries: {many}"


class FusedSelfAttention(native.Handles, SelfAttention):
    """`SelfAttention` whose decode step (one new position per row, into a generation cache) runs the
    q/k norms, RoPE and the cache write in one C call (`encore_rope_store`) between the q/k/v projection
    and the attention: ~20 tensor ops fewer per layer; a prefill's (an encoder's) q/k norms and RoPE are
    one C pass too (`project`). Holds the very submodules of the attention it is made from; training
    and anything else run `SelfAttention`'s path."""

    @classmethod
    def of(cls, attn: SelfAttention) -> FusedSelfAttention:
        fused = _adopt(cls, attn)
        norms = [getattr(attn.qk_norm, side, None) for side in ("q", "k")]
        fused._norms = norms if all(isinstance(n, FusedRMSNorm) for n in norms) else None
        fused._plain = fused._norms is not None or isinstance(attn.qk_norm, nn.Identity)
        fused._bind()
        return fused

    def _bind(self) -> None:
        self._lib = _library()

    def project(self, x: Tensor, rope: Rope, cache=None, layer: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """`SelfAttention.project` for many positions (a prefill, an encoder) with the q/k norms and RoPE
        in one C pass (`encore_norm_rope_rows`) instead of the eager split, norms, cats and products."""
        cos, sin = rope  # [B | 1, 1, T, Dh]
        if not self._plain or self.training or x.dtype != torch.float32 or cos.shape[2] != x.shape[1]:
            return super().project(x, rope, cache, layer)
        B, T, _ = x.shape
        H, K, Dh = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x).contiguous()  # [B, T, (H + 2K) * Dh]
        cos, sin = (t.to(torch.float32).contiguous() for t in (cos, sin))
        q, k = torch.empty(B, H, T, Dh), torch.empty(B, K, T, Dh)
        qn, kn = (None, None) if self._norms is None else (n.scale.data_ptr() for n in self._norms)
        eps = 0.0 if self._norms is None else self._norms[0].eps
        self._lib.encore_norm_rope_rows(
            qkv.data_ptr(), B, T, H, K, Dh, qkv.stride(0), qkv.stride(1), cos.data_ptr(), sin.data_ptr(),
            cos.stride(0) if cos.shape[0] > 1 else 0, qn, kn, eps, q.data_ptr(), k.data_ptr(),
        )  # fmt: skip
        v = qkv.view(B, T, H + 2 * K, Dh)[:, :, H + K :].transpose(1, 2)  # [B, K, T, Dh]
        if cache is not None:
            k, v = cache.update(layer, k, v)
        return q, k, v

    def forward(self, x: Tensor, rope: Rope, mask: Tensor | None, causal: bool, cache=None, layer: int = 0) -> Tensor:
        if not self._plain or cache is None or x.shape[1] != 1 or cache.prefilling or mask is None:
            return super().forward(x, rope, mask, causal, cache, layer)
        B, H, KH, Dh = x.shape[0], self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x).contiguous()  # [B, 1, (H + 2 KH) * Dh]
        cos, sin = (t.contiguous() for t in rope)  # [B, 1, 1, Dh]
        k, v = cache.k[layer], cache.v[layer]  # [B, KH, T, Dh]
        q = torch.empty(B, H, 1, Dh)
        qn, kn = (None, None) if self._norms is None else (n.scale.data_ptr() for n in self._norms)
        eps = 0.0 if self._norms is None else self._norms[0].eps
        self._lib.encore_rope_store(
            qkv.data_ptr(), B, H, KH, Dh, qkv.shape[-1], cos.data_ptr(), sin.data_ptr(), qn, kn, eps,
            k.data_ptr(), k.stride(0), k.stride(1), k.stride(2), v.data_ptr(), v.stride(0), v.stride(1), v.stride(2),
            cache.length.data_ptr(), cache.max_len, q.data_ptr(), k.dtype == torch.float16,
        )  # fmt: skip
        return self.out(self.attend(q, k, v, mask, False, 0.0, self.scale, self.softcap))


class FusedMLP(native.Handles, MLP):
    """`MLP` whose gate, act(gate) * up, is one C pass over all positions (`encore_glu_rows`) instead of
    ~6 eager ops over [T, 2F] (a 512-token T5Gemma 2 encoder layer: ~0.7 -> ~0.15 ms); an ungated
    GELU-tanh or SiLU MLP's activation is one C pass in place (`encore_act_rows`). Made for those two
    activations (`fuse`); holds the very submodules of the MLP it is made from; training runs `MLP`'s
    path."""

    @classmethod
    def of(cls, mlp: MLP) -> FusedMLP:
        fused = _adopt(cls, mlp)
        fused._bind()
        return fused

    def _bind(self) -> None:
        self._lib = _library()

    def forward(self, x: Tensor) -> Tensor:
        if self.training or x.dtype != torch.float32 or (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        h = self.up(x).contiguous()  # [..., 2F]: [gate; up] (ungated: [..., F])
        if not self.gated:
            self._lib.encore_act_rows(h.data_ptr(), h.numel() // h.shape[-1], h.shape[-1], self.act is gelu_tanh)
            return self.down(h)
        rows, width = h.numel() // h.shape[-1], h.shape[-1] // 2
        a = torch.empty(*h.shape[:-1], width)
        self._lib.encore_glu_rows(h.data_ptr(), rows, width, 2 * width, self.act is gelu_tanh, a.data_ptr())
        return self.down(a)


class _Proj(ctypes.Structure):  # csrc/layer.c's Proj: an Int4Linear's tensors, or an Int8Linear's rows()
    _fields_ = [("bits", _I64), *((name, _PTR) for name in ("w", "scales", "mins", "sums", "bias"))]
    _fields_ += [("N", _I64), ("K", _I64), ("group", _I64)]


_NORMS = ("attn_norm", "post_attn_norm", "q_norm", "k_norm", "cross_norm", "post_cross_norm", "cross_q_norm")
_PROJS = ("qkv", "out", "cross_q", "cross_out", "up", "down")


class _Layer(ctypes.Structure):  # csrc/layer.c's Layer
    _fields_ = [
        *((name, _I64) for name in ("D", "H", "KH", "Dh", "F", "gated", "gelu", "cross", "merged")),
        *((name, _F32) for name in ("eps", "scale", "softcap", "cross_scale", "cross_softcap")),
        *((name, _PTR) for name in (*_NORMS, "mlp_norm", "post_mlp_norm")),
        *((name, _Proj) for name in _PROJS),
    ]


@functools.cache
def _layer_library(flags: tuple[str, ...] = tuple(native.FLAGS)) -> ctypes.CDLL | None:
    """csrc/layer.c (which includes decode.c, int4.c and int8.c), built once per `flags`; None where it
    cannot be."""
    lib = native.load("layer", list(flags))
    if lib is None:
        return None
    lib.encore_decode_layer.restype = ctypes.c_int
    lib.encore_decode_layer.argtypes = [ctypes.POINTER(_Layer), _PTR, _I64, _PTR, _PTR, _PTR, *[_I64] * 3, _PTR]
    lib.encore_decode_layer.argtypes += [*[_I64] * 3, _PTR, _I64, _PTR, _I64, _PTR, *[_I64] * 3, _PTR, *[_I64] * 3]
    lib.encore_decode_layer.argtypes += [_I64, _PTR, _I64, _PTR, _I64]  # S, cmask, cmask_b, crows, kv16
    lib.encore_int8_has_vnni.restype = ctypes.c_int
    lib.encore_int8_has_amx.restype = ctypes.c_int
    lib.encore_fp32_linear.restype = None
    lib.encore_fp32_linear.argtypes = [_PTR, *[_I64] * 3, _PTR, _PTR, _PTR]
    return lib


def _projection(module: nn.Module) -> bool:
    """Whether csrc/layer.c runs this projection: int4; int8 where its VNNI path is built (else fbgemm's
    module path is the faster one); fp32 weights on the CPU where `optimize` chose oneDNN for them
    (`OneDNNLinear`; `linear="aten"` keeps torch's BLAS, and so its layers' modules)."""
    if isinstance(module, Int4Linear):
        return True
    if isinstance(module, OneDNNLinear):
        w = module.weight
        return w.dtype == torch.float32 and w.device.type == "cpu" and w.is_contiguous() and type(w) in PLAIN_TENSORS
    return (
        isinstance(module, Int8Linear)
        and module.in_features % 64 == 0
        and bool(_layer_library().encore_int8_has_vnni())
    )


def _layer_parts(layer: DecoderLayer | MergedDecoderLayer, strict: bool = True) -> dict[str, nn.Module] | None:
    """The modules a fused layer reads, by csrc/layer.c's names; None where the layer is not one it runs
    (`strict`): every norm fused (post-norms may be absent, all with one eps), the self-attention's
    fused path (or T5Gemma 2's merged attention with fused q/k norms), SiLU or GELU-tanh, fp32, int4 or
    int8 projections (`_projection`)."""
    attn, mlp, cross = layer.attn, layer.mlp, getattr(layer, "cross", None)
    qk = [getattr(attn.qk_norm, side, None) for side in ("q", "k")]
    parts = {
        "attn_norm": layer.attn_norm, "post_attn_norm": layer.post_attn_norm, "mlp_norm": layer.mlp_norm,
        "post_mlp_norm": layer.post_mlp_norm, "q_norm": qk[0], "k_norm": qk[1],
        "qkv": attn.qkv, "out": attn.out, "up": mlp.up, "down": mlp.down,
    }  # fmt: skip
    if cross is not None:
        parts |= {"cross_norm": layer.cross_norm, "post_cross_norm": layer.post_cross_norm}
        parts |= {"cross_q_norm": cross.q_norm, "cross_q": cross.q, "cross_out": cross.out}
    norms = [m for name, m in parts.items() if name.endswith("norm") and not isinstance(m, nn.Identity | None)]
    merged = type(layer) is MergedDecoderLayer and type(attn) is MergedAttention
    plain_qk = isinstance(attn.qk_norm, nn.Identity) or all(isinstance(n, FusedRMSNorm) for n in qk)
    ok = not strict or (
        (
            (type(layer) is DecoderLayer and isinstance(attn, FusedSelfAttention) and attn._plain)
            or (merged and plain_qk)
        )
        and mlp.act in (F.silu, gelu_tanh)
        and all(isinstance(parts[n], FusedRMSNorm) for n in ("attn_norm", "mlp_norm"))
        and all(isinstance(m, FusedRMSNorm) for m in norms)
        and len({m.eps for m in norms}) == 1
        and all(_projection(parts[n]) for n in _PROJS if n in parts)
    )
    return parts if ok else None


class _FusedLayer(native.Handles):
    """A decoder layer whose decode step (one new position per row into a generation cache) is one C
    call (`csrc/layer.c`): norms, fp32 / int4 / int8 projections, q/k norms, RoPE, the cache write, self-
    and cross-attention (or T5Gemma 2's merged attention), the MLP and the residuals. Made by
    `fused_layer` where `_layer_parts` accepts the layer; holds its very submodules, and anything but a
    decode step (or, for fp32 projections, a step of more than `max_rows` rows) runs the layer's own
    `forward` (`_eager`'s)."""

    _eager: type[nn.Module]
    _handles = ("_lib", "_desc")
    max_rows: int | None = None  # more rows a step than this: the modules (None: any number)

    def _bind(self) -> None:
        self._lib = _layer_library()
        self._desc = None  # made at the first decode step, from this layer's own tensors (a copy's too)

    def forward(
        self,
        x: Tensor,
        rope: Rope,
        mask: Tensor | None,
        causal: bool,
        cross_kv: tuple[Tensor, Tensor] | None = None,
        cross_mask: Tensor | None = None,
        cache=None,
        layer: int = 0,
    ) -> Tensor:
        if (
            self.training
            or cache is None
            or cache.prefilling
            or x.shape[1] != 1
            or (self.max_rows is not None and x.shape[0] > self.max_rows)
            or mask is None
            or mask.dtype != torch.bool
            or (cross_kv is None) == (hasattr(self, "cross") or isinstance(self, MergedDecoderLayer))
            or (cross_mask is not None and cross_mask.dtype != torch.bool)
            or cache.k.dtype not in (torch.float32, torch.float16)
            or (cross_kv is not None and cross_kv[0].dtype != cache.k.dtype)
        ):
            return self._eager.forward(self, x, rope, mask, causal, cross_kv, cross_mask, cache, layer)
        B, T = x.shape[0], cache.max_len
        y = x.to(torch.float32, copy=True).contiguous()  # [B, 1, D]: the layer's output, updated in place
        cos, sin = (t.contiguous() for t in rope)  # [B, 1, 1, Dh]
        k, v = cache.k[layer], cache.v[layer]  # [B, KH, T, Dh]
        rows, mask_b, _ = _mask_rows(mask, T)  # [B | 1, 1, T]
        ck = cv = cross_rows = shared = None
        S, ck_strides, cv_strides, cross_b = 0, (0, 0, 0), (0, 0, 0), 0
        if cross_kv is not None:
            ck, cv = cross_kv
            S, ck_strides, cv_strides = ck.shape[2], ck.stride()[:3], cv.stride()[:3]
            cross_rows, cross_b, _ = _mask_rows(cross_mask, S)  # [B | 1, 1, S]
            shared = (
                getattr(cache, "cross_from", None) if ck.shape[0] == B else None
            )  # [B]: the row whose cross K/V a row reads
        if self._desc is None:
            self._desc = _describe(self, _layer_parts(self, strict=False))
        failed = self._lib.encore_decode_layer(
            ctypes.byref(self._desc), y.data_ptr(), B, cos.data_ptr(), sin.data_ptr(),
            k.data_ptr(), *k.stride()[:3], v.data_ptr(), *v.stride()[:3], cache.length.data_ptr(), T,
            _ptr(rows), mask_b, _ptr(ck), *ck_strides, _ptr(cv), *cv_strides,
            S, _ptr(cross_rows), cross_b, _ptr(shared), k.dtype == torch.float16,
        )  # fmt: skip
        if failed:
            raise MemoryError("fused decoder layer: out of memory for its workspace")
        return y


class FusedDecoderLayer(_FusedLayer, DecoderLayer):
    _eager = DecoderLayer


class FusedMergedDecoderLayer(_FusedLayer, MergedDecoderLayer):
    _eager = MergedDecoderLayer


def fused_layer(layer: nn.Module) -> _FusedLayer | None:
    """The fused form of decoder layer `layer` (sharing its submodules), or None where csrc/layer.c does
    not run it (`_layer_parts`) or cannot be built."""
    parts = _layer_parts(layer) if _layer_library() is not None else None
    if parts is None:
        return None
    fused = _adopt(FusedMergedDecoderLayer if isinstance(layer, MergedDecoderLayer) else FusedDecoderLayer, layer)
    for module in parts.values():
        if isinstance(module, Int8Linear):
            module.rows()  # now, not at the first request
    if any(isinstance(m, OneDNNLinear) for m in parts.values()):
        fused.max_rows = FP32_MAX_ROWS
    fused._bind()
    return fused


def _describe(layer: DecoderLayer | MergedDecoderLayer, parts: dict[str, nn.Module]) -> _Layer:
    """csrc/layer.c's description of `layer`: sizes, flags and the data pointers of its tensors (the
    modules' own: the fused layer holds them, so they stay where they are)."""
    attn, mlp = layer.attn, layer.mlp
    cross = getattr(layer, "cross", None)
    desc = _Layer(D=attn.qkv.in_features, H=attn.n_heads, KH=attn.n_kv_heads, Dh=attn.head_dim)
    desc.F, desc.gated, desc.gelu = mlp.down.in_features, mlp.gated, mlp.act is gelu_tanh
    desc.cross, desc.merged, desc.eps = cross is not None, isinstance(layer, MergedDecoderLayer), layer.attn_norm.eps
    desc.scale = attn.head_dim**-0.5 if attn.scale is None else attn.scale
    desc.softcap = 0.0 if attn.softcap is None else attn.softcap.cap
    if cross is not None:
        desc.cross_scale = attn.head_dim**-0.5 if cross.scale is None else cross.scale
        desc.cross_softcap = 0.0 if cross.softcap is None else cross.softcap.cap
    for name in (*_NORMS, "mlp_norm", "post_mlp_norm"):
        norm = parts.get(name)
        setattr(desc, name, norm.scale.data_ptr() if isinstance(norm, FusedRMSNorm) else None)
    for name in _PROJS:
        p = parts.get(name)
        if isinstance(p, Int4Linear):
            b = p._buffers
            setattr(desc, name, _Proj(4, b["qweight"].data_ptr(), b["scales"].data_ptr(), _ptr(b["mins"]), None,
                                      _ptr(b["bias"]), p.out_features, p.in_features, p.group_size))  # fmt: skip
        elif isinstance(p, OneDNNLinear):
            setattr(desc, name, _Proj(32, p.weight.data_ptr(), None, None, None, _ptr(p.bias), p.out_features,
                                      p.in_features, p.in_features))  # fmt: skip
        elif isinstance(p, Int8Linear):
            w, scales, sums = p.rows()
            setattr(desc, name, _Proj(8, w.data_ptr(), scales.data_ptr(), None, sums.data_ptr(),
                                      _ptr(p._bias), p.out_features, p.in_features, p.in_features))  # fmt: skip
    return desc


def fuse(model: nn.Module, bf16_prefill: bool = False) -> list[tuple[nn.Module, str, nn.Module]]:
    """Swap every RMSNorm, attention product, oneDNN projection, self-attention and gated MLP of `model`
    for its fused module (in place), then every decoder layer `FusedDecoderLayer` runs (the RoPE / RMSNorm
    pre-norm families, `ModelConfig.fusable`; the others keep their attention and layers); the swaps made,
    as (parent, name, original), for `encore.deoptimize` to undo (in reverse). `bf16_prefill`: attention over many
    queries with bf16 products (`FusedAttend`; where `bf16_attention_available()`)."""
    swaps = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (RMSNorm, OffsetRMSNorm):
                setattr(parent, name, FusedRMSNorm(child))
            elif type(child) is Attend:
                setattr(parent, name, FusedAttend(bf16_prefill))
            elif type(child) is OneDNNLinear and _layer_library() is not None:
                setattr(parent, name, FusedLinear(child.weight, child.bias))
            else:
                continue
            swaps.append((parent, name, child))
    config = model.config
    for parent in list(model.modules()):  # after their norms and products: it holds the fused ones
        for name, child in list(parent.named_children()):
            if type(child) is SelfAttention and config.position_kind == "rope":  # (its C pass rotates q and k)
                setattr(parent, name, FusedSelfAttention.of(child))
            elif type(child) is MLP and child.act in (F.silu, gelu_tanh):
                setattr(parent, name, FusedMLP.of(child))
            else:
                continue
            swaps.append((parent, name, child))
    for parent in list(model.modules()):  # after everything inside the layers
        for name, child in list(parent.named_children()):
            whole = type(child) in (DecoderLayer, MergedDecoderLayer) and config.fusable  # RoPE, RMSNorm pre-norm
            if whole and (layer := fused_layer(child)) is not None:
                setattr(parent, name, layer)
                swaps.append((parent, name, child))
    return swaps
