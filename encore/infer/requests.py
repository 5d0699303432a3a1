"""What a request brings, checked where it enters (`Engine.add`): one-line errors naming the field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def token_ids(ids: Any, vocab_size: int, what: str, max_len: int | None = None) -> list[int]:
    """A 1-D sequence of token ids (list or integer tensor), non-empty, at most `max_len` long, each in
    the vocabulary; as a list."""
    if isinstance(ids, Tensor):
        if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"{what} must be a 1-D tensor of token ids, got shape {tuple(ids.shape)} {ids.dtype}")
        ids = ids.tolist()
    elif isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise ValueError(f"{what} must be a 1-D sequence of token ids, got {type(ids).__name__}")
    ids = list(ids)
    if not ids:
        raise ValueError(f"{what} is empty: need at least one token")
    if max_len is not None and len(ids) > max_len:
        raise ValueError(f"{what} has {len(ids)} tokens, more than this engine's max_input_len {max_len}")
    for i, t in enumerate(ids):
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size:
            raise ValueError(f"{what}[{i}] = {t!r} is outside the vocabulary [0, {vocab_size})")
    return ids


def log_mel_window(features: Any, shape: tuple[int, int]) -> Tensor:
    """A speech request's window: a float tensor of `shape` (mel bins, 3000 frames: 30 s)."""
    if not isinstance(features, Tensor) or not features.dtype.is_floating_point or tuple(features.shape) != shape:
        got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"a speech request's input must be log-mel features of shape {shape} (float), got {got}")
    return features
