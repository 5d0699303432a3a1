"""Adaptation objectives for an encoder-decoder: PrefixLM and UL2 (beside T5 span corruption).

    PrefixLMStream(corpus, tok, seq_len=512, source=config.source_ids)   # T5Gemma's adaptation objective
    UL2Stream(corpus, tok, seq_len=512, source=config.source_ids)        # R / X / S denoisers, mode tokens

Every example reads the next `seq_len` tokens of the packed `TokenStream` (documents + EOS).

PrefixLM cuts the chunk at a point drawn uniformly from 1 .. seq_len - 1: the prefix, laid out as the
model reads a source (`ModelConfig.source_ids`), goes to the encoder; the rest is the decoder's target,
without an EOS (the text goes on). The decoder-only source model sees prefix + target as the one text it
was, which is what makes distilling it on the target tokens line up (`encore.distill.align`).

UL2 (Tay et al., 2022) mixes seven denoisers, each example drawing one: R (regular span corruption:
mean span 3 or 8 at 15% noise), X (extreme: mean span 3 or 8 at 50%, 64 at 15% or 50%) and S
(sequential: PrefixLM). Each input starts with its denoiser's mode token (`[NLU]` R, `[NLG]` X, `[S2S]`
S). R and X draw uniformly among their settings; the families are drawn R 40%, X 40%, S 20% (encore's
choice, not a published mixture; `UL2Stream(weights=...)` sets others).
Span-corruption inputs and targets end with EOS as in `SpanCorruptionStream`; S targets do not.

Both streams are deterministic given the seed (each example's draws come from a generator seeded by
(seed, rank, example index)) and resume exactly (`state_dict` / `load_state_dict`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from encore.data.corpora import Corpus
from encore.data.packing import TokenStream
from encore.data.span_corruption import (
    CausalLMStream,
    SpanCorruptionStream,
    _check_kind,
    _noise_counts,
    random_spans_helper,
    span_corrupt,
)
from encore.tokenizer import UL2_MODE_TOKENS

Layout = Callable[[list[int]], list[int]]

# (family, mean span length, noise density); family "S" is PrefixLM
UL2_DENOISERS: tuple[tuple[str, float, float], ...] = (
    ("R", 3.0, 0.15),
    ("R", 8.0, 0.15),
    ("X", 3.0, 0.5),
    ("X", 8.0, 0.5),
    ("X", 64.0, 0.15),
    ("X", 64.0, 0.5),
    ("S", 0.0, 0.0),
)
UL2_FAMILY_WEIGHTS = {"R": 0.4, "X": 0.4, "S": 0.2}
MODE_TOKENS = dict(zip("RXS", UL2_MODE_TOKENS))  # [NLU], [NLG], [S2S]


def split_prefix(chunk: list[int], rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """(prefix, rest) of `chunk` (>= 2 tokens) cut at a uniform point in 1 .. len - 1."""
    cut = int(rng.integers(1, len(chunk)))
    return chunk[:cut], chunk[cut:]


class _ChunkStream:
    """What both objectives share: a token stream cut into `seq_len` chunks, a per-example generator."""

    kind = ""

    def __init__(self, corpus: Corpus, tokenizer: Any, *, seq_len: int, source: Layout, seed: int, repeat: bool):
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (a prefix and a target), got {seq_len}")
        self.tokens = TokenStream(corpus, tokenizer, repeat=repeat)
        self.eos_id = self.tokens.eos_id
        self.seq_len, self.source, self.seed, self.rank = seq_len, source, seed, corpus.rank
        self.examples = 0

    @property
    def tokens_per_example(self) -> int:
        return self.seq_len

    def example(self, chunk: list[int], rng: np.random.Generator) -> dict[str, list[int]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        while (chunk := self.tokens.take(self.seq_len)) is not None:
            rng = np.random.default_rng([self.seed, self.rank, self.examples])
            self.examples += 1
            yield self.example(list(chunk), rng)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "examples": self.examples, "seed": self.seed, **self.tokens.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, self.kind)
        self.examples = int(state["examples"])
        self.tokens.load_state_dict(state)


class PrefixLMStream(_ChunkStream):
    """{"source_ids": source(prefix), "target_ids": rest} per `seq_len` chunk (see the module docstring)."""

    kind = "prefix_lm"

    def __init__(
        self, corpus: Corpus, tokenizer: Any, *, seq_len: int = 512, source: Layout, seed: int = 0, repeat: bool = True
    ):
        super().__init__(corpus, tokenizer, seq_len=seq_len, source=source, seed=seed, repeat=repeat)

    def example(self, chunk: list[int], rng: np.random.Generator) -> dict[str, list[int]]:
        prefix, rest = split_prefix(chunk, rng)
        return {"source_ids": self.source(prefix), "target_ids": rest}


class UL2Stream(_ChunkStream):
    """UL2's mixture of denoisers (see the module docstring); needs T5 sentinels and the mode tokens
    in the tokenizer (`encore adapt --sentinels 100` adds them to an imported one)."""

    kind = "ul2"

    def __init__(
        self,
        corpus: Corpus,
        tokenizer: Any,
        *,
        seq_len: int = 512,
        source: Layout,
        seed: int = 0,
        repeat: bool = True,
        weights: dict[str, float] | None = None,
    ):
        from encore.tokenizer import SENTINELS, sentinel_ids

        super().__init__(corpus, tokenizer, seq_len=seq_len, source=source, seed=seed, repeat=repeat)
        vocab = tokenizer.get_vocab()
        missing = [t for t in (*MODE_TOKENS.values(), SENTINELS[0]) if t not in vocab]
        if missing:
            raise ValueError(
                f"--objective ul2: the tokenizer lacks {', '.join(missing)}; add T5 sentinels and UL2's mode tokens "
                "with `encore adapt --sentinels 100` (or train a tokenizer with them)"
            )
        self.mode_ids = {family: vocab[token] for family, token in MODE_TOKENS.items()}
        n_sentinels = sum(1 for s in SENTINELS if s in vocab)
        self.sentinel_ids = sentinel_ids(tokenizer, n_sentinels)
        spans = max(_noise_counts(seq_len, d, m)[1] for f, m, d in UL2_DENOISERS if f != "S")
        if spans > n_sentinels:
            raise ValueError(
                f"--seq-len {seq_len}: UL2's densest denoiser makes {spans} spans but the tokenizer has "
                f"{n_sentinels} sentinels; lower --seq-len"
            )
        weights = weights or UL2_FAMILY_WEIGHTS
        per_family = {f: sum(1 for g, _, _ in UL2_DENOISERS if g == f) for f in weights}
        self.probs = np.array([weights.get(f, 0.0) / per_family[f] for f, _, _ in UL2_DENOISERS])
        self.probs /= self.probs.sum()

    def example(self, chunk: list[int], rng: np.random.Generator) -> dict[str, list[int]]:
        family, span, density = UL2_DENOISERS[int(rng.choice(len(UL2_DENOISERS), p=self.probs))]
        mode = self.mode_ids[family]
        if family == "S":
            prefix, rest = split_prefix(chunk, rng)
            return {"source_ids": [mode, *self.source(prefix)], "target_ids": rest}
        inputs, targets = span_corrupt(chunk, density, span, sentinel_ids=self.sentinel_ids, rng=rng)
        return {"source_ids": [mode, *inputs, self.eos_id], "target_ids": [*targets, self.eos_id]}


OBJECTIVES = ("span_corruption", "prefix_lm", "ul2")


def pretraining_stream(
    corpus: Corpus,
    tokenizer: Any,
    arch: str,
    *,
    objective: str = "span_corruption",
    input_len: int = 512,
    seq_len: int | None = None,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    source: Layout | None = None,
    seed: int = 0,
    repeat: bool = True,
) -> SpanCorruptionStream | CausalLMStream | PrefixLMStream | UL2Stream:
    """The pretraining stream of `arch` and `objective`.

    "encdec": span corruption to `input_len` inputs (T5's), or PrefixLM / UL2 over chunks of `seq_len`
    raw tokens (default `input_len`), the sources laid out by `source` (`ModelConfig.source_ids`).
    "deconly": causal chunks of `seq_len` tokens, by default the raw length span corruption consumes
    per example (568 for 512), so both see the same tokens per example and the same token budget."""
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if arch == "deconly":
        if objective != "span_corruption":
            raise ValueError(
                f"--objective {objective} trains an encoder-decoder; a decoder-only model pretrains as a causal LM"
            )
        if seq_len is None:
            seq_len = random_spans_helper(input_len, noise_density, mean_span_length)[0]
        return CausalLMStream(corpus, tokenizer, seq_len=seq_len, repeat=repeat)
    if arch != "encdec":
        raise ValueError(f"arch must be 'encdec' or 'deconly', got {arch!r}")
    if objective == "span_corruption":
        return SpanCorruptionStream(
            corpus,
            tokenizer,
            input_len=input_len,
            noise_density=noise_density,
            mean_span_length=mean_span_length,
            seed=seed,
            repeat=repeat,
        )
    if source is None:
        raise ValueError(f"objective {objective} needs `source`, the model's source layout (ModelConfig.source_ids)")
    cls = PrefixLMStream if objective == "prefix_lm" else UL2Stream
    return cls(corpus, tokenizer, seq_len=seq_len or input_len, source=source, seed=seed, repeat=repeat)
