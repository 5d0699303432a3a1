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
        from torch.distributed.fsdp import fully_shard  # FSDP2

        for block in model.blocks():
            fully_shard(block)
        fully_shard(model)
        return model
    if d.world_size > 1:
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    return model
