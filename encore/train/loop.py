"""ONE training loop: pretraining, fine-tuning and distillation differ only in their batch source
and their loss.

- A *batch source* yields global batches (lists of examples) deterministically and can report /
  restore its position (`state_dict` / `load_state_dict`), so a resumed run sees the same data.
- A *loss* (`encore.train.losses.Loss`) maps (model, collated micro-batch) to the sum of its
  per-token losses and counts its own target tokens. Summing and dividing by the global batch's token
  count makes gradient accumulation and data parallelism give the same update as one big batch on
  one process.

Distributed training is PyTorch's own: launched with `torchrun`, wrapped in DDP (or FSDP2's
`fully_shard`). Every rank reads the same global batch and keeps its own slice, so N processes
compute exactly what one process computes with the same global batch.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from encore.data.collate import Batch
from encore.progress import Progress
from encore.train.checkpoint import (
    clean_temporaries,
    latest_checkpoint,
    load_newest,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from encore.train.dist import Dist, full_state, init_distributed, load_optimizer_state, wrap
from encore.train.logging import MetricsLog, TrainingError, peak_flops
from encore.train.losses import Loss, default_loss
from encore.train.optim import freeze_all_but, freeze_part
from encore.train.rundir import check_identity, claim_run_dir, run_identity
from encore.train.signals import GracefulStop, TrainingInterrupted


class BatchSource(Protocol):
    def next_batch(self, size: int) -> list[Any]: ...
    def collate(self, examples: list[Any]) -> Batch: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainConfig:
    out_dir: str
    max_steps: int = 100
    batch_size: int = 32  # global, in examples, summed over data-parallel ranks and accumulation
    micro_batch_size: int = 8
    lr: float = 2e-2  # Muon's learning rate; the AdamW groups use adamw_lr
    adamw_lr: float | None = None  # default: lr for --optimizer adamw, lr / 10 next to Muon
    optimizer: str = "muon"
    weight_decay: float = 0.0
    warmup_steps: int = -1  # -1: 5% of max_steps
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    save_every: int = 0  # 0: only the final model
    keep_last: int = 3
    eval_every: int = 0
    eval_batches: int = 8
    seed: int = 0
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; or fp32 | bf16
    resume: bool | str = False  # True: continue from the newest loadable checkpoint; "auto": when there is one
    overwrite: bool = False  # clear an earlier run's files in out_dir first
    allow_changed_settings: bool = False  # resume although batch / seed / data settings changed
    run_info: dict[str, Any] = field(default_factory=dict)  # data settings that define the run (checked on resume)
    train_only: str | None = None  # train one part ("cross_attention", "encoder", "decoder"); freeze the rest
    freeze: str | None = None  # freeze one part (the same names); train the rest
    fsdp: bool = False
    tensorboard: bool = False
    progress: bool = True


@dataclass
class _Run:
    """What the steps of one run share."""

    config: TrainConfig
    d: Dist
    raw: nn.Module  # the model itself (what is saved)
    model: nn.Module  # what the forward pass calls (DDP / FSDP wrapped)
    optimizer: Any
    scheduler: Any
    source: BatchSource
    loss: Loss
    autocast: Any
    ckpt_root: Path
    peak_flops: float | None  # the GPU's, for MFU; None on CPU
    flops_per_token: float
    identity: dict[str, Any]  # what defines the run: recorded in every checkpoint, checked on resume


def _split(examples: list[Any], ranks: int, rank: int, micro: int) -> list[list[Any]]:
    if len(examples) % ranks:
        raise TrainingError(f"global batch of {len(examples)} examples does not split over {ranks} ranks")
    share = examples[rank * len(examples) // ranks : (rank + 1) * len(examples) // ranks]
    return [share[i : i + micro] for i in range(0, len(share), micro)]


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def _setup(model: nn.Module, config: TrainConfig, source: BatchSource, loss: Loss) -> tuple[_Run, int]:
    """Resume (when asked), wrap for DDP / FSDP, build the optimizer: the run and its first step."""
    from encore.train.optim import build_optimizer, build_scheduler

    d = init_distributed()
    if config.batch_size % (config.micro_batch_size * d.world_size):
        raise ValueError(
            f"--batch-size {config.batch_size} must be a multiple of --micro-batch-size "
            f"{config.micro_batch_size} x {d.world_size} processes"
        )
    ckpt_root = Path(config.out_dir) / "checkpoints"
    torch.manual_seed(config.seed)
    if config.train_only:
        freeze_all_but(model, config.train_only)
    if config.freeze:
        freeze_part(model, config.freeze)
    settings = {"batch-size": config.batch_size, "seed": config.seed, **config.run_info}
    if config.train_only:
        settings["train-only"] = config.train_only
    if config.freeze:
        settings["freeze"] = config.freeze
    identity = run_identity(model, settings)
    start_step, trainer_state = 0, None
    if d.main:  # the main rank decides what --out means (and clears it for --overwrite); the others wait
        claim_run_dir(config.out_dir, config.resume, config.overwrite)
        clean_temporaries(ckpt_root)
    if d.world_size > 1:
        dist.barrier()
    found = load_newest(ckpt_root, quarantine=d.main) if config.resume else None
    if config.resume is True and found is None:
        raise TrainingError(f"--resume: no checkpoint in {ckpt_root} loads (see the warnings above)")
    if found is not None:
        path, trainer_state, state, weights = found
        check_identity(state.get("run"), identity, path, config.allow_changed_settings)
        model.load_state_dict(weights)
        source.load_state_dict(state["data"])
        start_step = state["step"]
    model.to(d.device)
    wrapped = wrap(model, d, config.fsdp)
    warmup = config.warmup_steps if config.warmup_steps >= 0 else max(1, config.max_steps // 20)
    adamw_lr = config.adamw_lr or (config.lr if config.optimizer == "adamw" else config.lr / 10)
    optimizer = build_optimizer(
        model, config.optimizer, lr=adamw_lr, weight_decay=config.weight_decay, muon_lr=config.lr
    )
    scheduler = build_scheduler(
        optimizer, warmup_steps=warmup, max_steps=config.max_steps, min_lr_ratio=config.min_lr_ratio
    )
    if trainer_state is not None:
        load_optimizer_state(model, optimizer, trainer_state["optimizer"], config.fsdp)
        scheduler.load_state_dict(trainer_state["scheduler"])
        set_rng_state(trainer_state["rng"])
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and d.device.type == "cuda")
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=use_bf16)
    flops_per_token = 6 * sum(p.numel() for p in model.parameters())
    run = _Run(
        config,
        d,
        model,
        wrapped,
        optimizer,
        scheduler,
        source,
        loss,
        autocast,
        ckpt_root,
        peak_flops(d.device),
        flops_per_token,
        identity,
    )
    return run, start_step


def _step(run: _Run, step: int) -> dict[str, Any]:
    """One optimizer step over one global batch; the record metrics.jsonl gets."""
    t0 = time.perf_counter()
    config, d, loss_fn = run.config, run.d, run.loss
    examples = run.source.next_batch(config.batch_size)
    # Every rank collates the whole global batch (cheap next to the forward pass) so all know the
    # global token count, which normalises the loss, without communication.
    shares = [_split(examples, d.world_size, r, config.micro_batch_size) for r in range(d.world_size)]
    collated = [[run.source.collate(micro) for micro in share] for share in shares]
    all_micro = [b for share in collated for b in share]
    n_tokens = sum(loss_fn.target_tokens(b) for b in all_micro)
    n_read = sum(loss_fn.read_tokens(b) for b in all_micro)  # every real token the model reads
    micro_batches = collated[d.rank]
    loss_sum = torch.zeros((), device=d.device)
    metrics: dict[str, Tensor] = {}
    ddp = isinstance(run.model, nn.parallel.DistributedDataParallel)
    for i, micro in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with run.model.no_sync() if ddp and not last else nullcontext(), run.autocast:
            out = loss_fn(run.model, _to(micro, d.device))
            # DDP averages gradients over ranks; scale so the result is sum / global tokens
            (out.total * d.world_size / max(n_tokens, 1)).backward()
        loss_sum += out.total.detach()
        metrics = out.metrics  # the last micro-batch's, as logged before
    if d.world_size > 1:
        dist.all_reduce(loss_sum)
    step_loss = float(loss_sum) / max(n_tokens, 1)
    if not math.isfinite(step_loss):
        last_good = latest_checkpoint(run.ckpt_root)
        raise TrainingError(
            f"loss is {step_loss} at step {step}: stopping. "
            f"Last good checkpoint: {last_good or 'none (no checkpoint was saved yet)'}"
        )
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.raw.parameters(), config.grad_clip or float("inf")))
    lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - t0
    record = {
        "step": step,
        "loss": step_loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "target_tokens": n_tokens,
        "tokens": n_read,
        "tokens_per_s": n_read / elapsed,
        "step_time_s": elapsed,
    }
    record.update({name: float(value) for name, value in metrics.items()})  # e.g. distillation's kd / ce
    if run.peak_flops:
        record["mfu"] = run.flops_per_token * n_read / elapsed / run.peak_flops / d.world_size
    return record


def train(
    model: nn.Module,
    config: TrainConfig,
    source: BatchSource,
    loss_fn: Loss | None = None,
    eval_source: BatchSource | None = None,
    hooks: list[Callable[[int, nn.Module], None]] | None = None,
    eval_loss_fn: Loss | None = None,
) -> nn.Module:
    """Train `model` in place and return it; writes metrics, checkpoints and the final model to out_dir.
    The loss defaults to the architecture's (`default_loss`); the validation loss uses `eval_loss_fn`
    (default: the training loss)."""
    loss_fn = loss_fn or default_loss(model.config.arch)
    run, start_step = _setup(model, config, source, loss_fn)
    out, d = Path(config.out_dir), run.d
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    log = MetricsLog(out, start_step if start_step else None, config.tensorboard) if d.main else None
    progress = Progress(config.max_steps, start_step, "step", "train", enabled=d.main and config.progress)
    run.model.train()
    try:
        if eval_source is not None and config.eval_every and start_step == 0:  # the loss before training
            eval_loss = evaluate_loss(run, eval_source, eval_loss_fn or loss_fn)
            if d.main:
                log.write({"step": 0, "eval_loss": eval_loss})
        with GracefulStop() as stop:
            for step in range(start_step + 1, config.max_steps + 1):
                record = _step(run, step)
                if d.main:
                    log.write(record)
                    progress.update(1, loss=record["loss"], tok_s=round(record["tokens_per_s"]))
                if eval_source is not None and config.eval_every and step % config.eval_every == 0:
                    eval_loss = evaluate_loss(run, eval_source, eval_loss_fn or loss_fn)
                    if d.main:
                        log.write({"step": step, "eval_loss": eval_loss})
                for hook in hooks or []:
                    hook(step, run.raw)
                signum = stop.requested(d.world_size, d.device)
                if signum is not None and step != config.max_steps:
                    _save(run, step)
                    raise TrainingInterrupted(step, run.ckpt_root / f"step-{step}", signum)
                if config.save_every and step % config.save_every == 0 and step != config.max_steps:
                    _save(run, step)
            weights = _save(run, config.max_steps)
            if d.main:
                run.raw.save_pretrained(out / "final", state=weights)
    finally:
        progress.close()
        if log is not None:
            log.close()
    return run.raw


def _save(run: _Run, step: int) -> dict | None:
    """Checkpoint `step`; the weights written when they are gathered from shards (FSDP2), else None."""
    weights, optimizer = full_state(run.raw, run.optimizer, run.config.fsdp)  # every rank: a collective
    if run.d.main:
        trainer_state = {
            "optimizer": optimizer,
            "scheduler": run.scheduler.state_dict(),
            "rng": rng_state(),
        }
        state = {"data": run.source.state_dict(), "run": run.identity}
        save_checkpoint(
            run.ckpt_root, step, run.raw, trainer_state, state, keep_last=run.config.keep_last, weights=weights
        )
    if run.d.world_size > 1:
        dist.barrier()
    return weights


@torch.no_grad()
def evaluate_loss(run: _Run, source: BatchSource, loss_fn: Loss) -> float:
    """Mean per-token loss over the first `eval_batches` micro-batches of a fresh validation pass."""
    state = source.state_dict()
    device = run.d.device
    run.model.eval()
    total, tokens = torch.zeros((), device=device), 0
    try:
        for _ in range(run.config.eval_batches):
            examples = source.next_batch(run.config.micro_batch_size)
            if not examples:
                break
            batch = source.collate(examples)
            tokens += loss_fn.target_tokens(batch)
            with run.autocast:
                total += loss_fn(run.model, _to(batch, device)).total.float()
    finally:
        source.load_state_dict(state)  # evaluation never moves the validation stream
        run.model.train()
    return float(total) / max(tokens, 1)
