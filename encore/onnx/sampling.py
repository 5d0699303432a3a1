"""Choosing the next token in numpy: greedy, or sampled with temperature, top-k and top-p, seeded.
The same rules as `encore.infer.sampling` (top-k, then top-p keeps the smallest set of tokens whose
probability covers p, the most likely always kept); draws come from numpy's generator, so a seeded
sample is reproducible in this runtime, not equal to torch's draws."""

from __future__ import annotations

import numpy as np


def check_sampling(do_sample: bool, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not do_sample:
        return
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def sample_next(
    logits: np.ndarray,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """logits [B, V] -> token ids [B] (int64)."""
    if not do_sample:
        return logits.argmax(axis=-1).astype(np.int64)
    scores = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = np.partition(scores, -top_k, axis=-1)[:, -top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_probs, axis=-1) - sorted_probs  # mass of the tokens ranked above
        drop = np.zeros_like(probs, dtype=bool)
        np.put_along_axis(drop, order, before >= top_p, axis=-1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs], dtype=np.int64)
