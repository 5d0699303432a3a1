"""The teacher: a frozen causal LM (Hugging Face, or an encore decoder-only checkpoint) behind one
calling convention, loaded with a check that it shares the student's tokenizer; an encoder-decoder
teacher is `encore.distill.seq2seq_teacher`'s.

- **Vocabulary** (`check_tokenizers`): a genuinely different tokenizer is refused; a teacher vocabulary
  padded beyond the tokenizer is cut to the shared ids (`valid_vocab`).
- **Layout**: encore's decoder-only models are fine-tuned on ``[BOS] x [EOS] y [EOS]``; `load_teacher`
  gives an encore teacher its BOS so it sees that layout. A Hugging Face teacher gets its tokenizer's
  BOS convention (`teacher_bos_convention`).
"""

from __future__ import annotations

import inspect
import json
import re
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from encore.config import ModelConfig
from encore.convert import load
from encore.distill.errors import DistillError, TokenizerMismatchError
from encore.distill.seq2seq_teacher import Seq2SeqTeacher, load_seq2seq_teacher
from encore.model.base import LanguageModel
from encore.tokenizer import UL2_MODE_TOKENS

# T5-style sentinels and UL2's mode tokens: a student may add them after the teacher's vocabulary (span
# corruption and UL2 need them); the teacher then gives them probability 0 and they are left out of the KD term.
SENTINEL = re.compile(r"<extra_id_\d+>|" + "|".join(re.escape(t) for t in UL2_MODE_TOKENS))
# Same vocabulary but a different normaliser / pre-tokeniser still tokenizes text differently.
PROBE_TEXT = "Hello world! The quick brown fox (no. 1234) jumps; Über café — naïve?\n  indented\tend."


def _id_table(tokenizer: Any) -> list[str | None]:
    """id -> token string for ids [0, len(tokenizer)), including added tokens; None for holes."""
    table: list[str | None] = [None] * len(tokenizer)
    for token, i in tokenizer.get_vocab().items():
        if 0 <= i < len(table):
            table[i] = token
    return table


def _added_tokens(tokenizer: Any) -> set[str]:
    added = {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
    return added | set(getattr(tokenizer, "all_special_tokens", []))


def check_tokenizers(teacher_tokenizer: Any, student_tokenizer: Any) -> int:
    """Refuse a student tokenizer that is not the teacher's; return the shared vocabulary size ``n``.

    The rule: with ``n = min(len(teacher), len(student))``,
      1. ids ``[0, n)`` must be the same token strings on both sides;
      2. student ids ``>= n`` may only be T5 sentinels ``<extra_id_N>`` (the teacher never predicts them);
      3. teacher ids ``>= n`` may only be added/special tokens (chat markers, reserved ids): their
         teacher probability is dropped from the KD term, which is renormalised over ``[0, n)``;
      4. both EOS tokens (when both define one) must be the same token, or the teacher would teach the
         student never to stop;
      5. a probe text must tokenize to the same ids (catches different normalisers / pre-tokenizers).
    """
    t_tab, s_tab = _id_table(teacher_tokenizer), _id_table(student_tokenizer)
    n = min(len(t_tab), len(s_tab))
    hint = (
        "Distillation needs the teacher's tokenizer on the student (plus <extra_id_*> sentinels and UL2's mode "
        "tokens at the end)."
    )
    diff = [i for i in range(n) if t_tab[i] != s_tab[i]]
    if diff:
        shown = ", ".join(f"id {i}: teacher {t_tab[i]!r} vs student {s_tab[i]!r}" for i in diff[:3])
        raise TokenizerMismatchError(
            f"teacher and student tokenizers differ: {len(diff)} of the first {n} ids map to different tokens "
            f"({shown}). {hint}"
        )
    extra_s = [s_tab[i] for i in range(n, len(s_tab)) if s_tab[i] is None or not SENTINEL.fullmatch(s_tab[i])]
    if extra_s:
        raise TokenizerMismatchError(
            f"the student tokenizer has {len(s_tab) - n} ids beyond the teacher's {len(t_tab)}, and "
            f"{len(extra_s)} of them are neither <extra_id_N> sentinels nor UL2 mode tokens (e.g. {extra_s[:3]}): "
            f"the teacher cannot produce them. {hint}"
        )
    added = _added_tokens(teacher_tokenizer)
    extra_t = [t_tab[i] for i in range(n, len(t_tab)) if t_tab[i] not in added]
    if extra_t:
        raise TokenizerMismatchError(
            f"the student tokenizer lacks {len(extra_t)} ordinary tokens of the teacher (ids {n}.., e.g. "
            f"{extra_t[:3]}): it is a different (smaller) vocabulary. {hint}"
        )
    t_eos, s_eos = getattr(teacher_tokenizer, "eos_token", None), getattr(student_tokenizer, "eos_token", None)
    if t_eos is not None and s_eos is not None and str(t_eos) != str(s_eos):
        raise TokenizerMismatchError(
            f"teacher EOS is {str(t_eos)!r} but student EOS is {str(s_eos)!r}: the teacher would never predict "
            "the student's end of sequence. Use the teacher's EOS token for the student."
        )
    t_ids = teacher_tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    s_ids = student_tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if list(t_ids) != list(s_ids):
        raise TokenizerMismatchError(
            f"teacher and student share a vocabulary but tokenize text differently (normaliser or pre-tokenizer "
            f"differs): {PROBE_TEXT!r} -> teacher {list(t_ids)[:12]}… vs student {list(s_ids)[:12]}…. {hint}"
        )
    return n


def teacher_bos_convention(tokenizer: Any) -> int | None:
    """The BOS id the teacher's tokenizer prepends to every text (Llama's ``<s>``), or None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if tokenizer is None or bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return int(bos) if len(ids) > 0 and ids[0] == bos else None


class EncoreCausalLM(nn.Module):
    """An encore `DecoderOnly` behind the Hugging Face causal-LM calling convention, so a teacher is
    driven the same way whatever it is: ``forward(input_ids, attention_mask, position_ids,
    logits_to_keep, use_cache) -> .logits`` and ``generate(...)`` returning prompt + new tokens."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config
        self.generation_config = SimpleNamespace(eos_token_id=model.config.eos_token_id)

    def get_output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        logits_to_keep: int = 0,
        use_cache: bool = False,
    ) -> SimpleNamespace:
        logits = self.model(input_ids, attention_mask, position_ids=position_ids, logits_to_keep=logits_to_keep)
        return SimpleNamespace(logits=logits)

    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        max_new_tokens: int = 32,
        pad_token_id: int | None = None,
        eos_token_id: int | None = None,
        suppress_tokens: list[int] | None = None,
        **kwargs: Any,
    ) -> Tensor:
        # `suppress_tokens` (ids past the tokenizer in a padded embedding table) are not masked here:
        # a trained encore teacher has never seen them, and generate_teacher_targets checks its output.
        new = self.model.generate(
            input_ids, attention_mask, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, **kwargs
        )
        return torch.cat([input_ids, new], dim=1)


class Teacher(nn.Module):
    """A frozen teacher behind one calling convention:
    ``teacher(input_ids, attention_mask, position_ids, logits_to_keep=0) -> logits [B, T', V_t]``
    (``T' = logits_to_keep`` last columns when > 0, else all).

    Wraps a Hugging Face causal LM (an encore `DecoderOnly` is wrapped in `EncoreCausalLM` first, which
    speaks the same convention). Carries what alignment needs to know: ``bos_id`` (prepended to every
    source, or None), ``pad_id``, ``eos_id``, ``vocab_size`` (width of its logits), ``valid_vocab``
    (ids ``>=`` this are masked: beyond the tokenizer or the shared vocabulary), ``source_end`` (the
    student's sources end in EOS or not; the teacher's layout may want the other: "strip" / "append" /
    "keep", `align.teacher_sources`). Stays in eval mode even when a parent module calls ``.train()``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        tokenizer: Any = None,
        bos_id: int | None = None,
        pad_id: int = 0,
        eos_id: int | None = None,
        valid_vocab: int | None = None,
        source_end: Literal["keep", "strip", "append"] = "keep",
    ):
        super().__init__()
        if source_end not in ("keep", "strip", "append"):
            raise ValueError(f"source_end must be 'keep', 'strip' or 'append', got {source_end!r}")
        self.source_end = source_end  # what `align.teacher_sources` does to a student's source's end
        if isinstance(model, LanguageModel):
            model = EncoreCausalLM(model)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.bos_id, self.pad_id = bos_id, pad_id
        if eos_id is None:
            eos_id = getattr(tokenizer, "eos_token_id", None)
        if eos_id is None:
            eos_id = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.eos_id = eos_id
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.vocab_size = head.weight.shape[0] if head is not None else model.config.vocab_size
        params = inspect.signature(model.forward).parameters
        self._keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        self.valid_vocab = min(valid_vocab, self.vocab_size) if valid_vocab is not None else self.vocab_size

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # never dropout in the teacher

    @torch.no_grad()
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> Tensor:
        kwargs: dict[str, Any] = dict(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        if logits_to_keep and self._keep_kw:
            kwargs[self._keep_kw] = logits_to_keep
        out = self.model(**kwargs)
        logits = out.logits if hasattr(out, "logits") else out
        return logits[:, -logits_to_keep:] if logits_to_keep else logits


def _dtype_kwarg() -> str:
    import transformers

    major, minor = (int(p) for p in re.findall(r"\d+", transformers.__version__)[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def load_teacher(
    name_or_path: str | Path,
    *,
    tokenizer: Any = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    lora: str | Path | None = None,
    trust_remote_code: bool = False,
    bos_id: int | None | Literal["auto"] = "auto",
    student_sources_end_in_eos: bool | None = None,
    student: ModelConfig | None = None,
) -> Teacher | Seq2SeqTeacher:
    """Load a frozen teacher: an encore decoder-only checkpoint directory, or a Hugging Face causal LM
    (local directory or hub id) optionally with LoRA adapters merged in at load; an encoder-decoder
    (an encore or transformers checkpoint, a CTranslate2 Whisper directory) as a `Seq2SeqTeacher`.

    ``tokenizer`` is the *student's* tokenizer: when given, it is checked against the teacher's
    (`check_tokenizers`, which refuses a different one) and the shared vocabulary becomes
    ``valid_vocab``. ``dtype`` defaults to bf16 on CUDA, fp32 elsewhere. ``bos_id="auto"`` takes the
    teacher tokenizer's convention (`teacher_bos_convention`); None never prepends one.
    ``student_sources_end_in_eos`` (the student's layout: encore's encoder reads ``x [EOS]``): a
    teacher fine-tuned without an EOS after the source (an imported family's layout, a Hugging Face
    model) then reads the sources without it, an encore-layout teacher with it (`Teacher.source_end`).
    """
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    path = Path(name_or_path)
    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if path.is_dir() and config_file.exists() else {}
    ctranslate2 = path.is_dir() and (path / "model.bin").is_file()  # faster-whisper's layout: Whisper
    if config.get("is_encoder_decoder") or config.get("arch") == "encdec" or ctranslate2:
        if lora is not None:
            raise DistillError(f"{path}: LoRA adapters apply to Hugging Face causal-LM teachers, not encoder-decoders")
        return load_seq2seq_teacher(load(path, device=device, dtype=dtype), str(path), tokenizer, student)
    if config.get("model_type") == "encore" or path.suffix == ".gguf":
        if lora is not None:
            raise DistillError(f"{path}: LoRA adapters apply to Hugging Face teachers, not encore checkpoints")
        model = load(path, device=device, dtype=dtype)
        if model.config.arch != "deconly":
            raise DistillError(
                f"{path}: the teacher must be a decoder-only model (arch 'deconly'), got arch {model.config.arch!r}"
            )
        teacher_tok = model.tokenizer
        pad_id = model.config.pad_token_id
        # encore's decoder-only models are fine-tuned on [BOS] x [EOS] y [EOS] (CausalLMCollator) and the
        # student's source is x [EOS]: prepending BOS gives the teacher exactly its training layout. An
        # imported model (a GGUF file) reads its texts as its family does: "plain" ones without BOS.
        auto_bos = None if model.config.source_layout == "plain" else model.config.bos_token_id
        reads_eos = model.config.source_layout == "encore"  # [BOS] x [EOS] y [EOS]; imported: [BOS] x y
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(
            str(name_or_path), **{_dtype_kwarg(): dtype}, trust_remote_code=trust_remote_code
        )
        if lora is not None:
            try:
                from peft import PeftModel
            except ImportError:
                raise DistillError("LoRA teachers need peft: pip install 'encore[distill]'") from None
            model = PeftModel.from_pretrained(model, str(lora)).merge_and_unload()
        model = model.to(device)
        try:
            teacher_tok = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
        except (OSError, ValueError):
            teacher_tok = None
        pad_id = next(
            (
                i
                for i in (getattr(teacher_tok, "pad_token_id", None), getattr(teacher_tok, "eos_token_id", None))
                if i is not None
            ),
            0,
        )
        auto_bos = teacher_bos_convention(teacher_tok)
        reads_eos = False  # a causal LM reads a prompt and continues it
    valid = len(teacher_tok) if teacher_tok is not None else None
    if tokenizer is not None:
        if teacher_tok is None:
            warnings.warn(
                f"{name_or_path}: no tokenizer found beside the teacher, so the shared-tokenizer check was "
                "skipped; make sure the student uses the teacher's tokenizer",
                stacklevel=2,
            )
            valid = len(tokenizer)
        else:
            valid = check_tokenizers(teacher_tok, tokenizer)
    return Teacher(
        model,
        tokenizer=teacher_tok,
        bos_id=auto_bos if bos_id == "auto" else bos_id,
        pad_id=int(pad_id),
        valid_vocab=valid,
        source_end=_source_end(student_sources_end_in_eos, reads_eos),
    )


def _source_end(student: bool | None, teacher: bool) -> Literal["keep", "strip", "append"]:
    if student is None or student == teacher:
        return "keep"
    return "strip" if student else "append"
