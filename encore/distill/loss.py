"""Distillation as a loss of the one training loop (`encore.train.losses.Loss`)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from encore.distill.align import batch_teacher_logits
from encore.distill.divergence import Kind, SparseLogits, _check_kind, ce_sum, kd_term
from encore.distill.errors import DistillError
from encore.distill.topk_store import TopKStore, check_sparse_targets
from encore.train.losses import Loss, LossOutput


def check_settings(
    owner: str,
    teacher: nn.Module | None,
    store: TopKStore | None,
    alpha: float,
    kind: Kind,
    beta: float | None,
    temperature: float,
) -> None:
    """What a distillation loss refuses, one line each: both teachers or none, an unknown divergence or
    its parameters, α outside [0, 1], a store computed at another temperature."""
    if (teacher is None) == (store is None):
        raise DistillError(f"{owner} needs exactly one of teacher (online) or store (offline top-k)")
    _check_kind(kind, beta, temperature)
    if not 0.0 <= alpha <= 1.0:
        raise DistillError(f"alpha must be in [0, 1], got {alpha}")
    if store is not None and store.temperature != temperature:
        raise DistillError(f"{store.directory} was computed at temperature {store.temperature}, not {temperature}")


class DistillLoss(Loss):
    """A loss for `encore.train` (`encore.train.losses.Loss`) for an encoder-decoder student, taught by a
    decoder-only `Teacher` or an encoder-decoder `Seq2SeqTeacher` (which reads the batch as it is):
    ``α·τ²·KD + (1−α)·CE``, each a mean over its own target tokens, with both means as extra metrics.

    The batch holds ``input_ids``, ``attention_mask``, ``decoder_input_ids`` (``[BOS]∘y[:-1]``),
    ``decoder_attention_mask``, ``labels`` (``y``, −100 at padding): CE is always taken on ``labels``
    (gold, or the teacher's targets for sequence-level KD). The KD term is taken on the same tokens,
    unless the batch also holds ``kd_decoder_input_ids`` / ``kd_decoder_attention_mask`` / ``kd_labels``
    (on-policy, GKD: the student's own samples), then on those, with a second student pass: the
    divergence on what the student says, cross-entropy on what it should say. With ``teacher`` the
    teacher runs on each micro-batch; with ``store`` (offline) the batch also needs ``example_ids``
    and the stored targets are checked against ``labels``.

    The loop divides the returned sum by the micro-batches' ``labels`` token count; the KD sum is
    rescaled by (label tokens / KD tokens) of its micro-batch so it stays a per-KD-token mean when
    the two sequences differ in length. α = 1 skips the CE pass of an on-policy batch; α = 0 skips the
    teacher (cross-entropy on the targets alone: sequence-level KD when the teacher wrote them).
    """

    def __init__(
        self,
        teacher: nn.Module | None = None,
        *,
        store: TopKStore | None = None,
        alpha: float = 0.5,
        kind: Kind = "reverse_kl",
        temperature: float = 1.0,
        beta: float | None = None,
        valid_vocab: int | None = None,
        teacher_bos_id: int | None | Literal["auto"] = "auto",
    ):
        check_settings("DistillLoss", teacher, store, alpha, kind, beta, temperature)
        self.teacher, self.store = teacher, store
        self.alpha, self.kind, self.temperature, self.beta = alpha, kind, temperature, beta
        self.valid_vocab, self.teacher_bos_id = valid_vocab, teacher_bos_id

    def read_tokens(self, batch: dict[str, Tensor]) -> int:
        keys = ("attention_mask", "decoder_attention_mask", "kd_decoder_attention_mask")
        return sum(int(batch[k].sum()) for k in keys if k in batch)

    def _student(self, model: nn.Module, batch: dict[str, Tensor], prefix: str = "") -> Tensor:
        return model(
            batch["input_ids"],
            batch[prefix + "decoder_input_ids"],
            batch.get("attention_mask"),
            batch.get(prefix + "decoder_attention_mask"),
        )

    def _teacher(
        self, batch: dict[str, Tensor], labels: Tensor, mask: Tensor, vocab: int, prefix: str = ""
    ) -> Tensor | SparseLogits:
        if self.store is not None:
            teacher = self.store.batch(batch["example_ids"], labels.shape[1], labels.device)
            check_sparse_targets(teacher, labels, mask)
            return teacher
        return batch_teacher_logits(
            self.teacher,
            batch,
            labels,
            mask,
            vocab_size=vocab,
            valid_vocab=self.valid_vocab,
            teacher_bos_id=self.teacher_bos_id,
            prefix=prefix,
        )

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> LossOutput:
        labels = batch["labels"]
        mask = labels != -100
        if self.alpha == 0.0:  # cross-entropy only (e.g. sequence-level KD): the teacher need not run
            logits = self._student(model, batch)
            ce = ce_sum(logits, labels, mask)
            return LossOutput(ce, {"ce": ce.detach() / mask.sum().clamp(min=1)})
        on_policy = "kd_labels" in batch
        if on_policy and self.store is not None:
            raise DistillError("on-policy targets (kd_labels) need the online teacher, not a stored top-k")
        logits = self._student(model, batch) if not (on_policy and self.alpha == 1.0) else None
        kd_logits, kd_labels = (
            (logits, labels) if not on_policy else (self._student(model, batch, "kd_"), batch["kd_labels"])
        )
        kd_mask = kd_labels != -100
        teacher = self._teacher(batch, kd_labels, kd_mask, kd_logits.shape[-1], "kd_" if on_policy else "")
        kd = kd_term(
            kd_logits, teacher, kd_mask, kind=self.kind, temperature=self.temperature, beta=self.beta, reduction="sum"
        )
        n, n_kd = mask.sum().clamp(min=1), kd_mask.sum().clamp(min=1)
        total = self.alpha * self.temperature**2 * kd * (n / n_kd)  # α·τ²·(KD per KD token) · label tokens
        metrics = {"kd": kd.detach() / n_kd}  # tensors: no host sync
        if logits is not None:
            ce = ce_sum(logits, labels, mask)
            total = total + (1 - self.alpha) * ce
            metrics["ce"] = ce.detach() / n
        return LossOutput(total, metrics)
