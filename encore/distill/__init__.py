"""Distillation from a decoder-only teacher into an encoder-decoder student (Return of the Encoder, §3).

The student's encoder reads the source ``x``; its decoder reads ``[BOS]∘y`` and predicts ``y``. The
teacher reads ``[PAD…]∘[BOS]∘x∘y[:-1]∘[PAD…]`` and its logits at the column of ``x``'s last token and
onwards are, one by one, its distributions for ``y_0, y_1, …``. The loss is
``α·τ²·KD + (1−α)·CE`` with reverse KL as the paper's divergence.

What this package guarantees, because these are the classic ways distillation goes silently wrong:

- **Alignment** (`aligned_teacher_logits`): row ``j`` of the result is the teacher's distribution for
  target token ``j`` given ``x`` and ``y_<j``, for every row of a batch with mixed source and target
  lengths. Layout: sources are *left*-padded so every row's source ends in the same column ``start``;
  targets follow, *right*-padded. The target logits are then simply the last ``T_y`` columns, so a
  Hugging Face teacher computes its LM head on those columns only (``logits_to_keep``). Position ids
  count real tokens only (``cumsum(mask) − 1``), so padding never shifts RoPE.
- **Divergence direction** (`kd_loss`): reverse KL = Σ q_S log(q_S/p_T), forward KL =
  Σ p_T log(p_T/q_S), generalised JSD as in GKD; log-softmax in fp32.
- **Vocabulary** (`check_tokenizers`, `restrict_vocab`): a genuinely different tokenizer is refused;
  a teacher vocabulary padded beyond the tokenizer is cut to the shared ids, the rest set to −inf.
- **Memory**: the teacher runs under ``no_grad``, bf16 on GPU, logits only at target columns; the
  offline mode (`topk_teacher_logits`, `TopKWriter`, `TopKStore`) stores the teacher's top-k log-probs
  per target token on disk so the teacher runs once.

The rooms: `teacher` (loading, tokenizer checks, one calling convention), `align` (the teacher's
logits for each target token), `divergence` (KL / JSD, dense or top-k; the combined loss), `topk_store`
(the offline teacher on disk), `loss` (`DistillLoss`, the training loop's loss), `targets` (gold,
teacher-generated and on-policy targets).
"""

from encore.distill.align import aligned_teacher_logits, restrict_vocab, teacher_layout
from encore.distill.divergence import (
    KINDS,
    Kind,
    SparseLogits,
    distillation_loss,
    kd_loss,
    kd_loss_sparse,
    topk_teacher_logits,
)
from encore.distill.errors import DistillError, TokenizerMismatchError
from encore.distill.loss import DistillLoss
from encore.distill.targets import DistillSource, generate_teacher_targets, parse_target_mix
from encore.distill.teacher import EncoreCausalLM, Teacher, check_tokenizers, load_teacher, teacher_bos_convention
from encore.distill.topk_store import TopKStore, TopKWriter, check_sparse_targets, precompute_topk

__all__ = [
    "KINDS",
    "Kind",
    "DistillError",
    "TokenizerMismatchError",
    "Teacher",
    "EncoreCausalLM",
    "load_teacher",
    "check_tokenizers",
    "teacher_bos_convention",
    "teacher_layout",
    "restrict_vocab",
    "aligned_teacher_logits",
    "kd_loss",
    "kd_loss_sparse",
    "distillation_loss",
    "SparseLogits",
    "topk_teacher_logits",
    "TopKWriter",
    "TopKStore",
    "check_sparse_targets",
    "precompute_topk",
    "DistillLoss",
    "DistillSource",
    "parse_target_mix",
    "generate_teacher_targets",
]
