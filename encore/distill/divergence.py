"""The KD divergences between a teacher's and a student's next-token distributions, dense or against the
teacher's stored top-k, and the combined loss ``α·τ²·KD + (1−α)·CE``.

- ``reverse_kl`` (the paper's): Σ q_S log(q_S/p_T); ``forward_kl``: Σ p_T log(p_T/q_S); ``jsd``: GKD's
  generalised Jensen-Shannon divergence with weight β; ``skew_forward_kl`` / ``skew_reverse_kl``:
  DistiLLM's skewed KLs, KL(p‖β·p + (1−β)·q) and KL(q‖β·q + (1−β)·p), bounded by log(1/β) where the
  plain KLs are not (their gradients stay the size of cross-entropy's against a peaked teacher).
  Log-softmax in fp32, only at target tokens.
- Where the teacher gives probability 0 (ids outside the shared vocabulary, logit −inf) both sides are
  renormalised over the teacher's support, with no 0·(−inf) NaN in the forward or backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from encore.distill.errors import DistillError

Kind = Literal["reverse_kl", "forward_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"]
KINDS: tuple[str, ...] = ("reverse_kl", "forward_kl", "jsd", "skew_forward_kl", "skew_reverse_kl")
NEG_INF = float("-inf")
# the mixture weight β when none is given: GKD's JSD(0.5) and DistiLLM's skew 0.1
DEFAULT_BETA = {"jsd": 0.5, "skew_forward_kl": 0.1, "skew_reverse_kl": 0.1}


def mixture_weight(kind: str, beta: float | None) -> float:
    """β of the mixing divergences (`DEFAULT_BETA` when None); the plain KLs ignore it."""
    return DEFAULT_BETA.get(kind, 0.5) if beta is None else beta


def _check_kind(kind: str, beta: float | None, temperature: float) -> None:
    if kind not in KINDS:
        raise DistillError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "jsd" and beta is not None and not 0.0 < beta < 1.0:
        raise DistillError(
            f"jsd needs 0 < beta < 1 (got {beta}); beta -> 0 / 1 degenerate to 0, use forward_kl / reverse_kl"
        )
    if kind.startswith("skew_") and beta is not None and not 0.0 <= beta < 1.0:
        raise DistillError(f"{kind} needs 0 <= beta < 1 (got {beta}); beta 0 is the plain KL, 1 is always 0")
    if not temperature > 0:
        raise DistillError(f"temperature must be positive, got {temperature}")


def _token_mask(mask: Tensor | None, shape: torch.Size, device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if mask.shape != shape:
        raise DistillError(f"mask has shape {tuple(mask.shape)}, the logits' tokens are {tuple(shape)}")
    return mask.bool()


def _divergence(logp: Tensor, logq: Tensor, kind: str, beta: float | None, support: Tensor | None) -> Tensor:
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
    beta = mixture_weight(kind, beta)
    if kind == "skew_forward_kl":  # KL(p ‖ β·p + (1−β)·q)
        return (p * (logp - _log_mix(logp, logq, beta))).sum(-1)
    if kind == "skew_reverse_kl":  # KL(q ‖ β·q + (1−β)·p)
        return (q * (logq - _log_mix(logq, logp, beta))).sum(-1)
    logm = _log_mix(logp, logq, beta)  # M = β·p + (1−β)·q
    return beta * (p * (logp - logm)).sum(-1) + (1 - beta) * (q * (logq - logm)).sum(-1)


def _log_mix(loga: Tensor, logb: Tensor, weight: float) -> Tensor:
    """log(w·a + (1−w)·b) from log a, log b, without leaving log space (w = 0 is b itself)."""
    if weight == 0.0:
        return logb
    return torch.logaddexp(loga + math.log(weight), logb + math.log1p(-weight))


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
    beta: float | None = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> Tensor:
    """Token mean (or sum) over ``mask`` of the divergence between the teacher's p_T and the student's q_S:

    - ``reverse_kl`` (the paper's): Σ q_S log(q_S / p_T)
    - ``forward_kl``: Σ p_T log(p_T / q_S)
    - ``jsd``: with M = β·p_T + (1−β)·q_S, β·KL(p_T‖M) + (1−β)·KL(q_S‖M) (GKD's generalised JSD)
    - ``skew_forward_kl``: KL(p_T ‖ β·p_T + (1−β)·q_S); ``skew_reverse_kl``: KL(q_S ‖ β·q_S + (1−β)·p_T)
      (DistiLLM); ``beta`` None takes `DEFAULT_BETA`

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


# --- sparse teacher logits: its top-k per target token --------------------------------------------


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
    beta: float | None = None,
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
    beta: float | None = None,
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
    kd = kd_term(student_logits, teacher, m, kind=kind, temperature=temperature, beta=beta, reduction=reduction)
    ce = ce_sum(student_logits, labels, m)
    if reduction == "mean":
        ce = ce / max(int(m.sum()), 1)
    total = alpha * temperature**2 * kd + (1 - alpha) * ce
    return total, kd, ce


def ce_sum(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy summed over the target tokens `mask` marks, in fp32."""
    return F.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")


def kd_term(
    student_logits: Tensor,
    teacher: Tensor | SparseLogits,
    mask: Tensor,
    *,
    kind: Kind = "reverse_kl",
    temperature: float = 1.0,
    beta: float | None = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> Tensor:
    """The divergence of `kd_loss` (dense teacher logits) or `kd_loss_sparse` (`SparseLogits`, whose
    temperature must be ``temperature``), without τ²."""
    if isinstance(teacher, SparseLogits):
        if temperature != teacher.temperature:
            raise DistillError(
                f"the stored top-k teacher was computed at temperature {teacher.temperature}, not {temperature}"
            )
        return kd_loss_sparse(student_logits, teacher, mask, kind, beta, reduction)
    return kd_loss(student_logits, teacher, mask, kind, temperature, beta, reduction)
