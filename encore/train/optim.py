"""Optimizers and the learning-rate schedule.

"muon": Muon for the hidden weight matrices (self/cross-attention projections, MLP up/down) and
AdamW for everything else (embeddings, the untied LM head, norm weights, biases). Muon only makes
sense for 2-D matrices that map one hidden space to another: the embedding is a lookup table and the
LM head's rows are per-token, so both stay with AdamW, as in Keller Jordan's recipe.

Muon comes from `torch.optim.Muon` when the installed torch has it, else from the compact `Muon`
below, which follows the same algorithm step for step (same momentum form, same bf16 quintic
Newton-Schulz, same per-matrix scaling), so either gives the same updates and the same state_dict
layout. The learning rate of a Muon matrix [A, B] (out x in) is scaled by sqrt(max(1, A / B)):
Keller Jordan's "original" rule and torch's default `adjust_lr_fn`. With it, Muon's lr is on
Keller's scale (about 0.02), not AdamW's: pass it as `muon_lr`.

The two optimizers are wrapped in one `CombinedOptimizer`, which the training loop and torch's
LR schedulers treat as a single optimizer.
"""

from __future__ import annotations

import math
from collections import ChainMap
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

# Keller Jordan's quintic Newton-Schulz coefficients (https://kellerjordan.github.io/posts/muon/)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5

# Use torch.optim.Muon where it exists (torch >= 2.9); tests set this to False to exercise the fallback.
USE_TORCH_MUON = hasattr(torch.optim, "Muon")

# Parameters under modules with these names are never Muon's, whatever their shape.
NOT_MUON = ("embed", "lm_head")

NamedParams = list[tuple[str, nn.Parameter]]


def zeropower_via_newtonschulz(
    G: Tensor, steps: int = NS_STEPS, eps: float = 1e-7, coefficients: tuple[float, float, float] = NS_COEFFICIENTS
) -> Tensor:
    """Approximately orthogonalise G [A, B] (U S V^T -> U S' V^T with S' roughly in [0.5, 1.5]).

    The quintic's coefficients maximise its slope at zero, trading exact convergence to 1 for
    fewer steps; Keller Jordan found that S' ~ U(0.5, 1.5) trains as well as U V^T. Runs in bf16
    as the reference does, and mirrors torch's version op for op, so the two agree bit for bit."""
    if G.ndim != 2:
        raise ValueError(f"Newton-Schulz needs a 2-D matrix, got shape {tuple(G.shape)}")
    a, b, c = coefficients
    X = G.bfloat16()
    tall = X.size(0) > X.size(1)
    if tall:  # iterate on the wide orientation: X @ X.T is then the smaller Gram matrix
        X = X.T
    X = X / X.norm().clamp(min=eps)  # Frobenius norm >= spectral norm, so every singular value <= 1
    for _ in range(steps):
        gram = X @ X.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b * gram + c * gram^2
        X = torch.addmm(X, poly, X, beta=a)  # a * X + (b * gram + c * gram^2) @ X
    return X.T if tall else X


def muon_lr_scale(shape: torch.Size | tuple[int, ...]) -> float:
    """sqrt(max(1, A / B)) for a matrix [A, B]: the orthogonalised update of a tall matrix has a
    smaller per-entry RMS, and this brings it back (Keller Jordan's rule, torch's default)."""
    A, B = shape[:2]
    return math.sqrt(max(1.0, A / B))


class Muon(Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for 2-D parameters only (fallback for torch < 2.9).

    Same constructor as `torch.optim.Muon` minus the alternative lr adjustments. Per step:
        buf = momentum * buf + (1 - momentum) * grad        (an EMA; the classic buf = m * buf + g
        update = (1 - momentum) * grad + momentum * buf      is the same up to a constant factor,
        O = NewtonSchulz5(update)                            which the normalisation in NS removes)
        p = p * (1 - lr * weight_decay) - lr * sqrt(max(1, A / B)) * O
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int = NS_STEPS,
    ):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"Muon: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=ns_coefficients,
            eps=eps,
            ns_steps=ns_steps,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon only takes 2-D parameters, got one of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:  # same key as torch's Muon: state_dicts interchange
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                ortho = zeropower_via_newtonschulz(update, group["ns_steps"], group["eps"], group["ns_coefficients"])
                p.mul_(1 - lr * group["weight_decay"])  # decoupled weight decay, as AdamW
                p.add_(ortho, alpha=-lr * muon_lr_scale(p.shape))
        return loss


class CombinedOptimizer(Optimizer):
    """Several optimizers over disjoint parameters, seen as one (e.g. Muon + AdamW).

    `param_groups` lists the sub-optimizers' groups in order, as the very same dicts, so an LR
    scheduler that sets group["lr"] (torch's LambdaLR included) reaches them; `step`, `zero_grad`,
    `state_dict` and `load_state_dict` go to each. Register optimizer hooks on the sub-optimizers.
    """

    def __init__(self, optimizers: dict[str, Optimizer]):
        # No super().__init__(): it would copy the groups into a list of its own, which would go stale
        # when a sub-optimizer's load_state_dict replaces its group dicts. The properties below are live.
        if not optimizers:
            raise ValueError("CombinedOptimizer needs at least one optimizer")
        self.optimizers = dict(optimizers)
        self.defaults: dict[str, Any] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    @property
    def state(self) -> ChainMap:
        """Per-parameter state of all sub-optimizers (a read-only view)."""
        return ChainMap(*(opt.state for opt in self.optimizers.values()))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:  # evaluate once, not once per sub-optimizer
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != set(self.optimizers):
            raise ValueError(
                f"optimizer state holds {sorted(state_dict)} but this optimizer is made of {sorted(self.optimizers)} "
                "(was the checkpoint trained with another --optimizer?)"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[name])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise NotImplementedError(f"add the group to one of .optimizers ({', '.join(self.optimizers)})")

    def __repr__(self) -> str:
        return "CombinedOptimizer(\n" + "\n".join(f"{k}: {v!r}" for k, v in self.optimizers.items()) + "\n)"


# the parts `--train-only` can name: parameter-name prefixes (components) of an encoder-decoder
TRAIN_PARTS = {
    "cross_attention": ("cross", "cross_norm", "post_cross_norm"),
    "encoder": ("encoder", "encoder_norm", "encoder_embed", "encoder_positions"),
    "decoder": ("decoder",),
}


def freeze_all_but(model: nn.Module, part: str) -> int:
    """Leave only `part`'s parameters trainable (`TRAIN_PARTS`); the number that train. A warm-up of a
    fresh cross-attention (`encore adapt --cross-init random`) trains "cross_attention" alone."""
    if part not in TRAIN_PARTS:
        raise ValueError(f"--train-only {part!r}: choose one of {', '.join(TRAIN_PARTS)}")
    keys = set(TRAIN_PARTS[part])
    n = 0
    for name, p in model.named_parameters():
        keep = bool(keys & set(name.split(".")))
        p.requires_grad_(keep)
        n += p.numel() if keep else 0
    if n == 0:
        raise ValueError(f"--train-only {part}: the model has no {part} parameters (is it an encoder-decoder?)")
    return n


def freeze_part(model: nn.Module, part: str) -> int:
    """Freeze `part`'s parameters (`TRAIN_PARTS`), the rest as they were; the number frozen. distil-
    whisper trains its 2-layer decoder under a frozen encoder (`--freeze encoder`)."""
    if part not in TRAIN_PARTS:
        raise ValueError(f"--freeze {part!r}: choose one of {', '.join(TRAIN_PARTS)}")
    keys = set(TRAIN_PARTS[part])
    n = 0
    for name, p in model.named_parameters():
        if keys & set(name.split(".")):
            p.requires_grad_(False)
            n += p.numel()
    if n == 0:
        raise ValueError(f"--freeze {part}: the model has no {part} parameters (is it an encoder-decoder?)")
    return n


def param_groups_for_muon(model: nn.Module) -> tuple[NamedParams, NamedParams]:
    """Split the trainable parameters into (muon, adamw) lists of (name, parameter).

    Muon: 2-D weights whose name has no `embed` / `lm_head` component and that do not belong to an
    nn.Embedding: attention qkv/out, cross-attention q/kv/out, MLP up/down. AdamW: the rest
    (embedding = tied head, untied head, norm weights, biases). Frozen parameters are in neither.
    A tied weight appears once (named_parameters drops duplicates). Wrapper prefixes such as DDP's
    `module.` or torch.compile's `_orig_mod.` do not matter: the rule looks at name components."""
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    muon, adamw = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        hidden = p.ndim == 2 and id(p) not in embedding_params and not set(name.split(".")) & set(NOT_MUON)
        (muon if hidden else adamw).append((name, p))
    return muon, adamw


def _adamw_groups(named: NamedParams, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay for matrices (embeddings, head), none for norm weights and biases (nanoGPT's rule)."""
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = [
        dict(name="adamw_decay", params=decay, weight_decay=weight_decay),
        dict(name="adamw_no_decay", params=no_decay, weight_decay=0.0),
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    name: Literal["muon", "adamw"],
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.95),
    muon_lr: float | None = None,
    muon_momentum: float = 0.95,
) -> Optimizer:
    """The optimizer for `model`'s trainable parameters.

    "adamw": one AdamW (lr, betas; weight decay on matrices only).
    "muon": a CombinedOptimizer of Muon (hidden matrices; lr `muon_lr`, default `lr`; nesterov
    momentum `muon_momentum`; `weight_decay`) and AdamW (the rest; lr `lr`). Muon's groups come
    first, so `param_groups[0]["lr"]` is Muon's learning rate. Every group has a "name" key."""
    if name == "adamw":
        groups = _adamw_groups([(n, p) for n, p in model.named_parameters() if p.requires_grad], weight_decay)
        if not groups:
            raise ValueError("build_optimizer: the model has no trainable parameters")
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name != "muon":
        raise ValueError(f"unknown optimizer {name!r}; choose 'muon' or 'adamw'")

    muon_named, adamw_named = param_groups_for_muon(model)
    optimizers: dict[str, Optimizer] = {}
    if muon_named:
        muon_cls = torch.optim.Muon if USE_TORCH_MUON else Muon
        group = dict(name="muon", params=[p for _, p in muon_named])
        # nesterov and the default lr scaling are the same in both classes; pass no adjust_lr_fn so
        # that any torch version with Muon accepts the call
        optimizers["muon"] = muon_cls(
            [group], lr=lr if muon_lr is None else muon_lr, weight_decay=weight_decay, momentum=muon_momentum
        )
    if adamw_named:
        optimizers["adamw"] = torch.optim.AdamW(_adamw_groups(adamw_named, weight_decay), lr=lr, betas=betas)
    if not optimizers:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    return CombinedOptimizer(optimizers)


def lr_schedule(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1) -> float:
    """LR multiplier: linear warmup (step + 1) / warmup_steps over steps 0 .. warmup_steps - 1 (so
    the first step already moves), then cosine from 1 at warmup_steps to min_lr_ratio at max_steps,
    and min_lr_ratio after that."""
    if warmup_steps < 0 or max_steps < 1 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(
            f"lr_schedule: need warmup_steps >= 0, max_steps >= 1, 0 <= min_lr_ratio <= 1; "
            f"got warmup_steps={warmup_steps}, max_steps={max_steps}, min_lr_ratio={min_lr_ratio}"
        )
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: Optimizer, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1) -> LambdaLR:
    """LambdaLR applying `lr_schedule` to every param group (call `step()` after each optimizer step).
    Its state_dict holds only plain values; on resume build it, then load the optimizer's and its state."""
    lr_schedule(0, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio)  # validate now
    schedule = partial(lr_schedule, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio)
    return LambdaLR(optimizer, schedule)
