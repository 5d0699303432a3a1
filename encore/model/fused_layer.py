"""`FusedDecoderLayer`: a decoder layer whose decode step is one C call (csrc/layer.c), for every block
kind encore builds: RMSNorm or LayerNorm, pre-norm, sandwich or post-norm, RoPE or positions added to
the embeddings, T5's relative bias on the self-attention's logits, biases on the projections, SiLU,
GELU-tanh, GELU or ReLU, gated or not, and T5Gemma 2's merged attention (`FusedMergedDecoderLayer`).
`fuse` is what `encore.optimize` calls: the per-module kernels (`encore.model.fused.fuse_modules`),
then every decoder layer the C call takes.

    swaps = fuse(model)    # [(parent, name, original)]: what encore.deoptimize puts back, in reverse
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor, nn

from encore.model import layer_c, native
from encore.model.fused import (
    ACT,
    FP32_MAX_ROWS,
    FusedRMSNorm,
    FusedSelfAttention,
    _adopt,
    _bias_rows,
    _mask_rows,
    _one_query_mask,
    _ptr,
    fuse_modules,
)
from encore.model.int4 import Int4Linear
from encore.model.kernels import PLAIN_TENSORS, Int8Linear, OneDNNLinear
from encore.model.layers import (
    DecoderLayer,
    MergedAttention,
    MergedDecoderLayer,
    NormResidual,
    Rope,
    Rotate,
    SelfAttention,
    Unrotated,
)


def projection_runs_in_c(module: nn.Module) -> bool:
    """Whether csrc/layer.c runs this projection: int4; int8 where its SIMD products are built (AVX-512
    VNNI, or AVX2: the same outputs; in plain C fbgemm's module path is the faster one); fp32 weights
    on the CPU where `optimize` chose oneDNN for them (`OneDNNLinear`; `linear="aten"` keeps torch's
    BLAS, and so its layers' modules)."""
    if isinstance(module, Int4Linear):
        return True
    if isinstance(module, OneDNNLinear):
        w = module.weight
        return w.dtype == torch.float32 and w.device.type == "cpu" and w.is_contiguous() and type(w) in PLAIN_TENSORS
    return (
        isinstance(module, Int8Linear)
        and module.in_features % 64 == 0
        and bool(layer_c.library().encore_int8_has_simd())
    )


def _norm_kind(norm: nn.Module) -> str | None:
    """ "rms" (fused), "layernorm" (fp32, with its scale) or None: a norm csrc/layer.c does not run."""
    if isinstance(norm, FusedRMSNorm):
        return "rms"
    if type(norm) is nn.LayerNorm and norm.weight is not None and len(norm.normalized_shape) == 1:
        tensors = [t for t in (norm.weight, norm.bias) if t is not None]
        return "layernorm" if all(t.dtype == torch.float32 and t.is_contiguous() for t in tensors) else None
    return None


def _attention_runs_in_c(layer: nn.Module) -> bool:
    """The self-attention's decode step as csrc/layer.c computes it: RoPE's fused path (q/k norms fused
    or absent), positions that are not rotary (no q/k norms), or T5Gemma 2's merged attention."""
    attn = layer.attn
    if type(layer) is MergedDecoderLayer:
        qk = [getattr(attn.qk_norm, side, None) for side in ("q", "k")]
        return type(attn) is MergedAttention and (
            isinstance(attn.qk_norm, nn.Identity) or all(isinstance(n, FusedRMSNorm) for n in qk)
        )
    if isinstance(attn, FusedSelfAttention):
        return attn._plain
    return type(attn) is SelfAttention and isinstance(attn.rotate, Unrotated) and isinstance(attn.qk_norm, nn.Identity)


def _layer_parts(layer: DecoderLayer | MergedDecoderLayer, strict: bool = True) -> dict[str, nn.Module] | None:
    """The modules a fused layer reads, by csrc/layer.c's names; None where the layer is not one it runs
    (`strict`): its norms all of one kind and eps (`_norm_kind`), its attention one the call computes
    (`_attention_runs_in_c`), an activation csrc/decode.c has (`ACT`), fp32, int4 or int8 projections
    (`projection_runs_in_c`)."""
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
    block_norms = [parts[n] for n in layer_c.NORMS if not isinstance(parts.get(n), nn.Identity | None)]
    head_norms = [parts[n] for n in layer_c.HEAD_NORMS if not isinstance(parts.get(n), nn.Identity | None)]
    ok = not strict or (
        _attention_runs_in_c(layer)
        and mlp.act in ACT
        and len({_norm_kind(m) for m in block_norms}) == 1
        and None not in {_norm_kind(m) for m in block_norms}
        and all(isinstance(m, FusedRMSNorm) for m in head_norms)
        and len({m.eps for m in block_norms + head_norms}) == 1
        and all(projection_runs_in_c(parts[n]) for n in layer_c.PROJS if n in parts)
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
        self._lib = layer_c.library()
        self._desc = None  # made at the first decode step, from this layer's own tensors (a copy's too)

    def _decodes(self, x: Tensor, mask: Tensor | None, cross_kv, cross_mask: Tensor | None, cache) -> bool:
        """Whether this call is a decode step the C call takes."""
        return not (
            self.training
            or cache is None
            or cache.prefilling
            or x.shape[1] != 1
            or (self.max_rows is not None and x.shape[0] > self.max_rows)
            or mask is None
            or not _one_query_mask(mask, self.attn.softcap)
            or (cross_kv is None) == (hasattr(self, "cross") or isinstance(self, MergedDecoderLayer))
            or (cross_mask is not None and cross_mask.dtype != torch.bool)
            or cache.k.dtype not in (torch.float32, torch.float16)
            or (cross_kv is not None and cross_kv[0].dtype != cache.k.dtype)
            or (cross_kv is not None and cross_kv[0].shape[0] not in (1, x.shape[0]))
        )

    def forward(
        self,
        x: Tensor,
        rope: Rope | None,
        mask: Tensor | None,
        causal: bool,
        cross_kv: tuple[Tensor, Tensor] | None = None,
        cross_mask: Tensor | None = None,
        cache=None,
        layer: int = 0,
    ) -> Tensor:
        if not self._decodes(x, mask, cross_kv, cross_mask, cache):
            return self._eager.forward(self, x, rope, mask, causal, cross_kv, cross_mask, cache, layer)
        B, T = x.shape[0], cache.max_len
        y = x.to(torch.float32, copy=True).contiguous()  # [B, 1, D]: the layer's output, updated in place
        cos, sin = (None, None) if rope is None else (t.contiguous() for t in rope)  # [B, 1, 1, Dh]
        k, v = cache.k[layer], cache.v[layer]  # [B, KH, T, Dh]
        bias, bias_b, bias_h, _ = _bias_rows(mask)  # [B | 1, H | 1, 1, T]: T5's relative positions
        rows, mask_b, _ = _mask_rows(None if bias is not None else mask, T)  # [B | 1, 1, T]
        ck = cv = cross_rows = shared = None
        S, ck_strides, cv_strides, cross_b = 0, (0, 0, 0), (0, 0, 0), 0
        if cross_kv is not None:
            ck, cv = cross_kv  # [B | 1, KH, S, Dh]: one row shared by every row (a beam's hypotheses) reads stride 0
            S = ck.shape[2]
            ck_strides, cv_strides = ((0 if t.shape[0] == 1 else t.stride(0), *t.stride()[1:3]) for t in (ck, cv))
            cross_rows, cross_b, _ = _mask_rows(cross_mask, S)  # [B | 1, 1, S]
            shared = (
                getattr(cache, "cross_from", None) if ck.shape[0] == B else None
            )  # [B]: the row whose cross K/V a row reads
        if self._desc is None:
            self._desc = _describe(self, _layer_parts(self, strict=False))
        failed = self._lib.encore_decode_layer(
            ctypes.byref(self._desc), y.data_ptr(), B, _ptr(cos), _ptr(sin),
            k.data_ptr(), *k.stride()[:3], v.data_ptr(), *v.stride()[:3], cache.length.data_ptr(), T,
            _ptr(rows), mask_b, _ptr(bias), bias_b, bias_h, _ptr(ck), *ck_strides, _ptr(cv), *cv_strides,
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
    parts = _layer_parts(layer) if layer_c.library() is not None else None
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


def _norm(module: nn.Module | None) -> layer_c.Norm:
    if isinstance(module, FusedRMSNorm):
        return layer_c.Norm(module.scale.data_ptr(), None)
    if isinstance(module, nn.LayerNorm):
        return layer_c.Norm(module.weight.data_ptr(), _ptr(module.bias))
    return layer_c.Norm(None, None)


def _proj(p: nn.Module | None) -> layer_c.Proj:
    if isinstance(p, Int4Linear):
        b = p._buffers
        return layer_c.Proj(4, b["qweight"].data_ptr(), b["scales"].data_ptr(), _ptr(b["mins"]), None,
                            _ptr(b["bias"]), p.out_features, p.in_features, p.group_size)  # fmt: skip
    if isinstance(p, OneDNNLinear):
        return layer_c.Proj(32, p.weight.data_ptr(), None, None, None, _ptr(p.bias), p.out_features,
                            p.in_features, p.in_features)  # fmt: skip
    if isinstance(p, Int8Linear):
        w, scales, sums = p.rows()
        return layer_c.Proj(8, w.data_ptr(), scales.data_ptr(), None, sums.data_ptr(), _ptr(p._bias),
                            p.out_features, p.in_features, p.in_features)  # fmt: skip
    return layer_c.Proj()


def _describe(layer: DecoderLayer | MergedDecoderLayer, parts: dict[str, nn.Module]) -> layer_c.Layer:
    """csrc/layer.c's description of `layer`: sizes, kinds and the data pointers of its tensors (the
    modules' own: the fused layer holds them, so they stay where they are)."""
    attn, mlp = layer.attn, layer.mlp
    cross = getattr(layer, "cross", None)
    desc = layer_c.Layer(D=attn.qkv.in_features, H=attn.n_heads, KH=attn.n_kv_heads, Dh=attn.head_dim)
    desc.F, desc.gated, desc.act = mlp.down.in_features, mlp.gated, ACT[mlp.act]
    desc.cross, desc.merged = cross is not None, isinstance(layer, MergedDecoderLayer)
    desc.layernorm = any(isinstance(parts.get(n), nn.LayerNorm) for n in layer_c.NORMS)
    desc.post, desc.rope = isinstance(layer.residual, NormResidual), isinstance(attn.rotate, Rotate)
    desc.eps = next(parts[n].eps for n in (*layer_c.NORMS, *layer_c.HEAD_NORMS) if hasattr(parts.get(n), "eps"))
    desc.scale = attn.head_dim**-0.5 if attn.scale is None else attn.scale
    desc.softcap = 0.0 if attn.softcap is None else attn.softcap.cap
    if cross is not None:
        desc.cross_scale = attn.head_dim**-0.5 if cross.scale is None else cross.scale
        desc.cross_softcap = 0.0 if cross.softcap is None else cross.softcap.cap
    for name in layer_c.NORMS:
        setattr(desc, name, _norm(parts.get(name)))
    for name in layer_c.HEAD_NORMS:
        norm = parts.get(name)
        setattr(desc, name, norm.scale.data_ptr() if isinstance(norm, FusedRMSNorm) else None)
    for name in layer_c.PROJS:
        setattr(desc, name, _proj(parts.get(name)))
    return desc


def fuse(model: nn.Module, bf16_prefill: bool = False) -> list[tuple[nn.Module, str, nn.Module]]:
    """`fuse_modules` (the fused norms, attention, projections, self-attention and MLPs), then every
    decoder layer csrc/layer.c runs as `FusedDecoderLayer`, in place; the swaps made, as (parent, name,
    original), for `encore.deoptimize` to undo (in reverse)."""
    swaps = fuse_modules(model, bf16_prefill)
    for parent in list(model.modules()):  # after everything inside the layers
        for name, child in list(parent.named_children()):
            if type(child) in (DecoderLayer, MergedDecoderLayer) and (layer := fused_layer(child)) is not None:
                setattr(parent, name, layer)
                swaps.append((parent, name, child))
    return swaps
