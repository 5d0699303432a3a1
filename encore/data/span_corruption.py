"""T5 span corruption, and the packed pretraining streams of both architectures.

    inputs, targets = span_corrupt(ids, noise_density=0.15, mean_span_length=3.0,
                                   sentinel_ids=sentinel_ids(tok), rng=np.random.default_rng(0))

As in T5 (`t5.data.preprocessors.random_spans_noise_mask` / `noise_span_to_unique_sentinel`):
num_noise_tokens = round(length * density), num_noise_spans = round(num_noise_tokens / mean_span_length),
the noise tokens and the non-noise tokens are each cut at random into that many non-empty spans, and
the spans are interleaved non-noise first. The inputs keep the non-noise tokens with each noise span
replaced by one sentinel (`sentinel_ids[0]`, `[1]`, ... in order); the targets are, for each noise span,
its sentinel followed by its tokens. EOS is not added here (the streams and collators add it).

`random_spans_helper(input_len)` is T5's: the raw length to cut so that after corruption (and one EOS
each) the inputs are exactly `input_len` and the targets exactly `target_len`, so packed examples need
no padding. For 512 inputs at density 0.15 and mean span 3 that is 568 raw tokens and 114 targets.

`SpanCorruptionStream` (encoder-decoder) and `CausalLMStream` (decoder-only) read the same
`TokenStream` (documents + EOS, in corpus order). By default the causal stream cuts examples of the
same raw length as span corruption consumes, so the same number of examples is the same token budget.
Both are deterministic given the seed (each example's noise comes from its own generator seeded by
(seed, rank, example index)) and resumable (`state_dict` / `load_state_dict`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from encore.data.corpora import Corpus
from encore.data.packing import TokenStream


def _noise_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(num_noise_tokens, num_noise_spans) for `length` tokens; shared by the mask and the length helper
    so they always agree. Python's round() is round-half-to-even, like T5's tf.round."""
    num_noise = int(round(length * noise_density))
    num_noise = min(max(num_noise, 1), length - 1)  # at least one noise and one non-noise token
    num_spans = max(int(round(num_noise / mean_span_length)), 1)
    # T5 assumes enough non-noise tokens to separate the spans; only extreme densities need the cap
    return num_noise, min(num_spans, length - num_noise)


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of a random partition of `num_items` items into `num_segments` non-empty segments."""
    first_in_segment = np.zeros(num_items, dtype=np.int64)
    cuts = np.arange(num_items - 1) < num_segments - 1
    rng.shuffle(cuts)
    first_in_segment[1:] = cuts
    return np.bincount(np.cumsum(first_in_segment), minlength=num_segments)


def random_spans_noise_mask(
    length: int, noise_density: float = 0.15, mean_span_length: float = 3.0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """A boolean mask of `length` (True = noise) as T5 draws it: spans interleaved, non-noise first."""
    if not 0.0 <= noise_density < 1.0:
        raise ValueError(f"noise_density must be in [0, 1), got {noise_density}")
    if mean_span_length < 1.0:
        raise ValueError(f"mean_span_length must be >= 1, got {mean_span_length}")
    if noise_density == 0.0 or length == 0:
        return np.zeros(length, dtype=bool)
    rng = rng if rng is not None else np.random.default_rng()
    orig_length, length = length, max(length, 2)
    num_noise, num_spans = _noise_counts(length, noise_density, mean_span_length)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    span_starts = np.zeros(length, dtype=np.int64)
    span_starts[np.cumsum(interleaved)[:-1]] = 1
    is_noise = np.cumsum(span_starts) % 2 == 1
    return is_noise[:orig_length]


def span_corrupt(
    token_ids: Sequence[int] | np.ndarray,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    sentinel_ids: Sequence[int] | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[list[int], list[int]]:
    """(inputs, targets) of T5 span corruption; see the module docstring. `sentinel_ids` (e.g.
    `encore.tokenizer.sentinel_ids(tok)`) must hold at least as many ids as there are spans."""
    if sentinel_ids is None:
        raise ValueError("span_corrupt needs sentinel_ids (e.g. encore.tokenizer.sentinel_ids(tokenizer))")
    tokens = np.asarray(token_ids, dtype=np.int64)
    mask = random_spans_noise_mask(len(tokens), noise_density, mean_span_length, rng)
    if not mask.any():
        return tokens.tolist(), []
    span_start = mask & ~np.concatenate([[False], mask[:-1]])
    n_spans = int(span_start.sum())
    if n_spans > len(sentinel_ids):
        raise ValueError(
            f"{len(tokens)} tokens at noise density {noise_density} and mean span {mean_span_length} make "
            f"{n_spans} spans, but only {len(sentinel_ids)} sentinel ids were given"
        )
    sentinels = np.asarray(sentinel_ids[:n_spans], dtype=np.int64)
    span_index = np.cumsum(span_start) - 1
    keep = ~mask | span_start  # non-noise tokens, and the first token of each span (becomes its sentinel)
    inputs = np.where(span_start, sentinels[np.maximum(span_index, 0)], tokens)[keep]
    noise = tokens[mask]
    targets = np.insert(noise, np.flatnonzero(span_start[mask]), sentinels)
    return inputs.tolist(), targets.tolist()


def reconstruct(inputs: Sequence[int], targets: Sequence[int], sentinel_ids: Sequence[int]) -> list[int]:
    """The original tokens from span-corruption `inputs` and `targets` (no EOS): the inverse of span_corrupt."""
    sentinel_set = set(sentinel_ids)
    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for t in targets:
        if t in sentinel_set:
            current = spans.setdefault(t, [])
        elif current is None:
            raise ValueError("targets must start with a sentinel")
        else:
            current.append(t)
    out: list[int] = []
    for t in inputs:
        if t in sentinel_set:
            if t not in spans:
                raise ValueError(f"sentinel {t} in the inputs has no span in the targets")
            out.extend(spans[t])
        else:
            out.append(t)
    return out


def random_spans_helper(
    inputs_length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """T5's helper: (tokens_length, targets_length) such that span-corrupting `tokens_length` raw tokens
    gives exactly `inputs_length` inputs and `targets_length` targets, one EOS each included."""

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise, num_spans = _noise_counts(tokens_length, noise_density, mean_noise_span_length)
        return (
            tokens_length - num_noise + num_spans * extra_tokens_per_span_inputs + 1,
            num_noise + num_spans * extra_tokens_per_span_targets + 1,
        )

    if inputs_length < 3:
        raise ValueError(f"inputs_length must be >= 3 (a token, a sentinel, EOS), got {inputs_length}")
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1) for span corruption, got {noise_density}")
    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    _, targets_length = lengths(tokens_length)
    # T5's hack: at density 0.5 make the targets no longer than the (usually round) inputs length
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


# --- packed pretraining streams --------------------------------------------------------------------------


class SpanCorruptionStream:
    """Packed encoder-decoder pretraining examples {"source_ids", "target_ids"} of exactly `input_len`
    and `target_len` tokens (EOS included): every example span-corrupts the next `raw_len` tokens."""

    def __init__(
        self,
        corpus: Corpus,
        tokenizer: Any,
        *,
        input_len: int = 512,
        noise_density: float = 0.15,
        mean_span_length: float = 3.0,
        seed: int = 0,
        repeat: bool = True,
    ) -> None:
        from encore.tokenizer import sentinel_ids

        self.tokens = TokenStream(corpus, tokenizer, repeat=repeat)
        self.eos_id = self.tokens.eos_id
        self.sentinel_ids = sentinel_ids(tokenizer)
        self.input_len, self.noise_density, self.mean_span_length = input_len, noise_density, mean_span_length
        self.raw_len, self.target_len = random_spans_helper(input_len, noise_density, mean_span_length)
        n_spans = _noise_counts(self.raw_len, noise_density, mean_span_length)[1]
        if n_spans > len(self.sentinel_ids):
            raise ValueError(
                f"input_len {input_len} at noise density {noise_density} and mean span {mean_span_length} makes "
                f"{n_spans} spans per example but the tokenizer has {len(self.sentinel_ids)} sentinels: "
                "lower input_len or noise_density, or raise mean_span_length"
            )
        self.seed, self.rank = seed, corpus.rank
        self.examples = 0

    @property
    def tokens_per_example(self) -> int:
        return self.raw_len

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        while (chunk := self.tokens.take(self.raw_len)) is not None:
            rng = np.random.default_rng([self.seed, self.rank, self.examples])
            inputs, targets = span_corrupt(
                chunk, self.noise_density, self.mean_span_length, sentinel_ids=self.sentinel_ids, rng=rng
            )
            inputs.append(self.eos_id)
            targets.append(self.eos_id)
            assert len(inputs) == self.input_len and len(targets) == self.target_len, (len(inputs), len(targets))
            self.examples += 1
            yield {"source_ids": inputs, "target_ids": targets}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "span_corruption", "examples": self.examples, "seed": self.seed, **self.tokens.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, "span_corruption")
        self.examples = int(state["examples"])
        self.tokens.load_state_dict(state)


class CausalLMStream:
    """Packed decoder-only pretraining examples {"input_ids"} of exactly `seq_len` tokens of the stream."""

    def __init__(self, corpus: Corpus, tokenizer: Any, *, seq_len: int, repeat: bool = True) -> None:
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        self.tokens = TokenStream(corpus, tokenizer, repeat=repeat)
        self.seq_len = seq_len
        self.examples = 0

    @property
    def tokens_per_example(self) -> int:
        return self.seq_len

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        while (chunk := self.tokens.take(self.seq_len)) is not None:
            self.examples += 1
            yield {"input_ids": chunk}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "causal_lm", "examples": self.examples, **self.tokens.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, "causal_lm")
        self.examples = int(state["examples"])
        self.tokens.load_state_dict(state)


def _check_kind(state: dict[str, Any], kind: str) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"the saved data state is for a {state.get('kind')!r} stream, not {kind!r}")
