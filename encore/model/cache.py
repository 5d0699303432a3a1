"""Generation state: a preallocated self-attention KV cache, plus what stays fixed for a request.

Encoder-decoder: the self-attention cache covers the *output* tokens only; cross-attention K/V are
projected from the encoder states once per request and reused at every step. Decoder-only: the
cache covers prompt + output, and a key mask remembers which prompt slots are padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from encore.config import ModelConfig


class KVCache:
    """Self-attention K/V for all layers: [L, B, K, T_max, Dh], written in place at `length`."""

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # slots filled so far; the next write starts here
        self.max_len = max_len

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k/v [B, K, T, Dh] at `length` and return all K/V so far [B, K, length + T, Dh].
        `length` itself advances once per model step (`advance`), after every layer has written."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions needed, {self.max_len} preallocated")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


@dataclass
class GenerationCache:
    """Everything a decode step needs besides the new token."""

    self_kv: KVCache
    # encoder-decoder: per-layer cross-attention K/V [L, B, K, S, Dh] and the encoder's padding mask
    cross_k: Tensor | None = None
    cross_v: Tensor | None = None
    cross_mask: Tensor | None = None  # [B, 1, 1, S] bool, None when nothing is padded
    # decoder-only: which cache slots are real tokens [B, T_max] (None when nothing is padded)
    # and each row's next RoPE position [B] (rows differ when prompts are padded)
    key_mask: Tensor | None = None
    next_position: Tensor | None = None

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
        """What a request of `batch_size` rows of `input_len` tokens needs for `max_new_tokens`:
        encoder-decoder: self K/V over the outputs + cross K/V over the input; decoder-only: self
        K/V over input + outputs."""
        c, encdec = config, config.arch == "encdec"
        self_len = max_new_tokens if encdec else input_len + max_new_tokens
        self_kv = KVCache(c.n_decoder_layers, batch_size, c.n_kv_heads, self_len, c.head_dim, device, dtype)
        if not encdec:
            return cls(self_kv)
        cross = (c.n_decoder_layers, batch_size, c.n_kv_heads, input_len, c.head_dim)
        return cls(
            self_kv,
            cross_k=torch.empty(cross, device=device, dtype=dtype),
            cross_v=torch.empty(cross, device=device, dtype=dtype),
        )

    @property
    def nbytes(self) -> int:
        """Bytes of K/V held for the request: self-attention + cross-attention."""
        cross = sum(t.nbytes for t in (self.cross_k, self.cross_v) if t is not None)
        return self.self_kv.nbytes + cross
