"""Training: the one loop, its losses, checkpoints, optimizers and distributed set-up.

from encore.train import TrainConfig, train, seq2seq_loss, causal_lm_loss
"""

from encore.train.logging import TrainingError
from encore.train.loop import BatchSource, TrainConfig, evaluate_loss, train
from encore.train.losses import CausalLMLoss, Loss, LossOutput, Seq2SeqLoss, causal_lm_loss, default_loss, seq2seq_loss

__all__ = [
    "BatchSource",
    "TrainConfig",
    "TrainingError",
    "train",
    "evaluate_loss",
    "Loss",
    "LossOutput",
    "Seq2SeqLoss",
    "CausalLMLoss",
    "seq2seq_loss",
    "causal_lm_loss",
    "default_loss",
]
