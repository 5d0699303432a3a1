"""Distillation from a decoder-only teacher into an encoder-decoder student (Return of the Encoder, §3).

The student's encoder reads the source ``x``; its decoder reads ``[BOS]∘y`` and predicts ``y``. The
teacher reads ``[PAD…]∘[BOS]∘x∘y[:-1]∘[PAD…]`` and its logits at the column of ``x``'s last token and
onwards are, one by one, its distributions for ``y_0, y_1, …``. The loss is
``α·τ²·KD + (1−α)·CE`` with reverse KL as the paper's divergence.

What this file guarantees, because these are the classic ways distillation goes silently wrong:

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
"""

from __future__ import annotations

import inspect
import json
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encore.model.base import atomic_write, check_ids, padding_mask, positions_from_mask
from encore.model.decoder_only import DecoderOnly

Kind = Literal["reverse_kl", "forward_kl", "jsd"]
KINDS: tuple[str, ...] = ("reverse_kl", "forward_kl", "jsd")
NEG_INF = float("-inf")


class DistillError(ValueError):
    """Distillation cannot proceed as asked; the message says what is wrong and where."""


class TokenizerMismatchError(DistillError):
    """Teacher and student do not share a tokenizer."""


# --- 1. tokenizers -------------------------------------------------------------------------------

# T5-style sentinels: a student may add them after the teacher's vocabulary (span corruption needs
# them); the teacher then gives them probability 0 and they are left out of the KD term.
SENTINEL = re.compile(r"<extra_id_\d+>")
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
    hint = "Distillation needs the teacher's tokenizer on the student (plus <extra_id_*> sentinels at the end)."
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
            f"{len(extra_s)} of them are not <extra_id_N> sentinels (e.g. {extra_s[:3]}): the teacher cannot "
            f"produce them. {hint}"
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


def shared_vocab_size(teacher_tokenizer: Any, student_tokenizer: Any) -> int:
    """The ids ``[0, n)`` both sides mean the same by (after `check_tokenizers`, which may refuse)."""
    return check_tokenizers(teacher_tokenizer, student_tokenizer)


def teacher_bos_convention(tokenizer: Any) -> int | None:
    """The BOS id the teacher's tokenizer prepends to every text (Llama's ``<s>``), or None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if tokenizer is None or bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return int(bos) if len(ids) > 0 and ids[0] == bos else None


# --- the teacher ---------------------------------------------------------------------------------


class Teacher(nn.Module):
    """A frozen teacher behind one calling convention:
    ``teacher(input_ids, attention_mask, position_ids, logits_to_keep=0) -> logits [B, T', V_t]``
    (``T' = logits_to_keep`` last columns when > 0, else all).

    Wraps a Hugging Face causal LM or an encore `DecoderOnly`. Carries what alignment needs to know:
    ``bos_id`` (prepended to every source, or None), ``pad_id``, ``vocab_size`` (width of its logits),
    ``valid_vocab`` (ids ``>=`` this are masked: beyond the tokenizer or the shared vocabulary).
    Stays in eval mode even when a parent module calls ``.train()``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        tokenizer: Any = None,
        bos_id: int | None = None,
        pad_id: int = 0,
        valid_vocab: int | None = None,
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.bos_id, self.pad_id = bos_id, pad_id
        self.is_encore = isinstance(model, DecoderOnly)
        if self.is_encore:
            self.vocab_size = model.config.vocab_size
            self._keep_kw: str | None = "logits_to_keep"
        else:
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
        if self.is_encore:
            return self._encore_forward(input_ids, attention_mask, position_ids, logits_to_keep)
        kwargs: dict[str, Any] = dict(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        if logits_to_keep and self._keep_kw:
            kwargs[self._keep_kw] = logits_to_keep
        out = self.model(**kwargs)
        logits = out.logits if hasattr(out, "logits") else out
        return logits[:, -logits_to_keep:] if logits_to_keep else logits

    def _encore_forward(
        self, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None, keep: int
    ) -> Tensor:
        # DecoderOnly derives RoPE positions from the mask itself (cumsum − 1, as here): check, then ignore.
        model: DecoderOnly = self.model  # type: ignore[assignment]
        check_ids(input_ids, attention_mask, model.config.vocab_size)
        mask = padding_mask(attention_mask)
        if position_ids is not None:
            B, T = input_ids.shape
            expected = positions_from_mask(mask, B, T, input_ids.device)
            real = mask if mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
            if position_ids.shape != input_ids.shape or not torch.equal(position_ids[real], expected[real]):
                raise DistillError(
                    "position_ids differ from the positions encore's DecoderOnly derives from attention_mask "
                    "(cumsum(mask) − 1 over real tokens); build the teacher input with teacher_layout()"
                )
        hidden = model._run(input_ids, mask)
        return model.head(hidden[:, -keep:] if keep else hidden)


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
) -> Teacher:
    """Load a frozen teacher: an encore decoder-only checkpoint directory, or a Hugging Face causal LM
    (local directory or hub id) optionally with LoRA adapters merged in at load.

    ``tokenizer`` is the *student's* tokenizer: when given, it is checked against the teacher's
    (`check_tokenizers`, which refuses a different one) and the shared vocabulary becomes
    ``valid_vocab``. ``dtype`` defaults to bf16 on CUDA, fp32 elsewhere. ``bos_id="auto"`` takes the
    teacher tokenizer's convention (`teacher_bos_convention`); None never prepends one.
    """
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    path = Path(name_or_path)
    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if path.is_dir() and config_file.exists() else {}
    if config.get("model_type") == "encore":
        if config.get("arch") != "deconly":
            raise DistillError(
                f"{config_file}: an encore teacher must be a decoder-only checkpoint (arch 'deconly'), "
                f"got arch {config.get('arch')!r}"
            )
        if lora is not None:
            raise DistillError(f"{path}: LoRA adapters apply to Hugging Face teachers, not encore checkpoints")
        from encore.model.base import load

        model = load(path, device=device, dtype=dtype)
        teacher_tok = model.tokenizer
        pad_id = model.config.pad_token_id
        # encore's decoder-only models are fine-tuned on [BOS] x [EOS] y [EOS] (CausalLMCollator) and the
        # student's source is x [EOS]: prepending BOS gives the teacher exactly its training layout.
        auto_bos = model.config.bos_token_id
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
    )


# --- 2. alignment --------------------------------------------------------------------------------


def _right_padded_lengths(ids: Tensor, mask: Tensor | None, name: str) -> Tensor:
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
    n_x = _right_padded_lengths(source_ids, source_mask, "source")
    _right_padded_lengths(target_ids, target_mask, "target")
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


# --- 3. losses -----------------------------------------------------------------------------------


def _check_kind(kind: str, beta: float, temperature: float) -> None:
    if kind not in KINDS:
        raise DistillError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "jsd" and not 0.0 < beta < 1.0:
        raise DistillError(
            f"jsd needs 0 < beta < 1 (got {beta}); beta -> 0 / 1 degenerate to 0, use forward_kl / reverse_kl"
        )
    if not temperature > 0:
        raise DistillError(f"temperature must be positive, got {temperature}")


def _token_mask(mask: Tensor | None, shape: torch.Size, device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if mask.shape != shape:
        raise DistillError(f"mask has shape {tuple(mask.shape)}, the logits' tokens are {tuple(shape)}")
    return mask.bool()


def _divergence(logp: Tensor, logq: Tensor, kind: str, beta: float, support: Tensor | None) -> Tensor:
    """Per-row divergence [N] between normalised log-distributions [N, V] (p: teacher, q: student).
    Off ``support`` both are −inf (probability 0); those entries contribute exactly 0, and the
    log-probs are zeroed there first so no 0·(−inf) NaN reaches the forward or the backward pass."""
    p, q = logp.exp(), logq.exp()
    if support is not None:
        logp, logq = logp.masked_fill(~support, 0.0), logq.masked_fill(~support, 0.0)
    if kind == "reverse_kl":
        return (q * (logq - logp)).sum(-1)
    if kind == "forward_kl":
        return (p * (logp - logq)).sum(-1)
    logm = torch.logaddexp(logp + math.log(beta), logq + math.log1p(-beta))  # M = β·p + (1−β)·q
    return beta * (p * (logp - logm)).sum(-1) + (1 - beta) * (q * (logq - logm)).sum(-1)


def _reduce(per_token: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return per_token.sum()
    if reduction == "mean":
        return per_token.sum() / max(per_token.numel(), 1)  # no tokens: 0, still attached to the graph
    raise DistillError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    kind: Kind = "reverse_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    reduction: Literal["mean", "sum"] = "mean",
) -> Tensor:
    """Token mean (or sum) over ``mask`` of the divergence between the teacher's p_T and the student's q_S:

    - ``reverse_kl`` (the paper's): Σ q_S log(q_S / p_T)
    - ``forward_kl``: Σ p_T log(p_T / q_S)
    - ``jsd``: with M = β·p_T + (1−β)·q_S, β·KL(p_T‖M) + (1−β)·KL(q_S‖M) (GKD's generalised JSD)

    Both logits [B, T, V] are divided by ``temperature``; the result is *not* multiplied by τ² (it is
    exactly the divergence of the tempered distributions; `distillation_loss` applies τ²). Only masked
    positions are upcast to fp32. Where the teacher's logit is −inf (outside the shared vocabulary)
    the student is renormalised over the teacher's support: KD compares the two distributions on the
    shared ids, and the CE term is what keeps the student's mass off the others.
    """
    _check_kind(kind, beta, temperature)
    if student_logits.shape != teacher_logits.shape:
        raise DistillError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ; "
            "pass vocab_size=<student vocab> to aligned_teacher_logits to match the vocabularies"
        )
    m = _token_mask(mask, student_logits.shape[:-1], student_logits.device)
    s = student_logits[m].float()
    t = teacher_logits[m].float()
    if temperature != 1.0:
        s, t = s / temperature, t / temperature
    off = torch.isneginf(t)
    support = None
    if bool(off.any()):
        if bool(off.all(-1).any()):
            raise DistillError("the teacher's logits are −inf over the whole vocabulary at some target position")
        support = ~off
        s = s.masked_fill(off, NEG_INF)
    div = _divergence(F.log_softmax(t, -1), F.log_softmax(s, -1), kind, beta, support)
    return _reduce(div, reduction)


# --- 5. offline top-k ----------------------------------------------------------------------------


@dataclass
class SparseLogits:
    """The teacher's top-k per target position. ``values`` [B, T, k]: its log-probs at ``temperature``
    (descending); ``indices`` [B, T, k] int32; ``tail_logmass`` [B, T] fp32: log of the probability
    outside the top-k (−inf when there is none). The teacher's support lies in ``[0, vocab_limit)``.
    ``targets`` [B, T] (optional): the target ids they were computed for, to verify alignment later."""

    values: Tensor
    indices: Tensor
    tail_logmass: Tensor
    temperature: float = 1.0
    vocab_limit: int = 0
    targets: Tensor | None = None

    @property
    def k(self) -> int:
        return self.values.shape[-1]

    def to(self, device: torch.device | str) -> SparseLogits:
        move = lambda t: None if t is None else t.to(device)
        return SparseLogits(
            move(self.values),
            move(self.indices),
            move(self.tail_logmass),
            self.temperature,
            self.vocab_limit,
            move(self.targets),
        )


@torch.no_grad()
def topk_teacher_logits(
    teacher_logits: Tensor,
    mask: Tensor | None,
    k: int,
    *,
    temperature: float = 1.0,
    dtype: torch.dtype = torch.float32,
    targets: Tensor | None = None,
) -> SparseLogits:
    """Dense teacher logits [B, T, V] -> `SparseLogits` with the top-``k`` log-probs (at ``temperature``,
    fixed here: the tail's shape is not kept, so it cannot be re-tempered later) and the tail mass.
    Vocabulary columns that are −inf at every masked position (outside the shared vocabulary) are cut
    off (``vocab_limit``); ``k`` is clipped to that. One batch row is upcast to fp32 at a time."""
    if not isinstance(k, int) or k < 1:
        raise DistillError(f"k must be a positive integer, got {k!r}")
    _check_kind("forward_kl", 0.5, temperature)
    B, T, V = teacher_logits.shape
    m = _token_mask(mask, teacher_logits.shape[:-1], teacher_logits.device)
    live = torch.zeros(V, dtype=torch.bool, device=teacher_logits.device)
    for b in range(B):
        live |= ~torch.isneginf(teacher_logits[b][m[b]]).all(0)
    limit = int(live.nonzero().max()) + 1 if bool(live.any()) else V
    k = min(k, limit)
    device = teacher_logits.device
    values = torch.zeros(B, T, k, dtype=dtype, device=device)
    indices = torch.zeros(B, T, k, dtype=torch.int32, device=device)
    tail = torch.full((B, T), NEG_INF, dtype=torch.float32, device=device)
    for b in range(B):
        rows = m[b].nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        logp = F.log_softmax(teacher_logits[b, rows, :limit].float() / temperature, -1)
        v, i = logp.topk(k, dim=-1)
        values[b, rows], indices[b, rows] = v.to(dtype), i.int()
        tail[b, rows] = logp.scatter(-1, i, NEG_INF).logsumexp(-1)
    return SparseLogits(values, indices, tail, float(temperature), limit, targets)


def kd_loss_sparse(
    student_logits: Tensor,
    sparse: SparseLogits,
    mask: Tensor | None = None,
    kind: Kind = "reverse_kl",
    beta: float = 0.5,
    reduction: Literal["mean", "sum"] = "mean",
) -> Tensor:
    """`kd_loss` against stored top-k teacher log-probs, on k + 1 buckets: the top-k ids and one tail
    bucket holding all other ids (teacher: ``tail_logmass``; student: 1 − Σ_top-k q_S). The student is
    tempered with ``sparse.temperature``.

    With k = V (no tail) this is exactly the dense loss. With k < V it is the divergence between the
    bucketed distributions, which (data-processing inequality) is ≤ the dense one, with equality when
    the student's tail is proportional to the teacher's: the student is pulled to the teacher's top-k
    probabilities and total tail mass, but not told how to shape its mass inside the tail.
    """
    _check_kind(kind, beta, sparse.temperature)
    B, T, V = student_logits.shape
    if sparse.values.shape[:2] != (B, T) or sparse.indices.shape != sparse.values.shape:
        raise DistillError(
            f"top-k teacher values {tuple(sparse.values.shape)} / indices {tuple(sparse.indices.shape)} do not "
            f"match the student's logits {tuple(student_logits.shape)}"
        )
    limit = sparse.vocab_limit or V
    if limit > V:
        raise DistillError(f"the stored teacher spans {limit} vocabulary ids, the student only {V}")
    m = _token_mask(mask, student_logits.shape[:-1], student_logits.device)
    s = student_logits[m][:, :limit].float() / sparse.temperature  # [N, L]
    v = sparse.values[m].float()
    idx = sparse.indices[m].long()
    tail = sparse.tail_logmass[m].float()
    if idx.numel() and (int(idx.max()) >= limit or int(idx.min()) < 0):
        raise DistillError(f"top-k indices outside the teacher's vocabulary [0, {limit})")
    in_top = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, idx, True)
    # Student support = teacher support: top-k ids with probability 0 and, when the teacher has no
    # tail mass, every id outside the top-k (the same renormalisation as the dense kd_loss).
    off = torch.zeros_like(in_top).scatter_(-1, idx, torch.isneginf(v))
    no_tail = torch.isneginf(tail)
    if bool(no_tail.any()):
        off |= ~in_top & no_tail[:, None]
    if bool(off.any()):
        s = s.masked_fill(off, NEG_INF)
    logq = F.log_softmax(s, -1)
    # rows without a tail get dummy finite values, so logsumexp's backward never sees an all −inf row
    rest = logq.masked_fill(in_top, NEG_INF).masked_fill(no_tail[:, None], 0.0)
    logq_b = torch.cat([logq.gather(-1, idx), rest.logsumexp(-1).masked_fill(no_tail, NEG_INF)[:, None]], -1)
    logp_b = F.log_softmax(torch.cat([v, tail[:, None]], -1), -1)  # renormalise: values may be fp16
    off_b = torch.isneginf(logp_b)
    div = _divergence(logp_b, logq_b, kind, beta, ~off_b if bool(off_b.any()) else None)
    return _reduce(div, reduction)


def distillation_loss(
    student_logits: Tensor,
    teacher: Tensor | SparseLogits,
    labels: Tensor,
    mask: Tensor | None = None,
    *,
    alpha: float = 0.5,
    kind: Kind = "reverse_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    reduction: Literal["mean", "sum"] = "mean",
) -> tuple[Tensor, Tensor, Tensor]:
    """``(total, kd, ce)`` with ``total = α·τ²·kd + (1−α)·ce``: ``kd`` from `kd_loss` (dense teacher
    logits) or `kd_loss_sparse` (`SparseLogits`), ``ce`` the cross-entropy on gold ``labels`` (−100
    ignored), both reduced over the same tokens (``mask``, default ``labels != -100``). τ² (Hinton et
    al.) keeps the KD gradient's scale independent of τ, so α means the same at any temperature."""
    if not 0.0 <= alpha <= 1.0:
        raise DistillError(f"alpha must be in [0, 1], got {alpha}")
    if labels.shape != student_logits.shape[:-1]:
        raise DistillError(
            f"labels {tuple(labels.shape)} do not match the student's logits {tuple(student_logits.shape)}"
        )
    m = labels != -100 if mask is None else _token_mask(mask, labels.shape, labels.device)
    if mask is not None and bool((labels[m] == -100).any()):
        raise DistillError("labels are -100 at a position the mask marks as a target token")
    if isinstance(teacher, SparseLogits):
        if temperature != teacher.temperature:
            raise DistillError(
                f"the stored top-k teacher was computed at temperature {teacher.temperature}, not {temperature}"
            )
        kd = kd_loss_sparse(student_logits, teacher, m, kind, beta, reduction)
    else:
        kd = kd_loss(student_logits, teacher, m, kind, temperature, beta, reduction)
    ce = F.cross_entropy(student_logits[m].float(), labels[m], reduction="sum")
    if reduction == "mean":
        ce = ce / max(int(m.sum()), 1)
    total = alpha * temperature**2 * kd + (1 - alpha) * ce
    return total, kd, ce


# --- offline store: the teacher runs once --------------------------------------------------------

TOPK_FORMAT = "encore-topk-v1"
TOPK_INDEX = "topk-index.json"


class TopKWriter:
    """Writes `SparseLogits` of many batches to ``directory`` as safetensors shards (no pickle), each
    written atomically; the index file is written last, by `close`, so a store without it is known to
    be incomplete. Per shard, tokens are stored flat: ``values`` [N, k], ``indices`` [N, k] int32,
    ``tail`` [N] fp32, ``targets`` [N] int32, with ``example_ids`` [E] and ``offsets`` [E + 1]."""

    def __init__(
        self, directory: str | Path, *, shard_tokens: int = 1 << 20, values_dtype: torch.dtype = torch.float16
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if (self.directory / TOPK_INDEX).exists():
            raise DistillError(f"{self.directory / TOPK_INDEX}: a top-k store is already here; remove it first")
        self.shard_tokens, self.values_dtype = shard_tokens, values_dtype
        self.meta: dict[str, Any] | None = None
        self.shards: list[dict[str, Any]] = []
        self._pending: list[tuple[int, Tensor, Tensor, Tensor, Tensor]] = []
        self._pending_tokens = 0
        self._seen: set[int] = set()

    def add(self, sparse: SparseLogits, mask: Tensor, example_ids: Sequence[int] | Tensor) -> None:
        """Store each row's masked (right-padded) positions under its example id."""
        ids = [int(i) for i in example_ids]
        lengths = _right_padded_lengths(sparse.tail_logmass, mask, "target")
        if len(ids) != sparse.values.shape[0]:
            raise DistillError(f"{len(ids)} example ids for a batch of {sparse.values.shape[0]}")
        meta = {"k": sparse.k, "temperature": sparse.temperature}
        if self.meta is None:
            self.meta = {**meta, "vocab_limit": sparse.vocab_limit}
        elif {k: self.meta[k] for k in meta} != meta:
            raise DistillError(f"this store holds k/temperature {self.meta}, the new batch has {meta}")
        # a batch whose targets never reach the last shared ids may see a smaller limit: keep the largest
        self.meta["vocab_limit"] = max(self.meta["vocab_limit"], sparse.vocab_limit)
        targets = sparse.targets if sparse.targets is not None else torch.full(sparse.tail_logmass.shape, -1)
        for b, (i, n) in enumerate(zip(ids, lengths.tolist())):
            if i in self._seen:
                raise DistillError(f"example id {i} was already stored")
            self._seen.add(i)
            self._pending.append(
                (
                    i,
                    sparse.values[b, :n].to("cpu", self.values_dtype),
                    sparse.indices[b, :n].to("cpu", torch.int32),
                    sparse.tail_logmass[b, :n].to("cpu", torch.float32),
                    targets[b, :n].to("cpu", torch.int32),
                )
            )
            self._pending_tokens += n
        if self._pending_tokens >= self.shard_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        from safetensors.torch import save_file

        ids, values, indices, tails, targets = zip(*self._pending)
        offsets = torch.tensor([0] + [v.shape[0] for v in values]).cumsum(0)
        state = {
            "example_ids": torch.tensor(ids, dtype=torch.int64),
            "offsets": offsets.to(torch.int64),
            "values": torch.cat(values).contiguous(),
            "indices": torch.cat(indices).contiguous(),
            "tail": torch.cat(tails).contiguous(),
            "targets": torch.cat(targets).contiguous(),
        }
        name = f"topk-{len(self.shards):05d}.safetensors"
        atomic_write(self.directory / name, lambda p: save_file(state, p, metadata={"format": TOPK_FORMAT}))
        self.shards.append({"file": name, "examples": len(ids), "tokens": int(offsets[-1])})
        self._pending, self._pending_tokens = [], 0

    def close(self) -> Path:
        self._flush()
        if self.meta is None:
            raise DistillError(f"{self.directory}: nothing was added to the top-k store")
        index = {
            "format": TOPK_FORMAT,
            **self.meta,
            "values_dtype": str(self.values_dtype).removeprefix("torch."),
            "shards": self.shards,
        }
        text = json.dumps(index, indent=2) + "\n"
        atomic_write(self.directory / TOPK_INDEX, lambda p: Path(p).write_text(text))
        return self.directory

    def __enter__(self) -> TopKWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()


class TopKStore:
    """Reads a store written by `TopKWriter`; shards are memory-mapped, rows read on demand."""

    def __init__(self, directory: str | Path):
        from safetensors import safe_open

        self.directory = Path(directory)
        index_file = self.directory / TOPK_INDEX
        if not index_file.exists():
            raise DistillError(f"{index_file}: missing; no finished top-k store here (was the precompute completed?)")
        index = json.loads(index_file.read_text())
        if index.get("format") != TOPK_FORMAT:
            raise DistillError(f"{index_file}: format {index.get('format')!r}, expected {TOPK_FORMAT!r}")
        self.k, self.temperature, self.vocab_limit = (
            int(index["k"]),
            float(index["temperature"]),
            int(index["vocab_limit"]),
        )
        self._files = []
        self._where: dict[int, tuple[int, int, int]] = {}
        for s, shard in enumerate(index["shards"]):
            path = self.directory / shard["file"]
            if not path.exists():
                raise DistillError(f"{path}: shard listed in {index_file} is missing")
            f = safe_open(str(path), framework="pt")
            self._files.append(f)
            offsets = f.get_tensor("offsets").tolist()
            for e, i in enumerate(f.get_tensor("example_ids").tolist()):
                self._where[i] = (s, offsets[e], offsets[e + 1])

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, example_id: int) -> bool:
        return int(example_id) in self._where

    def __getitem__(self, example_id: int) -> dict[str, Tensor]:
        if int(example_id) not in self._where:
            raise KeyError(f"example id {example_id} is not in the top-k store {self.directory}")
        s, a, b = self._where[int(example_id)]
        f = self._files[s]
        return {name: f.get_slice(name)[a:b] for name in ("values", "indices", "tail", "targets")}

    def batch(
        self, example_ids: Sequence[int] | Tensor, length: int, device: torch.device | str = "cpu"
    ) -> SparseLogits:
        """`SparseLogits` [B, length, k] for these examples, right-padded (targets −100 at padding)."""
        ids = [int(i) for i in example_ids]
        B = len(ids)
        values = torch.zeros(B, length, self.k)
        indices = torch.zeros(B, length, self.k, dtype=torch.int32)
        tail = torch.full((B, length), NEG_INF)
        targets = torch.full((B, length), -100, dtype=torch.long)
        for b, i in enumerate(ids):
            row = self[i]
            n = row["tail"].shape[0]
            if n > length:
                raise DistillError(f"example {i} has {n} stored target tokens, the batch only {length} positions")
            values[b, :n], indices[b, :n], tail[b, :n] = row["values"].float(), row["indices"], row["tail"]
            targets[b, :n] = row["targets"].long()
        return SparseLogits(values, indices, tail, self.temperature, self.vocab_limit, targets).to(device)


def check_sparse_targets(sparse: SparseLogits, target_ids: Tensor, target_mask: Tensor) -> None:
    """Refuse stored top-k logits computed for other targets (different data, order or tokenization).
    ``sparse.targets``: −100 where nothing is stored, −1 where the token was not recorded."""
    if sparse.targets is None:
        return
    m = target_mask.bool()
    stored = sparse.targets.to(target_ids.device)
    covered = stored != -100
    if not torch.equal(covered, m):
        row = int((covered != m).any(1).nonzero()[0])
        raise DistillError(
            f"row {row}: the stored teacher top-k covers {int(covered[row].sum())} target tokens, the batch has "
            f"{int(m[row].sum())}: the store belongs to other data or tokenization"
        )
    bad = (stored != target_ids) & m & (stored >= 0)
    if bool(bad.any()):
        b, j = bad.nonzero()[0].tolist()
        raise DistillError(
            f"row {b}, target {j}: the stored teacher top-k was computed for token {int(stored[b, j])}, the batch "
            f"has {int(target_ids[b, j])}: the store belongs to other data or tokenization"
        )


def precompute_topk(
    teacher: nn.Module,
    batches: Iterable[dict[str, Tensor]],
    directory: str | Path,
    *,
    k: int,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    valid_vocab: int | None = None,
    teacher_bos_id: int | None | Literal["auto"] = "auto",
    values_dtype: torch.dtype = torch.float16,
    shard_tokens: int = 1 << 20,
) -> TopKStore:
    """Run the teacher once over ``batches`` (dicts with ``input_ids``, ``attention_mask``, ``labels``
    (−100 at padding) and ``example_ids``) and store its top-k per target token under ``directory``."""
    with TopKWriter(directory, shard_tokens=shard_tokens, values_dtype=values_dtype) as writer:
        for batch in batches:
            labels = batch["labels"]
            mask = labels != -100
            logits = aligned_teacher_logits(
                teacher,
                batch["input_ids"],
                batch.get("attention_mask"),
                labels,
                mask,
                vocab_size=vocab_size,
                valid_vocab=valid_vocab,
                teacher_bos_id=teacher_bos_id,
            )
            sparse = topk_teacher_logits(
                logits, mask, k, temperature=temperature, targets=labels.masked_fill(~mask, -1)
            )
            writer.add(sparse, mask, batch["example_ids"])
    return TopKStore(directory)


# --- train.py's loss interface -------------------------------------------------------------------


class DistillLoss:
    """A loss for `encore.train` (``(model, batch) -> (sum of per-token losses, token count)``) for an
    encoder-decoder student: ``α·τ²·KD + (1−α)·CE`` summed over target tokens.

    The batch holds ``input_ids``, ``attention_mask``, ``decoder_input_ids`` (``[BOS]∘y[:-1]``),
    ``decoder_attention_mask``, ``labels`` (``y``, −100 at padding): the targets may be gold, the
    teacher's or the student's own (on-policy) — that is the batch source's choice. With ``teacher``
    the teacher runs on each micro-batch; with ``store`` (offline) the batch also needs
    ``example_ids`` and the stored targets are checked against ``labels``. ``self.last`` keeps the
    latest mean KD and CE for logging.
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
        self.last: dict[str, Tensor] = {}

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
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
        n = mask.sum()
        denom = n.clamp(min=1)
        self.last = {"kd": kd.detach() / denom, "ce": ce.detach() / denom}  # tensors: no host sync here
        return total, n


# --- teacher-generated targets (sequence-level KD) -----------------------------------------------


@torch.no_grad()
def generate_teacher_targets(
    teacher: Teacher,
    source_ids: Tensor,
    source_mask: Tensor | None,
    *,
    max_new_tokens: int,
    eos_id: int | None = None,
    teacher_bos_id: int | None | Literal["auto"] = "auto",
    **generate_kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """The teacher's own continuation of each source: ``(target_ids, target_mask)`` [B, ≤ max_new_tokens],
    right-padded, each row ending with its first EOS (kept) or cut at ``max_new_tokens``. Uses the
    teacher's KV-cached ``generate``; ids outside the shared vocabulary are never produced (HF) or
    refused (encore). Extra keyword arguments go to ``generate`` (e.g. ``do_sample``, ``temperature``)."""
    if not isinstance(teacher, Teacher):
        raise DistillError("generate_teacher_targets needs a Teacher (see load_teacher / Teacher(model))")
    bos = teacher.bos_id if teacher_bos_id == "auto" else teacher_bos_id
    empty = source_ids[:, :0]
    ids, mask, _, start = teacher_layout(source_ids, source_mask, empty, None, bos_id=bos, pad_id=teacher.pad_id)
    model = teacher.model
    if teacher.is_encore:
        eos = model.config.eos_token_id if eos_id is None else eos_id
        new = model.generate(ids, mask, max_new_tokens=max_new_tokens, eos_token_id=eos, **generate_kwargs)
    else:
        eos = eos_id if eos_id is not None else getattr(teacher.tokenizer, "eos_token_id", None)
        if eos is None:
            eos = model.generation_config.eos_token_id
        if teacher.valid_vocab < teacher.vocab_size:
            generate_kwargs.setdefault("suppress_tokens", list(range(teacher.valid_vocab, teacher.vocab_size)))
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=teacher.pad_id,
            eos_token_id=eos,
            **generate_kwargs,
        )
        new = out[:, start:]
    eos_ids = torch.as_tensor(eos if isinstance(eos, (list, tuple)) else [eos], device=new.device)
    is_eos = torch.isin(new, eos_ids) if eos is not None else torch.zeros_like(new, dtype=torch.bool)
    target_mask = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # up to and including the first EOS
    if bool((new[target_mask] >= teacher.valid_vocab).any()):
        raise DistillError(f"the teacher generated ids outside the shared vocabulary [0, {teacher.valid_vocab})")
    keep = int(target_mask.sum(1).max()) if new.numel() else 0
    return new[:, :keep].masked_fill(~target_mask[:, :keep], teacher.pad_id), target_mask[:, :keep].long()
