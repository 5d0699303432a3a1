"""One adapter per checkpoint family, in the style of torchtitan's `StateDictAdapter`: a family's
config.json <-> a `ModelConfig`, and its tensor names <-> encore's, both directions from one table.

A family lists, for every tensor of the encore model, the Hugging Face tensors it is made of
(`rules`): one name, or several concatenated along the output rows (q/k/v into the fused `qkv`, gate
and up into the fused `mlp.up`). `from_hf` and `to_hf` read that one table, so the two directions
cannot drift apart. Everything a family does differently from encore's blocks (`1 + w` norms, sandwich
norms, soft-capping, scaled embeddings) is a `ModelConfig` field that picks a module when the model
is built; the adapter only names tensors and maps config keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from encore.config import ModelConfig

Rule = tuple[str, tuple[str, ...]]  # encore tensor name, the HF tensors concatenated (dim 0) into it
Getter = Callable[[str], Tensor]  # an HF tensor by name (read lazily from the checkpoint's files)


class ConversionError(ValueError):
    """A checkpoint encore cannot take, or a model an HF family cannot express; the message says which."""


class StateDictAdapter:
    model_types: tuple[str, ...] = ()  # config.json `model_type`s this adapter reads
    architecture: str = ""  # the transformers class `to_hf` writes (config.json `architectures`)
    # prefixes a transformers model object names differently in memory than on disk -> the disk's
    memory_names: dict[str, str] = {}
    vision_prefix: str | None = None  # the image tower's tensors (families with one: `vision_from_hf`)
    # a tensor the rules name -> other names a checkpoint may hold it under (tied tables saved once)
    aliases: dict[str, tuple[str, ...]] = {}

    def disk_name(self, name: str) -> str:
        """A model object's state-dict name as the checkpoint files spell it."""
        return _rename(name, self.memory_names)

    def memory_name(self, name: str) -> str:
        """A checkpoint file's tensor name as the transformers model object spells it."""
        return _rename(name, {disk: memory for memory, disk in self.memory_names.items()})

    # --- configs ----------------------------------------------------------------------------------

    def config_from_hf(self, hf: dict[str, Any], generation: dict[str, Any]) -> ModelConfig:
        raise NotImplementedError

    def config_to_hf(self, config: ModelConfig) -> Any:
        """A transformers config object of this family for `config` (ConversionError if it cannot be)."""
        raise NotImplementedError

    def why_not(self, config: ModelConfig) -> str | None:
        """None when this family can express `config`, else the reason in a few words."""
        raise NotImplementedError

    def settle(self, config: ModelConfig, names: set[str], get: Getter) -> ModelConfig:
        """The config once the checkpoint's tensor names are known (which tables are tied, whether a
        bias is there): config.json alone does not always say."""
        return config

    def vision_from_hf(self, hf: dict[str, Any], tokenizer: Any = None) -> tuple[Any, dict[str, Any]]:
        """(the image tower's `VisionConfig`, `VisionLanguageModel` keywords: "image_token_id",
        "image_start_ids", "image_end_ids") of a family with an image tower (`encore.convert.vision`);
        `tokenizer` (the checkpoint's, or None) spells what the family's processor puts around an image."""
        raise ConversionError(f"model_type {self.model_types[0]!r} has no image tower encore reads")

    def vision_tensors(self, get: Getter, names: list[str]) -> Iterator[tuple[str, Tensor]]:
        """(name in `encore.vision.ImageEncoder`, tensor) for every tensor of the tower and projector."""
        raise ConversionError(f"model_type {self.model_types[0]!r} has no image tower encore reads")

    def vision_to_hf(self, config: ModelConfig, vlm: Any) -> tuple[Any, dict[str, Tensor], Any]:
        """A `VisionLanguageModel` of this family -> (the family's config with its tower, the tower's and
        projector's tensors as the files name them, the family's image processor); ConversionError
        naming what the family cannot hold."""
        raise ConversionError(f"model_type {self.model_types[0]!r} has no image tower: save the text model alone")

    # --- tensors ----------------------------------------------------------------------------------

    def rules(self, config: ModelConfig) -> list[Rule]:
        raise NotImplementedError

    def from_hf(self, get: Getter, config: ModelConfig) -> Iterator[tuple[str, Tensor]]:
        """(encore name, tensor) for every tensor of the model, read one rule at a time."""
        get = self._aliased(get)
        for name, parts in self.rules(config):
            yield name, get(parts[0]) if len(parts) == 1 else torch.cat([get(p) for p in parts])

    def _aliased(self, get: Getter) -> Getter:
        def aliased(name: str) -> Tensor:
            for candidate in (name, *self.aliases.get(name, ())):
                try:
                    return get(candidate)
                except (ConversionError, KeyError):
                    continue
            return get(name)  # raises, naming the tensor the rules want

        return aliased if self.aliases else get

    def to_hf(self, state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
        """An encore state dict -> the family's tensors (fused ones split back by their row counts)."""
        out: dict[str, Tensor] = {}
        for name, parts in self.rules(config):
            tensor = state[name]
            if len(parts) == 1:
                out.setdefault(parts[0], tensor)
                continue
            shapes = config.encoder_config() if name.startswith("encoder.") else config  # its own widths
            rows = [part_rows(p, shapes) for p in parts]
            for part, piece in zip(parts, tensor.split(rows)):
                out.setdefault(part, piece.contiguous())  # a tensor two rules read: the first one writes it
        return out


def _rename(name: str, prefixes: dict[str, str]) -> str:
    for old, new in prefixes.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def part_rows(hf_name: str, config: ModelConfig) -> int:
    """Output rows of one HF projection that encore keeps fused with others."""
    q, kv = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    kind = hf_name.rsplit(".", 2)[-2]  # "q_proj", "gate_proj", ...
    rows = {"q_proj": q, "k_proj": kv, "v_proj": kv, "gate_proj": config.mlp_dim, "up_proj": config.mlp_dim,
            "q": q, "k": kv, "v": kv, "wi_0": config.mlp_dim, "wi_1": config.mlp_dim}  # fmt: skip
    return rows[kind]


def attention_rules(enc: str, hf: str, config: ModelConfig) -> list[Rule]:
    """Self-attention of one layer: fused q/k/v (+ biases), output, q/k norms."""
    rules: list[Rule] = [
        (f"{enc}.qkv.weight", tuple(f"{hf}.{p}_proj.weight" for p in "qkv")),
        (f"{enc}.out.weight", (f"{hf}.o_proj.weight",)),
    ]
    if config.qkv_bias:
        rules.append((f"{enc}.qkv.bias", tuple(f"{hf}.{p}_proj.bias" for p in "qkv")))
    if config.qk_norm:
        rules += [
            (f"{enc}.qk_norm.q.weight", (f"{hf}.q_norm.weight",)),
            (f"{enc}.qk_norm.k.weight", (f"{hf}.k_norm.weight",)),
        ]
    return rules


def gated_mlp_rules(enc: str, hf: str) -> list[Rule]:
    return [
        (f"{enc}.up.weight", (f"{hf}.gate_proj.weight", f"{hf}.up_proj.weight")),
        (f"{enc}.down.weight", (f"{hf}.down_proj.weight",)),
    ]


# --- reading config.json ----------------------------------------------------------------------------


def need(hf: dict[str, Any], key: str, where: str = "config.json") -> Any:
    if hf.get(key) is None:
        raise ConversionError(f"{where}: field {key!r} is missing")
    return hf[key]


def rope_settings(hf: dict[str, Any], kind: str | None = None) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, the scaling dict encore implements or None) from transformers 5's `rope_parameters`
    (per layer kind for Gemma 3) or 4.x's `rope_theta` + `rope_scaling`."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if kind is not None and kind in params:
        params = params[kind]
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type not in ("linear", "llama3"):
        raise ConversionError(f"config.json: RoPE scaling {rope_type!r} is not supported (encore has linear, llama3)")
    keep = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return float(theta), {"rope_type": rope_type, **{k: params[k] for k in keep if k in params}}


def rope_to_hf(config: ModelConfig) -> dict[str, Any]:
    return {"rope_theta": config.rope_theta, "rope_type": "default", **(config.rope_params or {})}


def layer_kinds(hf: dict[str, Any], n: int) -> tuple[list[str], int]:
    """(encore layer kinds, sliding window) from `layer_types` ("full_attention" / "sliding_attention")."""
    types = hf.get("layer_types") or ["full_attention"] * n
    unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
    if unknown:
        raise ConversionError(f"config.json: layer_types {unknown} are not supported (full / sliding attention)")
    kinds = ["sliding" if t == "sliding_attention" else "full" for t in types]
    window = int(hf.get("sliding_window") or 0) if "sliding" in kinds else 0
    return (kinds if "sliding" in kinds else []), window


def special_tokens(hf: dict[str, Any], generation: dict[str, Any], vocab: int) -> dict[str, Any]:
    """pad / bos / eos ids: generation_config.json's first, then config.json's; several EOS ids kept."""
    pick = lambda key: generation.get(key, hf.get(key))
    eos = pick("eos_token_id")
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    if not eos_ids:
        raise ConversionError("config.json / generation_config.json: no eos_token_id")
    bos, pad = pick("bos_token_id"), pick("pad_token_id")
    out = dict(eos_token_id=eos_ids[0], extra_eos_token_ids=eos_ids[1:])
    out["bos_token_id"] = bos if isinstance(bos, int) and 0 <= bos < vocab else eos_ids[0]
    out["pad_token_id"] = pad if isinstance(pad, int) and 0 <= pad < vocab else eos_ids[0]
    return out


def hf_special_tokens(config: ModelConfig) -> dict[str, Any]:
    eos = list(config.eos_token_ids)
    return dict(
        bos_token_id=config.bos_token_id,
        eos_token_id=eos[0] if len(eos) == 1 else eos,
        pad_token_id=config.pad_token_id,
    )
