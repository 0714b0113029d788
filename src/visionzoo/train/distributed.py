"""Data-parallel training under ``torchrun``: process group, samplers, metric reduction.

``torchrun --nproc_per_node N -m visionzoo train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
:func:`init` then joins the group (NCCL on GPUs, Gloo on CPUs). Without those variables
everything here degrades to a single process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

__all__ = ["DistInfo", "ResumableSampler", "ShardSampler", "all_reduce_sum", "average_norm_statistics", "broadcast_object", "cleanup", "init"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun; choose the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        dev = torch.device("cuda", local if world > 1 else (torch.device(device).index or 0))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world, device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], info: DistInfo) -> list[float]:
    """Sum a few numbers over all ranks (float64, so counts stay exact)."""
    if not info.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_norm_statistics(model: torch.nn.Module, info: DistInfo) -> None:
    """Average the BatchNorm running statistics of ``model`` over all ranks (timm's
    ``--dist-bn reduce``). Each rank updates them from its own batches, and DDP copies rank
    0's only at the start of a training forward; without this, each rank would evaluate its
    shard with other statistics, and the held-out figures would not be those of the saved
    weights."""
    if not info.enabled:
        return
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats and m.running_mean is not None:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf.div_(info.world_size)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start part-way into an epoch (mid-epoch resume).

    The order of an epoch depends only on (seed, epoch), so skipping the first
    ``start`` indices reproduces exactly what an uninterrupted run would have drawn next.
    """

    def __init__(self, dataset: Any, info: DistInfo, *, seed: int, drop_last: bool = True) -> None:
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=drop_last)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: each example evaluated exactly once overall."""

    def __init__(self, n: int, info: DistInfo) -> None:
        self.n, self.rank, self.world = n, info.rank, info.world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return max(0, math.ceil((self.n - self.rank) / self.world))
