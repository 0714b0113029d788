"""Throughput, latency and memory of models, optionally side by side with timm.

``visionzoo bench`` uses this module. With ``compare="timm"`` timm's implementation of
the same architecture (same name) is timed in the same process, alternating rounds with
ours, so that both see the same machine state; the ratio ours/timm is reported.
timm is imported only then (it is an optional, test-time dependency).
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["BenchResult", "bench_models", "gemm_peak_gflops", "paired_ratio"]


@dataclass
class BenchResult:
    impl: str
    name: str
    mode: str
    batch_size: int
    img_size: int
    images_per_s: float
    latency_ms: float
    peak_mem_mb: float | None
    gmacs: float
    gflops_per_s: float
    round_ms: list[float]  # time per step in each round, in the order the rounds ran

    def as_dict(self) -> dict:
        return asdict(self)


def paired_ratio(a: BenchResult, b: BenchResult) -> tuple[float, float, float]:
    """How much faster ``a`` ran than ``b``: the median, lower and upper quartile of the
    per-round ratios (b's step time over a's in the same round).

    Both ran in every round, back to back, so a ratio within one round compares them on the
    same machine state; its median holds up when the machine drifts between rounds, where
    the ratio of the two medians (each over all rounds) need not.
    """
    if len(a.round_ms) != len(b.round_ms) or not a.round_ms:
        raise ValueError(f"{a.impl} and {b.impl} were not timed in the same rounds")
    ratios = [tb / ta for ta, tb in zip(a.round_ms, b.round_ms)]
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, q1, q3


def gemm_peak_gflops(n: int = 2048, repeats: int = 7, dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """Measured matrix-multiply throughput (GFLOP/s) of this machine: best of ``repeats``.

    On a CPU both GEMMs the models use are timed, ``torch.mm`` (BLAS) and, where the torch
    build has it, oneDNN's inner product (:mod:`visionzoo.layers.linear`), and the faster
    counts: the peak is what the best available kernel reaches.
    """
    from .layers.linear import linear_act

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    kernels = [lambda: a @ b]
    if torch.device(device).type == "cpu":
        kernels.append(lambda: linear_act(a, b))  # a @ b.T, oneDNN in inference mode
    best = float("inf")
    with torch.inference_mode():
        for kernel in kernels:
            kernel()
            for _ in range(repeats):
                _sync(device)
                t = time.perf_counter()
                kernel()
                _sync(device)
                best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _step_fn(model: nn.Module, x: torch.Tensor, train: bool, amp: bool, device: str) -> Callable[[], None]:
    dtype = torch.bfloat16
    autocast = (lambda: torch.autocast(torch.device(device).type, dtype=dtype)) if amp else contextlib.nullcontext
    if train:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)

        def step() -> None:
            with autocast():
                out = model(x)
                out = out[0] if isinstance(out, (tuple, list)) else out
                loss = out.float().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step
    model.eval()

    def infer() -> None:
        with torch.inference_mode(), autocast():
            model(x)

    return infer


def bench_models(
    builders: dict[str, Callable[[], nn.Module]],
    *,
    name: str,
    batch_size: int = 4,
    img_size: int = 224,
    train: bool = False,
    amp: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    device: str = "cpu",
    warmup: int = 3,
    rounds: int = 5,
    iters: int = 5,
    min_round_s: float = 0.5,
    gmacs: float = 0.0,
) -> list[BenchResult]:
    """Time each implementation in ``builders`` ({impl: constructor}), rounds interleaved.

    Each round runs ``iters`` steps of every implementation in turn, more for fast models
    (so that the slowest implementation's share of a round lasts ``min_round_s``), and odd
    rounds take the implementations in reverse order, so neither always runs first. The
    median round gives images/s and latency; :func:`paired_ratio` compares two implementations
    round by round.
    """
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    steps, times, mems = {}, {}, {}
    for impl, build in builders.items():
        model = build().to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if compile:
            model = torch.compile(model)
        steps[impl] = _step_fn(model, x, train, amp, device)
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step_s = float("inf")
        for _ in range(warmup):
            _sync(device)
            t = time.perf_counter()
            steps[impl]()
            _sync(device)
            step_s = min(step_s, time.perf_counter() - t)
        if warmup:  # the fastest warm-up step sets the count of steps per round
            iters = max(iters, math.ceil(min_round_s / max(step_s, 1e-6)))
        mems[impl] = torch.cuda.max_memory_allocated() / 2**20 if torch.device(device).type == "cuda" else None
        times[impl] = []
    for r in range(rounds):
        for impl, step in (list(steps.items()) if r % 2 == 0 else reversed(steps.items())):
            _sync(device)
            t = time.perf_counter()
            for _ in range(iters):
                step()
            _sync(device)
            times[impl].append((time.perf_counter() - t) / iters)
    results = []
    flops_per_img = 2 * gmacs * 1e9 * (3 if train else 1)
    for impl, ts in times.items():
        per_step = statistics.median(ts)
        ips = batch_size / per_step
        results.append(
            BenchResult(impl, name, "train" if train else "infer", batch_size, img_size, ips, per_step * 1e3,
                        mems[impl], gmacs, ips * flops_per_img / 1e9, [t * 1e3 for t in ts])
        )
    del steps
    gc.collect()
    return results
