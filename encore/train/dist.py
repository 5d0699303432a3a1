"""Distributed set-up: PyTorch's own (`torchrun`, DDP, FSDP2). One process when torchrun is absent."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def local_device() -> torch.device:
    """This process's device: its LOCAL_RANK's GPU under torchrun, else cuda:0 or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_distributed() -> Dist:
    """Read torchrun's environment; one process when it is absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = local_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank() if world > 1 else 0, world_size=world, device=device)


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def wrap(model: nn.Module, d: Dist, fsdp: bool) -> nn.Module:
    """FSDP2 (`fully_shard` on each block, then the whole model), DDP over several processes, or the
    model itself. Returns what the forward pass should call."""
    if fsdp:
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method  # FSDP2

        for block in model.blocks():
            fully_shard(block)
            if hasattr(block, "project_cross"):  # called outside the block's forward (the cross K/V)
                register_fsdp_forward_method(block, "project_cross")
        fully_shard(model)
        return model
    if d.world_size > 1:
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    return model


def _parts(optimizer: torch.optim.Optimizer) -> dict[str, torch.optim.Optimizer]:
    """A `CombinedOptimizer`'s optimizers by name (Muon's, AdamW's), or the one optimizer."""
    return dict(getattr(optimizer, "optimizers", None) or {"optimizer": optimizer})


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> tuple[dict | None, dict]:
    """(weights, optimizer state) whole, as one process would hold them: a sharded model's gathered to
    the CPU (a collective: every rank calls it; rank 0 gets them; the optimizer's state per sub-
    optimizer, keyed by parameter names), else (None: the model's own, the optimizer's `state_dict`)."""
    if not fsdp:
        return None, optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    optim = {name: get_optimizer_state_dict(model, opt, options=options) for name, opt in _parts(optimizer).items()}
    return get_model_state_dict(model, options=options), {"fsdp": optim}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, fsdp: bool) -> None:
    """`full_state`'s optimizer state back into `optimizer` (sharded again under FSDP2). A checkpoint
    resumes under the kind of run that wrote it (FSDP2 or not): its optimizer state is laid out by it."""
    if fsdp != ("fsdp" in state):
        wrote, now = ("an --fsdp run", "without --fsdp") if "fsdp" in state else ("a run without --fsdp", "with --fsdp")
        raise ValueError(f"--resume: the checkpoint was written by {wrote}; resume it the same way, not {now}")
    if not fsdp:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
    for name, opt in _parts(optimizer).items():
        set_optimizer_state_dict(model, opt, optim_state_dict=state["fsdp"][name], options=options)
