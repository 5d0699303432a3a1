"""Distillation as a loss of the one training loop (`encore.train.losses.Loss`)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from encore.distill.align import aligned_teacher_logits
from encore.distill.divergence import Kind, SparseLogits, _check_kind, distillation_loss
from encore.distill.errors import DistillError
from encore.distill.topk_store import TopKStore, check_sparse_targets
from encore.train.losses import Loss, LossOutput


class DistillLoss(Loss):
    """A loss for `encore.train` (`encore.train.losses.Loss`) for an encoder-decoder student:
    ``α·τ²·KD + (1−α)·CE`` summed over target tokens, with the mean KD and CE as extra metrics.

    The batch holds ``input_ids``, ``attention_mask``, ``decoder_input_ids`` (``[BOS]∘y[:-1]``),
    ``decoder_attention_mask``, ``labels`` (``y``, −100 at padding): the targets may be gold, the
    teacher's or the student's own (on-policy) — that is the batch source's choice. With ``teacher``
    the teacher runs on each micro-batch; with ``store`` (offline) the batch also needs
    ``example_ids`` and the stored targets are checked against ``labels``.
    """

    def __init__(
        self,
        teacher: nn.Module | None = None,
        *,
        store: TopKStore | None = None,
        alpha: float = 0.5,
        kind: Kind = "reverse_kl",
        temperature: float = 1.0,
        beta: float = 0.5,
        valid_vocab: int | None = None,
        teacher_bos_id: int | None | Literal["auto"] = "auto",
    ):
        if (teacher is None) == (store is None):
            raise DistillError("DistillLoss needs exactly one of teacher (online) or store (offline top-k)")
        _check_kind(kind, beta, temperature)
        if store is not None and store.temperature != temperature:
            raise DistillError(f"{store.directory} was computed at temperature {store.temperature}, not {temperature}")
        self.teacher, self.store = teacher, store
        self.alpha, self.kind, self.temperature, self.beta = alpha, kind, temperature, beta
        self.valid_vocab, self.teacher_bos_id = valid_vocab, teacher_bos_id

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> LossOutput:
        logits = model(
            batch["input_ids"],
            batch["decoder_input_ids"],
            batch.get("attention_mask"),
            batch.get("decoder_attention_mask"),
        )
        labels = batch["labels"]
        mask = labels != -100
        if self.store is not None:
            teacher: Tensor | SparseLogits = self.store.batch(batch["example_ids"], labels.shape[1], logits.device)
            check_sparse_targets(teacher, labels, mask)
        else:
            teacher = aligned_teacher_logits(
                self.teacher,
                batch["input_ids"],
                batch.get("attention_mask"),
                labels,
                mask,
                vocab_size=logits.shape[-1],
                valid_vocab=self.valid_vocab,
                teacher_bos_id=self.teacher_bos_id,
            )
        total, kd, ce = distillation_loss(
            logits,
            teacher,
            labels,
            mask,
            alpha=self.alpha,
            kind=self.kind,
            temperature=self.temperature,
            beta=self.beta,
            reduction="sum",
        )
        denom = mask.sum().clamp(min=1)
        return LossOutput(total, {"kd": kd.detach() / denom, "ce": ce.detach() / denom})  # tensors: no host sync
