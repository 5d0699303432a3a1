"""The generation loop, shared by both architectures: prefill once, then one decode step per token.

Sampling is tensor-only (no host round trip per step); the one host sync per step is the
"are all rows done?" check, which lets the loop exit as soon as every row has hit EOS.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from encore.model.inputs import check_ids

LanguageModel = Any  # an encore.model.base.LanguageModel (not imported: the model calls into this module)


class _FromConfig:
    def __repr__(self) -> str:
        return "<config's eos_token_id>"


FROM_CONFIG = _FromConfig()  # default for eos_token_id; None disables stopping


def sample_next(
    logits: Tensor,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Tensor:
    """logits [B, V] -> token ids [B]. Greedy unless do_sample; top-k then top-p (nucleus) filtering."""
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already cover top_p (the top one always stays)
        drop = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        logits = logits.masked_fill(drop.scatter(1, sorted_idx, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _check_args(
    model: LanguageModel,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
) -> None:
    check_ids(input_ids, attention_mask, model.config.vocab_size)
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if do_sample:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k!r}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def generate_stream(
    model: LanguageModel,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    max_new_tokens: int = 32,
    eos_token_id: int | None | _FromConfig = FROM_CONFIG,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> Iterator[Tensor]:
    """Yield the new token of every row [B] at each step; rows already finished get pad.
    Stops after `max_new_tokens` steps or once every row has produced EOS. Arguments are checked
    here, at call time, not at the first `next()`."""
    _check_args(model, input_ids, attention_mask, max_new_tokens, do_sample, temperature, top_k, top_p)
    eos = model.config.eos_token_id if eos_token_id is FROM_CONFIG else eos_token_id
    device = model.embed.weight.device
    generator = None
    if do_sample and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    attention_mask = None if attention_mask is None else attention_mask.to(device)
    return _stream(
        model,
        input_ids.to(device),
        attention_mask,
        max_new_tokens,
        eos,
        lambda logits: sample_next(logits, do_sample, temperature, top_k, top_p, generator),
    )


@torch.inference_mode()
def _stream(
    model: LanguageModel, input_ids: Tensor, attention_mask: Tensor | None, max_new_tokens: int, eos: int | None, choose
) -> Iterator[Tensor]:
    if max_new_tokens == 0:
        return
    was_training = model.training
    model.eval()
    try:
        logits, cache = model.prefill(input_ids, attention_mask, max_new_tokens)
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        pad = model.config.pad_token_id
        for step in range(max_new_tokens):
            tokens = choose(logits).masked_fill(finished, pad)
            yield tokens
            if eos is not None:
                finished |= tokens == eos
                if bool(finished.all()):
                    return
            if step + 1 < max_new_tokens:
                logits = model.decode_step(tokens, cache)
    finally:
        model.train(was_training)


def generate(
    model: LanguageModel, input_ids: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 32, **kwargs
) -> Tensor:
    """New tokens [B, max_new_tokens]; positions after a row's EOS (or after all rows stopped) hold pad."""
    stream = generate_stream(model, input_ids, attention_mask, max_new_tokens, **kwargs)
    out = torch.full(
        (input_ids.shape[0], max_new_tokens),
        model.config.pad_token_id,
        dtype=torch.long,
        device=model.embed.weight.device,
    )
    for step, tokens in enumerate(stream):
        out[:, step] = tokens
    return out
