"""The families encore converts, by config.json `model_type` (no model classes here: `save` and
`model/` may use it without an import circle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from encore.convert.adapter import ConversionError, StateDictAdapter
from encore.convert.bart import BartAdapter, M2M100Adapter, MarianAdapter, MBartAdapter, PegasusAdapter
from encore.convert.gemma import Gemma3TextAdapter, T5Gemma2Adapter, T5GemmaAdapter
from encore.convert.llama import LlamaAdapter, Qwen2Adapter, Qwen3Adapter
from encore.convert.t5 import T5Adapter
from encore.convert.whisper import WhisperAdapter

ADAPTERS: dict[str, StateDictAdapter] = {
    t: a
    for a in (
        LlamaAdapter(),
        Qwen2Adapter(),
        Qwen3Adapter(),
        Gemma3TextAdapter(),
        T5GemmaAdapter(),
        T5Gemma2Adapter(),
        T5Adapter(),
        BartAdapter(),
        MBartAdapter(),
        MarianAdapter(),
        PegasusAdapter(),
        M2M100Adapter(),
        WhisperAdapter(),
    )
    for t in a.model_types
}
GENERATION_FILE = "generation_config.json"


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def adapter_for(model_type: Any, where: str) -> StateDictAdapter:
    if model_type not in ADAPTERS:
        raise ConversionError(
            f"{where}: model_type {model_type!r} is not supported; encore converts {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]
