"""Text in, text out: tokenize like the fine-tuning collators, batch by length, generate, decode.

The one path from strings to generated strings, used by `encore generate`, `encore eval` and the
server. Inputs are laid out and truncated exactly as the fine-tuning collator does (the end of a
too-long source is cut, its special tokens kept), so a model sees at inference what it saw in training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from encore.data.collate import finetune_collator
from encore.tokenizer import encode_text


@dataclass
class GenerationOptions:
    max_new_tokens: int = 64
    batch_size: int = 16
    max_source_len: int = 1024  # longer inputs are truncated (counted and reported)
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


def encode_sources(model: Any, sources: list[str], max_source_len: int) -> tuple[list[list[int]], int]:
    """Each source as the model's input ids (the collator's layout, cut to `max_source_len`), and how
    many were truncated."""
    collator = finetune_collator(model.config)
    room = max_source_len - collator.n_source_specials
    if room < 1:
        raise ValueError(f"--max-source-len {max_source_len} leaves no room next to the special tokens")
    encoded, truncated = [], 0
    for text in sources:
        ids = encode_text(model.tokenizer, text)
        if len(ids) > room:
            ids, truncated = ids[:room], truncated + 1
        encoded.append(collator.source(ids))
    return encoded, truncated


def generate_texts(
    model: Any,
    sources: list[str],
    options: GenerationOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[str], int]:
    """Decode `sources` in length-sorted batches; returns (texts in input order, truncated count).
    `progress(n)` is called after each batch with the number of inputs it finished."""
    options = options or GenerationOptions()
    tokenizer = model.tokenizer
    encoded, truncated = encode_sources(model, sources, options.max_source_len)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    pad, eos = model.config.pad_token_id, model.config.eos_token_id
    device = next(model.parameters()).device
    for start in range(0, len(order), options.batch_size):
        idx = order[start : start + options.batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        new = model.generate(
            ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=options.max_new_tokens,
            do_sample=options.do_sample,
            temperature=options.temperature,
            top_k=options.top_k,
            top_p=options.top_p,
            seed=options.seed,
        )
        for row, i in enumerate(idx):
            tokens = new[row].tolist()
            if eos in tokens:
                tokens = tokens[: tokens.index(eos)]
            outputs[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        if progress is not None:
            progress(len(idx))
    return outputs, truncated
