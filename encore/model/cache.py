"""Generation state: preallocated K/V for a batch of rows, with each row's position in a tensor.

One layout serves a single request (`LanguageModel.generate`: one row per input) and the engine's
slots (`encore.infer.engine`: one row per slot, requests coming and going):

- self-attention K/V `[L, B, K, T, Dh]`: the *output* tokens of an encoder-decoder, prompt + output of a
  decoder-only model. Row b's real positions are 0 .. length[b] - 1 (prompts are laid out right-padded,
  so a row's positions never depend on the others');
- `length` `[B]`: positions written per row, which is also the RoPE position of the row's next token;
- encoder-decoder only: cross-attention K/V `[L, B, K, S, Dh]`, projected from the encoder states once
  per request, and `cross_mask` `[B, S]` (None when no row is padded); `cross_from` `[B]` (the
  engine's): rows holding equal cross K/V (a beam request's slots) read one of them, so the fused decode
  layer reads one copy for all of a request's beams.

A decode step writes each row's new K/V at its own `length` (a scatter) and attends over all T
positions with a mask derived from `length`: fixed shapes, no host read, no allocation that depends on
values, so a step can be captured as a CUDA graph, compiled with `fullgraph=True` or exported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from encore.config import ModelConfig


@dataclass
class GenerationCache:
    k: Tensor  # [L, B, K, T, Dh]
    v: Tensor  # [L, B, K, T, Dh]
    length: Tensor  # [B] int64: positions written per row = the next token's position
    cross_k: Tensor | None = None  # [L, B, K, S, Dh] (encoder-decoder)
    cross_v: Tensor | None = None
    cross_mask: Tensor | None = None  # [B, S] bool: real encoder positions; None when nothing is padded
    cross_from: Tensor | None = None  # [B] int64: the row whose (equal) cross K/V row b reads; None: its own
    prefilling: bool = False  # a prefill writes K/V at 0 .. T_new - 1 and attends over its own K/V only
    prefill_start: int = 0  # ... or, after cached positions (prefix reuse), at P .. P + T_new - 1 over 0 .. P + T_new

    @classmethod
    def allocate(
        cls,
        config: ModelConfig,
        batch_size: int,
        input_len: int,
        max_new_tokens: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> GenerationCache:
        """What `batch_size` rows of up to `input_len` input tokens need for `max_new_tokens` each:
        encoder-decoder: self K/V over the outputs + cross K/V over the input; decoder-only: self K/V
        over input + outputs."""
        c = config
        self_len, cross_len = c.cache_positions(input_len, max_new_tokens)
        shape = (c.n_decoder_layers, batch_size, c.n_kv_heads, self_len, c.head_dim)
        cache = cls(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            length=torch.zeros(batch_size, dtype=torch.long, device=device),
        )
        if cross_len:  # (input_len 0: the caller brings the cross K/V)
            cross = (c.n_decoder_layers, batch_size, c.n_kv_heads, cross_len, c.head_dim)
            cache.cross_k = torch.zeros(cross, device=device, dtype=dtype)
            cache.cross_v = torch.zeros(cross, device=device, dtype=dtype)
        return cache

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def key_positions(self) -> Tensor:
        """[1, T]: the position of each key a decode step attends over (a relative bias reads them)."""
        return torch.arange(self.max_len, device=self.length.device)[None]

    @property
    def max_len(self) -> int:
        """T: self-attention positions per row."""
        return self.k.shape[3]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store a layer's new K/V [B, K, T_new, Dh]; return what its attention reads. Prefill: the
        rows' first T_new positions, attended as they are. Decode (T_new = 1): each row's own position
        `length[b]`, then the whole [B, K, T, Dh] cache (the step's mask hides what is not written)."""
        if self.prefilling:
            start, end = self.prefill_start, self.prefill_start + k.shape[2]
            self.k[layer, :, :, start:end] = _stored(k, self.k.dtype)
            self.v[layer, :, :, start:end] = _stored(v, self.v.dtype)
            if start == 0:
                return k, v
            return self.k[layer, :, :, :end].to(k.dtype), self.v[layer, :, :, :end].to(v.dtype)
        B, K, _, Dh = k.shape
        where = self.length.clamp(max=self.max_len - 1).view(B, 1, 1, 1).expand(B, K, 1, Dh)
        self.k[layer].scatter_(2, where, _stored(k, self.k.dtype))
        self.v[layer].scatter_(2, where, _stored(v, self.v.dtype))
        return self.k[layer], self.v[layer]

    def step_mask(self, window: int = 0) -> Tensor:
        """[B, 1, 1, T]: the positions a decoding row attends to, its own new one included; with a
        `window` W, only the last W of them (a sliding layer)."""
        positions = torch.arange(self.max_len, device=self.length.device)[None, :]
        mask = positions <= self.length[:, None]
        if window:
            mask &= positions > self.length[:, None] - window
        return mask[:, None, None, :]

    def view(self, rows: int, self_len: int | None = None, cross_len: int | None = None) -> GenerationCache:
        """The first `rows` rows and the first `self_len` / `cross_len` positions, sharing storage: a
        step on the view writes into this cache. Lets an eager step skip idle rows and unwritten
        positions (the engine knows both without reading the device)."""
        cut = lambda t, n: None if t is None else (t[:, :rows] if n is None else t[:, :rows, :, :n])
        return replace(
            self,
            k=cut(self.k, self_len),
            v=cut(self.v, self_len),
            length=self.length[:rows],
            cross_k=cut(self.cross_k, cross_len),
            cross_v=cut(self.cross_v, cross_len),
            cross_mask=None if self.cross_mask is None else self.cross_mask[:rows, :cross_len],
            cross_from=None if self.cross_from is None else self.cross_from[:rows],
        )

    def row(self, b: int) -> GenerationCache:
        """Row `b` alone, sharing storage (a write into it is a write into this cache's row b): the
        engine's chunked prefill continues one slot's prompt in place."""
        one = lambda t: None if t is None else t[:, b : b + 1]
        return replace(
            self,
            k=one(self.k),
            v=one(self.v),
            length=self.length[b : b + 1],
            cross_k=one(self.cross_k),
            cross_v=one(self.cross_v),
            cross_mask=None if self.cross_mask is None else self.cross_mask[b : b + 1],
            cross_from=None,
        )

    def select_rows(self, rows: Tensor, cross: bool = True) -> GenerationCache:
        """A cache of rows `rows` [N] of this one (copies): a beam search's hypotheses. `cross=False`
        keeps the cross K/V as they are, for a reorder among the beams of the same inputs."""
        take = lambda t: None if t is None else t[:, rows]
        return replace(
            self,
            k=take(self.k),
            v=take(self.v),
            length=self.length[rows],
            cross_k=take(self.cross_k) if cross else self.cross_k,
            cross_v=take(self.cross_v) if cross else self.cross_v,
            cross_mask=self.cross_mask[rows] if cross and self.cross_mask is not None else self.cross_mask,
            cross_from=None,
        )

    def install(self, other: GenerationCache, slots: list[int], rows: list[int] | None = None) -> None:
        """Copy `other`'s rows (a just-prefilled batch) into rows `slots` of this cache: row `rows[i]`
        (default i) into slot `slots[i]`, so one prefilled row can fill several slots."""
        index = torch.tensor(slots, device=self.k.device)
        pick = (lambda t: t) if rows is None else (lambda t: t[:, rows] if t.dim() > 2 else t[rows])
        t, s = other.max_len, None if other.cross_k is None else other.cross_k.shape[3]
        self.k[:, index, :, :t] = pick(other.k)
        self.v[:, index, :, :t] = pick(other.v)
        self.length[index] = pick(other.length)
        if s is not None:
            self.cross_k[:, index, :, :s] = pick(other.cross_k)
            self.cross_v[:, index, :, :s] = pick(other.cross_v)
            if self.cross_mask is None:
                shape = (self.batch_size, self.cross_k.shape[3])
                self.cross_mask = torch.zeros(shape, dtype=torch.bool, device=index.device)
            self.cross_mask[index] = False
            self.cross_mask[index, :s] = True if other.cross_mask is None else pick(other.cross_mask)

    @staticmethod
    def bytes_for(config: ModelConfig, input_len: int, max_new_tokens: int, dtype_bytes: int = 4) -> int:
        """Bytes of K/V one row needs for `input_len` input and `max_new_tokens` new tokens: what
        `allocate` gives each row (encoder-decoder: outputs + cross; decoder-only: prompt + outputs)."""
        positions = sum(config.cache_positions(input_len, max_new_tokens))
        return 2 * config.n_decoder_layers * config.n_kv_heads * config.head_dim * positions * dtype_bytes

    @property
    def nbytes(self) -> int:
        """Bytes of K/V held: self-attention + cross-attention."""
        return sum(t.nbytes for t in (self.k, self.v, self.cross_k, self.cross_v) if t is not None)


def _stored(x: Tensor, dtype: torch.dtype) -> Tensor:
    """K/V as a cache of `dtype` holds them: in a half-precision cache (`encore.optimize(kv_dtype=
    torch.float16)`) saturated at fp16's largest finite value, so an outlier is not stored as inf (as
    csrc/half.h's f2h_saturated does for the fused kernels' writes)."""
    if dtype == torch.float16 and x.dtype != torch.float16:
        x = x.clamp(-65504.0, 65504.0)
    return x.to(dtype)


def step_masks(cache, window: int) -> dict[str, Tensor]:
    """A decode step's mask for each layer kind ("full"; "sliding" differs when the model has a
    window), from any cache with `step_mask(window)` (this module's, or an export's)."""
    full = cache.step_mask()
    return {"full": full, "sliding": cache.step_mask(window) if window else full}
