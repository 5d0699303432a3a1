"""Distillation into a decoder-only student (#41, the paper's open check 3: is the recipe
architecture-agnostic?). The student's batches are the fine-tuning collator's ``[BOS] x [EOS] y [EOS]``
rows (``labels`` on ``y [EOS]``, `encore.data.collate.CausalLMCollator`); its logits at the scored
positions are matched with the teacher's distribution for the same target tokens:

- a decoder-only `Teacher` that lays pairs out as the student does reads the batch as it is;
- an encoder-decoder `Seq2SeqTeacher` reads each row's ``x`` in its encoder (laid out as its family
  lays a source out) and scores ``y [EOS]`` in its decoder, after its own decoder start token.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encore.config import ModelConfig
from encore.data.collate import pad_rows, rows_mask
from encore.distill.align import restrict_vocab
from encore.distill.divergence import Kind, ce_sum, kd_term
from encore.distill.errors import DistillError
from encore.distill.loss import check_settings
from encore.distill.seq2seq_teacher import Seq2SeqTeacher
from encore.distill.teacher import Teacher
from encore.distill.topk_store import TopKStore, check_sparse_targets
from encore.train.losses import IGNORE, Loss, LossOutput


def check_causal_teacher(teacher: nn.Module, student: ModelConfig, where: str) -> None:
    """One line where the teacher cannot read a decoder-only student's rows: a decoder-only teacher
    must lay them out as the student does (its BOS, the student's EOS after the source)."""
    if isinstance(teacher, Seq2SeqTeacher):
        if student.source_layout not in ("encore", "bos", "plain"):
            raise DistillError(f"{where}: a student with source layout {student.source_layout!r} is not split back")
        return
    if not isinstance(teacher, Teacher) or teacher.bos_id != student.bos_token_id or teacher.source_end != "keep":
        raise DistillError(
            f"{where}: a decoder-only student's teacher must read its rows as they are: the same BOS "
            f"({getattr(teacher, 'bos_id', None)} vs {student.bos_token_id}) and source layout"
        )


def _source(prompt: list[int], layout: str) -> list[int]:
    """The source ids of a decoder-only prompt laid out by `ModelConfig.source_ids` (deconly)."""
    return {"encore": prompt[1:-1], "bos": prompt[1:], "plain": prompt}[layout]


def seq2seq_sources(config: ModelConfig, prompts: list[list[int]], layout: str) -> list[list[int]]:
    """Decoder-only prompts (laid out by `layout`) as an encoder-decoder's sources (its `config`'s layout)."""
    return [config.source_ids(_source(p, layout)) for p in prompts]


def scored_targets(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """A decoder-only batch's scored positions and their targets, right-aligned per row:
    ``(scored [B, S-1], targets [B, T_y] (-100 at padding), mask [B, T_y])``; position t of ``scored``
    predicts ``labels[t + 1]``, and row b's j-th scored position is its target j."""
    labels = batch["labels"][:, 1:]
    scored = labels != IGNORE
    counts = scored.sum(1)
    width = int(counts.max()) if counts.numel() else 0
    mask = torch.arange(width, device=labels.device)[None] < counts[:, None]
    targets = torch.full(mask.shape, IGNORE, dtype=labels.dtype, device=labels.device)
    targets[mask] = labels[scored]
    return scored, targets, mask


def _padded(flat: Tensor, mask: Tensor) -> Tensor:
    """[N, V] rows (row by row, as ``x[mask]`` lists them) -> [B, T, V], zeros where `mask` is False."""
    out = flat.new_zeros(*mask.shape, flat.shape[-1])
    out[mask] = flat
    return out


def seq2seq_target_logits(
    teacher: Seq2SeqTeacher, batch: dict[str, Tensor], student: ModelConfig, scored: Tensor
) -> Tensor:
    """The encoder-decoder teacher's logits [N, V_t] for the N scored targets of a decoder-only batch,
    in the order ``logits[scored]`` lists them (row by row)."""
    ids, labels = batch["input_ids"], batch["labels"]
    config = teacher.model.config
    prompts, decoder = [], []
    for row in range(ids.shape[0]):
        targets = scored[row].nonzero().flatten() + 1  # labels[t + 1] is scored at t
        if len(targets) == 0:
            prompts.append(None), decoder.append([])
            continue
        start = int(targets[0])
        if start < 1:
            raise DistillError("an encoder-decoder teacher needs each row's source before its target (no prompt)")
        prompts.append(ids[row, :start].tolist())
        decoder.append([config.bos_token_id, *labels[row, targets[:-1]].tolist()])
    if not any(decoder):  # nothing scored
        return torch.empty(0, teacher.vocab_size, device=ids.device)
    sources = [[] if p is None else seq2seq_sources(config, [p], student.source_layout)[0] for p in prompts]
    pad, device = config.pad_token_id, ids.device
    enc, enc_mask = pad_rows(sources, pad).to(device), rows_mask(sources).to(device)
    dec, dec_mask = pad_rows(decoder, pad).to(device), rows_mask(decoder).to(device)
    logits = teacher(enc, enc_mask, dec, dec_mask)  # [B, T_y, V_t]
    return logits[dec_mask.bool()]


class CausalDistillLoss(Loss):
    """``α·τ²·KD + (1−α)·CE`` for a decoder-only student, each a sum over the target tokens (the loop
    divides by their count). Its batches are the causal collator's (``input_ids``, ``attention_mask``,
    ``labels``); the targets are gold or the teacher's (sequence-level KD, `--unlabeled`), as the batch
    holds them. With ``kd_input_ids`` / ``kd_attention_mask`` / ``kd_labels`` (on-policy: the student's
    own samples) the KD term is taken on those, CE on ``labels``. The teacher runs on each micro-batch
    (`check_causal_teacher` says which teachers read its rows), or its top-k comes from a ``store``
    (offline, `--topk`; the batch then holds ``example_ids``). α = 0 skips the teacher, α = 1 the CE
    pass of an on-policy batch, as `DistillLoss` does for an encoder-decoder student."""

    def __init__(
        self,
        teacher: nn.Module | None,
        student: ModelConfig,
        *,
        store: TopKStore | None = None,
        alpha: float = 0.5,
        kind: Kind = "reverse_kl",
        temperature: float = 1.0,
        beta: float | None = None,
        valid_vocab: int | None = None,
    ):
        check_settings("CausalDistillLoss", teacher, store, alpha, kind, beta, temperature)
        if teacher is not None:
            check_causal_teacher(teacher, student, "--teacher")
        self.teacher, self.store, self.student = teacher, store, student
        self.alpha, self.kind, self.temperature, self.beta = alpha, kind, temperature, beta
        self.valid_vocab = valid_vocab

    def target_tokens(self, batch: dict[str, Tensor]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def read_tokens(self, batch: dict[str, Tensor]) -> int:
        return sum(int(batch[k].sum()) for k in ("attention_mask", "kd_attention_mask") if k in batch)

    def teacher_targets(self, batch: dict[str, Tensor], vocab: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The online teacher on a decoder-only batch: ``(logits [B, T_y, V], targets [B, T_y], mask)``,
        the targets right-aligned as `scored_targets` gives them (what the offline store keeps)."""
        scored, targets, mask = scored_targets(batch)
        if isinstance(self.teacher, Seq2SeqTeacher):
            logits = seq2seq_target_logits(self.teacher, batch, self.student, scored)
        else:
            positions = (batch["attention_mask"].long().cumsum(1) - 1).clamp(min=0)
            logits = self.teacher(batch["input_ids"], batch["attention_mask"], positions)[:, :-1][scored]
        logits = restrict_vocab(logits, vocab, self.valid_vocab or self.teacher.valid_vocab)
        return _padded(logits, mask), targets, mask

    def _student(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The student's logits at a batch's scored targets [B, T_y, V], with the targets and their mask."""
        scored, targets, mask = scored_targets(batch)
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                       logits_mask=F.pad(scored, (0, 1), value=False))  # [N, V]  # fmt: skip
        return _padded(logits, mask), targets, mask

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> LossOutput:
        on_policy = "kd_labels" in batch
        if on_policy and self.store is not None:
            raise DistillError("on-policy targets (kd_labels) need the online teacher, not a stored top-k")
        gold = None if on_policy and self.alpha == 1.0 else self._student(model, batch)
        metrics, total = {}, 0.0
        if self.alpha > 0:
            kd_batch = {k: batch["kd_" + k] for k in ("input_ids", "attention_mask", "labels")} if on_policy else batch
            logits, targets, mask = gold if not on_policy else self._student(model, kd_batch)
            if self.store is not None:
                teacher = self.store.batch(batch["example_ids"], targets.shape[1], targets.device)
                check_sparse_targets(teacher, targets, mask)
            else:
                teacher = self.teacher_targets(kd_batch, logits.shape[-1])[0]
            kd = kd_term(logits, teacher, mask, kind=self.kind, temperature=self.temperature, beta=self.beta,
                         reduction="sum")  # fmt: skip
            n_kd = mask.sum().clamp(min=1)
            n = n_kd if gold is None else gold[2].sum().clamp(min=1)
            total = self.alpha * self.temperature**2 * kd * (n / n_kd)  # a per-KD-token mean, label tokens' weight
            metrics["kd"] = kd.detach() / n_kd
        if gold is not None and self.alpha < 1:
            logits, targets, mask = gold
            ce = ce_sum(logits, targets, mask)
            total = total + (1 - self.alpha) * ce
            metrics["ce"] = ce.detach() / mask.sum().clamp(min=1)
        return LossOutput(total, metrics)
