"""Where a stack's token positions enter, one module per `ModelConfig.position_kind`, chosen when the
model is built:

- "rope": inside the attention (`layers.RotaryEmbedding`, `layers.Rotate`); nothing here;
- "learned": a table of vectors added to the token embeddings, position 0 at row `position_offset` (BART);
- "sinusoidal": fixed vectors, sin in the first half, cos in the second, frequencies 10000^(-2i/D)
  (Marian, Pegasus);
- "sinusoidal_fairseq": M2M100's / NLLB's: frequencies 10000^(-i/(D/2 - 1)), from row `position_offset`;
- "relative": T5's bucketed bias, one learned scalar per head and bucket of key - query distance, added
  to every attention score of the stack (layer 0 owns it in T5's files, every layer reads it).

Each module has two hooks the stack calls: `embed(x, positions)` adds absolute vectors to the embeddings,
`scores(masks, queries, keys)` turns the layers' boolean masks into additive score masks. Both are the
identity for the kinds that do not use them, so a stack's `forward` reads the same for every family.
Positions count real tokens (`inputs.positions_from_mask`), so left padding shifts nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encore.config import ModelConfig

Masks = dict[str, Tensor | None]  # a layer kind ("full", "sliding") -> its mask


class Positions(nn.Module):
    """RoPE's: positions are applied inside the attention."""

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x

    def scores(self, masks: Masks, queries: Tensor, keys: Tensor) -> Masks:
        return masks


class LearnedPositions(Positions):
    """x + table[positions + offset] (BART's learned positions start at row 2)."""

    def __init__(self, n_positions: int, dim: int, offset: int):
        super().__init__()
        self.offset = offset
        self.weight = nn.Parameter(torch.zeros(n_positions + offset, dim))

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x + F.embedding(positions + self.offset, self.weight).to(x.dtype)


class SinusoidalPositions(Positions):
    """x + a fixed sin / cos table (a buffer, never saved): `fairseq` picks M2M100's frequencies."""

    def __init__(self, n_positions: int, dim: int, offset: int, fairseq: bool):
        super().__init__()
        self.n_positions, self.dim, self.offset, self.fairseq = n_positions + offset, dim, offset, fairseq
        self.register_buffer("table", torch.empty(0), persistent=False)
        self.reset_tables()

    def reset_tables(self, device: torch.device | str | None = None) -> None:
        half = self.dim // 2
        steps = torch.arange(half, dtype=torch.float64)
        exponent = steps / (half - 1) if self.fairseq else 2 * steps / self.dim
        angles = torch.arange(self.n_positions, dtype=torch.float64)[:, None] * 10000.0**-exponent  # [N, D/2]
        table = torch.cat([angles.sin(), angles.cos(), torch.zeros(self.n_positions, self.dim % 2)], dim=-1)
        self.table = table.float().to(device or self.table.device)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x + self.table[positions + self.offset].to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.n_positions}, {self.dim}, offset={self.offset}, fairseq={self.fairseq}"


class RelativeBias(Positions):
    """T5's relative position bias: scores + bias[bucket(key - query), head]. A bidirectional stack (the
    encoder) gives half its buckets to keys after the query; a causal one (the decoder) sees only keys
    at or before it, and masks the others itself (its masks may be None: "causal, nothing padded")."""

    def __init__(self, n_heads: int, buckets: int, max_distance: int, bidirectional: bool):
        super().__init__()
        self.buckets, self.max_distance, self.bidirectional = buckets, max_distance, bidirectional
        self.bias = nn.Embedding(buckets, n_heads)

    def bucket(self, relative: Tensor) -> Tensor:
        """key - query distances -> bucket ids: exact up to half the buckets, log-spaced to max_distance."""
        n, out = self.buckets, torch.zeros_like(relative)
        if self.bidirectional:
            n //= 2
            out += (relative > 0).long() * n
            relative = relative.abs()
        else:
            relative = -relative.clamp(max=0)
        exact = n // 2
        far = exact + (torch.log(relative.float() / exact) / math.log(self.max_distance / exact) * (n - exact)).long()
        return out + torch.where(relative < exact, relative, far.clamp(max=n - 1))

    def scores(self, masks: Masks, queries: Tensor, keys: Tensor) -> Masks:
        """queries [B, T], keys [B|1, S] positions -> each mask as an additive [B, H, T, S] float mask."""
        relative = keys[:, None, :] - queries[:, :, None]  # [B, T, S]
        bias = self.bias(self.bucket(relative)).permute(0, 3, 1, 2)  # [B, H, T, S]
        if not self.bidirectional:
            bias = bias.masked_fill((relative > 0)[:, None], float("-inf"))
        out: Masks = {}
        for kind, mask in masks.items():
            out[kind] = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        return out


def make_positions(config: ModelConfig, part: str) -> Positions:
    """The positions module of a stack: `part` "encoder" (bidirectional) or "decoder" (causal)."""
    kind = config.position_kind
    if kind == "learned":
        return LearnedPositions(config.max_seq_len, config.d_model, config.position_offset)
    if kind in ("sinusoidal", "sinusoidal_fairseq"):
        return SinusoidalPositions(
            config.max_seq_len, config.d_model, config.position_offset, fairseq=kind == "sinusoidal_fairseq"
        )
    if kind == "relative":
        return RelativeBias(
            config.n_heads, config.relative_buckets, config.relative_max_distance, bidirectional=part == "encoder"
        )
    return Positions()
