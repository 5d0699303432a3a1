"""Pretrained checkpoints in and out: the transformers families encore runs, as encore models.

    model = encore.load("path/to/t5gemma-b-b")         # a transformers checkpoint directory
    model = encore.load("hf:google/t5gemma-b-b-ul2")   # the hub, through huggingface_hub (needs access)
    model = encore.load("SmolLM2-135M.Q4_1.gguf")      # a GGUF file, dequantized by transformers
    model = encore.load("faster-whisper-tiny.en")      # a CTranslate2 directory (Whisper's model.bin)
    model = encore.from_hf(hf_model)                   # a transformers model object already in memory
    vlm = encore.load("path/to/t5gemma-2", vision=True)  # its SigLIP tower too: a VisionLanguageModel
    model.save_pretrained("out", format="hf")          # back to the family's transformers layout

`load` and `resolve_model` take every model spec a `--model` flag takes: an encore preset, a
ModelConfig .json, an encore checkpoint, a transformers checkpoint directory (`model_type` in its
config.json picks the adapter), `hf:ORG/NAME`, a CTranslate2 directory (Whisper, as faster-whisper
ships it), or a `.gguf` file. Families: `ADAPTERS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from encore.config import ModelConfig
from encore.convert.adapter import ConversionError, StateDictAdapter
from encore.convert.checkpoint import (
    fill_model,
    is_hf_checkpoint,
    load_hf,
    read_config,
    set_tokenizer,
    settle_config,
)
from encore.convert.ctranslate2 import ct2_config, is_ct2_directory, load_ct2
from encore.convert.registry import ADAPTERS, adapter_for
from encore.convert.save import save_hf
from encore.model import io
from encore.model.base import LanguageModel

__all__ = ["ADAPTERS", "ConversionError", "StateDictAdapter", "from_hf", "load", "resolve_model", "save_hf"]

HUB_PREFIX = "hf:"


def resolve_model(spec: str | Path, flag: str = "--model") -> tuple[ModelConfig, Path | None]:
    """A model spec -> (its config, the checkpoint to load or None for a preset / config file)."""
    text = str(spec)
    if text.startswith(HUB_PREFIX):
        directory = download(text[len(HUB_PREFIX) :], flag)
        return read_config(directory)[0], directory
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"{flag} {text}: no such GGUF file")
        return _gguf_config(path), path
    if path.is_dir() and is_hf_checkpoint(path):
        return read_config(path)[0], path
    if path.is_dir() and is_ct2_directory(path):
        return ct2_config(path), path
    return io.resolve_model(spec, flag)


def load(
    spec: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    vision: bool = False,
    **config_changes: Any,
) -> LanguageModel:
    """Any checkpoint: encore's own (`encore.model.io.load`), a transformers directory, `hf:ORG/NAME`
    or a `.gguf` file. `config_changes` replace config fields that do not change shapes. `vision`: a
    transformers checkpoint's image tower too (T5Gemma 2), as a `VisionLanguageModel`; an encore
    vision checkpoint is one whatever `vision` says."""
    text = str(spec)
    if text.startswith(HUB_PREFIX):
        return load_hf(download(text[len(HUB_PREFIX) :]), device, dtype, vision, **config_changes)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if vision:
            raise ConversionError(f"{path}: a GGUF file holds a text model (no image tower)")
        return load_gguf(path, device, dtype, **config_changes)
    if path.is_dir() and is_hf_checkpoint(path):
        return load_hf(path, device, dtype, vision, **config_changes)
    if path.is_dir() and is_ct2_directory(path):
        return load_ct2(path, device, dtype, **config_changes)
    return io.load(path, device=device, dtype=dtype, **config_changes)


def from_hf(
    model_or_path: Any,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    vision: bool = False,
    **config_changes: Any,
) -> LanguageModel:
    """A transformers model object (its config and weights) or a checkpoint path -> the encore model
    (`vision`: with its image tower, as `load`)."""
    if isinstance(model_or_path, (str, Path)):
        return load(model_or_path, device, dtype, vision, **config_changes)
    hf = model_or_path.config.to_dict()
    adapter = adapter_for(hf.get("model_type"), type(model_or_path).__name__)
    generation = getattr(model_or_path, "generation_config", None)
    generation = generation.to_dict() if generation is not None else {}
    config = adapter.config_from_hf(hf, {k: v for k, v in generation.items() if v is not None})
    state = {adapter.disk_name(k): v for k, v in model_or_path.state_dict().items()}
    get = lambda name: state[name].to(dtype or torch.float32)
    config = settle_config(adapter, config, set(state), get).replace(**config_changes)
    model = fill_model(config, adapter.from_hf(get, config), device, dtype, where=type(model_or_path).__name__)
    model.generation_config = generation
    if vision:
        from encore.convert.vision import with_vision

        model = with_vision(model, adapter, hf, get, list(state), type(model_or_path).__name__)
    return model.eval()


def download(repo_id: str, flag: str = "--model") -> Path:
    """A hub checkpoint's config, weights and tokenizer, through huggingface_hub (its cache, its token)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"{flag} hf:{repo_id}: needs huggingface_hub (pip install huggingface_hub)") from None
    patterns = ["*.json", "*.safetensors", "*.model", "*.spm", "*.jinja"]  # Marian's SentencePiece: *.spm
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # offline, gated, not found: one line naming the repo
        raise ValueError(f"{flag} hf:{repo_id}: could not fetch it from the hub ({type(e).__name__}: {e})") from None


def check_gguf(path: Path) -> None:
    """One line naming the file and what is wrong with it, before transformers' reader meets a file that
    is not GGUF, or one cut short (a download that stopped): its tensors would not fit their shapes."""
    try:
        import gguf
    except ImportError:
        raise ValueError(f"{path}: reading GGUF needs the gguf package (pip install 'encore[gguf]')") from None
    size = path.stat().st_size
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # gguf raises ValueError, struct.error, IndexError for damaged files
        raise ConversionError(
            f"{path}: not a complete GGUF file ({size:,} bytes; {type(e).__name__}: {str(e)[:120]}): a file cut short, "
            "or not GGUF"
        ) from None
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ConversionError(f"{path}: truncated: its tensors need {end:,} bytes, the file has {size:,}")


def _gguf_config(path: Path) -> ModelConfig:
    from transformers import AutoConfig

    check_gguf(path)
    hf = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name).to_dict()
    return adapter_for(hf.get("model_type"), str(path)).config_from_hf(hf, {})


def load_gguf(path: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None, **changes: Any):
    """A GGUF file (decoder-only families), dequantized by transformers' GGUF reader (needs `gguf`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf(path)
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as e:
        raise ValueError(f"{path}: reading GGUF needs the gguf package (pip install 'encore[gguf]'): {e}") from None
    model = from_hf(hf_model, device, dtype, **changes)
    del hf_model
    set_tokenizer(model, tokenizer)
    return model
