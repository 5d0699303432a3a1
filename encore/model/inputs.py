"""Model inputs: the checks that run where token ids enter, and the masks and positions built from them.

`check_ids` and `padding_mask` read values on the host (a sync on GPU), so they run once, where data
enters (generation's public entry points, the engine's `add`, collators, the CLI), never inside
`forward` or a decode step. Everything else here is pure tensor code.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
    """Boolean [B, S] mask, or None when nothing is padded (lets SDPA take its fastest path).
    Reads the mask on the host: call it where data enters, not in a hot loop."""
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    return None if bool(mask.all()) else mask


def as_bool_mask(attention_mask: Tensor | None) -> Tensor | None:
    """The mask as bool, with no host read (what `forward` uses)."""
    return None if attention_mask is None else attention_mask.bool()


def right_pad_order(mask: Tensor | None, batch: int, length: int, device: torch.device) -> tuple[Tensor | None, Tensor]:
    """Generation lays prompts out right-padded: row b's real tokens at positions 0 .. n_b - 1, in
    order, whatever its padding was, so its positions and cache slots never depend on the other rows.
    Returns the gather index [B, S] that does it (a stable sort on the mask; None when nothing is
    padded) and each row's length n_b [B]."""
    if mask is None:
        return None, torch.full((batch,), length, dtype=torch.long, device=device)
    return torch.argsort((~mask).to(torch.int8), dim=1, stable=True), mask.sum(dim=1)


def positions_from_mask(mask: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    """RoPE positions [B, T] that count only real tokens, so left padding does not shift them."""
    if mask is None:
        return torch.arange(length, device=device).expand(batch, length)
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def causal_mask(
    key_mask: Tensor | None, length: int, device: torch.device, window: int = 0, past: int = 0
) -> Tensor | None:
    """[B, 1, T, T] causal AND key-is-real; a padded query may see itself (never an all-false row).
    None when nothing is padded and there is no window: SDPA's is_causal path does the rest. With a
    `window` W, query i sees keys i - W < j <= i (a sliding layer). With `past` P > 0 (a prefill after
    P cached positions, unpadded), [1, 1, T, P + T]: the queries are positions P .. P + T - 1."""
    if key_mask is None and not window and not past:
        return None
    if past and key_mask is not None:
        raise ValueError("causal_mask: a prefill after cached positions takes one unpadded row")
    i = torch.arange(past, past + length, device=device)  # the queries' positions
    j = torch.arange(past + length, device=device)  # the keys'
    causal = j[None, :] <= i[:, None]  # [T, P + T]: key j <= query i
    if window:
        causal &= j[None, :] > i[:, None] - window
    if key_mask is None:
        return causal[None, None]
    eye = torch.eye(length, dtype=torch.bool, device=device)
    return ((causal & key_mask[:, None, :]) | eye)[:, None]


def causal_masks(key_mask: Tensor | None, length: int, device: torch.device, window: int, past: int = 0) -> dict:
    """`causal_mask` for each layer kind: "full", and "sliding" (the same one when there is no window)."""
    full = causal_mask(key_mask, length, device, past=past)
    return {"full": full, "sliding": causal_mask(key_mask, length, device, window, past) if window else full}


def bidirectional_mask(
    key_mask: Tensor | None, length: int, device: torch.device, span: tuple[int, int] | None = None
) -> Tensor | None:
    """The encoder's mask: [B, 1, 1, S] key-is-real, or None when nothing is padded; with a `span`
    (back, ahead), [B|1, 1, S, S]: query i sees keys i - back <= j <= i + ahead (a sliding encoder
    layer), itself always."""
    if span is None:
        return None if key_mask is None else key_mask[:, None, None, :]
    i = torch.arange(length, device=device)
    offset = i[:, None] - i[None, :]  # [S, S]: query i minus key j
    band = (offset <= span[0]) & (-offset <= span[1])
    if key_mask is None:
        return band[None, None]
    eye = torch.eye(length, dtype=torch.bool, device=device)
    return ((band & key_mask[:, None, :]) | eye)[:, None]
