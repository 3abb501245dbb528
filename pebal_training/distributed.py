"""Process-group context of a fine-tuning run: rank, world size, device and the few collectives it uses.

Started by ``torchrun`` (``WORLD_SIZE`` > 1) the run initialises nccl on CUDA and gloo on CPU; a single
process needs no process group and every collective is the identity.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            import torch.distributed as dist

            dev = tensor.device
            # gloo reduces CPU tensors only; nccl CUDA only.
            work = tensor.to(self.device) if self.device.type == "cuda" else tensor.cpu()
            dist.all_reduce(work)
            return work.to(dev)
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def setup_distributed(device_cfg: str) -> DistContext:
    """Reads RANK / WORLD_SIZE / LOCAL_RANK (torchrun); initialises the process group when > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device_cfg == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu") if world > 1 \
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif device_cfg == "cuda" and world > 1:
        device = torch.device(f"cuda:{local_rank}")
    else:
        device = torch.device(device_cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
            ctx.initialised_here = True
    return ctx
