"""What both architectures share: embeddings and tied head, input checks, checkpoints, generation.

A subclass provides `forward`, `prefill` (read the input once, return the first logits and the
cache) and `decode_step` (one token in, next logits out); `encore.generate` drives the loop.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from encore.config import ModelConfig
from encore.model.cache import GenerationCache
from encore.model.layers import Linear, RMSNorm, RotaryEmbedding, init_weights, linear

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def check_ids(input_ids: Tensor, attention_mask: Tensor | None, vocab_size: int, name: str = "input_ids") -> None:
    """Raise ValueError naming what is wrong, before anything reaches torch's kernels."""
    if not isinstance(input_ids, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.is_complex():
        raise ValueError(f"{name} must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must have shape [batch, seq_len], got shape {tuple(input_ids.shape)}")
    if input_ids.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(input_ids.shape)}): need at least one token per row")
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        row, col = (input_ids == bad).nonzero()[0].tolist()
        raise ValueError(f"{name}[{row}, {col}] = {bad} is outside the vocabulary [0, {vocab_size})")
    if attention_mask is not None:
        mask_name = "attention_mask" if name == "input_ids" else name.replace("input_ids", "attention_mask")
        if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
            raise ValueError(f"{mask_name} has shape {shape} but {name} has shape {tuple(input_ids.shape)}")
        empty = (attention_mask == 0).all(dim=1).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"{mask_name} row {empty[0]} masks out every token: the input is empty")


def padding_mask(attention_mask: Tensor | None) -> Tensor | None:
    """Boolean [B, S] mask, or None when nothing is padded (lets SDPA take its fastest path)."""
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    return None if bool(mask.all()) else mask


def positions_from_mask(mask: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    """RoPE positions [B, T] that count only real tokens, so left padding does not shift them."""
    if mask is None:
        return torch.arange(length, device=device).expand(batch, length)
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def causal_mask(key_mask: Tensor | None, length: int, device: torch.device) -> Tensor | None:
    """[B, 1, T, T] causal AND key-is-real; a padded query may see itself (never an all-false row).
    None when nothing is padded: SDPA's is_causal path does the rest."""
    if key_mask is None:
        return None
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    eye = torch.eye(length, dtype=torch.bool, device=device)
    return ((causal & key_mask[:, None, :]) | eye)[:, None]


def atomic_write(path: Path, write) -> None:
    """Write via a temp file in the same directory, fsync, rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class LanguageModel(nn.Module):
    config: ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.lm_head = None if config.tie_embeddings else Linear(config.d_model, config.vocab_size)
        self.rope = RotaryEmbedding(config)
        self.final_norm = RMSNorm(config.d_model, config.norm_eps)
        self.tokenizer: Any = None  # a transformers tokenizer, saved beside the weights when set

    def _init_weights(self) -> None:
        init_weights(self, self.config.n_encoder_layers + self.config.n_decoder_layers)

    def head(self, h: Tensor) -> Tensor:
        """Final norm + (tied) output projection: [.., D] -> [.., V]."""
        h = self.final_norm(h)
        return linear(h, self.embed.weight) if self.lm_head is None else self.lm_head(h)

    # --- to be provided by each architecture ---------------------------------------------------

    def new_cache(
        self,
        batch_size: int,
        input_len: int,
        max_new_tokens: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> GenerationCache:
        raise NotImplementedError

    def prefill(
        self, input_ids: Tensor, attention_mask: Tensor | None, max_new_tokens: int
    ) -> tuple[Tensor, GenerationCache]:
        raise NotImplementedError

    def decode_step(self, tokens: Tensor, cache: GenerationCache) -> Tensor:
        raise NotImplementedError

    # --- generation ----------------------------------------------------------------------------

    def generate(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 32, **kwargs: Any
    ) -> Tensor:
        """New tokens only, [B, max_new_tokens]; rows that stopped at EOS are filled with pad.
        Keyword arguments: see `encore.generate.generate`."""
        from encore.generate import generate

        return generate(self, input_ids, attention_mask, max_new_tokens=max_new_tokens, **kwargs)

    def generate_stream(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 32, **kwargs: Any
    ) -> Iterator[Tensor]:
        """Yield each step's new tokens [B] as they come (pad for rows already finished)."""
        from encore.generate import generate_stream

        return generate_stream(self, input_ids, attention_mask, max_new_tokens=max_new_tokens, **kwargs)

    # --- checkpoints ---------------------------------------------------------------------------

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | Path) -> None:
        """config.json + model.safetensors (+ tokenizer files), each file written atomically."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(state, p, metadata={"format": "pt"}))
        text = json.dumps({**self.config.to_json_dict(), "model_type": "encore"}, indent=2, sort_keys=True) + "\n"
        atomic_write(directory / CONFIG_FILE, lambda p: Path(p).write_text(text))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> LanguageModel:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: not a model directory")
        config = ModelConfig.load(directory / CONFIG_FILE)
        if cls is not LanguageModel and config.arch != cls.arch:
            raise ValueError(
                f"{directory / CONFIG_FILE}: arch is {config.arch!r}, but {cls.__name__} is "
                f"{cls.arch!r}; use encore.load() to pick the class from the config"
            )
        model_cls = ARCHES[config.arch]
        with torch.device("meta"):  # skip random init: every weight comes from the file
            model = model_cls(config)
        model.to_empty(device=device)
        model.rope.reset_tables(device)
        weights = directory / WEIGHTS_FILE
        if not weights.exists():
            raise FileNotFoundError(f"{weights}: missing (expected safetensors weights beside config.json)")
        try:
            state = load_file(str(weights), device=str(device))
        except SafetensorError as e:
            raise ValueError(f"{weights}: not a readable safetensors file ({e})") from None
        expected = model.state_dict()
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
        model.load_state_dict(state)
        if dtype is not None:
            model.to(dtype)
        if (directory / "tokenizer.json").exists():
            from encore.tokenizer import auto_tokenizer

            model.tokenizer = auto_tokenizer(directory)
        return model.eval()


ARCHES: dict[str, type[LanguageModel]] = {}  # filled by encdec.py / decoder_only.py


def load(directory: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> LanguageModel:
    """Load any encore checkpoint; the class comes from config.json's `arch`."""
    return LanguageModel.from_pretrained(directory, device=device, dtype=dtype)
