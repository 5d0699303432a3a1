"""The generation loop of one request, shared by both architectures: prefill once, then one decode
step per token (the same `prefill` / `decode_step` the engine runs).

Sampling is tensor-only (no host round trip per step); the one host sync per step is the "are all
rows done?" check, which lets the loop exit as soon as every row has hit EOS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from encore.infer.beam import Beams, beam_search
from encore.infer.processors import Processors, sequence_starts
from encore.infer.sampling import FROM_CONFIG, Sampling, _FromConfig, resolve_eos, sample_next
from encore.model.inputs import check_ids

LanguageModel = Any  # an encore.model.base.LanguageModel (not imported: the model calls into this module)

__all__ = ["FROM_CONFIG", "generate", "generate_stream", "sample_next"]


def check_max_new_tokens(max_new_tokens: int, low: int = 0) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < low:
        kind = "a non-negative" if low == 0 else f"an integer >= {low}: a"
        raise ValueError(f"max_new_tokens must be {kind} integer, got {max_new_tokens!r}")


def generate_stream(
    model: LanguageModel,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    max_new_tokens: int = 32,
    eos_token_id: int | list[int] | None | _FromConfig = FROM_CONFIG,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    inputs_embeds: Tensor | None = None,
    **processing: Any,
) -> Iterator[Tensor]:
    """Yield the new token of every row [B] at each step; rows already finished get pad.
    Stops after `max_new_tokens` steps or once every row has produced EOS. Arguments are checked
    here, at call time, not at the first `next()`. `inputs_embeds` [B, S, D] replace the input's
    token embeddings in the prefill (a vision-language model's image tokens). `processing`:
    transformers' `repetition_penalty`, `no_repeat_ngram_size`, `bad_words_ids`, `min_new_tokens`,
    `forced_bos_token_id`, `suppress_tokens` (`encore.infer.processors`); each not given comes from the
    checkpoint's generation config, as in transformers."""
    check_ids(input_ids, attention_mask, model.config.vocab_size)
    check_max_new_tokens(max_new_tokens)
    sampling = Sampling(do_sample, temperature, top_k, top_p, seed).check()
    processors = request_processors(model, processing, input_ids.shape[1])
    device = model.embed.weight.device
    generator = sampling.generator(device)
    attention_mask = None if attention_mask is None else attention_mask.to(device)
    eos = resolve_eos(eos_token_id, model.config)
    eos = None if eos is None else torch.tensor(eos, device=device)
    choose = lambda logits: sampling.choose(logits, generator)
    if processors.active:
        choose = _processed(choose, processors, model.config, input_ids, attention_mask, max_new_tokens, eos)
    prefill = model.prefill
    if inputs_embeds is not None:
        if inputs_embeds.shape[:2] != input_ids.shape:
            raise ValueError(
                f"inputs_embeds has shape {tuple(inputs_embeds.shape)}; input_ids {tuple(input_ids.shape)}"
            )
        prefill = lambda ids, mask, n: model.prefill(ids, mask, n, inputs_embeds=inputs_embeds.to(device))
    return _stream(prefill, model, input_ids.to(device), attention_mask, max_new_tokens, eos, choose)


@torch.inference_mode()
def _stream(
    prefill: Callable,
    model: LanguageModel,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    max_new_tokens: int,
    eos: Tensor | None,
    choose: Callable[[Tensor], Tensor],
) -> Iterator[Tensor]:
    if max_new_tokens == 0:
        return
    was_training = model.training
    model.eval()
    try:
        logits, cache = prefill(input_ids, attention_mask, max_new_tokens)
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        pad = model.config.pad_token_id
        for step in range(max_new_tokens):
            tokens = choose(logits).masked_fill(finished, pad)
            yield tokens
            if eos is not None:
                finished |= torch.isin(tokens, eos)
                if bool(finished.all()):
                    return
            if step + 1 < max_new_tokens:
                logits = model.decode_step(tokens, cache)
    finally:
        model.train(was_training)


def request_processors(model: LanguageModel, given: dict[str, Any], prompt_len: int) -> Processors:
    """A request's logits processors: `given` settings over the checkpoint's generation config."""
    unknown = sorted(set(given) - set(Processors.__dataclass_fields__))
    if unknown:
        raise TypeError(f"generate() got unexpected keyword argument(s) {unknown}")
    generation = getattr(model, "generation_config", None) or {}
    config = model.config
    return Processors.from_generation(generation, config.arch, prompt_len, **given).check(config.vocab_size)


def _processed(
    choose: Callable[[Tensor], Tensor],
    processors: Processors,
    config: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    max_new_tokens: int,
    eos: Tensor | None,
) -> Callable[[Tensor], Tensor]:
    """`choose` after the processors, keeping each row's sequence so far (the history they read): the
    decoder's start token (encoder-decoder) or the prompt's real tokens (decoder-only), then its outputs."""
    history = sequence_starts(config, input_ids, attention_mask)
    eos_ids = config.eos_token_ids if eos is None else tuple(eos.tolist())  # what a minimum length bans
    step = 0

    def processed(logits: Tensor) -> Tensor:
        nonlocal step
        logits = processors(logits, history, step, step == max_new_tokens - 1, eos_ids)
        tokens = choose(logits)
        for row, token in zip(history, tokens.tolist()):
            row.append(token)
        step += 1
        return tokens

    return processed


BEAM_SETTINGS = ("num_beams", "length_penalty", "early_stopping", "num_return_sequences")


def beam_settings(model: LanguageModel, kwargs: dict[str, Any], do_sample: bool) -> Beams:
    """A request's beam settings, taken out of `kwargs`, over the checkpoint's generation config (checked).
    A sampling request samples unless it names `num_beams` itself: a config's beams do not turn it into
    beam sampling, which encore does not run."""
    given = {k: kwargs.pop(k) for k in BEAM_SETTINGS if k in kwargs}
    generation = getattr(model, "generation_config", None) or {}
    if do_sample:
        generation = {k: v for k, v in generation.items() if k not in BEAM_SETTINGS}
    return Beams.from_generation(generation, **given).check(do_sample)


def generate(
    model: LanguageModel, input_ids: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 32, **kwargs
) -> Tensor:
    """New tokens [B, max_new_tokens]; positions after a row's EOS (or after all rows stopped) hold pad.
    `num_beams` > 1 (given, or the checkpoint's generation config's): beam search (`encore.infer.beam`,
    with `length_penalty`, `early_stopping`, `num_return_sequences`: [B * num_return_sequences, ...])."""
    beams = beam_settings(model, kwargs, kwargs.get("do_sample", False))
    if beams.num_beams > 1 or beams.num_return_sequences > 1:
        return generate_beams(model, input_ids, attention_mask, max_new_tokens, beams=beams, **kwargs)[0]
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


def generate_beams(
    model: LanguageModel,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    max_new_tokens: int = 32,
    beams: Beams | None = None,
    eos_token_id: int | list[int] | None | _FromConfig = FROM_CONFIG,
    do_sample: bool = False,
    **processing: Any,
) -> tuple[Tensor, Tensor]:
    """Beam search: (tokens [B * R, max_new_tokens], their length-penalised scores [B * R]), R =
    `num_return_sequences` best first per input, transformers' results (`encore.infer.beam`)."""
    check_ids(input_ids, attention_mask, model.config.vocab_size)
    check_max_new_tokens(max_new_tokens, low=1)
    beams = (beams or Beams()).check(do_sample)
    processors = request_processors(model, processing, input_ids.shape[1])
    eos = resolve_eos(eos_token_id, model.config)
    device = model.embed.weight.device
    attention_mask = None if attention_mask is None else attention_mask.to(device)
    was_training = model.training
    model.eval()
    try:
        return beam_search(model, input_ids.to(device), attention_mask, max_new_tokens, beams, processors, eos)
    finally:
        model.train(was_training)
