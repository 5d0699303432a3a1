"""Fused fp32 CPU modules for inference, what `encore.optimize` swaps in on the CPU beside the
projection kernels: `FusedRMSNorm` (one pass instead of ~8 aten calls), `FusedAttend` (attention for
one query per head, the decode step's, in one call instead of SDPA's flash kernel; a prefill's with
bf16 products where asked), `FusedSelfAttention` (the decode step's q/k norms, RoPE and cache write in
one call), `FusedMLP` (an MLP's activation in one pass) and `FusedLinear` (a few rows' fp32 products).
They run `csrc/decode.c`, `csrc/attend.c` and `csrc/layer.c`, built on first use
(`encore.model.native`). Measured in docs/engine.md. A whole decoder layer's decode step in one call
is `encore.model.fused_layer`'s, whose `fuse` swaps these in first.

    swaps = fuse_modules(model)    # [(parent, name, original)]: what encore.deoptimize puts back, in reverse
"""

from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encore.model import layer_c, native
from encore.model.kernels import OneDNNLinear
from encore.model.layers import (
    MLP,
    Attend,
    OffsetRMSNorm,
    RMSNorm,
    Rope,
    SelfAttention,
    SoftCap,
    attend,
    gelu_tanh,
)

_I64, _PTR, _F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
ACT = {F.silu: 0, gelu_tanh: 1, F.gelu: 2, F.relu: 3}  # an MLP's activation -> csrc/decode.c's ACT_* number


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
    lib.encore_attend_one.argtypes += [_PTR, _I64, _I64]  # bias, bias_b, bias_h
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


def _attend_kernel(flags: tuple[str, ...], kind: str) -> ctypes.CDLL | None:
    """csrc/attend.c built with `flags`, its `encore_attend_{kind}` ("bf16" or "fp32") typed; None where
    it cannot be built or this build does not run that kind."""
    lib = native.load("attend", list(flags))
    if lib is None or not getattr(lib, f"encore_attend_{kind}_built")():
        return None
    fn = getattr(lib, f"encore_attend_{kind}")
    fn.restype = ctypes.c_int
    fn.argtypes = [_PTR, *[_I64] * 9, _PTR, *[_I64] * 3, _PTR, *[_I64] * 3, _PTR, *[_I64] * 2]
    fn.argtypes += [_PTR, *[_I64] * 4, _F32, _F32, _PTR]  # bias, its strides, causal, scale, softcap, out
    return lib


@functools.cache
def _attend_library(flags: tuple[str, ...] = tuple(native.FLAGS)) -> ctypes.CDLL | None:
    """csrc/attend.c (a prefill's attention with bf16 products), built once per `flags`; None where it
    cannot be built or the CPU (or `flags`) has no AVX512-BF16."""
    return _attend_kernel(flags, "bf16")


@functools.cache
def _attend_fp32_library(flags: tuple[str, ...] = tuple(native.FLAGS)) -> ctypes.CDLL | None:
    """csrc/attend.c for a prefill's attention in fp32 (`encore_attend_fp32`); None where it cannot be
    built or the CPU (or `flags`) has no AVX-512."""
    return _attend_kernel(flags, "fp32")


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


def _bias_rows(mask: Tensor | None) -> tuple[Tensor | None, int, int, int]:
    """A float (additive) mask [B | 1, H | 1, T | 1, keys] as the C kernels read it: the tensor (None for
    none, or a boolean mask), its batch, head and row strides (0 where it broadcasts)."""
    if mask is None or mask.dtype == torch.bool:
        return None, 0, 0, 0
    rows = mask if mask.stride(-1) == 1 else mask.contiguous()
    return rows, *(rows.stride(i) if rows.shape[i] > 1 else 0 for i in range(3))


def _one_query_mask(mask: Tensor | None, softcap: SoftCap | None) -> bool:
    """Whether a decode step's mask is one the C kernels take: none, boolean [B | 1, 1, 1, S], or an
    fp32 additive bias [B | 1, H | 1, 1, S] (T5's relative positions; not beside a soft cap)."""
    if mask is None or mask.dtype == torch.bool:
        return True
    return mask.dtype == torch.float32 and mask.dim() == 4 and mask.shape[2] == 1 and softcap is None


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
        self._lib = layer_c.library()

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
    key masks or an additive bias, a query scale, soft-capped logits); many queries (a prefill, an
    encoder) through csrc/attend.c: with `bf16_prefill`, bf16 products, fp32 accumulation and softmax
    (~4x SDPA's flash kernel on a T5Gemma 2 encoder layer; docs/engine.md), else the same loops in fp32
    (any AVX-512 CPU), whose result for a query does not depend on the padding around it (SDPA's does, by
    float rounding). Anything else runs `attend`."""

    _handles = ("_lib", "_prefill_lib")

    def __init__(self, bf16_prefill: bool = False):
        super().__init__()
        self.bf16_prefill = bf16_prefill
        self._bind()

    def _bind(self) -> None:
        self._lib = _library()
        bf16 = _attend_library() if self.bf16_prefill else None
        self._prefill_lib = bf16 or _attend_fp32_library()
        self._prefill_kind = None if self._prefill_lib is None else "bf16" if bf16 else "fp32"

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
        if T != 1 or (causal and mask is None) or not _one_query_mask(mask, softcap) or v.dtype != k.dtype:
            k, v = k.to(q.dtype), v.to(q.dtype)
            out = self._prefill(q, k, v, mask, causal, dropout, scale, softcap)
            return out if out is not None else attend(q, k, v, mask, causal, dropout, scale, softcap)
        KH, S = k.shape[1], k.shape[2]
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        out = torch.empty(B, 1, H * Dh)
        bias, bias_b, bias_h, _ = _bias_rows(mask)  # [B | 1, H | 1, 1, S]
        rows, mask_b, _ = _mask_rows(None if bias is not None else mask, S)  # [B | 1, 1, S]
        failed = self._lib.encore_attend_one(
            q.data_ptr(), B, H, KH, S, Dh, q.stride(0), q.stride(1),
            k.data_ptr(), k.stride(0), k.stride(1), k.stride(2),
            v.data_ptr(), v.stride(0), v.stride(1), v.stride(2),
            _ptr(rows), mask_b, _ptr(bias), bias_b, bias_h, None, Dh**-0.5 if scale is None else scale,
            0.0 if softcap is None else softcap.cap, out.data_ptr(), None, kv16,
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
        does not take the call (not built here, not fp32, dropout or gradients wanted, a boolean mask per
        head, an fp32 bias beside a soft cap, a causal call over a cache, Dh not a multiple of 32)."""
        B, H, T, Dh = q.shape
        KH, S = k.shape[1], k.shape[2]
        if (
            self._prefill_lib is None
            or q.dtype != torch.float32
            or k.dtype != torch.float32
            or dropout != 0.0
            or (torch.is_grad_enabled() and q.requires_grad)
            or (mask is not None and mask.dim() != 4)
            or (mask is not None and mask.dtype == torch.bool and mask.shape[1] != 1)
            or (mask is not None and mask.dtype != torch.bool and (mask.dtype != torch.float32 or softcap is not None))
            or (causal and mask is None and T != S)
        ):
            return None
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        bias, bias_b, bias_h, bias_t = _bias_rows(mask)  # [B | 1, H | 1, T | 1, S]: T5's relative positions
        rows, mask_b, mask_t = _mask_rows(None if bias is not None else mask, S)  # [B | 1, T | 1, S]
        out = torch.empty(B, T, H * Dh)
        failed = getattr(self._prefill_lib, f"encore_attend_{self._prefill_kind}")(
            q.data_ptr(), B, H, KH, T, S, Dh, q.stride(0), q.stride(1), q.stride(2),
            k.data_ptr(), k.stride(0), k.stride(1), k.stride(2), v.data_ptr(), v.stride(0), v.stride(1), v.stride(2),
            _ptr(rows), mask_b, mask_t, _ptr(bias), bias_b, bias_h, bias_t, causal and mask is None,
            Dh**-0.5 if scale is None else scale,
            0.0 if softcap is None else softcap.cap, out.data_ptr(),
        )  # fmt: skip
        if failed == -1:
            raise MemoryError(f"{self._prefill_kind} prefill attention: out of memory for its packed K / V")
        return out if failed == 0 else None

    def extra_repr(self) -> str:
        many = {"bf16": "bf16 products (c)", "fp32": "fp32 (c)"}.get(self._prefill_kind, "scaled_dot_product_attention")
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
    MLP's activation is one C pass in place (`encore_act_rows`), or none where the up projection applies
    it as it writes its outputs (`Int8Linear.applies_act`): a prefill on AMX's bf16 tiles, its hidden
    rows then handed to the down projection packed as bf16 (`BF16Tiles`), never written as fp32, or
    csrc/int8.c's int8 rows. Made for the
    activations csrc/decode.c has (`ACT`); holds the very submodules of the MLP it is made from; training
    runs `MLP`'s path."""

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
        if not self.gated:
            rows = x.numel() // x.shape[-1]
            if _on_tiles(self.up, rows):  # a prefill on AMX: the activation in the up projection's C call
                packed = _on_tiles(self.down, rows) and self.up.out_features % 32 == 0
                h = self.up(x, act=ACT[self.act], tiles=packed)  # packed: bf16 tiles the down call reads
                return self.down(h).view(*x.shape[:-1], self.down.out_features)
            if getattr(self.up, "applies_act", lambda rows: False)(rows):  # csrc/int8.c: in its epilogue
                return self.down(self.up(x, act=ACT[self.act]))
            h = self.up(x).contiguous()
            self._lib.encore_act_rows(h.data_ptr(), h.numel() // h.shape[-1], h.shape[-1], ACT[self.act])
            return self.down(h)
        h = self.up(x).contiguous()  # [..., 2F]: [gate; up]
        rows, width = h.numel() // h.shape[-1], h.shape[-1] // 2
        a = torch.empty(*h.shape[:-1], width)
        self._lib.encore_glu_rows(h.data_ptr(), rows, width, 2 * width, ACT[self.act], a.data_ptr())
        return self.down(a)


def _on_tiles(projection: nn.Module, rows: int) -> bool:
    """Whether `projection` runs `rows` rows on AMX's bf16 tiles (`Int8Linear.on_tiles`, `Int4Linear`'s)."""
    on_tiles = getattr(projection, "on_tiles", None)
    return on_tiles is not None and on_tiles(rows)


def fuse_modules(model: nn.Module, bf16_prefill: bool = False) -> list[tuple[nn.Module, str, nn.Module]]:
    """Swap every RMSNorm, attention product, oneDNN projection, RoPE self-attention and MLP of `model`
    for its fused module (in place); the swaps made, as (parent, name, original), for
    `encore.deoptimize` to undo (in reverse). `bf16_prefill`: attention over many queries with bf16
    products (`FusedAttend`; where `bf16_attention_available()`)."""
    swaps = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (RMSNorm, OffsetRMSNorm):
                setattr(parent, name, FusedRMSNorm(child))
            elif type(child) is Attend:
                setattr(parent, name, FusedAttend(bf16_prefill))
            elif type(child) is OneDNNLinear and layer_c.library() is not None:
                setattr(parent, name, FusedLinear(child.weight, child.bias))
            else:
                continue
            swaps.append((parent, name, child))
    rope = model.config.position_kind == "rope"
    for parent in list(model.modules()):  # after their norms and products: it holds the fused ones
        for name, child in list(parent.named_children()):
            if type(child) is SelfAttention and rope:  # (its C pass rotates q and k)
                setattr(parent, name, FusedSelfAttention.of(child))
            elif type(child) is MLP and child.act in ACT:
                setattr(parent, name, FusedMLP.of(child))
            else:
                continue
            swaps.append((parent, name, child))
    return swaps
