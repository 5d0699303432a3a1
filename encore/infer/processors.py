"""transformers' logits processors that translation and summarization checkpoints ship in their
generation config, with transformers' results: a repetition penalty, n-gram blocking, banned words,
a minimum length, a forced first (the target language) and last token, suppressed tokens; and OpenAI's
frequency and presence penalties over the tokens generated so far.

`Processors` holds one request's settings (checked where they enter: `generate`, `Engine.add`);
`Processors.from_generation` reads a checkpoint's `generation_config.json` the way transformers does,
so they apply by default. Calling it runs them, in transformers' order, on a step's logits [B, V]
given each row's sequence so far (`history`: the decoder's start token and the tokens generated, for
an encoder-decoder; prompt and tokens, for a decoder-only model). A request that asks for none costs
nothing (`active` is False and the loops never call it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from encore.infer.search import setting

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Processors:
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the sequence (CTRL's rule)
    no_repeat_ngram_size: int = 0  # n > 0: no n-gram twice in a sequence
    bad_words_ids: tuple[tuple[int, ...], ...] = ()  # token sequences never generated
    min_new_tokens: int = 0  # EOS is banned until this many new tokens
    forced_bos_token_id: int | None = None  # the first new token (an encoder-decoder's target language)
    forced_eos_token_id: int | None = None  # the last token allowed by max_new_tokens is EOS
    suppress_tokens: tuple[int, ...] = ()  # never generated
    frequency_penalty: float = 0.0  # OpenAI's: logits - penalty x times the token was generated so far
    presence_penalty: float = 0.0  # OpenAI's: logits - penalty once the token was generated

    @classmethod
    def from_generation(cls, generation: dict[str, Any], arch: str, prompt_len: int = 0, **given: Any) -> Processors:
        """A checkpoint's generation config as transformers applies it (`min_length` counts the decoder's
        start token, or a decoder-only prompt), with `given` settings over it (None: the config's)."""

        pick = lambda key, default: setting(given, generation, key, default)
        min_new = pick("min_new_tokens", None)
        if min_new is None:
            min_length = generation.get("min_length") or 0
            min_new = max(0, min_length - (1 if arch == "encdec" else prompt_len))
        forced_eos = generation.get("forced_eos_token_id")
        forced_eos = forced_eos[0] if isinstance(forced_eos, list) and forced_eos else forced_eos
        return cls(
            repetition_penalty=pick("repetition_penalty", 1.0),
            no_repeat_ngram_size=pick("no_repeat_ngram_size", 0),
            bad_words_ids=tuple(tuple(seq) for seq in pick("bad_words_ids", ())),
            min_new_tokens=min_new,
            forced_bos_token_id=pick("forced_bos_token_id", None) if arch == "encdec" else None,
            forced_eos_token_id=forced_eos if isinstance(forced_eos, int) else None,
            suppress_tokens=tuple(pick("suppress_tokens", ())),
            frequency_penalty=given.get("frequency_penalty") or 0.0,
            presence_penalty=given.get("presence_penalty") or 0.0,
        )

    def check(self, vocab_size: int) -> Processors:
        """Raise ValueError naming the setting out of range; returns self."""
        penalty = self.repetition_penalty
        if isinstance(penalty, bool) or not (isinstance(penalty, (int, float)) and penalty > 0):
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be a number in [-2, 2], got {value!r}")
        for name in ("no_repeat_ngram_size", "min_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        ids = [*self.suppress_tokens, *(i for seq in self.bad_words_ids for i in seq)]
        ids += [i for i in (self.forced_bos_token_id, self.forced_eos_token_id) if i is not None]
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size]
        if bad:
            raise ValueError(
                f"token id {bad[0]!r} (in a forced, banned or suppressed token) is not in [0, {vocab_size})"
            )
        if any(not seq for seq in self.bad_words_ids):
            raise ValueError("bad_words_ids: each entry must be a non-empty list of token ids")
        return self

    @property
    def active(self) -> bool:
        return self != Processors()

    def __call__(self, logits: Tensor, history: list[list[int]], step: int, last: bool, eos: tuple[int, ...]) -> Tensor:
        """logits [B, V] of new token `step` (0-based; `last`: the final one max_new_tokens allows) ->
        the processed logits (a new tensor). `history`: each row's sequence so far."""
        logits = logits.clone()
        if self.repetition_penalty != 1.0:
            seen = _padded(history, logits.device)
            score = logits.gather(1, seen)
            score = torch.where(score < 0, score * self.repetition_penalty, score / self.repetition_penalty)
            logits.scatter_(1, seen, score)
        if (self.frequency_penalty or self.presence_penalty) and step:  # over the tokens generated so far
            generated = torch.tensor([row[-step:] for row in history], device=logits.device)  # [B, step]
            counts = torch.zeros_like(logits).scatter_add_(1, generated, torch.ones_like(generated, dtype=logits.dtype))
            logits -= self.frequency_penalty * counts + self.presence_penalty * (counts > 0).to(logits.dtype)
        banned = [self._banned(row) for row in history]
        for row, tokens in enumerate(banned):
            if tokens:
                logits[row, list(tokens)] = NEG_INF
        if step < self.min_new_tokens and eos:
            logits[:, list(eos)] = NEG_INF
        forced = self.forced_bos_token_id if step == 0 else self.forced_eos_token_id if last else None
        if forced is not None:
            logits.fill_(NEG_INF)[:, forced] = 0.0
        if self.suppress_tokens:
            logits[:, list(self.suppress_tokens)] = NEG_INF
        return logits

    def _banned(self, row: list[int]) -> set[int]:
        """The tokens n-gram blocking and the bad words ban after `row`."""
        banned: set[int] = set()
        n = self.no_repeat_ngram_size
        if n and len(row) + 1 >= n:
            tail = tuple(row[len(row) - n + 1 :])
            banned.update(row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i : i + n - 1]) == tail)
        for seq in self.bad_words_ids:
            if len(seq) == 1 or tuple(row[len(row) - len(seq) + 1 :]) == seq[:-1]:
                banned.add(seq[-1])
        return banned


def sequence_start(config: Any, prompt: list[int]) -> list[int]:
    """What a row's history starts with: the decoder's start token (encoder-decoder) or the prompt."""
    return [config.bos_token_id] if config.arch == "encdec" else list(prompt)


def sequence_starts(config: Any, input_ids: Tensor, attention_mask: Tensor | None) -> list[list[int]]:
    """`sequence_start` of each row of a batch (a prompt's real tokens only)."""
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    return [sequence_start(config, row[keep].tolist()) for row, keep in zip(input_ids, real)]


def _padded(rows: list[list[int]], device: torch.device) -> Tensor:
    """Rows of different lengths as one [B, T] tensor, each padded with its own first token (a token the
    row already holds: gathering and scattering it twice changes nothing)."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [r[0]] * (width - len(r)) for r in rows], dtype=torch.long, device=device)
