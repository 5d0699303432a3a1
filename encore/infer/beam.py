"""Beam search with transformers' results: its scores, length penalty, early stopping and the order in
which it keeps finished hypotheses, on encore's prefill / decode step and cache.

Each input keeps `num_beams` running hypotheses (rows of one cache: the input is prefilled once and its
rows copied to the beams). A step scores every continuation (log-softmax, then the logits processors,
plus the hypothesis' score), keeps the best 2 x num_beams, moves those that end (EOS, or the last token
max_new_tokens allows) among the best num_beams into the finished set, scored by
`score / generated_length ** length_penalty`, and continues with the best num_beams that did not end; the
cache's self-attention rows follow their hypotheses (one gather a step). `early_stopping`: True stops an
input once num_beams hypotheses are finished; False (transformers' default) stops when no running
hypothesis can still beat the worst finished one at its current length; "never" at the longest length a
positive length penalty allows. CTranslate2 differs: it always divides by length ** length_penalty and
decides early stopping by its own rule, so its beams can differ from these.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from encore.infer.processors import Processors, sequence_starts
from encore.infer.search import Beams, Search

__all__ = ["Beams", "Search", "beam_search", "candidates"]


@torch.inference_mode()
def beam_search(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    max_new_tokens: int,
    beams: Beams,
    processors: Processors,
    eos: tuple[int, ...] | None,
) -> tuple[Tensor, Tensor]:
    """(tokens [B * R, max_new_tokens], scores [B * R]): each input's R = `num_return_sequences` best
    finished hypotheses, best first, new tokens only, pad after EOS; scores length-penalised as
    transformers' `sequences_scores`."""
    B, K, config = input_ids.shape[0], beams.num_beams, model.config
    logits, cache = model.prefill(input_ids, attention_mask, max_new_tokens)
    rows = torch.arange(B, device=logits.device).repeat_interleave(K)  # each input's beams: K rows
    cache = cache.select_rows(rows)
    prompt = sequence_starts(config, input_ids, attention_mask)
    eos_ids = eos or config.eos_token_ids  # what a minimum length bans
    search = Search(B, K, logits.shape[-1], max_new_tokens, beams, eos or ())
    for step in range(max_new_tokens):
        if step:
            logits = model.decode_step(torch.from_numpy(search.tokens()).to(logits.device), cache)
        else:
            logits = logits[rows]
        scores = torch.log_softmax(logits.float(), dim=-1)
        if processors.active:
            history = [prompt[i // K] + seq for i, seq in enumerate(search.histories())]
            scores = processors(scores, history, step, step == max_new_tokens - 1, eos_ids)
        source = search.advance(*candidates(scores, search), step)
        if not search.going(step):
            break
        cache = cache.select_rows(torch.from_numpy(source).to(logits.device), cross=False)  # cross K/V shared
    tokens, scores = search.result(config.pad_token_id)
    return torch.from_numpy(tokens).to(logits.device), torch.from_numpy(scores).to(logits.device)


def candidates(scores: Tensor, search: Search) -> tuple[np.ndarray, np.ndarray]:
    """A step's best `search.keep` continuations of each input: (their total scores [B, keep], their
    indices into the input's K x V continuations [B, keep]), for `Search.advance`. Each row's best `keep`
    on the scores' device (one `topk`; 2.5x one `topk` over K x V on a CPU), the rest in numpy
    (`Search.merge`)."""
    row_scores, row_tokens = scores.topk(min(search.keep, scores.shape[-1]), dim=-1)  # [B * K, keep]
    return search.merge(row_scores.cpu().numpy(), row_tokens.cpu().numpy())
