"""ONE training loop: pretraining, fine-tuning and distillation differ only in their batch source
and their loss.

- A *batch source* yields global batches (lists of examples) deterministically and can report /
  restore its position (`state_dict` / `load_state_dict`), so a resumed run sees the same data.
- A *loss* maps (model, collated micro-batch) to (sum of per-token losses, number of tokens).
  Summing and dividing by the global batch's token count makes gradient accumulation and
  data parallelism give the same update as one big batch on one process.

Distributed training is PyTorch's own: launched with `torchrun`, wrapped in DDP (or FSDP2's
`fully_shard`). Every rank reads the same global batch and keeps its own slice, so N processes
compute exactly what one process computes with the same global batch.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from encore.checkpoint import (
    clean_temporaries,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

Batch = dict[str, Tensor]
LossFn = Callable[[nn.Module, Batch], tuple[Tensor, Tensor]]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, bad setup); the message says why and what is kept."""


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
    resume: bool = False
    fsdp: bool = False
    tensorboard: bool = False
    progress: bool = True


# --- losses ---------------------------------------------------------------------------------------


def seq2seq_loss(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """Cross-entropy of an encoder-decoder on `labels` (-100 ignored): (sum, token count)."""
    logits = model(
        batch["input_ids"], batch["decoder_input_ids"], batch["attention_mask"], batch["decoder_attention_mask"]
    )
    labels = batch["labels"]
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
    return loss, (labels != -100).sum()


def causal_lm_loss(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """Next-token cross-entropy of a decoder-only model; `labels` are aligned with `input_ids`
    (-100 on prompt and padding), so position t predicts labels[t + 1]."""
    labels = batch["labels"][:, 1:]
    scored = labels != -100
    # logits only where a label follows: after a long prompt most positions carry none
    logits = model(batch["input_ids"], batch["attention_mask"], F.pad(scored, (0, 1), value=False))
    loss = F.cross_entropy(logits.float(), labels[scored], reduction="sum")
    return loss, scored.sum()


def default_loss(model: nn.Module) -> LossFn:
    return seq2seq_loss if _unwrap(model).config.arch == "encdec" else causal_lm_loss


# --- distributed set-up -----------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Read torchrun's environment; one process when it is absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank() if world > 1 else 0, world_size=world, device=device)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --- logging ----------------------------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl (one JSON object per optimizer step, plus eval records), optionally TensorBoard."""

    def __init__(self, out_dir: Path, resume_step: int | None, tensorboard: bool):
        self.path = out_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # a killed run may have logged steps after its last checkpoint: drop them, they rerun
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")
        self.file = open(self.path, "a")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise TrainingError(
                    "--tensorboard needs the tensorboard package: pip install 'encore[tensorboard]'"
                ) from e
            self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _show_progress(enabled: bool) -> bool:
    return enabled and sys.stderr.isatty() and not os.environ.get("CI") and not os.environ.get("ENCORE_QUIET")


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the GPU, for MFU; None where unknown (CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12), ("A10", 125e12)):
        if key in name:
            return flops
    return None


# --- the loop ---------------------------------------------------------------------------------------


def _split(examples: list[Any], ranks: int, rank: int, micro: int) -> list[list[Any]]:
    if len(examples) % ranks:
        raise TrainingError(f"global batch of {len(examples)} examples does not split over {ranks} ranks")
    share = examples[rank * len(examples) // ranks : (rank + 1) * len(examples) // ranks]
    return [share[i : i + micro] for i in range(0, len(share), micro)]


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def _count_tokens(batches: list[Batch], loss_fn: LossFn) -> int:
    """Target tokens of collated micro-batches."""
    total = 0
    for batch in batches:
        labels = batch["labels"][:, 1:] if loss_fn is causal_lm_loss else batch["labels"]
        total += int((labels != -100).sum())
    return total


def train(
    model: nn.Module,
    config: TrainConfig,
    source: BatchSource,
    loss_fn: LossFn | None = None,
    eval_source: BatchSource | None = None,
    hooks: list[Callable[[int, nn.Module], None]] | None = None,
    eval_loss_fn: LossFn | None = None,
) -> nn.Module:
    """Train `model` in place and return it; writes metrics, checkpoints and the final model to out_dir.
    The validation loss uses `eval_loss_fn` (default: `loss_fn`)."""
    from encore.optim import build_optimizer, build_scheduler

    d = init_distributed()
    if config.batch_size % (config.micro_batch_size * d.world_size):
        raise TrainingError(
            f"--batch-size {config.batch_size} must be a multiple of --micro-batch-size "
            f"{config.micro_batch_size} x {d.world_size} processes"
        )
    out = Path(config.out_dir)
    ckpt_root = out / "checkpoints"
    loss_fn = loss_fn or default_loss(model)
    torch.manual_seed(config.seed)

    start_step, resumed_from = 0, None
    if config.resume:
        if d.main:
            clean_temporaries(ckpt_root)
        resumed_from = latest_checkpoint(ckpt_root)
    trainer_state = None
    if resumed_from is not None:
        from safetensors.torch import load_file

        trainer_state, state = load_checkpoint(resumed_from)
        model.load_state_dict(load_file(str(resumed_from / "model.safetensors")))
        source.load_state_dict(state["data"])
        start_step = state["step"]
    model.to(d.device)
    raw = model
    if config.fsdp:
        from torch.distributed.fsdp import fully_shard  # FSDP2

        for block in [*getattr(raw, "encoder", []), *raw.decoder]:
            fully_shard(block)
        fully_shard(raw)
    elif d.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            raw, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )

    warmup = config.warmup_steps if config.warmup_steps >= 0 else max(1, config.max_steps // 20)
    adamw_lr = config.adamw_lr or (config.lr if config.optimizer == "adamw" else config.lr / 10)
    optimizer = build_optimizer(raw, config.optimizer, lr=adamw_lr, weight_decay=config.weight_decay, muon_lr=config.lr)
    scheduler = build_scheduler(
        optimizer, warmup_steps=warmup, max_steps=config.max_steps, min_lr_ratio=config.min_lr_ratio
    )
    if trainer_state is not None:
        optimizer.load_state_dict(trainer_state["optimizer"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        set_rng_state(trainer_state["rng"])

    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    log = MetricsLog(out, start_step if resumed_from is not None else None, config.tensorboard) if d.main else None
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and d.device.type == "cuda")
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=use_bf16)
    flops_per_token = 6 * sum(p.numel() for p in raw.parameters())
    peak = peak_flops(d.device)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=config.max_steps,
        initial=start_step,
        disable=not (d.main and _show_progress(config.progress)),
        unit="step",
        dynamic_ncols=True,
    )
    model.train()
    try:
        for step in range(start_step + 1, config.max_steps + 1):
            t0 = time.perf_counter()
            examples = source.next_batch(config.batch_size)
            # Every rank collates the whole global batch (cheap next to the forward pass) so all know the
            # global token count, which normalises the loss, without communication.
            shares = [_split(examples, d.world_size, r, config.micro_batch_size) for r in range(d.world_size)]
            collated = [[source.collate(micro) for micro in share] for share in shares]
            all_micro = [b for share in collated for b in share]
            n_tokens = _count_tokens(all_micro, loss_fn)
            n_processed = sum(  # every real token the model reads: encoder input + decoder input, or the sequence
                int(b[k].sum()) for b in all_micro for k in ("attention_mask", "decoder_attention_mask") if k in b
            )
            micro_batches = collated[d.rank]
            loss_sum = torch.zeros((), device=d.device)
            for i, micro in enumerate(micro_batches):
                batch = _to(micro, d.device)
                sync = i == len(micro_batches) - 1
                ctx = model.no_sync() if (not sync and isinstance(model, nn.parallel.DistributedDataParallel)) else None
                with ctx or nullcontext(), autocast:
                    loss, _ = loss_fn(model, batch)
                    # DDP averages gradients over ranks; scale so the result is sum / global tokens
                    (loss * d.world_size / max(n_tokens, 1)).backward()
                loss_sum += loss.detach()
            if d.world_size > 1:
                dist.all_reduce(loss_sum)
            step_loss = float(loss_sum) / max(n_tokens, 1)
            if not math.isfinite(step_loss):
                last = latest_checkpoint(ckpt_root)
                raise TrainingError(
                    f"loss is {step_loss} at step {step}: stopping. "
                    f"Last good checkpoint: {last or 'none (no checkpoint was saved yet)'}"
                )
            grad_norm = float(torch.nn.utils.clip_grad_norm_(raw.parameters(), config.grad_clip or float("inf")))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - t0
            if d.main:
                record = {
                    "step": step,
                    "loss": step_loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "target_tokens": n_tokens,
                    "tokens": n_processed,
                    "tokens_per_s": n_processed / elapsed,
                    "step_time_s": elapsed,
                }
                for name, value in getattr(loss_fn, "last", {}).items():  # e.g. distillation's kd / ce parts
                    record[name] = float(value)
                if peak:
                    record["mfu"] = flops_per_token * n_processed / elapsed / peak / d.world_size
                log.write(record)
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{n_processed / elapsed:.0f}", lr=f"{lr:.2e}")
            if eval_source is not None and config.eval_every and step % config.eval_every == 0:
                eval_loss = evaluate_loss(
                    model,
                    eval_source,
                    eval_loss_fn or loss_fn,
                    config.eval_batches,
                    config.micro_batch_size,
                    d,
                    autocast,
                )
                if d.main:
                    log.write({"step": step, "eval_loss": eval_loss})
            for hook in hooks or []:
                hook(step, raw)
            if config.save_every and step % config.save_every == 0 and step != config.max_steps:
                _save(raw, optimizer, scheduler, source, ckpt_root, step, config, d)
        _save(raw, optimizer, scheduler, source, ckpt_root, config.max_steps, config, d)
        if d.main:
            raw.save_pretrained(out / "final")
    finally:
        bar.close()
        if log is not None:
            log.close()
    return raw


def _save(
    raw: nn.Module, optimizer, scheduler, source: BatchSource, root: Path, step: int, config: TrainConfig, d: Dist
) -> None:
    if d.main:
        trainer_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}
        save_checkpoint(root, step, raw, trainer_state, {"data": source.state_dict()}, keep_last=config.keep_last)
    if d.world_size > 1:
        dist.barrier()


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, source: BatchSource, loss_fn: LossFn, n_batches: int, micro: int, d: Dist, autocast
) -> float:
    """Mean per-token loss over the first `n_batches` micro-batches of a fresh validation pass."""
    state = source.state_dict()
    model.eval()
    total, tokens = torch.zeros((), device=d.device), torch.zeros((), device=d.device)
    try:
        for _ in range(n_batches):
            examples = source.next_batch(micro)
            if not examples:
                break
            with autocast:
                loss, n = loss_fn(model, _to(source.collate(examples), d.device))
            total += loss.float()
            tokens += n
    finally:
        source.load_state_dict(state)  # evaluation never moves the validation stream
        model.train()
    return float(total / tokens.clamp(min=1))
