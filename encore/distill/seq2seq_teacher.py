"""An encoder-decoder teacher (any family encore loads: T5 / Flan-T5, BART, Marian, NLLB, Whisper,
T5Gemma, or an encore checkpoint) for an encoder-decoder student: it scores ``y`` given ``x`` in its own
decoder, so it reads the student's batch as it is (encoder ``input_ids``, ``decoder_input_ids``) and no
re-layout is needed (`encore.distill.align` is the decoder-only teachers'). That asks the two models to lay
a pair out alike: the same tokenizer (`check_tokenizers`), the same source layout and decoder start.
distil-whisper's recipe is the case in point: `encore adapt --decoder-layers 2` from the teacher, then
`encore distill --teacher <the teacher>`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from encore.config import ModelConfig
from encore.distill.errors import DistillError
from encore.model.base import LanguageModel


class Seq2SeqTeacher(nn.Module):
    """A frozen encoder-decoder behind ``teacher(input_ids, attention_mask, decoder_input_ids,
    decoder_attention_mask) -> logits [B, T, V]``; `generate_teacher_targets` writes its targets for
    sequence-level KD. Carries ``vocab_size``, ``valid_vocab`` (ids at or past it are masked), ``eos_id``, ``pad_id``,
    ``tokenizer``, as `Teacher` does. Stays in eval mode."""

    def __init__(self, model: LanguageModel, *, tokenizer: Any = None, valid_vocab: int | None = None):
        super().__init__()
        if model.config.arch != "encdec":
            raise DistillError(f"Seq2SeqTeacher needs an encoder-decoder, got arch {model.config.arch!r}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.vocab_size = model.config.vocab_size
        self.valid_vocab = min(valid_vocab or self.vocab_size, self.vocab_size)
        self.eos_id, self.pad_id = model.config.eos_token_id, model.config.pad_token_id

    def train(self, mode: bool = True) -> Seq2SeqTeacher:
        return super().train(False)

    def check_student(self, student: ModelConfig, where: str) -> None:
        """One line if the student lays a pair out otherwise than this teacher reads it."""
        ours = self.model.config
        for field, what in (("source_layout", "source layout"), ("bos_token_id", "decoder start token")):
            if getattr(ours, field) != getattr(student, field):
                raise DistillError(
                    f"{where}: the teacher's {what} is {getattr(ours, field)!r}, the student's "
                    f"{getattr(student, field)!r}; an encoder-decoder teacher reads the student's batch as it is"
                )

    @torch.no_grad()
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        decoder_input_ids: Tensor,
        decoder_attention_mask: Tensor | None,
    ) -> Tensor:
        return self.model(input_ids, decoder_input_ids, attention_mask, decoder_attention_mask)


def load_seq2seq_teacher(
    model: LanguageModel, where: str, tokenizer: Any, student: ModelConfig | None
) -> Seq2SeqTeacher:
    """`model` (loaded by `load_teacher`) as a teacher for `student`, its tokenizer checked against the
    student's."""
    from encore.distill.teacher import check_tokenizers

    valid = None
    if tokenizer is not None and getattr(model, "tokenizer", None) is not None:
        valid = check_tokenizers(model.tokenizer, tokenizer)
    teacher = Seq2SeqTeacher(model, tokenizer=getattr(model, "tokenizer", None), valid_vocab=valid)
    if student is not None and student.arch == "encdec":  # (a decoder-only student's rows are split: causal_loss)
        teacher.check_student(student, where)
    return teacher
