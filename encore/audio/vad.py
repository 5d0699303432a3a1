"""Voice-activity filtering before transcription, as faster-whisper's `vad_filter` does it: Silero VAD
(the `silero-vad` package, `pip install 'encore[vad]'`) finds the speech, the silence between is cut
out, the speech is transcribed as one audio, and every time in the result is moved back to where it
was in the original audio.

    chunks = speech_chunks(samples, min_silence_duration_ms=2000)   # [(start, end)] in samples
    speech = keep(samples, chunks)                                   # the speech alone, concatenated
    restore_times(result["segments"], chunks)                        # times in the original audio

Whisper's long silences are where it hallucinates ("Thank you." over a pause) and loops; cutting them
also saves the windows they fill.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from encore.audio.features import SAMPLE_RATE
from encore.lazy import require

# faster-whisper's VadOptions defaults (a silence under 2 s is kept; 0.4 s of padding around speech)
VAD_DEFAULTS = {
    "threshold": 0.5,
    "min_speech_duration_ms": 0,
    "max_speech_duration_s": float("inf"),
    "min_silence_duration_ms": 2000,
    "speech_pad_ms": 400,
}

_MODEL: list[Any] = []  # the loaded Silero model (one per process)


def speech_chunks(samples: np.ndarray, **parameters: Any) -> list[tuple[int, int]]:
    """[(start, end)] sample offsets of the speech in 16 kHz `samples`, by Silero VAD with
    `VAD_DEFAULTS` and `parameters` over them (an unknown name is a one-line error)."""
    unknown = sorted(set(parameters) - set(VAD_DEFAULTS))
    if unknown:
        raise ValueError(f"vad_parameters: unknown {', '.join(unknown)} (known: {', '.join(VAD_DEFAULTS)})")
    silero = require("silero_vad", "vad")
    import torch

    if not _MODEL:
        _MODEL.append(silero.load_silero_vad())
    audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    found = silero.get_speech_timestamps(audio, _MODEL[0], sampling_rate=SAMPLE_RATE, **{**VAD_DEFAULTS, **parameters})
    return [(int(c["start"]), int(c["end"])) for c in found]


GAP_SECONDS = 1.0  # silence kept between two chunks: where Whisper puts the timestamps between them


def keep(samples: np.ndarray, chunks: list[tuple[int, int]]) -> np.ndarray:
    """The chunks of `samples`, one after another with `GAP_SECONDS` of silence between (empty when
    there are none)."""
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
    parts = [part for start, end in chunks for part in (gap, samples[start:end])]
    return np.concatenate(parts[1:])


class TimeMap:
    """Times in the kept audio -> times in the original: a time in a chunk moves by its chunk's offset;
    one in the gap before a chunk is that chunk's start (a segment's start: its speech begins there), or
    the previous chunk's end (`end=True`: its speech ended there)."""

    def __init__(self, chunks: list[tuple[int, int]]):
        self.starts: list[float] = []  # each chunk's start in the kept audio, seconds
        self.chunks = [(start / SAMPLE_RATE, end / SAMPLE_RATE) for start, end in chunks]  # original seconds
        kept = 0.0
        for start, end in self.chunks:
            self.starts.append(kept)
            kept += end - start + GAP_SECONDS

    def original(self, t: float, end: bool = False) -> float:
        if not self.starts:
            return t
        i = max(0, bisect.bisect_right(self.starts, t) - 1)
        start, stop = self.chunks[i]
        inside = t - self.starts[i]
        if inside > stop - start:  # in the gap after chunk i
            return round(stop if end or i + 1 == len(self.chunks) else self.chunks[i + 1][0], 3)
        return round(start + inside, 3)


def restore_times(segments: list[dict[str, Any]], chunks: list[tuple[int, int]]) -> None:
    """Move each segment's (and word's) start and end from the kept audio back to the original (in place)."""
    times = TimeMap(chunks)
    for segment in segments:
        for item in [segment, *segment.get("words", [])]:
            item["start"], item["end"] = times.original(item["start"]), times.original(item["end"], end=True)
            item["end"] = max(item["start"], item["end"])
