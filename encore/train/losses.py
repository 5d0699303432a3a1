"""Losses for the training loop. A loss owns everything it knows about its batches:

- `loss(model, batch) -> LossOutput`: the *sum* of its per-token losses over the batch's target
  tokens, plus extra metrics to log (tensors, so nothing is read on the host inside the step);
- `loss.target_tokens(batch)`: how many tokens that sum runs over (the loop divides by the global
  batch's count, so accumulation and data parallelism give the update of one big batch);
- `loss.read_tokens(batch)`: how many real tokens the model reads (for tokens/s).

The loop calls the two counts on the collated CPU batches before the forward pass, and knows
nothing else about the batch's keys. Distillation's loss (`encore.distill.divergence.DistillLoss`)
is one more subclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from encore.data.collate import Batch

IGNORE = -100


@dataclass
class LossOutput:
    total: Tensor  # sum of per-token losses over the batch's target tokens
    metrics: dict[str, Tensor] = field(default_factory=dict)  # per-token means to log, e.g. {"kd": ..., "ce": ...}


class Loss:
    """Base class: subclasses implement `__call__`; the counts below fit the collators' layouts."""

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        raise NotImplementedError

    def target_tokens(self, batch: Batch) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def read_tokens(self, batch: Batch) -> int:
        return sum(int(batch[k].sum()) for k in ("attention_mask", "decoder_attention_mask") if k in batch)


def images(batch: Batch) -> dict[str, Tensor]:
    """A vision-language batch's `pixel_values` as a keyword for the model (nothing for text)."""
    return {"pixel_values": batch["pixel_values"]} if "pixel_values" in batch else {}


class Seq2SeqLoss(Loss):
    """Cross-entropy of an encoder-decoder on `labels` (-100 ignored)."""

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        logits = model(
            batch["input_ids"],
            decoder_input_ids=batch["decoder_input_ids"],
            attention_mask=batch.get("attention_mask"),  # none for an audio encoder's windows
            decoder_attention_mask=batch["decoder_attention_mask"],
            **images(batch),
        )
        labels = batch["labels"]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        return LossOutput(loss)


class CausalLMLoss(Loss):
    """Next-token cross-entropy of a decoder-only model; `labels` are aligned with `input_ids` (-100 on
    prompt and padding), so position t predicts labels[t + 1]."""

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        labels = batch["labels"][:, 1:]
        scored = labels != IGNORE
        # logits only where a label follows: after a long prompt most positions carry none
        logits = model(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            logits_mask=F.pad(scored, (0, 1), value=False),
            **images(batch),
        )
        return LossOutput(F.cross_entropy(logits.float(), labels[scored], reduction="sum"))

    def target_tokens(self, batch: Batch) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())


seq2seq_loss = Seq2SeqLoss()
causal_lm_loss = CausalLMLoss()


def default_loss(arch: str) -> Loss:
    """The pretraining / fine-tuning loss of an architecture."""
    return seq2seq_loss if arch == "encdec" else causal_lm_loss
