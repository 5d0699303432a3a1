"""Chunked prefill (`Engine(prefill_chunk=N)`): a long prompt is prefilled over several steps, about N
tokens' worth of work per step, so the running requests keep getting a token every step instead of
waiting for the whole prefill (what vLLM's and llama.cpp's servers do).

A request prefilled in pieces holds its slot but is not running: it emits nothing until its prefill
completes, then its first token (in the step of its last piece, which decodes it as well), and from
then on decodes as any other. Every step's pieces go oldest request first, N tokens' worth in all;
the oldest always advances.

- Decoder-only: by tokens. The slot's own K/V hold the prompt's first `done` positions and each piece
  continues from them in place (`DecoderOnly.prefill_into` on the slot's row, as prefix reuse continues
  from stored K/V): the same K/V and logits as one prefill. The cache holds every position (no ring
  buffer), so a sliding window is only a mask and chunking stays exact with one.
- Encoder-decoder: the encoder is bidirectional (every layer reads the whole input), so by layers: a
  piece runs the next few encoder layers over the whole input (N x layers / input length of them, at
  least one), the hidden state kept here; the last piece runs the rest as `prefill` does (final norm,
  cross K/V, the decoder's first step) and installs it in the slot.

The decode step computes every row up to the highest slot in use, so it computes (and discards) a
pending slot's row too; what that row writes must do no harm. Decoder-only: the slot's `length` is
`done` after each piece, so the stray K/V lands at `done` or later, where the next piece writes (the
engine's eager view keeps those positions in: its length covers every seated request's `cache_len`).
Encoder-decoder: its self-attention rows are overwritten by the install, and its cross mask is set to
all true, so a never-used slot's row (cross mask all false: a softmax over nothing) cannot produce NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class _Pending:
    request: Any  # the engine's request
    done: int  # decoder-only: prompt positions its slot holds; encoder-decoder: encoder layers run
    hidden: Tensor | None = None  # encoder-decoder: the encoder's states [1, S, D] after `done` layers


class ChunkedPrefill:
    """The requests being prefilled in pieces (oldest first) and each step's pieces of work."""

    def __init__(self, model: Any, cache: Any, chunk: int):
        self.model, self.cache, self.chunk = model, cache, chunk
        self.encdec = model.config.arch == "encdec"
        self.pending: list[_Pending] = []

    def takes(self, r: Any, start: int = 0) -> bool:
        """Whether `r` is prefilled in pieces: a token prompt in one slot whose part after `start` cached
        positions (prefix reuse) is longer than a chunk. Beam requests (several slots) and speech
        windows (log-mel features) keep the whole prefill; so do prompts shared with another request
        admitted with it (the engine checks): one prefill serves them all."""
        return r.features is None and r.beams.num_beams == 1 and len(r.ids) - start > self.chunk

    def begin(self, r: Any, start: int = 0, past: tuple[Tensor, Tensor] | None = None) -> None:
        """Start `r` (seated in `r.slot`) after its first `start` positions, whose K/V `past` [L, K, start, Dh]
        (a stored prefix) go into its slot."""
        slot, hidden = r.slot, None
        if self.encdec:
            ids = torch.tensor([r.ids], device=self.cache.k.device)
            hidden = self.model.encoder_inputs(ids, None)  # [1, S, D]
            self.cache.length[slot] = 0
            self.cache.cross_mask[slot] = True  # its discarded decode rows stay finite (module docstring)
        else:
            if past is not None:
                self.cache.k[:, slot, :, :start], self.cache.v[:, slot, :, :start] = past
            self.cache.length[slot] = start
        r.pending, r.cache_len = True, 0 if self.encdec else start
        self.pending.append(_Pending(r, start, hidden))

    def drop(self, r: Any) -> None:
        """Forget `r` (cancelled mid-prefill; the engine frees its slot)."""
        self.pending = [p for p in self.pending if p.request is not r]
        r.pending = False

    def advance(self) -> list[tuple[Any, Tensor]]:
        """One step's pieces, oldest request first, about `chunk` tokens' worth in all. Returns (request,
        first-token logits [1, V]) for each request whose prefill completed; its cache is in its slot."""
        budget, done = self.chunk, []
        for i, p in enumerate(list(self.pending)):
            if budget <= 0:
                break
            piece = self._layers if self.encdec else self._tokens
            logits, budget = piece(p, budget, 1 if i == 0 else 0)
            if logits is not None:
                self.pending.remove(p)
                p.request.pending = False
                done.append((p.request, logits))
        return done

    def _tokens(self, p: _Pending, budget: int, _least: int) -> tuple[Tensor | None, int]:
        """The prompt's next `budget` tokens (at most) into its slot, after the `done` it holds."""
        r = p.request
        n = min(budget, len(r.ids) - p.done)
        ids = torch.tensor([r.ids[p.done : p.done + n]], device=self.cache.k.device)  # [1, n]
        logits = self.model.prefill_into(ids, self.cache.row(r.slot), p.done)  # length[slot] = done + n
        p.done += n
        r.cache_len = p.done
        return (logits if p.done == len(r.ids) else None), budget - n

    def _layers(self, p: _Pending, budget: int, least: int) -> tuple[Tensor | None, int]:
        """The next encoder layers `budget` tokens' worth buys (a layer over S positions costs S / L
        tokens' worth: the whole encoder costs S), at least `least`; after the last, the rest of the
        prefill into the slot."""
        r, layers = p.request, len(self.model.encoder)
        S = p.hidden.shape[1]
        n = min(layers - p.done, max(least, budget * layers // S))
        if n == 0:
            return None, budget
        p.hidden = self.model.encoder_layers(p.hidden, None, p.done, p.done + n)
        p.done += n
        budget -= max(1, -(-n * S // layers))  # ceil(n * S / L)
        if p.done < layers:
            return None, budget
        memory, p.hidden = self.model.encoder_norm(p.hidden), None
        ids = torch.tensor([r.ids], device=memory.device)
        logits, fresh = self.model.prefill(ids, None, 1, memory=memory)
        self.cache.install(fresh, r.slots)
        r.cache_len = self.model.config.cache_positions(len(r.ids), 0)[0]
        return logits, budget
