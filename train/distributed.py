"""Multi-GPU training with torchrun: process group set-up and small collectives (rank 0 writes files).

`torchrun --nproc_per_node=K -m instyle train ...` sets RANK/WORLD_SIZE/LOCAL_RANK; each process then
trains a DDP replica on its shard of the sample stream (see data.StreamSampler) with the per-GPU
--batch-size. Without those variables everything runs as a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (if any); returns it and this process's device."""
    if dist.is_available() and dist.is_initialized():
        d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        local = int(os.environ.get("LOCAL_RANK", 0))
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
        d = Dist(dist.get_rank(), dist.get_world_size(), local, owns_group=True)
    else:
        return Dist(), device
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    return d, device


def teardown(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def mean_across(d: Dist, t: torch.Tensor) -> torch.Tensor:
    """The mean of `t` over ranks (a copy; `t` itself as is without DDP)."""
    if not d.enabled:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / d.world_size


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
