"""What both architectures share: embeddings and tied head, the generation cache, checkpoints.

A subclass provides `forward`, `prefill` (read the input once, return the first logits and the
cache) and `decode_step` (one token in, next logits out); `encore.infer.generate` drives the loop.
`encore.model.io` picks the class for a config and resolves "preset | .json | checkpoint".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encore.config import ModelConfig
from encore.files import atomic_write
from encore.model.cache import GenerationCache, step_masks
from encore.model.layers import (
    Linear,
    LogitsBias,
    Rope,
    RotaryEmbedding,
    Scale,
    SoftCap,
    init_weights,
    make_embedding,
    make_norm,
    stack_norm,
)
from encore.model.positions import make_positions

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FP16_OVERFLOWS = ("t5", "mt5")  # families whose activations pass fp16's 65504 (CTranslate2 #1074): NaN


def runnable_dtype(config: ModelConfig, dtype: torch.dtype | None) -> torch.dtype | None:
    """`dtype`, or bfloat16 where it is float16 and the family overflows fp16 (T5, mT5: their
    feed-forward outputs pass 65504 and the logits turn NaN), said once."""
    if dtype != torch.float16 or config.family not in FP16_OVERFLOWS:
        return dtype
    import warnings

    warnings.warn(f"encore: {config.family} overflows float16 (NaN logits); running bfloat16 instead", stacklevel=3)
    return torch.bfloat16


class LanguageModel(nn.Module):
    config: ModelConfig
    arch: str

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.embed = make_embedding(config)
        self.lm_head = None if config.tie_embeddings else Linear(config.d_model, config.vocab_size)
        rope = config.position_kind == "rope"
        self.rope = RotaryEmbedding(config, params=config.rope_params) if rope else None  # the full layers'
        sliding = "sliding" in config.encoder_layer_types + config.decoder_layer_types
        local = rope and sliding and (config.rope_local_theta is not None or config.rope_params is not None)
        self.rope_local = RotaryEmbedding(config, theta=config.rope_local_theta) if local else None
        self.positions = make_positions(config, "decoder")  # the decoder's (or decoder-only model's)
        self.embed_norm = make_norm(config) if config.embed_norm else nn.Identity()
        self.final_norm = stack_norm(config)
        self.head_scale = nn.Identity() if config.head_scale is None else Scale(config.head_scale)
        self.logits_bias = LogitsBias(config.vocab_size) if config.logits_bias else nn.Identity()
        self.logit_cap = nn.Identity() if config.final_softcap is None else SoftCap(config.final_softcap)
        self.tokenizer: Any = None  # a transformers tokenizer, saved beside the weights when set
        self.generation_config: dict[str, Any] = {}  # a checkpoint's generation_config.json, when it has one

    def _init_weights(self) -> None:
        init_weights(self, self.config.n_encoder_layers + self.config.n_decoder_layers)

    def head(self, h: Tensor) -> Tensor:
        """Final norm + (tied) output projection (+ the family's logits bias and cap): [.., D] -> [.., V]."""
        h = self.head_scale(self.final_norm(h))
        logits = F.linear(h, self.embed.weight) if self.lm_head is None else self.lm_head(h)
        return self.logit_cap(self.logits_bias(logits))

    def reset_buffers(self, device: torch.device | str) -> None:
        """Recompute the position tables (RoPE's, sinusoids) on `device` (after a meta-device build and
        `to_empty`)."""
        for module in self.modules():
            if hasattr(module, "reset_tables"):
                module.reset_tables(device)

    def embed_tokens(self, ids: Tensor, positions: Tensor, inputs_embeds: Tensor | None = None) -> Tensor:
        """The decoder's input: token embeddings (or `inputs_embeds`) [B, T, D] with their absolute
        positions (families that add them) and the embedding norm (BART's)."""
        x = self.embed(ids) if inputs_embeds is None else inputs_embeds
        return self.embed_norm(self.positions.embed(x, positions))

    def rotary(self, positions: Tensor) -> dict[str, Rope | None]:
        """positions [B, T] -> the RoPE tables of each layer kind ("full", "sliding"); None for families
        whose positions are not rotary."""
        if self.rope is None:
            return {"full": None, "sliding": None}
        dtype = self.embed.weight.dtype
        full = self.rope(positions, dtype)
        return {"full": full, "sliding": full if self.rope_local is None else self.rope_local(positions, dtype)}

    def get_output_embeddings(self) -> nn.Module:
        """The module whose weight [V, D] projects to the vocabulary (the embedding when tied)."""
        return self.embed if self.lm_head is None else self.lm_head

    def blocks(self) -> list[nn.Module]:
        """The transformer layers, in order (what FSDP shards one by one)."""
        raise NotImplementedError

    def set_dropout(self, p: float) -> None:
        """Change the dropout probability of every layer (and the config), e.g. to fine-tune without it."""
        self.config.dropout = p
        for module in self.modules():
            if isinstance(getattr(module, "dropout", None), float):
                module.dropout = p

    def _check_length(self, n: int, what: str, limit: int | None = None) -> None:
        limit = limit or self.config.max_seq_len
        if n > limit:
            raise ValueError(f"{what} length {n} exceeds max_seq_len={limit}")

    # --- generation: provided by each architecture ------------------------------------------------

    def new_cache(
        self,
        batch_size: int,
        input_len: int,
        max_new_tokens: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> GenerationCache:
        """The cache a request of `batch_size` rows of `input_len` tokens needs for `max_new_tokens`, in
        `kv_dtype` unless `dtype` says otherwise."""
        return GenerationCache.allocate(
            self.config,
            batch_size,
            input_len,
            max_new_tokens,
            device=device or self.embed.weight.device,
            dtype=dtype or self.kv_dtype,
        )

    @property
    def kv_dtype(self) -> torch.dtype:
        """What generation caches hold K/V in: the model's dtype, or what `encore.optimize(kv_dtype=...)`
        set (fp16 on a CPU)."""
        return getattr(self, "_encore_kv_dtype", None) or self.embed.weight.dtype

    def prefill(
        self, input_ids: Tensor, attention_mask: Tensor | None, max_new_tokens: int
    ) -> tuple[Tensor, GenerationCache]:
        raise NotImplementedError

    def cross_inputs(self, cache: GenerationCache) -> Callable[[int], dict]:
        """Layer i's extra inputs in a decode step (an encoder-decoder's cross K/V); none here."""
        return lambda i: {}

    def decode_step(self, tokens: Tensor, cache: GenerationCache) -> Tensor:
        """tokens [B] -> next-token logits [B, V], for both architectures. Each row writes its K/V at
        its own position (`cache.length`), attends over what it has written (its window, in a sliding
        layer) and advances; fixed shapes, nothing read on the host (what CUDA graphs and the ONNX
        export capture)."""
        position = cache.length.clamp(max=cache.max_len - 1)[:, None]  # [B, 1]
        ropes = self.rotary(position)  # [B, 1, 1, Dh] each
        keys = cache.key_positions()  # [1|B, T] (a relative bias reads them)
        masks = self.positions.scores(step_masks(cache, self.config.sliding_window), position, keys)  # [B, 1|H, 1, T]
        cross = self.cross_inputs(cache)
        x = self.embed_tokens(tokens[:, None], position)  # [B, 1, D]
        for i, layer in enumerate(self.decoder):
            x = layer(x, ropes[layer.kind], masks[layer.kind], causal=False, cache=cache, layer=i, **cross(i))
        cache.length += 1
        return self.head(x[:, -1])

    def generate(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 32, **kwargs: Any
    ) -> Tensor:
        """New tokens only, [B, max_new_tokens]; rows that stopped at EOS are filled with pad.
        Keyword arguments: see `encore.infer.generate.generate`."""
        from encore.infer.generate import generate

        return generate(self, input_ids, attention_mask, max_new_tokens=max_new_tokens, **kwargs)

    def generate_stream(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 32, **kwargs: Any
    ) -> Iterator[Tensor]:
        """Yield each step's new tokens [B] as they come (pad for rows already finished)."""
        from encore.infer.generate import generate_stream

        return generate_stream(self, input_ids, attention_mask, max_new_tokens=max_new_tokens, **kwargs)

    # --- checkpoints ---------------------------------------------------------------------------

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def check_savable(self, format: str, dtype: torch.dtype | None) -> bool:
        """Whether the model is quantized; ValueError for a save it cannot make (an unknown format, an
        optimized model's swapped kernels, a quantized model in another format or dtype)."""
        from encore.model.quantized import quantized_modules

        if format not in ("encore", "hf"):
            raise ValueError(f"format must be 'encore' or 'hf', got {format!r}")
        quantized = bool(quantized_modules(self))
        if quantized and (format != "encore" or dtype):
            raise ValueError(
                "a quantized model saves as format='encore' in its own dtypes (to save fp32 weights, "
                "call encore.deoptimize(model) on a model optimized from them)"
            )
        if not quantized and getattr(self, "_encore_swaps", None):
            raise ValueError(
                "this model was optimized for inference (its projections are swapped for inference kernels); "
                "call encore.deoptimize(model) before save_pretrained"
            )
        return quantized

    def save_pretrained(
        self,
        directory: str | Path,
        format: str = "encore",
        dtype: torch.dtype | None = None,
        state: dict[str, Tensor] | None = None,
    ) -> None:
        """config.json + model.safetensors (+ tokenizer files), each file written atomically.
        `format="hf"`: a transformers checkpoint of the model's family (`encore.convert.save_hf`), which
        `AutoModelForCausalLM` / `AutoModelForSeq2SeqLM` load; `dtype` casts its tensors. `state`: the
        weights to write in place of the model's own (a sharded model's, gathered: `train.dist.full_state`)."""
        from safetensors.torch import save_file

        from encore.model.quantized import QUANTIZATION_FILE, json_text, quantized_state

        quantized = self.check_savable(format, dtype)
        if format == "hf":  # convert.save knows configs and tensor names, not model classes: no circle
            from encore.convert.save import save_hf

            return save_hf(self, directory, dtype)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if quantized:  # packed weights + scales, and quantization.json naming each kernel (encore.model.quantized)
            state, manifest = quantized_state(self)
            atomic_write(directory / QUANTIZATION_FILE, lambda p: Path(p).write_text(json_text(manifest)))
        else:
            own = self.state_dict() if state is None else state
            state = {k: v.detach().contiguous().cpu().to(dtype or v.dtype) for k, v in own.items()}
            (directory / QUANTIZATION_FILE).unlink(missing_ok=True)
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(state, p, metadata={"format": "pt"}))
        text = json.dumps({**self.config.to_json_dict(), "model_type": "encore"}, indent=2, sort_keys=True) + "\n"
        atomic_write(directory / CONFIG_FILE, lambda p: Path(p).write_text(text))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        **config_changes: Any,
    ) -> LanguageModel:
        """Load a checkpoint of this class's architecture (`encore.load` picks the class for you).
        `config_changes` replace config fields before the model is built, for fields that do not
        change the weights' shapes (`max_seq_len`, `rope_scaling`, `dropout`)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: not a model directory")
        config = ModelConfig.load(directory / CONFIG_FILE)
        if config.arch != cls.arch:
            raise ValueError(
                f"{directory / CONFIG_FILE}: arch is {config.arch!r}, but {cls.__name__} is "
                f"{cls.arch!r}; use encore.load() to pick the class from the config"
            )
        if config_changes:
            config = config.replace(**config_changes)
        from encore.model.quantized import fuse_loaded, install_quantized, read_manifest, strip_quantized

        manifest = read_manifest(directory)
        if manifest is not None and (torch.device(device).type != "cpu" or dtype not in (None, torch.float32)):
            raise ValueError(f"{directory}: a quantized checkpoint runs on the CPU in float32 (got {device}, {dtype})")
        with torch.device("meta"):  # skip random init: every weight comes from the file
            model = cls(config)
        shapes = strip_quantized(model, manifest) if manifest else {}
        model.to_empty(device=device)
        model.reset_buffers(device)
        weights = directory / WEIGHTS_FILE
        if not weights.exists() and (directory / "encore_onnx.json").is_file():
            raise ValueError(
                f"{directory}: an ONNX export (encore export); encore transcribe and encore generate --backend onnx "
                "run it, other commands take the model it was exported from"
            )
        if not weights.exists():
            raise FileNotFoundError(f"{weights}: missing (expected safetensors weights beside config.json)")
        try:
            state = load_file(str(weights), device=str(device))
        except SafetensorError as e:
            raise ValueError(f"{weights}: not a readable safetensors file ({e})") from None
        if manifest:
            install_quantized(model, manifest, state, shapes, weights)
        kernels = manifest["modules"] if manifest else {}  # their tensors were taken by install_quantized
        expected = {k: v for k, v in model.state_dict().items() if k.rpartition(".")[0] not in kernels}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{weights}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise ValueError(
                    f"{weights}: {name} has shape {tuple(tensor.shape)}, the config implies "
                    f"{tuple(expected[name].shape)}"
                )
        model.load_state_dict(state, strict=manifest is None)  # kernels hold their own tensors
        if manifest:
            fuse_loaded(model)
        if (dtype := runnable_dtype(config, dtype)) is not None:
            model.to(dtype)
        if (directory / "tokenizer.json").exists():
            from encore.tokenizer import auto_tokenizer

            try:
                model.tokenizer = auto_tokenizer(directory)
            except Exception as e:  # the Rust side raises bare Exceptions (and KeyErrors) for a bad file
                raise ValueError(f"{directory / 'tokenizer.json'}: not a valid tokenizer ({e!r:.200})") from e
        return model.eval()
