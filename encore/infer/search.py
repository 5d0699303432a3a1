"""Beam search's settings and bookkeeping, in numpy: one search behind `generate`'s beams
(`encore.infer.beam`), the engine's beam requests and the torch-free ONNX runtime. Its caller scores the
running rows and takes each row's best `keep` continuations where the logits live (a row-wise top-k:
`encore.infer.beam.candidates`, the engine's batched step, `numpy_candidates`); `Search.merge` picks each
input's best of those and `Search.advance` does transformers' bookkeeping on those few numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

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


def _top(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of each row of a small [B, N] array, largest first (ties: first first)."""
    return np.argsort(-x, axis=-1, kind="stable")[:, :k]


class Search:
    """The running and finished hypotheses of B inputs x K beams (transformers' bookkeeping), in numpy:
    the same search behind `beam_search`, the engine's beam requests and the ONNX runtime (torch-free).
    Each step its caller scores the running rows and takes each row's best `keep` continuations;
    `merge` and `advance` do the rest."""

    def __init__(self, B: int, K: int, V: int, max_new: int, beams: Beams, eos: tuple[int, ...] | list[int]):
        self.B, self.K, self.V, self.max_new, self.beams = B, K, V, max_new, beams
        self.keep = max(2, 1 + len(eos)) * K  # candidates kept per input: enough to continue K after some end
        self.eos = np.array(list(eos), dtype=np.int64)
        self.running = np.zeros((B, K, 0), dtype=np.int64)
        self.running_scores = np.full((B, K), NEG, dtype=np.float32)
        self.running_scores[:, 0] = 0.0  # the first step continues one hypothesis, not K copies of it
        self.finished = np.zeros((B, K, max_new), dtype=np.int64)
        self.finished_len = np.zeros((B, K), dtype=np.int64)
        self.finished_scores = np.full((B, K), NEG, dtype=np.float32)
        self.is_finished = np.zeros((B, K), dtype=bool)
        self.improvable = np.ones((B, 1), dtype=bool)
        self.all_hit = False
        self.rows = np.arange(B)[:, None]  # [B, 1]: indexes each input's own row of a [B, ...] array

    def histories(self) -> list[list[int]]:
        return self.running.reshape(self.B * self.K, -1).tolist()

    def tokens(self) -> np.ndarray:
        """[B * K]: each running row's last token (the next step's input)."""
        return np.ascontiguousarray(self.running[:, :, -1].reshape(-1))

    def merge(self, row_scores: np.ndarray, row_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each input's best `keep` continuations from each running row's best ones (row_scores,
        row_tokens: [B * K, n >= keep] log-probabilities and tokens, best first): (total scores [B, keep],
        indices into the input's K x V [B, keep]), for `advance`. The same as the best `keep` of all
        K x V totals: a row's score is one number added to all its continuations."""
        B, K, keep = self.B, self.K, self.keep
        n = min(keep, row_scores.shape[-1])
        total = (row_scores[:, :n].reshape(B, K, n) + self.running_scores[:, :, None]).reshape(B, K * n)
        pick, rows = _top(total, keep), self.rows
        top = (pick // n) * self.V + row_tokens[:, :n].reshape(B, K * n)[rows, pick]
        return total[rows, pick], top

    def advance(self, top_scores: np.ndarray, top: np.ndarray, step: int) -> np.ndarray:
        """One step from the best continuations of each input (`merge`: total scores and indices into
        K x V, [B, keep]) -> the rows [B * K] the new running rows come from."""
        K, rows = self.K, self.rows
        beam, token = top // self.V, top % self.V
        candidates = np.concatenate([self.running[rows, beam], token[..., None]], -1)  # [B, keep, step + 1]
        hits = (token[..., None] == self.eos).any(-1) | (step + 1 == self.max_new)  # [B, keep]
        self.all_hit = bool(hits.all())
        # the best K candidates that did not end run on
        going = (top_scores + hits.astype(np.float32) * NEG).astype(np.float32)
        order = _top(going, K)
        self.running = candidates[rows, order]
        self.running_scores = going[rows, order]
        self._finish(candidates, top_scores, hits, step)
        return (beam[rows, order] + rows * K).reshape(-1)

    def _finish(self, candidates: np.ndarray, top_scores: np.ndarray, hits: np.ndarray, step: int) -> None:
        """Merge the candidates that ended among the best K into the finished set (its best K kept)."""
        B, K = self.B, self.K
        ended = hits.copy()
        ended[:, K:] = False  # only the best K may finish; the rest exist to keep K running
        if not ended.any():  # nothing to merge: the finished set stays as it is
            return
        scores = (top_scores / np.float32((step + 1) ** self.beams.length_penalty)).astype(np.float32)
        full = self.is_finished.all(axis=-1, keepdims=True) & (self.beams.early_stopping is True)
        for blocked in (full, ~self.improvable, ~ended):
            scores = scores + blocked.astype(np.float32) * NEG
        padded = np.zeros((B, candidates.shape[1], self.max_new), dtype=np.int64)
        padded[:, :, : step + 1] = candidates
        merged = np.concatenate([self.finished, padded], 1)
        merged_scores = np.concatenate([self.finished_scores, scores.astype(np.float32)], 1)
        merged_len = np.concatenate([self.finished_len, np.full(scores.shape, step + 1, dtype=np.int64)], 1)
        merged_done = np.concatenate([self.is_finished, ended], 1)
        best, rows = _top(merged_scores, K), self.rows
        self.finished, self.finished_scores = merged[rows, best], merged_scores[rows, best]
        self.finished_len, self.is_finished = merged_len[rows, best], merged_done[rows, best]

    def going(self, step: int) -> bool:
        """transformers' stopping rule after `step`: some input can still improve, is not full (early
        stopping), and some candidate did not end."""
        generated = step + 1
        never = self.beams.early_stopping == "never" and self.beams.length_penalty > 0.0
        length = self.max_new if never else generated
        best_running = self.running_scores[:, :1] / np.float32(length**self.beams.length_penalty)
        worst = np.broadcast_to(self.finished_scores.min(axis=1, keepdims=True), self.is_finished.shape)
        worst = np.where(self.is_finished, worst, np.float32(NEG))
        self.improvable &= (best_running > worst).any(axis=-1, keepdims=True)
        full = bool(self.is_finished.all()) and self.beams.early_stopping is True
        return bool(self.improvable.any()) and not full and not self.all_hit

    def result(self, pad: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [B * R, max_new], pad after each one's end; scores [B * R]): each input's R best."""
        R = self.beams.num_return_sequences
        tokens = self.finished[:, :R].reshape(self.B * R, self.max_new)
        lengths = self.finished_len[:, :R].reshape(-1)
        keep = np.arange(self.max_new)[None] < lengths[:, None]
        return np.where(keep, tokens, pad), self.finished_scores[:, :R].reshape(-1).copy()

    def sequences(self) -> tuple[list[list[int]], list[float]]:
        """Each input's R best sequences (EOS included when they ended so), best first, and their scores."""
        R = self.beams.num_return_sequences
        lengths = self.finished_len[:, :R].reshape(-1).tolist()
        rows = self.finished[:, :R].reshape(self.B * R, self.max_new).tolist()
        return [row[:n] for row, n in zip(rows, lengths)], self.finished_scores[:, :R].reshape(-1).tolist()


def numpy_candidates(scores: np.ndarray, search: Search) -> tuple[np.ndarray, np.ndarray]:
    """`encore.infer.beam.candidates` in numpy (the ONNX runtime): each input's best `search.keep`
    continuations of its K x V, best first, from the running rows' log-probabilities [B * K, V]."""
    n = min(search.keep, scores.shape[-1])
    part = np.argpartition(-scores, n - 1, axis=-1)[:, :n]  # each row's best n, unordered
    values = np.take_along_axis(scores, part, -1)
    order = _top(values, n)
    return search.merge(np.take_along_axis(values, order, -1), np.take_along_axis(part, order, -1))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """[N, V] float32 log-probabilities (what `torch.log_softmax` gives the torch loop)."""
    x = logits.astype(np.float32)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def setting(given: dict[str, Any], generation: dict[str, Any], key: str, default: Any) -> Any:
    """A decoding setting: the one given (not None), else the checkpoint's generation config's, else
    transformers' default."""
    value = given.get(key)
    value = generation.get(key) if value is None else value
    return default if value is None else value
