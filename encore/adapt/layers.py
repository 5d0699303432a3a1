"""Which source layers become which encoder / decoder layers, and the weight copy itself.

A decoder-only layer is `attn_norm -> attn (fused qkv, out, q/k norms) -> post_attn_norm`, then
`mlp_norm -> mlp -> post_mlp_norm`. An encoder layer has exactly those modules, so it is a copy that
attends both ways. A decoder layer adds cross-attention; under `cross_init="self"` it starts as the same
layer's self-attention (T5Gemma's initialisation): `cross.q` = the q rows of `qkv`, `cross.kv` = its
k and v rows, `cross.out` = `attn.out`, the q / k norms and the pre-/post-norms copied likewise. Cross
attention has no RoPE, so it is the source's attention with positions taken away, not an exact copy of
its function; `cross_init="random"` leaves the fresh initialisation for a warm-up that trains only it
(`--train-only cross_attention`).

`cross_init="zero"` starts the cross-attention silent: q / k / v as under "self", the output projection
zero, so the adapted model begins as the source reading the target alone and learns to read the encoder.
Measured on SmolLM2-135M (docs/adapt.md): a full-strength copy adds a second attention output to every
layer of a residual stream trained without it, and the copied model starts *worse than uniform* on
held-out text (PrefixLM cross-entropy 17.2 for 30 + 30 layers, against 3.0 with the cross-attention
silent and 2.3 for the source reading prefix and target). "zero" also folds each layer's attention-norm
weights into its cross K/V projection and gives the encoder's final norm unit weights, so the K/V see
the encoder's states normed as the layer's own input is (the source's final norm is ~5-70x larger than
its attention norms); that is the same function, kept exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from encore.model.base import LanguageModel
from encore.model.layers import OffsetRMSNorm

CROSS_INITS = ("self", "zero", "random")


class AdaptError(ValueError):
    """A request `encore.adapt` cannot carry out; the message names the flag and the value."""


def pick_layers(spec: str | int | Sequence[int], n_source: int, flag: str) -> list[int]:
    """Source layer indices for `spec`: "all"; explicit indices "i,j,..."; or a count N, which keeps the
    ends of the stack and drops the middle: the first round(0.4 N) layers and the last N - round(0.4 N)
    (30 -> 10 keeps 0-3 and 24-29).

    Why the ends: the first layers turn embeddings into token features and the last ones shape the
    prediction; layer-dropping studies (ShortGPT; Gromov et al., 2024) find the middle-to-deep layers
    the most alike and the least missed. Measured on SmolLM2-135M (docs/adapt.md), a 10-layer decoder
    taken this way starts at a held-out cross-entropy of 9.7, against 14.3 for every third layer and
    23.2 for the first ten; none of them is a working language model before PrefixLM training."""
    if isinstance(spec, str):
        text = spec.strip()
        if text == "all":
            return list(range(n_source))
        if "," not in text:
            try:
                spec = int(text)
            except ValueError:
                raise AdaptError(f"{flag} {spec!r}: expected 'all', a layer count or indices 'i,j,...'") from None
        else:
            try:
                spec = [int(part) for part in text.split(",")]
            except ValueError:
                raise AdaptError(f"{flag} {spec!r}: layer indices must be integers, e.g. 0,14,29") from None
    if isinstance(spec, int):
        if not 1 <= spec <= n_source:
            raise AdaptError(f"{flag} {spec}: the source has {n_source} layers; choose 1 to {n_source}")
        head = round(0.4 * spec)
        return [*range(head), *range(n_source - (spec - head), n_source)]
    layers = list(spec)
    bad = [i for i in layers if not 0 <= i < n_source]
    if bad:
        raise AdaptError(f"{flag}: layer {bad[0]} does not exist; the source has layers 0 to {n_source - 1}")
    if len(set(layers)) != len(layers):
        raise AdaptError(f"{flag}: layer indices repeat ({','.join(map(str, layers))})")
    if not layers:
        raise AdaptError(f"{flag}: no layers named")
    return layers


@torch.no_grad()
def copy_module(target: nn.Module, source: nn.Module) -> None:
    """Every parameter of `source` into the same-named parameter of `target` (shapes must agree)."""
    own = dict(target.named_parameters())
    for name, p in source.named_parameters():
        own[name].copy_(p)


@torch.no_grad()
def copy_self_to_cross(layer: nn.Module) -> None:
    """A decoder layer's cross-attention := its own self-attention (weights and norms; no RoPE)."""
    attn, cross = layer.attn, layer.cross
    rows = attn.n_heads * attn.head_dim
    cross.q.weight.copy_(attn.qkv.weight[:rows])
    cross.kv.weight.copy_(attn.qkv.weight[rows:])
    if attn.qkv.bias is not None:
        cross.q.bias.copy_(attn.qkv.bias[:rows])
        cross.kv.bias.copy_(attn.qkv.bias[rows:])
    cross.out.weight.copy_(attn.out.weight)
    if not isinstance(attn.qk_norm, nn.Identity):
        cross.q_norm.weight.copy_(attn.qk_norm.q.weight)
        cross.k_norm.weight.copy_(attn.qk_norm.k.weight)
    copy_module(layer.cross_norm, layer.attn_norm)
    copy_module(layer.post_cross_norm, layer.post_attn_norm)


@torch.no_grad()
def copy_weights(
    model: LanguageModel, source: LanguageModel, encoder: list[int], decoder: list[int], cross_init: str
) -> None:
    """Fill the encoder-decoder `model` from the decoder-only `source` (see the module docstring)."""
    model.embed.weight.copy_(source.embed.weight[: model.config.vocab_size])
    if hasattr(source.embed, "eoi_embedding"):
        model.embed.eoi_embedding.copy_(source.embed.eoi_embedding)
    if model.lm_head is not None:
        model.lm_head.weight.copy_(source.lm_head.weight)
    copy_module(model.final_norm, source.final_norm)
    copy_module(model.encoder_norm, source.final_norm)
    for layer, i in zip(model.encoder, encoder, strict=True):
        copy_module(layer, source.decoder[i])
    for layer, i in zip(model.decoder, decoder, strict=True):
        copy_module(layer, source.decoder[i])  # the source layer has no cross-attention: that comes next
        if cross_init in ("self", "zero"):
            copy_self_to_cross(layer)
        if cross_init == "zero":
            fold_norm_into_cross_kv(layer)
            layer.cross.out.weight.zero_()
    if cross_init == "zero":
        unit_norm(model.encoder_norm)


def _scale(norm: nn.Module) -> torch.Tensor:
    """The per-channel scale an RMSNorm applies: w, or 1 + w for Gemma's offset norm."""
    return norm.weight + 1.0 if isinstance(norm, OffsetRMSNorm) else norm.weight


@torch.no_grad()
def unit_norm(norm: nn.Module) -> None:
    norm.weight.fill_(0.0 if isinstance(norm, OffsetRMSNorm) else 1.0)


@torch.no_grad()
def fold_norm_into_cross_kv(layer: nn.Module) -> None:
    """cross.kv := kv . diag(scale of the layer's attention norm): with a unit-weight encoder norm, the
    K/V read the encoder's states exactly as the layer's self-attention reads its own input."""
    layer.cross.kv.weight.mul_(_scale(layer.attn_norm)[None, :])
