"""Prefix reuse for a decoder-only model: the K/V of prompt prefixes already computed, kept in blocks.

    store = PrefixStore(block=32, budget_bytes=256 << 20)
    store.put(tokens, k_row, v_row)        # after a request: its positions' K/V [L, K, n, Dh], in blocks
    n = store.match(ids)                   # how many leading tokens of `ids` have their K/V stored
    k, v = store.gather(ids, n)            # [L, K, n, Dh] each, to prefill only ids[n:]

Blocks are `block` tokens, aligned at 0, keyed by the token content of the whole prefix up to the
block's end (so two prompts share a block exactly when they agree up to there: a chat's next turn, or
requests with one system prompt). The K/V of a position depends only on the tokens up to it, so a
stored block is valid for every prompt that starts with its key. Least recently used blocks go first
when the store passes its byte budget. This is vLLM's automatic prefix caching in its simplest form,
for the engine's decoder-only baseline (an encoder-decoder re-encodes its input every turn; its K/V
of earlier turns is not reused).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor


class PrefixStore:
    def __init__(self, block: int = 32, budget_bytes: int = 256 << 20):
        if block < 1 or budget_bytes < 0:
            raise ValueError(f"PrefixStore needs block >= 1 and budget_bytes >= 0, got {block}, {budget_bytes}")
        self.block, self.budget = block, budget_bytes
        self.blocks: OrderedDict[tuple[int, ...], tuple[Tensor, Tensor]] = OrderedDict()
        self.nbytes = 0
        self.hits = self.reused_tokens = 0

    def _keys(self, ids: list[int], limit: int) -> list[tuple[int, ...]]:
        """The keys of the whole blocks within `ids[:limit]`."""
        return [tuple(ids[:end]) for end in range(self.block, limit + 1, self.block)]

    def match(self, ids: list[int]) -> int:
        """Leading tokens of `ids` whose K/V are stored, leaving at least one token to prefill (it gives
        the next token's logits): a multiple of `block`, or 0."""
        n = 0
        for key in self._keys(ids, len(ids) - 1):
            if key not in self.blocks:
                break
            n = len(key)
        return n

    def gather(self, ids: list[int], n: int) -> tuple[Tensor, Tensor]:
        """The stored K/V of `ids[:n]` (n from `match`), [L, K, n, Dh] each; marks the blocks used."""
        keys = self._keys(ids, n)
        self._touch(keys)
        ks, vs = zip(*(self.blocks[key] for key in keys))
        self.hits += 1
        self.reused_tokens += n
        return torch.cat(ks, dim=2), torch.cat(vs, dim=2)

    def put(self, tokens: list[int], k: Tensor, v: Tensor) -> None:
        """Store the whole blocks of `tokens`' K/V (`k`, `v` [L, K, >= len(tokens), Dh]: positions in
        order); blocks already there are only marked used. Evicts the least recently used past the budget."""
        keys = self._keys(tokens, min(len(tokens), k.shape[2]))
        for key in keys:
            if key not in self.blocks:
                start = len(key) - self.block
                self.blocks[key] = (k[:, :, start : len(key)].clone(), v[:, :, start : len(key)].clone())
                self.nbytes += sum(t.nbytes for t in self.blocks[key])
        self._touch(keys)
        while self.nbytes > self.budget:
            _, (old_k, old_v) = self.blocks.popitem(last=False)
            self.nbytes -= old_k.nbytes + old_v.nbytes

    def _touch(self, keys: list[tuple[int, ...]]) -> None:
        """Mark a chain's blocks used, its first block last: a chain is evicted from its end, so
        what stays is still a prefix that matches."""
        for key in reversed(keys):
            self.blocks.move_to_end(key)

    def clear(self) -> None:
        self.blocks.clear()
        self.nbytes = 0
