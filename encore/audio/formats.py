"""A transcription as the files people use: plain text, SubRip (.srt), WebVTT (.vtt), JSON."""

from __future__ import annotations

import json
from typing import Any

FORMATS = ("txt", "srt", "vtt", "json")


def timestamp(seconds: float, separator: str) -> str:
    """HH:MM:SS<sep>mmm (SubRip's separator is ',', WebVTT's '.')."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def render(result: dict[str, Any], fmt: str) -> str:
    """`transcribe`'s result in `fmt` (one of FORMATS)."""
    segments = result["segments"]
    if fmt == "txt":
        return "\n".join(s["text"].strip() for s in segments) + "\n"
    if fmt == "json":
        return json.dumps(result, ensure_ascii=False) + "\n"
    if fmt == "srt":
        cues = (
            f"{i}\n{timestamp(s['start'], ',')} --> {timestamp(s['end'], ',')}\n{s['text'].strip()}\n"
            for i, s in enumerate(segments, 1)
        )
        return "\n".join(cues)
    if fmt == "vtt":
        cues = (f"{timestamp(s['start'], '.')} --> {timestamp(s['end'], '.')}\n{s['text'].strip()}\n" for s in segments)
        return "WEBVTT\n\n" + "\n".join(cues)
    raise ValueError(f"output format must be one of {', '.join(FORMATS)}, got {fmt!r}")
