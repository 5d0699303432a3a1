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

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from encore.infer.processors import Processors, sequence_starts, setting

NEG = -1.0e9  # transformers' "never chosen" score


@dataclass(frozen=True)
class Beams:
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1

    @classmethod
    def from_generation(cls, generation: dict[str, Any], **given: Any) -> Beams:
        """A checkpoint's generation config (transformers' defaults where it is silent), `given` over it."""

        pick = lambda key, default: setting(given, generation, key, default)
        return cls(
            num_beams=pick("num_beams", 1),
            length_penalty=pick("length_penalty", 1.0),
            early_stopping=pick("early_stopping", False),
            num_return_sequences=pick("num_return_sequences", 1),
        )

    def best_only(self) -> Beams:
        """The same search returning one sequence an input."""
        return replace(self, num_return_sequences=1)

    def check(self, do_sample: bool = False) -> Beams:
        """Raise ValueError naming the setting out of range; returns self."""
        for name in ("num_beams", "num_return_sequences"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences {self.num_return_sequences} is more than num_beams {self.num_beams}"
            )
        if isinstance(self.length_penalty, bool) or not isinstance(self.length_penalty, (int, float)):
            raise ValueError(f"length_penalty must be a number, got {self.length_penalty!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if do_sample and self.num_beams > 1:
            raise ValueError("num_beams > 1 searches greedily over beams: beam sampling (do_sample) is not supported")
        return self


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
    search = _Search(B, K, max_new_tokens, beams, eos or (), logits.device)
    for step in range(max_new_tokens):
        if step:
            logits = model.decode_step(search.tokens(), cache)
        else:
            logits = logits[rows]
        scores = torch.log_softmax(logits.float(), dim=-1)
        history = [prompt[i // K] + seq for i, seq in enumerate(search.histories())]
        scores = processors(scores, history, step, step == max_new_tokens - 1, eos_ids)
        source = search.advance(scores, step)
        if not search.going(step):
            break
        cache = cache.select_rows(source, cross=False)  # the hypotheses of an input share its cross K/V
    return search.result(config.pad_token_id)


class _Search:
    """The running and finished hypotheses of B inputs x K beams (transformers' bookkeeping)."""

    def __init__(self, B: int, K: int, max_new: int, beams: Beams, eos: tuple[int, ...], device: torch.device):
        self.B, self.K, self.max_new, self.beams = B, K, max_new, beams
        self.keep = max(2, 1 + len(eos)) * K  # candidates kept per input: enough to continue K after some end
        self.eos = torch.tensor(eos, dtype=torch.long, device=device)
        self.running = torch.zeros(B, K, 0, dtype=torch.long, device=device)
        self.running_scores = torch.full((B, K), NEG, device=device)
        self.running_scores[:, 0] = 0.0  # the first step continues one hypothesis, not K copies of it
        self.finished = torch.zeros(B, K, max_new, dtype=torch.long, device=device)
        self.finished_len = torch.zeros(B, K, dtype=torch.long, device=device)
        self.finished_scores = torch.full((B, K), NEG, device=device)
        self.is_finished = torch.zeros(B, K, dtype=torch.bool, device=device)
        self.improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
        self.all_hit = False

    def histories(self) -> list[list[int]]:
        return self.running.flatten(0, 1).tolist()

    def tokens(self) -> Tensor:
        return self.running[:, :, -1].flatten()

    def advance(self, scores: Tensor, step: int) -> Tensor:
        """One step: `scores` [B * K, V] of the running rows -> the cache rows the new running rows come from."""
        B, K, V = self.B, self.K, scores.shape[-1]
        total = (scores.view(B, K, V) + self.running_scores[:, :, None]).view(B, K * V)
        top_scores, top = total.topk(self.keep, dim=-1)  # [B, 2K]
        beam, token = top // V, top % V
        candidates = torch.cat([self.running.gather(1, beam[..., None].expand(-1, -1, step)), token[..., None]], -1)
        hits = torch.isin(token, self.eos) | (step + 1 == self.max_new)  # [B, 2K]
        self.all_hit = bool(hits.all())
        # the best K candidates that did not end run on
        going = top_scores + hits.float() * NEG
        order = going.topk(K, dim=-1).indices
        self.running = candidates.gather(1, order[..., None].expand(-1, -1, step + 1))
        self.running_scores = going.gather(1, order)
        self._finish(candidates, top_scores, hits, step)
        source = beam.gather(1, order) + torch.arange(B, device=beam.device)[:, None] * K
        return source.flatten()

    def _finish(self, candidates: Tensor, top_scores: Tensor, hits: Tensor, step: int) -> None:
        """Merge the candidates that ended among the best K into the finished set (its best K kept)."""
        B, K = self.B, self.K
        ended = hits.clone()
        ended[:, K:] = False  # only the best K may finish; the rest exist to keep K running
        scores = top_scores / ((step + 1) ** self.beams.length_penalty)
        full = self.is_finished.all(dim=-1, keepdim=True) & (self.beams.early_stopping is True)
        scores = scores + full.float() * NEG + (~self.improvable).float() * NEG + (~ended).float() * NEG
        padded = torch.zeros(B, candidates.shape[1], self.max_new, dtype=torch.long, device=candidates.device)
        padded[:, :, : step + 1] = candidates
        merged = torch.cat([self.finished, padded], 1)
        merged_scores = torch.cat([self.finished_scores, scores], 1)
        merged_len = torch.cat([self.finished_len, torch.full_like(scores, step + 1, dtype=torch.long)], 1)
        merged_done = torch.cat([self.is_finished, ended], 1)
        best = merged_scores.topk(K, dim=-1).indices
        self.finished = merged.gather(1, best[..., None].expand(-1, -1, self.max_new))
        self.finished_scores = merged_scores.gather(1, best)
        self.finished_len = merged_len.gather(1, best)
        self.is_finished = merged_done.gather(1, best)

    def going(self, step: int) -> bool:
        """transformers' stopping rule after `step`: some input can still improve, is not full (early
        stopping), and some candidate did not end."""
        generated = step + 1
        never = self.beams.early_stopping == "never" and self.beams.length_penalty > 0.0
        length = self.max_new if never else generated
        best_running = self.running_scores[:, :1] / (length**self.beams.length_penalty)
        worst = self.finished_scores.min(dim=1, keepdim=True).values.expand_as(self.is_finished)
        worst = worst.masked_fill(~self.is_finished, NEG)
        self.improvable &= (best_running > worst).any(dim=-1, keepdim=True)
        full = bool(self.is_finished.all()) and self.beams.early_stopping is True
        return bool(self.improvable.any()) and not full and not self.all_hit

    def result(self, pad: int) -> tuple[Tensor, Tensor]:
        R = self.beams.num_return_sequences
        tokens = self.finished[:, :R].flatten(0, 1)  # [B * R, max_new]
        lengths = self.finished_len[:, :R].flatten()
        keep = torch.arange(self.max_new, device=tokens.device)[None] < lengths[:, None]
        return tokens.masked_fill(~keep, pad), self.finished_scores[:, :R].flatten()
