"""Fused fp32 CPU modules for inference, what `encore.optimize` swaps in on the CPU beside the
projection kernels: `FusedRMSNorm` (one pass instead of ~8 aten calls), `FusedAttend` (attention for
one query per head, the decode step's, in one call instead of SDPA's flash kernel) and
`FusedSelfAttention` (the decode step's q/k norms, RoPE and cache write in one call). They run
`csrc/decode.c`, built on first use (`encore.model.native`). Measured in docs/engine.md.

    swaps = fuse(model)    # [(parent, name, original)]: what encore.deoptimize puts back, in reverse
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor, nn

from encore.model import native
from encore.model.layers import Attend, OffsetRMSNorm, RMSNorm, Rope, SelfAttention, SoftCap, attend
from encore.model.native import FLAGS

_I64, _PTR, _F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float


@functools.cache
def _library() -> ctypes.CDLL | None:
    """csrc/decode.c, built once (cached); None where no C compiler is found or it fails to build."""
    path = native.build("decode", FLAGS)
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    lib.encore_rms_norm.restype = None
    lib.encore_rms_norm.argtypes = [_PTR, _I64, _I64, _I64, _PTR, _F32, _PTR]
    lib.encore_attend_one.restype = ctypes.c_int
    lib.encore_attend_one.argtypes = [_PTR, *[_I64] * 7, _PTR, *[_I64] * 3, _PTR, *[_I64] * 3, _PTR, _I64]
    lib.encore_attend_one.argtypes += [_F32, _F32, _PTR]
    lib.encore_rope_store.restype = None
    lib.encore_rope_store.argtypes = [_PTR, *[_I64] * 5, *[_PTR] * 4, _F32, _PTR, *[_I64] * 3, _PTR, *[_I64] * 3]
    lib.encore_rope_store.argtypes += [_PTR, _I64, _PTR]
    return lib


def fused_available() -> bool:
    """Whether the fused kernels could be built here (a C compiler on Linux)."""
    return _library() is not None


class FusedRMSNorm(nn.Module):
    """x / rms(x) * scale for fp32 CPU inference, in one pass. Holds the norm's own `weight` (so the
    state dict is the norm's) and `scale`, the factor it applies: w, or 1 + w for Gemma's offset norm
    (folded once, when made)."""

    def __init__(self, norm: RMSNorm):
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.eps
        scale = norm.weight + 1.0 if isinstance(norm, OffsetRMSNorm) else norm.weight
        self.register_buffer("scale", scale.detach().to("cpu", torch.float32).contiguous(), persistent=False)
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


class FusedAttend(Attend):
    """`Attend` with one query per head (decoding) in one C call: GQA, boolean key masks, a query scale
    and soft-capped logits. Anything else (prefill, a causal call without a mask) runs `attend`."""

    def __init__(self):
        super().__init__()
        self._lib = _library()

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
        if T != 1 or (causal and mask is None) or (mask is not None and mask.dtype != torch.bool):
            return attend(q, k, v, mask, causal, dropout, scale, softcap)
        KH, S = k.shape[1], k.shape[2]
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        out = torch.empty(B, 1, H * Dh)
        mask_ptr, mask_b = None, 0
        if mask is not None:  # [B | 1, 1, 1, S]
            rows = mask.reshape(mask.shape[0], S)
            rows = rows if rows.stride(-1) == 1 else rows.contiguous()
            mask_ptr, mask_b = rows.data_ptr(), rows.stride(0) if rows.shape[0] > 1 else 0
        failed = self._lib.encore_attend_one(
            q.data_ptr(), B, H, KH, S, Dh, q.stride(0), q.stride(1),
            k.data_ptr(), k.stride(0), k.stride(1), k.stride(2),
            v.data_ptr(), v.stride(0), v.stride(1), v.stride(2),
            mask_ptr, mask_b, Dh**-0.5 if scale is None else scale, 0.0 if softcap is None else softcap.cap,
            out.data_ptr(),
        )  # fmt: skip
        if failed:
            raise MemoryError("fused attention: out of memory for the scores")
        return out

    def extra_repr(self) -> str:
        return "kernel=c (one query per head), else scaled_dot_product_attention"


class FusedSelfAttention(SelfAttention):
    """`SelfAttention` whose decode step (one new position per row, into a generation cache) runs the
    q/k norms, RoPE and the cache write in one C call (`encore_rope_store`) between the q/k/v projection
    and the attention: ~20 tensor ops fewer per layer. Holds the very submodules of the attention it is
    made from; prefill and anything else run `SelfAttention`'s path."""

    @classmethod
    def of(cls, attn: SelfAttention) -> FusedSelfAttention:
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        for key, value in vars(attn).items():
            if not key.startswith("_"):
                setattr(fused, key, value)
        for name, child in attn.named_children():
            setattr(fused, name, child)
        norms = [getattr(attn.qk_norm, side, None) for side in ("q", "k")]
        fused._norms = norms if all(isinstance(n, FusedRMSNorm) for n in norms) else None
        fused._plain = fused._norms is not None or isinstance(attn.qk_norm, nn.Identity)
        fused._lib = _library()
        return fused

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
            cache.length.data_ptr(), cache.max_len, q.data_ptr(),
        )  # fmt: skip
        return self.out(self.attend(q, k, v, mask, False, 0.0, self.scale, self.softcap))


def fuse(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Swap every RMSNorm, attention product and self-attention of `model` for its fused module (in
    place); the swaps made, as (parent, name, original), for `encore.deoptimize` to undo (in reverse)."""
    swaps = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (RMSNorm, OffsetRMSNorm):
                setattr(parent, name, FusedRMSNorm(child))
            elif type(child) is Attend:
                setattr(parent, name, FusedAttend())
            else:
                continue
            swaps.append((parent, name, child))
    for parent in list(model.modules()):  # after their norms and products: it holds the fused ones
        for name, child in list(parent.named_children()):
            if type(child) is SelfAttention:
                setattr(parent, name, FusedSelfAttention.of(child))
                swaps.append((parent, name, child))
    return swaps
