"""Speech + text tasks for a model with an audio encoder (Whisper): fine-tuning and distillation on
clips with their transcripts.

    examples = load_speech("speech.jsonl", tokenizer)   # {"audio", "target_ids"} per clip

A record is {"audio": path, "text" | "target": transcript}; a relative audio path is relative to the
file's folder. Each clip is decoded when the file is read (`encore.audio.load_audio`: any format PyAV
reads, 16 kHz mono), so a missing, unreadable or too long (> 30 s) clip is a `DataError` naming the
file, line and field before training starts. Transcripts are tokenized with the leading space Whisper
writes.

`SpeechCollator` makes each clip's 30-s log-mel window (`encore.audio.features.window_features`) the
batch's ``input_ids`` [B, n_mels, 3000] (what the model's audio stem reads; no attention mask: the
encoder reads the whole window, as Whisper was trained) and lays each transcript after the window's
decoder prompt (`WhisperTokens.start`: ``<|startoftranscript|>`` (language, task)
``<|notimestamps|>``): ``decoder_input_ids`` = prompt + y, ``labels`` = -100 on the prompt's first
tokens, then y + ``<|endoftext|>``, as openai/whisper trains.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from encore.data.collate import IGNORE, pad_rows, rows_mask
from encore.data.records import DataError, iter_records, require_field


def load_speech(path: str | os.PathLike, tokenizer: Any, limit: int | None = None) -> list[dict[str, Any]]:
    """{"audio": float32 samples at 16 kHz, "target_ids", "text"} for each record of a speech file."""
    from encore.audio.features import CHUNK_SECONDS, N_SAMPLES, SAMPLE_RATE
    from encore.audio.io import load_audio

    path = Path(path)
    examples = []
    for line, record in iter_records(path):
        if limit is not None and len(examples) >= limit:
            break
        field = "text" if "text" in record else "target"
        text = require_field(record, field, path, line, str).strip()
        audio_path = Path(require_field(record, "audio", path, line, str))
        audio_path = audio_path if audio_path.is_absolute() else path.parent / audio_path
        try:
            audio = load_audio(audio_path)
        except (OSError, ValueError) as e:
            raise DataError(path, f"cannot read {str(audio_path)!r} ({e})", line=line, field="audio") from None
        if len(audio) > N_SAMPLES:
            seconds = len(audio) / SAMPLE_RATE
            raise DataError(path, f"{audio_path.name} is {seconds:.1f} s; a clip must fit one {CHUNK_SECONDS}-s "
                            "window", line=line, field="audio")  # fmt: skip
        ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        examples.append({"audio": audio, "target_ids": ids, "text": text})
    if not examples:
        raise DataError(path, "has no speech records")
    return examples


class SpeechCollator:
    """Speech examples -> a Whisper batch: ``input_ids`` (log-mel windows [B, n_mels, 3000]),
    ``decoder_input_ids``, ``decoder_attention_mask`` and ``labels`` (see the module's docstring).
    Transcripts longer than `max_target_len` tokens are cut at the end."""

    arch = "encdec"

    def __init__(self, prompt: list[int], eot: int, n_mels: int = 80, max_target_len: int | None = None):
        if not prompt:
            raise ValueError("a speech collator needs the decoder prompt (at least <|startoftranscript|>)")
        self.prompt, self.eot, self.n_mels, self.max_target_len = list(prompt), eot, n_mels, max_target_len
        self.pad_id = eot

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from encore.audio.features import pad_or_trim, window_features

        audio = torch.stack([pad_or_trim(torch.as_tensor(e["audio"], dtype=torch.float32)) for e in examples])
        rows, labels = [], []
        for e in examples:
            y = list(e["target_ids"])[: self.max_target_len]
            rows.append([*self.prompt, *y])
            labels.append([IGNORE] * (len(self.prompt) - 1) + [*y, self.eot])
        return {
            "input_ids": window_features(audio, self.n_mels),  # [B, n_mels, 3000]
            "decoder_input_ids": pad_rows(rows, self.pad_id),
            "decoder_attention_mask": rows_mask(rows),
            "labels": pad_rows(labels, IGNORE),
        }


def speech_collator(model: Any, max_target_len: int | None = None) -> SpeechCollator:
    """The collator of a Whisper model: its English transcription prompt without timestamps."""
    from encore.audio.tokens import WhisperTokens

    tokens = WhisperTokens.from_model(model)
    return SpeechCollator(tokens.start("en", "transcribe", timestamps=False), tokens.eot,
                          model.config.audio_mels, max_target_len)  # fmt: skip
