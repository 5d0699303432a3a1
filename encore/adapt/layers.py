"""Which source layers become which encoder / decoder layers, and the weight copy itself.

A decoder-only layer is `attn_norm -> attn (fused qkv, out, q/k norms) -> post_attn_norm`, then
`mlp_norm -> mlp -> post_mlp_norm`. An encoder layer has exactly those modules, so it is a copy that
attends both ways. A decoder layer adds cross-attention; under `cross_init="self"` it starts as the same
layer's self-attention (T5Gemma's initialisation): `cross.q` = the q rows of `qkv`, `cross.kv` = its
k and v rows, `cross.out` = `attn.out`, the q / k norms and the pre-/post-norms copied likewise. Cross
attention has no RoPE, so it is the source's attention with positions taken away, not an exact copy of
its function; `cross_init="random"` leaves the fresh initialisation for a warm-up that trains only it
(`--train-only cross_attention`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from encore.model.base import LanguageModel

CROSS_INITS = ("self", "random")


class AdaptError(ValueError):
    """A request `encore.adapt` cannot carry out; the message names the flag and the value."""


def pick_layers(spec: str | int | Sequence[int], n_source: int, flag: str) -> list[int]:
    """Source layer indices for `spec`: "all"; a count N (evenly spaced over the source's depth, the
    first and last layer always in: `round(i * (L - 1) / (N - 1))`); or explicit indices "i,j,...".

    Why evenly spaced: the first layer reads the embeddings and the last one feeds the head, so both
    stay; between them, layer-dropping studies (ShortGPT, Gromov et al. 2024) find neighbouring layers
    the most alike, so keeping every (L/N)-th layer loses least (DistilBERT and TinyBERT take a uniform
    subset for the same reason). 30 -> 10 keeps 0, 3, 6, 10, 13, 16, 19, 23, 26, 29."""
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
        if spec == 1:
            return [n_source - 1]
        return [round(i * (n_source - 1) / (spec - 1)) for i in range(spec)]
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


def _layer_params(layer: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in layer.named_parameters() if not n.startswith(("cross.", "cross_norm", "post_cross"))]


@torch.no_grad()
def copy_weights(
    model: LanguageModel, source: LanguageModel, encoder: list[int], decoder: list[int], cross_init: str
) -> None:
    """Fill the encoder-decoder `model` from the decoder-only `source` (see the module docstring)."""
    model.embed.weight.copy_(source.embed.weight[: model.config.vocab_size])
    for name in ("eoi_embedding",):
        if hasattr(source.embed, name):
            getattr(model.embed, name).copy_(getattr(source.embed, name))
    if model.lm_head is not None:
        model.lm_head.weight.copy_(source.lm_head.weight)
    copy_module(model.final_norm, source.final_norm)
    copy_module(model.encoder_norm, source.final_norm)
    for layer, i in zip(model.encoder, encoder, strict=True):
        copy_module(layer, source.decoder[i])
    for layer, i in zip(model.decoder, decoder, strict=True):
        own = dict(layer.named_parameters())
        for name, p in _layer_params(source.decoder[i]):
            own[name].copy_(p)
        if cross_init == "self":
            copy_self_to_cross(layer)
