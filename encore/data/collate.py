"""Batches: token-id examples -> padded tensors for each architecture.

Examples are dicts of token-id lists without special tokens (`tokenize_pairs` makes them from
{"source", "target"} texts); the collators add them, so one layout holds everywhere:

    encoder-decoder   encoder  x + [EOS]                      (T5's convention)
                      decoder  [BOS] + y           -> labels  y + [EOS]
    decoder-only      [BOS] + x + [EOS] + y + [EOS], labels -100 over [BOS] + x + [EOS] (the prompt)

`prompt_ids` gives the same source layout for generation. EOS doubles as the decoder-only separator:
every tokenizer has one (a new `<sep>` id would break distillation from a teacher with the same
vocabulary), and the model learns "after EOS comes the answer" in fine-tuning.

Truncation is explicit: `max_source_len` / `max_target_len` bound the lengths *including* the special
tokens, which are always kept; `truncation` ("right": keep the start, "left": keep the end, "error")
applies to the source text, `target_truncation` to the target text (a cut target still ends with EOS,
as Hugging Face tokenizers truncate). The collator counts what it cut
(`stats`; every collated example counts, including repeats over epochs); `check(examples)` counts a
whole dataset once, for a report before training.

Padding is on the right with `pad_id`; `attention_mask` is 1 on real tokens and `labels` are -100 on
padding (and on the decoder-only prompt). Pretraining examples from `encore.data.span_corruption` come
packed to fixed lengths with EOS already in place: `pretraining_collator` takes them as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from encore.config import SOURCE_LAYOUTS, ModelConfig, lay_out_source
from encore.tokenizer import encode_text, encode_texts

Batch = dict[str, Tensor]  # a collated batch: named [batch, length] tensors
Truncation = Literal["right", "left", "error"]
IGNORE = -100


class TruncationError(ValueError):
    """An example longer than allowed under truncation="error"."""


@dataclass
class TruncationStats:
    examples: int = 0
    sources: int = 0  # examples whose source was cut
    targets: int = 0  # examples whose target was cut

    def summary(self, max_source_len: int | None = None, max_target_len: int | None = None) -> str:
        src = f" to {max_source_len} tokens" if max_source_len else ""
        tgt = f" to {max_target_len} tokens" if max_target_len else ""
        return (
            f"{self.sources} of {self.examples} sources truncated{src}, "
            f"{self.targets} of {self.examples} targets truncated{tgt}"
        )


def _cut(ids: Sequence[int], room: int | None, side: str, what: str, example: dict, index: int) -> tuple[list, bool]:
    """`ids` cut to `room` tokens on `side`; (ids, whether it was cut)."""
    ids = list(ids)
    if room is None or len(ids) <= room:
        return ids, False
    if side == "error":
        name = example.get("id", example.get("line", f"#{index} of the batch"))
        raise TruncationError(
            f"example {name}: the {what} has {len(ids)} tokens, more than the {room} that fit "
            f"(max_{what}_len includes special tokens); pass truncation='right' or 'left', or raise the limit"
        )
    return (ids[:room] if side == "right" else ids[len(ids) - room :]), True


def _check_side(name: str, side: str) -> None:
    if side not in ("right", "left", "error"):
        raise ValueError(f"{name} must be 'right' (keep the start), 'left' (keep the end) or 'error', got {side!r}")


def pad_rows(rows: list[list[int]], value: int) -> Tensor:
    """Rows of ids -> [len(rows), longest] right-padded with `value`."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def rows_mask(rows: list[list[int]]) -> Tensor:
    """1 where `pad_rows` holds a row's own id, 0 at its padding."""
    width = max((len(r) for r in rows), default=0)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return (torch.arange(width)[None, :] < lengths[:, None]).long()


def _ids(example: dict, key: str, index: int) -> Sequence[int]:
    try:
        return example[key]
    except (KeyError, TypeError):
        keys = sorted(example) if isinstance(example, dict) else type(example).__name__
        raise ValueError(f"example #{index} of the batch has no {key!r} (it has {keys})") from None


class _Collator:
    arch: str  # "encdec" | "deconly": the layout of a source (`encore.config.lay_out_source`)

    def __init__(
        self,
        pad_id: int,
        bos_id: int,
        eos_id: int,
        max_source_len: int | None = None,
        max_target_len: int | None = None,
        *,
        truncation: Truncation = "right",
        target_truncation: Truncation = "right",
        add_special_tokens: bool = True,
        source_layout: str = "encore",
        source_template: tuple[list[int], list[int]] = ([], []),
    ) -> None:
        _check_side("truncation", truncation)
        if source_layout not in SOURCE_LAYOUTS:
            raise ValueError(f"source_layout must be one of {list(SOURCE_LAYOUTS)}, got {source_layout!r}")
        _check_side("target_truncation", target_truncation)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.source_layout, self.source_template = source_layout, source_template
        self.n_source_specials = len(self.source([]))  # specials the source layout adds
        specials = self.n_source_specials if add_special_tokens else 0
        if max_source_len is not None and max_source_len <= specials:
            raise ValueError(f"max_source_len {max_source_len} leaves no room next to {specials} special token(s)")
        if max_target_len is not None and max_target_len <= int(add_special_tokens):
            raise ValueError(f"max_target_len {max_target_len} leaves no room for the target and its EOS")
        self.max_source_len, self.max_target_len = max_source_len, max_target_len
        self.truncation, self.target_truncation = truncation, target_truncation
        self.add_special_tokens = add_special_tokens
        self.stats = TruncationStats()

    def source(self, ids: Sequence[int]) -> list[int]:
        """A source's ids with the specials of this architecture's `source_layout`."""
        return lay_out_source(list(ids), self.source_layout, self.arch, self.bos_id, self.eos_id, self.source_template)

    def _layout(self, example: dict, index: int, stats: TruncationStats) -> tuple[list[int], list[int]]:
        """(source with its specials, target with its EOS), cut to the limits and counted."""
        src, tgt = _ids(example, "source_ids", index), _ids(example, "target_ids", index)
        n_src = self.n_source_specials if self.add_special_tokens else 0
        n_tgt = 1 if self.add_special_tokens else 0
        room_src = None if self.max_source_len is None else self.max_source_len - n_src
        room_tgt = None if self.max_target_len is None else self.max_target_len - n_tgt
        src, cut_src = _cut(src, room_src, self.truncation, "source", example, index)
        tgt, cut_tgt = _cut(tgt, room_tgt, self.target_truncation, "target", example, index)
        stats.examples += 1
        stats.sources += cut_src
        stats.targets += cut_tgt
        if self.add_special_tokens:
            return self.source(src), [*tgt, self.eos_id]
        return src, tgt

    def check(self, examples: Iterable[dict]) -> TruncationStats:
        """Truncation counts over `examples` (e.g. a whole training set), without collating or
        touching `stats`. Raises TruncationError like collation would under truncation="error"."""
        stats = TruncationStats()
        for i, example in enumerate(examples):
            self._layout(example, i, stats)
        return stats

    def report(self) -> str:
        return self.stats.summary(self.max_source_len, self.max_target_len)


class Seq2SeqCollator(_Collator):
    """Encoder-decoder batches from {"source_ids", "target_ids"}: input_ids, attention_mask,
    decoder_input_ids ([BOS] + target[:-1]: the labels shifted right behind BOS), decoder_attention_mask,
    labels (target + EOS, -100 on padding). With `add_special_tokens=False` the ids are used as given
    (packed span-corruption examples, which end with EOS already)."""

    arch = "encdec"

    def __call__(self, examples: list[dict]) -> dict[str, Tensor]:
        pairs = [self._layout(e, i, self.stats) for i, e in enumerate(examples)]
        sources = [s for s, _ in pairs]
        labels = [t for _, t in pairs]
        decoder_inputs = [[self.bos_id, *t[:-1]] for t in labels]
        return {
            "input_ids": pad_rows(sources, self.pad_id),
            "attention_mask": rows_mask(sources),
            "decoder_input_ids": pad_rows(decoder_inputs, self.pad_id),
            "decoder_attention_mask": rows_mask(decoder_inputs),
            "labels": pad_rows(labels, IGNORE),
        }


class CausalLMCollator(_Collator):
    """Decoder-only batches: input_ids, attention_mask, labels (aligned with input_ids; the loss shifts).

    From {"source_ids", "target_ids"}: [BOS] + source + [EOS] + target + [EOS] with the loss only on
    target + EOS. From {"input_ids"} (packed pretraining chunks): the ids as they are, loss on all."""

    arch = "deconly"

    def __call__(self, examples: list[dict]) -> dict[str, Tensor]:
        rows, labels = [], []
        for i, e in enumerate(examples):
            if isinstance(e, dict) and "input_ids" in e and "source_ids" not in e:
                ids = list(e["input_ids"])
                rows.append(ids)
                labels.append(ids)
                continue
            prompt, target = self._layout(e, i, self.stats)
            rows.append(prompt + target)
            labels.append([IGNORE] * len(prompt) + target)
        return {
            "input_ids": pad_rows(rows, self.pad_id),
            "attention_mask": rows_mask(rows),
            "labels": pad_rows(labels, IGNORE),
        }


# --- wiring helpers ----------------------------------------------------------------------------------------


def prompt_ids(tokenizer: Any, text: str, config: ModelConfig, lang: int | None = None) -> list[int]:
    """The model input for generating from `text`, laid out as the fine-tuning collators lay out a
    source (`ModelConfig.source_ids`; `lang`: the source language's token)."""
    return config.source_ids(encode_text(tokenizer, text), lang)


def tokenize_pairs(tokenizer: Any, examples: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """{"source", "target"} texts -> {"source_ids", "target_ids"} (no special tokens; other keys kept),
    every text of the split in one batch (`encode_texts`)."""
    examples = list(examples)
    sources = encode_texts(tokenizer, [e["source"] for e in examples])
    targets = encode_texts(tokenizer, [e["target"] for e in examples])
    return [
        {**{k: v for k, v in e.items() if k not in ("source", "target")}, "source_ids": s, "target_ids": t}
        for e, s, t in zip(examples, sources, targets)
    ]


def finetune_collator(
    config: ModelConfig,
    *,
    max_source_len: int | None = None,
    max_target_len: int | None = None,
    truncation: Truncation = "right",
    target_truncation: Truncation = "right",
) -> Seq2SeqCollator | CausalLMCollator:
    """The (source, target) collator of `config.arch` with the config's special ids. Give both archs the
    same limits for a matched comparison: the decoder-only model then sees the same tokens."""
    cls = Seq2SeqCollator if config.arch == "encdec" else CausalLMCollator
    return cls(
        config.pad_token_id,
        config.bos_token_id,
        config.eos_token_id,
        max_source_len,
        max_target_len,
        truncation=truncation,
        target_truncation=target_truncation,
        source_layout=config.source_layout,
        source_template=config.template(),
    )


def pretraining_collator(config: ModelConfig) -> Seq2SeqCollator | CausalLMCollator:
    """For the examples of `encore.data.pretraining_stream`: laid out already (specials and EOS in place)."""
    cls = Seq2SeqCollator if config.arch == "encdec" else CausalLMCollator
    return cls(config.pad_token_id, config.bos_token_id, config.eos_token_id, add_special_tokens=False)
