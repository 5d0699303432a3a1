"""Whisper's special tokens, read from the checkpoint's tokenizer: the task prompt, languages,
timestamps, and the tokens a transcription never writes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_LANGUAGE = re.compile(r"<\|([a-z]{2,3}|haw|yue)\|>")


@dataclass(frozen=True)
class WhisperTokens:
    eot: int  # <|endoftext|>: ends a transcription
    sot: int  # <|startoftranscript|>: the decoder's start
    transcribe: int
    translate: int
    sot_prev: int  # <|startofprev|>: the previous text follows
    sot_lm: int
    no_speech: int  # <|nospeech|> (<|nocaptions|> before large-v3): read at the start token
    no_timestamps: int  # <|notimestamps|>: the timestamp tokens follow it
    multilingual: bool
    languages: dict[str, int] = field(default_factory=dict)  # "en" -> <|en|>

    @property
    def timestamp_begin(self) -> int:
        """<|0.00|>: timestamps are timestamp_begin + seconds / TOKEN_SECONDS (0.02)."""
        return self.no_timestamps + 1

    @classmethod
    def from_model(cls, model: Any) -> WhisperTokens:
        """The tokens of a Whisper model's tokenizer (ValueError when it has none)."""
        tokenizer = model.tokenizer
        if tokenizer is None:
            raise ValueError("this Whisper model has no tokenizer (tokenizer.json beside its weights)")
        ids = lambda token: tokenizer.convert_tokens_to_ids(token)
        vocab = tokenizer.get_vocab()
        no_speech = vocab.get("<|nospeech|>", vocab.get("<|nocaptions|>"))
        names = ("<|endoftext|>", "<|startoftranscript|>", "<|transcribe|>", "<|translate|>", "<|startofprev|>",
                 "<|startoflm|>", "<|notimestamps|>")  # fmt: skip
        missing = [n for n in names if vocab.get(n) is None] + (["<|nospeech|>"] if no_speech is None else [])
        if missing:
            raise ValueError(f"the tokenizer is not Whisper's: it lacks {', '.join(missing)}")
        sot, translate = ids("<|startoftranscript|>"), ids("<|translate|>")
        languages = {
            m.group(1): i for token, i in vocab.items() if sot < i < translate and (m := _LANGUAGE.fullmatch(token))
        }
        multilingual = model.generation_config.get("is_multilingual", model.config.vocab_size >= 51865)
        return cls(
            eot=ids("<|endoftext|>"),
            sot=sot,
            transcribe=ids("<|transcribe|>"),
            translate=translate,
            sot_prev=ids("<|startofprev|>"),
            sot_lm=ids("<|startoflm|>"),
            no_speech=no_speech,
            no_timestamps=ids("<|notimestamps|>"),
            multilingual=bool(multilingual),
            languages=dict(sorted(languages.items(), key=lambda kv: kv[1])),
        )

    def language(self, code: str) -> int:
        """<|code|>'s id; ValueError naming the code and a few known ones."""
        if code not in self.languages:
            known = ", ".join(list(self.languages)[:12])
            raise ValueError(f"unknown language code {code!r} for this model (known: {known}, ...)")
        return self.languages[code]

    def start(self, language: str | None, task: str, timestamps: bool) -> list[int]:
        """The start of a window's decoder prompt: <|startoftranscript|> (<|lang|> <|task|> on a
        multilingual model) (<|notimestamps|> without timestamps)."""
        if task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
        sequence = [self.sot]
        if self.multilingual:
            sequence += [self.language(language or "en"), self.transcribe if task == "transcribe" else self.translate]
        elif task == "translate":
            raise ValueError("an English-only Whisper model (*.en) cannot translate: use a multilingual one")
        if not timestamps:
            sequence.append(self.no_timestamps)
        return sequence

    def suppressed(self, configured: list[int]) -> list[int]:
        """What a transcription never writes: the checkpoint's suppress tokens and the task's specials
        (openai's `suppress_tokens="-1"`)."""
        specials = [self.transcribe, self.translate, self.sot, self.sot_prev, self.sot_lm, self.no_speech]
        return sorted({*(t for t in configured if t >= 0), *specials})
