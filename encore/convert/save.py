"""An encore model -> a transformers checkpoint directory of its family. Knows configs, tensor names
and files, never the model classes: `LanguageModel.save_pretrained(format="hf")` calls it from
`model/` without an import circle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from encore.config import ModelConfig
from encore.convert.adapter import ConversionError
from encore.convert.registry import ADAPTERS, GENERATION_FILE
from encore.files import atomic_write


def save_hf(model: Any, directory: str | Path, dtype: torch.dtype | None = None, vision: Any = None) -> None:
    """Write `model` as a transformers checkpoint of its family (or the one family that can express
    an encore-built model); a model no family can express is refused, saying why. `vision`: the
    `VisionLanguageModel` around `model`, whose tower and projector go into the family's files too."""
    from safetensors.torch import save_file

    config = model.config
    if vision is not None:  # the family's files hold the tower (the text model alone may be refused)
        adapter = ADAPTERS.get(config.family)
        if adapter is None:
            raise ConversionError("an encore-built vision-language model has no transformers family: save it as encore")
        hf_config, tower_state, processor = adapter.vision_to_hf(config, vision)
    else:
        adapter = _text_family(config)
        hf_config, tower_state, processor = adapter.config_to_hf(config), {}, None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    hf_state = {**adapter.to_hf(state, config), **tower_state}
    if dtype is not None:
        hf_state = {k: v.to(dtype) for k, v in hf_state.items()}
    hf_config.architectures = [adapter.architecture]
    if dtype is not None:
        hf_config.dtype = str(dtype).removeprefix("torch.")
    atomic_write(directory / "model.safetensors", lambda p: save_file(hf_state, p, metadata={"format": "pt"}))
    text = hf_config.to_json_string()
    atomic_write(directory / "config.json", lambda p: Path(p).write_text(text))
    generation = {**model.generation_config, **_generation_ids(config)}
    gen_text = json.dumps(generation, indent=2, sort_keys=True) + "\n"
    atomic_write(directory / GENERATION_FILE, lambda p: Path(p).write_text(gen_text))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(directory))
    if processor is not None:
        processor.save_pretrained(str(directory))  # preprocessor_config.json: AutoImageProcessor reads it


def _text_family(config: ModelConfig) -> Any:
    """The adapter that writes a text model: its own family's, or the one family that can express an
    encore-built model; ConversionError saying why when none can."""
    adapter = ADAPTERS.get(config.family)
    if adapter is None:
        reasons = {t: a.why_not(config) for t, a in ADAPTERS.items()}
        adapter = next((ADAPTERS[t] for t, why in reasons.items() if why is None), None)
        if adapter is None:
            detail = "; ".join(f"{t}: {why}" for t, why in reasons.items())
            raise ConversionError(f"no transformers family can express this model ({detail})")
    elif (why := adapter.why_not(config)) is not None:
        raise ConversionError(f"this {config.family} model can no longer be written as {config.family}: {why}")
    return adapter


def _generation_ids(config: ModelConfig) -> dict[str, Any]:
    eos = list(config.eos_token_ids)
    ids = dict(
        bos_token_id=config.bos_token_id,
        pad_token_id=config.pad_token_id,
        eos_token_id=eos[0] if len(eos) == 1 else eos,
    )
    if config.arch == "encdec":
        ids["decoder_start_token_id"] = config.bos_token_id
    return ids
