"""Data-parallel training under ``torchrun``: process group, samplers, metric reduction.

``torchrun --nproc_per_node N -m visionzoo train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
:func:`init` then joins the group (NCCL on GPUs, Gloo on CPUs). Without those variables
everything here degrades to a single process.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

__all__ = ["DistInfo", "ResumableSampler", "ShardSampler", "all_gather_object", "all_reduce_sum", "all_reduce_tensor", "average_norm_statistics", "broadcast_object", "cleanup", "init"]


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


def _settled(collective: Callable[[], Any], tensors: Sequence[torch.Tensor]) -> None:
    """Run ``collective`` on ``tensors`` and return once no Gloo worker thread holds them.

    A Gloo collective returns when its result is ready; the worker thread that ran it lets go
    of its tensors a moment later. In recent torch (2.14 here) a C++ thread letting go of a tensor
    that Python has seen takes the GIL, and if this process has begun shutting down by then (its
    last collective, on a loaded machine) that thread dies inside a destructor: "terminate
    called without an active exception", SIGABRT, and torchrun reports a finished run as
    failed. Waiting (asleep, so the GIL is free) until each tensor's use count is back to
    what it was keeps every collective of ours from outliving the process's Python.
    NCCL's threads release their tensors only once the GPU is done; not waited for.
    """
    counts = [t._use_count() for t in tensors] if hasattr(torch.Tensor, "_use_count") else None
    collective()
    if counts is None or dist.get_backend() != "gloo":
        return
    deadline = time.monotonic() + 30.0  # never hang on a reference held elsewhere
    while any(t._use_count() > n for t, n in zip(tensors, counts)) and time.monotonic() < deadline:
        time.sleep(1e-4)


def _device(info: DistInfo) -> torch.device:
    """Where a collective's tensors live: the GPU under NCCL, else the CPU (Gloo)."""
    return info.device if info.device.type == "cuda" else torch.device("cpu")


def all_reduce_tensor(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``t`` summed over all ranks, on ``t``'s device (``t`` itself where not distributed)."""
    if not info.enabled:
        return t
    r = t.to(_device(info), copy=True)
    _settled(lambda: dist.all_reduce(r), [r])
    return r.to(t.device)


def all_reduce_sum(values: Sequence[float], info: DistInfo) -> list[float]:
    """Sum a few numbers over all ranks (float64, so counts stay exact)."""
    return all_reduce_tensor(torch.tensor([float(v) for v in values], dtype=torch.float64), info).tolist()


def _encode(obj: Any, info: DistInfo) -> torch.Tensor:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(_device(info))


def _decode(t: torch.Tensor, n: int) -> Any:
    return pickle.loads(t[:n].cpu().numpy().tobytes())  # from the ranks of this run only


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (picklable; what ``dist.broadcast_object_list`` does, with
    the tensors it sends settled: :func:`_settled`)."""
    if not info.enabled:
        return obj
    data = _encode(obj, info) if info.is_main else None
    size = torch.tensor([data.numel() if data is not None else 0], dtype=torch.int64, device=_device(info))
    _settled(lambda: dist.broadcast(size, src=0), [size])
    if data is None:
        data = torch.empty(int(size), dtype=torch.uint8, device=_device(info))
    _settled(lambda: dist.broadcast(data, src=0), [data])
    return _decode(data, int(size))


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (picklable; what ``dist.all_gather_object`` does,
    with the tensors it sends settled: :func:`_settled`)."""
    if not info.enabled:
        return [obj]
    dev = _device(info)
    data = _encode(obj, info)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=dev)
    sizes = [torch.empty_like(size) for _ in range(info.world_size)]
    _settled(lambda: dist.all_gather(sizes, size), [size, *sizes])
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=dev)
    padded[: data.numel()] = data
    gathered = [torch.empty_like(padded) for _ in range(info.world_size)]
    _settled(lambda: dist.all_gather(gathered, padded), [padded, *gathered])
    return [_decode(t, int(s)) for t, s in zip(gathered, sizes)]


def average_norm_statistics(model: torch.nn.Module, info: DistInfo) -> None:
    """Average the BatchNorm running statistics of ``model`` over all ranks (timm's
    ``--dist-bn reduce``). Each rank updates them from its own batches, and DDP copies rank
    0's only at the start of a training forward; without this, each rank would evaluate its
    shard with other statistics, and the held-out figures would not be those of the saved
    weights."""
    if not info.enabled:
        return
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}  # one collective per dtype, not two per layer
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats and m.running_mean is not None:
            for buf in (m.running_mean, m.running_var):
                groups.setdefault((buf.dtype, buf.device), []).append(buf)
    for bufs in groups.values():
        flat = torch.cat([b.reshape(-1) for b in bufs])
        _settled(lambda: dist.all_reduce(flat), [flat])
        flat.div_(info.world_size)
        for b, part in zip(bufs, flat.split([b.numel() for b in bufs])):
            b.copy_(part.view_as(b))


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
