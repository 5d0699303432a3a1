"""transformers checkpoint directories in and out: config.json + generation_config.json + (sharded)
safetensors + tokenizer, through the family's adapter.

Loading streams: the model is built on the meta device, given empty storage (in the target dtype),
and each tensor is read from its file, converted, and copied into place one rule at a time, so peak
memory stays near one copy of the weights, never a second full state dict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from encore.config import ModelConfig
from encore.convert.adapter import ConversionError, StateDictAdapter
from encore.convert.registry import GENERATION_FILE, adapter_for, read_json
from encore.model.arches import model_class
from encore.model.base import LanguageModel, runnable_dtype


def is_hf_checkpoint(directory: Path) -> bool:
    """A transformers checkpoint: config.json with a `model_type` other than encore's own."""
    path = directory / "config.json"
    if not path.is_file():
        return False
    model_type = read_json(path).get("model_type")
    return isinstance(model_type, str) and model_type != "encore"


class Tensors:
    """The checkpoint's tensors by name, read lazily: `model.safetensors`, shards listed in
    `model.safetensors.index.json`, or `pytorch_model.bin` (loaded with `weights_only=True`)."""

    def __init__(self, directory: Path, dtype: torch.dtype):
        self.directory, self.dtype = directory, dtype
        self._stack = ExitStack()
        self._handles: dict[str, Any] = {}
        self._where: dict[str, str] = {}
        self._bin: dict[str, Tensor] | None = None
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            self._where = dict(read_json(index).get("weight_map", {}))
        elif (directory / "model.safetensors").is_file():
            self._where = {name: "model.safetensors" for name in self._open("model.safetensors").keys()}
        elif (directory / "pytorch_model.bin").is_file():
            self._bin = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
            self._where = dict.fromkeys(self._bin, "pytorch_model.bin")
        else:
            raise FileNotFoundError(f"{directory}: no model.safetensors (or its index, or pytorch_model.bin)")

    def _open(self, file: str) -> Any:
        from safetensors import SafetensorError, safe_open

        if file not in self._handles:
            try:
                self._handles[file] = self._stack.enter_context(safe_open(self.directory / file, framework="pt"))
            except (SafetensorError, OSError) as e:
                raise ValueError(f"{self.directory / file}: not a readable safetensors file ({e})") from None
        return self._handles[file]

    def names(self) -> list[str]:
        return list(self._where)

    def get(self, name: str) -> Tensor:
        if name not in self._where:
            raise ConversionError(
                f"{self.directory}: tensor {name!r} is missing (the weights do not match config.json)"
            )
        tensor = self._bin[name] if self._bin is not None else self._open(self._where[name]).get_tensor(name)
        return tensor.to(self.dtype)

    def close(self) -> None:
        self._stack.close()


def load_hf(
    directory: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    vision: bool = False,
    **config_changes: Any,
) -> LanguageModel:
    """A transformers checkpoint directory -> the encore model (tokenizer and generation config with it);
    `vision`: its image tower too, as a `VisionLanguageModel` (`encore.convert.vision`)."""
    directory = Path(directory)
    config, adapter, generation = read_config(directory)
    tensors = Tensors(directory, dtype or torch.float32)
    try:
        config = settle_config(adapter, config, set(tensors.names()), tensors.get).replace(**config_changes)
        model = fill_model(config, adapter.from_hf(tensors.get, config), device, dtype, where=str(directory))
        model.generation_config = generation
        _attach_tokenizer(model, directory)
        if vision:
            from encore.convert.vision import with_vision

            hf = read_json(directory / "config.json")
            model = with_vision(model, adapter, hf, tensors.get, tensors.names(), str(directory))
    finally:
        tensors.close()
    return model.eval()


def has_image_tower(directory: str | Path) -> bool:
    """Whether a transformers checkpoint directory holds its family's image tower (T5Gemma 2's SigLIP)."""
    directory = Path(directory)
    _, adapter, _ = read_config(directory)
    if adapter.vision_prefix is None:
        return False
    tensors = Tensors(directory, torch.float32)
    try:
        return any(name.startswith(adapter.vision_prefix) for name in tensors.names())
    finally:
        tensors.close()


def tie_equal_tables(config: ModelConfig, names: set[str], get: Callable[[str], Tensor]) -> ModelConfig:
    """T5Gemma stores an encoder and a decoder embedding table: one shared table when they are equal."""
    tables = [f"model.{part}.embed_tokens.weight" for part in ("encoder", "decoder")]
    if config.arch != "encdec" or not set(tables) <= names:
        return config
    return config.replace(tie_encoder_embeddings=bool(torch.equal(*(get(t) for t in tables))))


def settle_config(
    adapter: StateDictAdapter, config: ModelConfig, names: set[str], get: Callable[[str], Tensor]
) -> ModelConfig:
    """The config as the checkpoint's tensors complete it (tied tables, biases present)."""
    return adapter.settle(tie_equal_tables(config, names, get), names, adapter._aliased(get))


def read_config(directory: Path) -> tuple[ModelConfig, StateDictAdapter, dict[str, Any]]:
    """(the encore config, the family's adapter, generation_config.json) of a transformers checkpoint."""
    hf = read_json(directory / "config.json")
    adapter = adapter_for(hf.get("model_type"), str(directory / "config.json"))
    generation = read_json(directory / GENERATION_FILE) if (directory / GENERATION_FILE).is_file() else {}
    try:
        return adapter.config_from_hf(hf, generation), adapter, generation
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ConversionError):
            raise ConversionError(f"{directory / 'config.json'}: {str(e).removeprefix('config.json: ')}") from None
        raise ConversionError(f"{directory / 'config.json'}: not a valid {hf.get('model_type')} config ({e})") from None


def fill_model(
    config: ModelConfig,
    state: Iterator[tuple[str, Tensor]],
    device: torch.device | str,
    dtype: torch.dtype | None,
    where: str,
) -> LanguageModel:
    """Build `config`'s model without initialising it, then copy each (name, tensor) into place;
    `where` names the source in errors."""
    with torch.device("meta"):
        model = model_class(config.arch)(config)
    if (dtype := runnable_dtype(config, dtype)) is not None:
        model.to(dtype)
    model.to_empty(device=device)
    model.reset_buffers(device)
    params = model.state_dict()
    seen = set()
    with torch.no_grad():
        for name, tensor in state:
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ConversionError(
                    f"{where}: {name} (from the checkpoint) has shape {tuple(tensor.shape)}, "
                    f"config.json implies {tuple(params[name].shape)}"
                )
            params[name].copy_(tensor)
            seen.add(name)
    missing = sorted(set(params) - seen)
    if missing:  # a rule table that does not cover the model: a bug in the adapter
        raise ConversionError(f"{where}: no checkpoint tensor for {missing[:5]}")
    return model


def _attach_tokenizer(model: LanguageModel, directory: Path) -> None:
    """The checkpoint's tokenizer (and chat template), and whether it starts a text with BOS."""
    files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    if not any((directory / f).is_file() for f in files):
        return
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:  # tokenizers raises bare Exceptions for a damaged file
        raise ValueError(f"{directory}: the tokenizer files do not load ({e!r:.200})") from e
    set_tokenizer(model, tokenizer)


def set_tokenizer(model: LanguageModel, tokenizer: Any) -> None:
    """Give an imported model its tokenizer, and lay sources out as the tokenizer does: "bos" when it
    only prepends BOS, "plain" when it adds nothing, else "template" with its own special tokens around
    the text (T5's `x </s>`, BART's `<s> x </s>`, NLLB's `lang x </s>`, whose language token is
    `source_lang_id`)."""
    model.tokenizer = tokenizer
    config = model.config
    if config.encoder_input != "tokens":  # an audio encoder reads no text: nothing to lay out
        return
    prefix, suffix = special_template(tokenizer)
    if not suffix and prefix in ([], [tokenizer.bos_token_id]):
        config.source_layout = "bos" if prefix else "plain"
        config.source_prefix, config.source_suffix, config.source_lang_id = [], [], None
        return
    config.source_layout, config.source_prefix, config.source_suffix = "template", prefix, suffix
    config.source_lang_id = source_language_id(tokenizer, prefix + suffix)


def special_template(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(the ids a tokenizer puts before a text, after it), read from how it encodes a sample."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []  # a tokenizer whose specials change the text's own ids: lay the text out as it is


def source_language_id(tokenizer: Any, template: list[int]) -> int | None:
    """The language token among a template's ids: the tokenizer's `src_lang` (NLLB, mBART-50, M2M100)."""
    from encore.tokenizer import language_id

    lang = getattr(tokenizer, "src_lang", None)
    if not isinstance(lang, str):
        return None
    try:
        found = language_id(tokenizer, lang)
    except ValueError:
        return None
    return found if found in template else None
