"""Alignment: the teacher's distribution for each target token of an encoder-decoder student.

The student's encoder reads the source ``x``; its decoder reads ``[BOS]∘y`` and predicts ``y``. The
teacher reads ``[PAD…]∘[BOS]∘x∘y[:-1]∘[PAD…]``: sources are *left*-padded so every row's source ends in
the same column ``start``, targets follow, *right*-padded. The teacher's logits at column
``start − 1 + j`` are its distribution for ``y_j`` given ``x`` and ``y_<j``, so the target logits are
simply the last ``T_y`` columns and a Hugging Face teacher computes its head there only
(``logits_to_keep``). Position ids count real tokens only (``cumsum(mask) − 1``): padding never shifts
RoPE. `aligned_teacher_logits` holds this for every row of a batch with mixed lengths (tested against
per-example teacher runs).
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import Tensor, nn

from encore.distill.errors import DistillError
from encore.distill.seq2seq_teacher import Seq2SeqTeacher
from encore.distill.teacher import Teacher

NEG_INF = float("-inf")


def right_padded_lengths(ids: Tensor, mask: Tensor | None, name: str) -> Tensor:
    """Per-row lengths [B], after checking the mask marks a right-padded batch."""
    if not isinstance(ids, Tensor) or ids.dim() != 2:
        raise DistillError(f"{name}_ids must be a [batch, length] tensor, got {getattr(ids, 'shape', type(ids))}")
    if mask is None:
        return torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)
    if mask.shape != ids.shape:
        raise DistillError(f"{name}_mask has shape {tuple(mask.shape)} but {name}_ids has {tuple(ids.shape)}")
    m = mask.bool()
    lengths = m.sum(1)
    expected = torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]
    if not torch.equal(m, expected):
        row = int((m != expected).any(1).nonzero()[0])
        raise DistillError(f"{name}_mask row {row} is not right-padded: real tokens must come first, then padding")
    return lengths


def teacher_sources(teacher: nn.Module, source_ids: Tensor, source_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The student's right-padded sources as the teacher's own layout ends them (`Teacher.source_end`):
    "strip" drops a trailing EOS (a teacher of an imported family was fine-tuned on ``[BOS] x y``, the
    student reads ``x [EOS]``), "append" adds one (encore's decoder-only layout ``[BOS] x [EOS] y`` under
    a student whose sources end without it), "keep" leaves them."""
    end, eos = getattr(teacher, "source_end", "keep"), getattr(teacher, "eos_id", None)
    mask = torch.ones_like(source_ids) if source_mask is None else source_mask
    if end == "keep" or not isinstance(eos, int):
        return source_ids, mask
    lengths = right_padded_lengths(source_ids, mask, "source")
    rows = torch.arange(source_ids.shape[0], device=source_ids.device)
    last = (lengths - 1).clamp(min=0)
    ends_in_eos = (lengths > 0) & (source_ids[rows, last] == eos)
    if end == "strip":
        mask = mask.clone()
        mask[rows[ends_in_eos], last[ends_in_eos]] = 0
        return source_ids.masked_fill(mask == 0, getattr(teacher, "pad_id", 0)), mask
    ids = torch.nn.functional.pad(source_ids, (0, 1), value=getattr(teacher, "pad_id", 0))
    mask = torch.nn.functional.pad(mask, (0, 1))
    add = ~ends_in_eos
    ids[rows[add], lengths[add]] = eos
    mask[rows[add], lengths[add]] = 1
    return ids, mask


def teacher_layout(
    source_ids: Tensor,
    source_mask: Tensor | None,
    target_ids: Tensor,
    target_mask: Tensor | None,
    *,
    bos_id: int | None = None,
    pad_id: int = 0,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """The teacher's input for right-padded (source, target) batches:
    ``(input_ids, attention_mask, position_ids, start)``, each tensor ``[B, start + T_y − 1]``.

    Row b is ``pads ∘ [bos] ∘ x_b ∘ y_b[:-1] ∘ pads``: the ``[bos] ∘ x_b`` block is left-padded so it
    ends at column ``start`` in every row, the targets follow right-padded. The teacher's logits at
    column ``start − 1 + j`` are then its distribution for ``y_j``. ``bos`` is skipped for a row whose
    source already starts with it. ``y``'s last token is not fed: nothing is predicted after it.
    """
    n_x = right_padded_lengths(source_ids, source_mask, "source")
    right_padded_lengths(target_ids, target_mask, "target")
    if target_ids.shape[0] != source_ids.shape[0]:
        raise DistillError(f"target_ids has batch size {target_ids.shape[0]}, source_ids {source_ids.shape[0]}")
    B, S = source_ids.shape
    T = target_ids.shape[1]
    device = source_ids.device
    if bos_id is not None:
        prefix = ~((source_ids[:, 0] == bos_id) & (n_x > 0))
    else:
        prefix = torch.zeros(B, dtype=torch.bool, device=device)
    lx = n_x + prefix.long()
    if bool((lx == 0).any()):
        row = int((lx == 0).nonzero()[0])
        raise DistillError(
            f"source row {row} is empty and the teacher has no BOS: nothing to predict the first target token from"
        )
    start = int(lx.max())
    k = torch.arange(start, device=device)[None] - (start - lx)[:, None]  # index into [bos] ∘ x; < 0: pad
    left = source_ids.gather(1, (k - prefix.long()[:, None]).clamp(0, max(S - 1, 0)))
    if bos_id is not None:
        left = torch.where((k == 0) & prefix[:, None], torch.full_like(left, bos_id), left)
    left_mask = k >= 0
    left = left.masked_fill(~left_mask, pad_id)
    right_mask = (
        target_mask[:, : T - 1].bool()
        if target_mask is not None
        else torch.ones(B, max(T - 1, 0), dtype=torch.bool, device=device)
    )
    right = target_ids[:, : T - 1].masked_fill(~right_mask, pad_id)
    input_ids = torch.cat([left, right.to(left.dtype)], dim=1)
    mask = torch.cat([left_mask, right_mask], dim=1)
    position_ids = (mask.long().cumsum(1) - 1).clamp(min=0)
    return input_ids, mask.long(), position_ids, start


def restrict_vocab(logits: Tensor, vocab_size: int | None = None, valid_vocab: int | None = None) -> Tensor:
    """Teacher logits [.., V_t] -> [.., vocab_size] (the student's width; default V_t): columns beyond
    the teacher's are −inf, and so are ids ``>= valid_vocab`` (a padded embedding, or beyond the shared
    vocabulary): probability 0, excluded from the KD term. May write into ``logits``."""
    V_t = logits.shape[-1]
    V = vocab_size or V_t
    n = min(valid_vocab or V_t, V_t, V)
    if V <= V_t:
        out = logits[..., :V]
    else:
        out = logits.new_full((*logits.shape[:-1], V), NEG_INF)
        out[..., :V_t] = logits
    if n < V:
        out[..., n:] = NEG_INF
    return out


def _accepts_logits_to_keep(teacher: Any) -> bool:
    if isinstance(teacher, Teacher):
        return True
    try:
        return "logits_to_keep" in inspect.signature(teacher.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False


@torch.no_grad()
def aligned_teacher_logits(
    teacher: nn.Module,
    source_ids: Tensor,
    source_mask: Tensor | None,
    target_ids: Tensor,
    target_mask: Tensor | None,
    *,
    vocab_size: int | None = None,
    valid_vocab: int | None = None,
    teacher_bos_id: int | None | Literal["auto"] = "auto",
    pad_id: int | None = None,
) -> Tensor:
    """The teacher's logits for each target token: ``[B, T_y, vocab_size]``, row ``j`` = its distribution
    for ``y_j`` given ``x`` and ``y_<j``. Inputs are right-padded as the masks mark them (``target_ids``
    may hold −100 at padding). Rows at padded target positions hold arbitrary finite values.

    ``teacher`` is called as ``teacher(input_ids=, attention_mask=, position_ids=)`` (plus
    ``logits_to_keep=T_y`` when it accepts it) and returns logits or an object with ``.logits``.
    ``vocab_size`` (the student's) and ``valid_vocab`` (shared vocabulary; default the teacher's
    ``valid_vocab`` attribute): see `restrict_vocab`. ``teacher_bos_id="auto"`` uses ``teacher.bos_id``.
    The result stays in the teacher's dtype (bf16 on GPU); losses upcast only the rows they use.
    """
    bos = getattr(teacher, "bos_id", None) if teacher_bos_id == "auto" else teacher_bos_id
    pad = pad_id if pad_id is not None else getattr(teacher, "pad_id", 0)
    if valid_vocab is None:
        valid_vocab = getattr(teacher, "valid_vocab", None)
    teacher_vocab = getattr(teacher, "vocab_size", None)
    B, T = target_ids.shape
    source_ids, source_mask = teacher_sources(teacher, source_ids, source_mask)
    ids, mask, pos, start = teacher_layout(source_ids, source_mask, target_ids, target_mask, bos_id=bos, pad_id=pad)
    if teacher_vocab is not None:
        for name, t, m in (("source_ids", source_ids, source_mask), ("target_ids", target_ids, target_mask)):
            bad = t >= teacher_vocab if m is None else (t >= teacher_vocab) & m.bool()
            if bool(bad.any()):
                b, c = bad.nonzero()[0].tolist()
                raise DistillError(
                    f"{name}[{b}, {c}] = {int(t[b, c])} is outside the teacher's vocabulary [0, {teacher_vocab})"
                )
    if T == 0:
        width = vocab_size or teacher_vocab or 0
        return torch.zeros(B, 0, width, device=source_ids.device)
    kwargs = {"logits_to_keep": T} if _accepts_logits_to_keep(teacher) else {}
    out = teacher(input_ids=ids, attention_mask=mask, position_ids=pos, **kwargs)
    logits = out.logits if hasattr(out, "logits") else out
    if logits.dim() != 3 or logits.shape[0] != B or logits.shape[1] not in (T, ids.shape[1]):
        raise DistillError(
            f"the teacher returned logits of shape {tuple(logits.shape)} for an input of shape {tuple(ids.shape)}"
        )
    return restrict_vocab(logits[:, -T:], vocab_size, valid_vocab)


def batch_teacher_logits(
    teacher: nn.Module,
    batch: dict[str, Tensor],
    labels: Tensor,
    mask: Tensor,
    *,
    vocab_size: int | None = None,
    valid_vocab: int | None = None,
    teacher_bos_id: int | None | Literal["auto"] = "auto",
    prefix: str = "",
) -> Tensor:
    """The teacher's logits for the target tokens `labels` of a student batch (``prefix + "decoder_input_ids"``
    are the ones that predict them): an encoder-decoder teacher (`Seq2SeqTeacher`) reads the batch as it
    is; a decoder-only one the re-laid-out pair (`aligned_teacher_logits`)."""
    if isinstance(teacher, Seq2SeqTeacher):
        logits = teacher(
            batch["input_ids"],
            batch.get("attention_mask"),
            batch[prefix + "decoder_input_ids"],
            batch.get(prefix + "decoder_attention_mask"),
        )
        return restrict_vocab(logits, vocab_size, valid_vocab or teacher.valid_vocab)
    return aligned_teacher_logits(
        teacher,
        batch["input_ids"],
        batch.get("attention_mask"),
        labels,
        mask,
        vocab_size=vocab_size,
        valid_vocab=valid_vocab,
        teacher_bos_id=teacher_bos_id,
    )
