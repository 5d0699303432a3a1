"""The one place that maps an architecture to its class and a model spec to a model.

A *model spec* is what `--model` takes everywhere: a preset name (`ModelConfig.preset_names()`), a
ModelConfig `.json` file, or a checkpoint directory (config.json + model.safetensors).

    config, checkpoint = resolve_model("encdec-330m")     # (ModelConfig, None)
    model = build(config)                                 # random weights, the class from config.arch
    model = load("runs/ft/final")                         # a checkpoint, the class from its config.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from encore.config import ModelConfig
from encore.model.arches import ARCHES, model_class
from encore.model.base import CONFIG_FILE, WEIGHTS_FILE, LanguageModel
from encore.model.layers import Linear, OffsetRMSNorm
from encore.model.vlm import VISION_CONFIG_FILE, VISION_WEIGHTS_FILE, VisionLanguageModel

__all__ = ["ARCHES", "build", "load", "model_class", "read_state", "resolve_model", "spec_label"]


def build(
    config: ModelConfig, seed: int | None = None, device: torch.device | str | None = None, deferred: bool = False
) -> LanguageModel:
    """A model of `config` with freshly initialised weights (seeded when `seed` is given). `deferred`:
    the projections' weights stay on the meta device until `encore.optimize` makes each (fresh random
    values) just before quantizing it, so the fp32 weights are never all held: a 10B model quantized
    to int4 builds in ~6 GB, not 40 (`encore bench` builds quantized presets so)."""
    if seed is not None:
        torch.manual_seed(seed)
    if not deferred:
        with torch.device(device or "cpu"):
            return model_class(config.arch)(config)
    with torch.device("meta"):
        model = model_class(config.arch)(config)
    materialize_all_but_projections(model, device or "cpu")
    model.reset_buffers(device or "cpu")
    return model


@torch.no_grad()
def materialize_all_but_projections(model: nn.Module, device: torch.device | str) -> None:
    """A model built on the meta device gets storage and fresh values for every tensor but its
    projections' (`Linear`) weights and biases, which stay on meta for `encore.optimize` to make and
    quantize one at a time: tables N(0, 0.02), norm scales 1 (0 for `OffsetRMSNorm`, which adds 1),
    biases and buffers 0 (the position tables are recomputed by the model's `reset_buffers`)."""
    for module in model.modules():
        if isinstance(module, Linear):
            continue
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        if not any(t.is_meta for _, t in own):
            continue
        module.to_empty(device=device, recurse=False)
        for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if t.dim() >= 2 and isinstance(t, nn.Parameter):
                nn.init.normal_(t, mean=0.0, std=0.02)
            elif name == "weight" and not isinstance(module, OffsetRMSNorm):
                t.fill_(1.0)
            else:
                t.zero_()


def resolve_model(spec: str | Path, flag: str = "--model") -> tuple[ModelConfig, Path | None]:
    """A model spec -> (its config, the checkpoint directory or None). A spec that names nothing is a
    ValueError (FileNotFoundError for a path that looks local) listing what is accepted."""
    text = str(spec)
    path = Path(text).expanduser()
    if text in ModelConfig.preset_names():
        return ModelConfig.preset(text), None
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{flag} {text}: no {CONFIG_FILE} in this directory (not an encore checkpoint)")
        return ModelConfig.load(path / CONFIG_FILE), path
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"{flag} {text}: no such ModelConfig file")
        return ModelConfig.load(path), None
    if text.startswith((".", "/", "~")) or "/" in text.rstrip("/"):
        hub = text.count("/") == 1 and not text.startswith((".", "/", "~"))  # ORG/NAME, as the hub spells it
        hint = f"; for the hub, write hf:{text}" if hub else ""
        raise FileNotFoundError(f"{flag} {text}: no such checkpoint directory{hint}")
    raise ValueError(
        f"{flag} {text!r} is neither a checkpoint directory, a ModelConfig .json file nor a preset "
        f"({', '.join(ModelConfig.preset_names())})"
    )


def spec_label(spec: str | Path) -> str:
    """A short name for a model spec: the preset, or the file / directory name."""
    path = Path(str(spec))
    if str(spec) in ModelConfig.preset_names():
        return str(spec)
    return path.stem if path.suffix == ".json" else path.name or str(spec)


def load(
    directory: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None, **config_changes: Any
) -> LanguageModel | VisionLanguageModel:
    """Load any encore checkpoint; the class comes from config.json's `arch` (a VisionLanguageModel
    when vision_config.json is beside it). `config_changes`: see
    `LanguageModel.from_pretrained` (e.g. `max_seq_len=8192` to extend the RoPE tables)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a model directory")
    if (directory / VISION_CONFIG_FILE).is_file():
        return VisionLanguageModel.from_pretrained(directory, device=device, dtype=dtype, **config_changes)
    config = ModelConfig.load(directory / CONFIG_FILE)
    return model_class(config.arch).from_pretrained(directory, device=device, dtype=dtype, **config_changes)


def read_state(directory: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights as its model's `state_dict` names them (a vision-language model's text
    and vision files under `lm.` and `vision.`)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    text = load_file(str(directory / WEIGHTS_FILE))
    if not (directory / VISION_CONFIG_FILE).is_file():
        return text
    vision = load_file(str(directory / VISION_WEIGHTS_FILE))
    return {**{f"lm.{k}": v for k, v in text.items()}, **{f"vision.{k}": v for k, v in vision.items()}}
