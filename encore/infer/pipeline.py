"""Text in, text out: tokenize like the fine-tuning collators, generate through the engine, decode.

The one path from strings to generated strings, used by `encore generate` and `encore eval` (the
server lays prompts out with the same `prompt_ids`, and refuses a too-long one rather than cut it).
Inputs are laid out and truncated exactly as the fine-tuning collator does (the end of a too-long
source is cut, its special tokens kept), so a model sees at inference what it saw in training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from encore.data.collate import finetune_collator
from encore.infer.engine import Engine
from encore.infer.generate import beam_settings
from encore.tokenizer import chat_ids, encode_text, language_id


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
    repetition_penalty: float | None = None  # None: the checkpoint's generation config (as every below)
    no_repeat_ngram_size: int | None = None
    num_beams: int | None = None  # > 1: beam search (`encore.infer.beam`); None: the checkpoint's
    length_penalty: float | None = None
    src_lang: str | None = None  # a multilingual model's source language code (NLLB: fra_Latn, M2M100: fr)
    tgt_lang: str | None = None  # ... and target language: forced as the first new token

    def sampling(self) -> dict[str, Any]:
        """The sampling keywords of `generate` / `Engine.add`."""
        return dict(
            do_sample=self.do_sample, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed
        )

    def processing(self, model: Any) -> dict[str, Any]:
        """The logits processors' keywords of `Engine.add` (`encore.infer.processors`); the target
        language's token as the forced first token."""
        given = dict(repetition_penalty=self.repetition_penalty, no_repeat_ngram_size=self.no_repeat_ngram_size)
        if self.tgt_lang is not None:
            given["forced_bos_token_id"] = target_language(model, self.tgt_lang, "--tgt-lang")
        return {k: v for k, v in given.items() if v is not None}

    def source_config(self, model: Any) -> Any:
        """The model's config with `src_lang` in its source template."""
        if self.src_lang is None:
            return model.config
        return model.config.with_source_lang(source_language(model, self.src_lang, "--src-lang"))


def source_language(model: Any, code: str, flag: str) -> int:
    """A source language's token id for `model` (its tokenizer's code); ValueError naming `flag` for a
    code the tokenizer lacks or a model whose sources carry no language."""
    lang = language_id(model.tokenizer, code, flag)
    if model.config.source_lang_id is None:
        raise ValueError(f"{flag} {code}: this model's tokenizer lays out no source language")
    return lang


def target_language(model: Any, code: str, flag: str) -> int:
    """A target language's token id (forced as an encoder-decoder's first new token); ValueError naming
    `flag` for a decoder-only model or a code the tokenizer lacks."""
    if model.config.arch != "encdec":
        raise ValueError(f"{flag} is for encoder-decoder translation models (NLLB, mBART-50, M2M100)")
    return language_id(model.tokenizer, code, flag)


def apply_languages(model: Any, src_lang: str | None, tgt_lang: str | None) -> None:
    """A multilingual model's default languages (a server's --src-lang / --tgt-lang), in place: the
    source template's language and the forced first token of every request that names none."""
    options = GenerationOptions(src_lang=src_lang, tgt_lang=tgt_lang)
    model.config = options.source_config(model)
    model.generation_config = {**model.generation_config, **options.processing(model)}


def encode_sources(
    model: Any, sources: list[str], max_source_len: int, config: Any = None
) -> tuple[list[list[int]], int]:
    """Each source as the model's input ids (the collator's layout for `config`, the model's by default;
    cut to `max_source_len`), and how many were truncated."""
    collator = finetune_collator(config or model.config)
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


def encode_chats(model: Any, sources: list[str], max_source_len: int, template: str | None = None) -> list[list[int]]:
    """Each source as one user message of a conversation, laid out by the chat template (`template`,
    else the tokenizer's) with the generation prompt: what an instruct model expects. A prompt longer
    than `max_source_len` is refused (cutting it would cut the template's generation prompt)."""
    if template is None and getattr(model.tokenizer, "chat_template", None) is None:
        raise ValueError("the model's tokenizer has no chat template; pass one (--chat-template FILE)")
    encoded = [chat_ids(model.tokenizer, [{"role": "user", "content": text}], template) for text in sources]
    for i, ids in enumerate(encoded):
        if len(ids) > max_source_len:
            raise ValueError(
                f"input {i + 1}: its chat prompt is {len(ids)} tokens, over --max-source-len {max_source_len}"
            )
    return encoded


def generate_ids(
    model: Any,
    encoded: list[list[int]],
    options: GenerationOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """The new tokens (EOS left out) for every encoded input, through `encore.Engine` (continuous
    batching: `batch_size` slots, a finished request's slot taken by the next at once; a beam request
    holds `num_beams` of them), inputs queued shortest first so that requests admitted together have
    similar lengths. `progress(1)` is called as each request finishes."""
    options = options or GenerationOptions()
    processing = options.processing(model)
    given = {
        k: v for k, v in (("num_beams", options.num_beams), ("length_penalty", options.length_penalty)) if v is not None
    }
    beams = beam_settings(model, dict(given), options.do_sample)
    engine = Engine(
        model,
        max_batch=max(1, min(options.batch_size, len(encoded))) * beams.num_beams,
        max_input_len=max((len(ids) for ids in encoded), default=1),
        max_new_tokens=options.max_new_tokens,
    )
    which: dict[int, int] = {}
    sampling = options.sampling()
    for i in sorted(range(len(encoded)), key=lambda i: len(encoded[i])):
        rid = engine.add(encoded[i], max_new_tokens=options.max_new_tokens, **sampling, **given, **processing)
        which[rid] = i
    tokens: list[list[int]] = [[] for _ in encoded]
    eos = set(model.config.eos_token_ids)
    while engine.has_work():
        for event in engine.step():
            new = event.tokens if event.tokens is not None else [event.token]
            tokens[which[event.request_id]] += [t for t in new if t not in eos]
            if event.finished and progress is not None:
                progress(1)
    return tokens


def generate_texts(
    model: Any,
    sources: list[str],
    options: GenerationOptions | None = None,
    progress: Callable[[int], None] | None = None,
    chat: bool = False,
    chat_template: str | None = None,
) -> tuple[list[str], int]:
    """Generate for every source (`generate_ids`) and decode; returns (texts in input order, how many
    sources were truncated to `max_source_len`). `chat`: each source is a user message laid out by the
    chat template (`encode_chats`; `chat_template` replaces the tokenizer's)."""
    options = options or GenerationOptions()
    if chat:
        encoded, truncated = encode_chats(model, sources, options.max_source_len, chat_template), 0
    else:
        encoded, truncated = encode_sources(model, sources, options.max_source_len, options.source_config(model))
    tokens = generate_ids(model, encoded, options, progress)
    return [model.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens], truncated
