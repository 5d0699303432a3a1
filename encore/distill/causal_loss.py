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
from encore.distill.divergence import Kind, _check_kind, kd_term
from encore.distill.errors import DistillError
from encore.distill.seq2seq_teacher import Seq2SeqTeacher
from encore.distill.teacher import Teacher
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


def seq2seq_target_logits(
    teacher: Seq2SeqTeacher, batch: dict[str, Tensor], student: ModelConfig, scored: Tensor
) -> Tensor:
    """The encoder-decoder teacher's logits [N, V_t] for the N scored targets of a decoder-only batch,
    in the order ``logits[scored]`` lists them (row by row)."""
    ids, labels = batch["input_ids"], batch["labels"]
    config = teacher.model.config
    sources, decoder = [], []
    for row in range(ids.shape[0]):
        targets = scored[row].nonzero().flatten() + 1  # labels[t + 1] is scored at t
        if len(targets) == 0:
            sources.append([]), decoder.append([])
            continue
        start = int(targets[0])
        if start < 1:
            raise DistillError("an encoder-decoder teacher needs each row's source before its target (no prompt)")
        sources.append(config.source_ids(_source(ids[row, :start].tolist(), student.source_layout)))
        decoder.append([config.bos_token_id, *labels[row, targets[:-1]].tolist()])
    if not any(decoder):  # nothing scored
        return torch.empty(0, teacher.vocab_size, device=ids.device)
    pad, device = config.pad_token_id, ids.device
    enc, enc_mask = pad_rows(sources, pad).to(device), rows_mask(sources).to(device)
    dec, dec_mask = pad_rows(decoder, pad).to(device), rows_mask(decoder).to(device)
    logits = teacher(enc, enc_mask, dec, dec_mask)  # [B, T_y, V_t]
    return logits[dec_mask.bool()]


class CausalDistillLoss(Loss):
    """``α·τ²·KD + (1−α)·CE`` for a decoder-only student, each a sum over the target tokens (the loop
    divides by their count), on the gold targets of the batch; `check_causal_teacher` says which
    teachers read its rows."""

    def __init__(
        self,
        teacher: nn.Module,
        student: ModelConfig,
        *,
        alpha: float = 0.5,
        kind: Kind = "reverse_kl",
        temperature: float = 1.0,
        beta: float | None = None,
        valid_vocab: int | None = None,
    ):
        _check_kind(kind, beta, temperature)
        if not 0.0 <= alpha <= 1.0:
            raise DistillError(f"alpha must be in [0, 1], got {alpha}")
        check_causal_teacher(teacher, student, "--teacher")
        self.teacher, self.student = teacher, student
        self.alpha, self.kind, self.temperature, self.beta = alpha, kind, temperature, beta
        self.valid_vocab = valid_vocab

    def target_tokens(self, batch: dict[str, Tensor]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def _teacher(self, batch: dict[str, Tensor], scored: Tensor, vocab: int) -> Tensor:
        if isinstance(self.teacher, Seq2SeqTeacher):
            logits = seq2seq_target_logits(self.teacher, batch, self.student, scored)
        else:
            mask = batch["attention_mask"]
            positions = (mask.long().cumsum(1) - 1).clamp(min=0)
            logits = self.teacher(batch["input_ids"], mask, positions)[:, :-1][scored]
        return restrict_vocab(logits, vocab, self.valid_vocab or self.teacher.valid_vocab)

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> LossOutput:
        labels = batch["labels"][:, 1:]
        scored = labels != IGNORE
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                       logits_mask=F.pad(scored, (0, 1), value=False))  # [N, V]  # fmt: skip
        teacher = self._teacher(batch, scored, logits.shape[-1])
        ones = torch.ones(1, logits.shape[0], dtype=torch.bool, device=logits.device)
        kd = kd_term(logits[None], teacher[None], ones, kind=self.kind, temperature=self.temperature,
                     beta=self.beta, reduction="sum")  # fmt: skip
        ce = F.cross_entropy(logits.float(), labels[scored], reduction="sum")
        n = scored.sum().clamp(min=1)
        total = self.alpha * self.temperature**2 * kd + (1 - self.alpha) * ce
        return LossOutput(total, {"kd": kd.detach() / n, "ce": ce.detach() / n})
