"""Throughput, latency and memory of models, optionally side by side with timm.

``visionzoo bench`` uses this module. With ``compare="timm"`` timm's implementation of
the same architecture (same name) is timed in the same process, alternating rounds with
ours, so that both see the same machine state; the ratio reported is visionzoo's speed-up,
timm's time per step over ours (above 1: visionzoo is faster).
timm is imported only then (it is an optional, test-time dependency). With
``probe_peak`` every round also times a large GEMM, and :func:`peak_fraction` gives the share
of that round's GEMM throughput a model reached.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["BenchResult", "bench_models", "device_description", "gemm_peak_gflops", "paired_ratio", "peak_fraction", "prepare_step"]


@dataclass
class BenchResult:
    impl: str
    name: str
    mode: str
    batch_size: int
    img_size: int
    images_per_s: float
    latency_ms: float
    peak_mem_mb: float | None  # CUDA: parameters and buffers plus one step's peak (_peak_memory); None on a CPU
    gmacs: float
    gflops_per_s: float
    round_ms: list[float]  # time per step in each round, in the order the rounds ran
    round_peak_gflops: list[float] | None = None  # the GEMM probe's GFLOP/s in each round (``probe_peak``)

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
    return _median_quartiles([tb / ta for ta, tb in zip(a.round_ms, b.round_ms)])


def peak_fraction(r: BenchResult) -> tuple[float, float, float]:
    """The share of the machine's GEMM throughput ``r`` reached: the median, lower and upper
    quartile over rounds of its GFLOP/s in a round over the GEMM probe's in the same round.

    The probe runs beside the models in every round (``bench_models(probe_peak=True)``), so
    a machine that slows down or speeds up while a table is written changes both alike; a
    peak probed once, before or after, would set a model's rounds against another moment.
    """
    if not r.round_peak_gflops or len(r.round_peak_gflops) != len(r.round_ms):
        raise ValueError(f"{r.impl} {r.name}: no GEMM peak was probed in its rounds (bench_models(probe_peak=True))")
    per_img = _gflop_per_image(r.gmacs, r.mode == "train")
    return _median_quartiles([r.batch_size / (ms / 1e3) * per_img / peak for ms, peak in zip(r.round_ms, r.round_peak_gflops)])


def device_description(device: str | torch.device) -> str:
    """The GPU's name, or the CPU's model name with its vector ISA and the thread count.

    The ISA is stated because one CPU model name covers hosts with and without AVX-512,
    whose kernels (and visionzoo's defaults, see :mod:`visionzoo.layers.linear`) differ.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads"


def _median_quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return median, q1, q3


def _gflop_per_image(gmacs: float, train: bool) -> float:
    """GFLOP of one image's step: 2 per MAC, and a backward pass of twice the forward's in training."""
    return 2 * gmacs * (3 if train else 1)


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


class _PeakProbe:
    """:func:`gemm_peak_gflops` on call, run by a Python process of its own that waits between calls.

    Not in the benchmark's process: each probe allocates and frees 16 MB matrices, and glibc's
    malloc raises its mmap and trim thresholds after such frees, which would change how the
    models' own large tensors are served (page faults) from that round on.
    """

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # this process's visionzoo
        code = f"import visionzoo.bench as b; b._probe_server({torch.get_num_threads()})"
        self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)

    def __call__(self, repeats: int) -> float:
        self._proc.stdin.write(f"{repeats}\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the GEMM peak probe's process ended (exit code {self._proc.wait()})")
        return float(line)

    def close(self) -> None:
        self._proc.stdin.close()  # end of input: the process returns
        self._proc.wait(timeout=30)
        self._proc.stdout.close()


def _probe_server(threads: int) -> None:
    """The loop of :class:`_PeakProbe`'s process: a count of repeats in, GFLOP/s out."""
    torch.set_num_threads(threads)
    for line in sys.stdin:
        print(gemm_peak_gflops(repeats=int(line)), flush=True)


def _sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def prepare_step(build: Callable[[], nn.Module], x: torch.Tensor, *, train: bool = False, amp: bool = False,
                 channels_last: bool = False, compile: bool = False) -> tuple[nn.Module, Callable[[], None]]:
    """(model, step): ``build()`` moved to ``x``'s device (channels-last, compiled where asked),
    and one benchmark step of it on ``x`` as a call: inference (eval, inference_mode) or, with
    ``train``, forward + backward + an SGD step; under bf16 autocast with ``amp``."""
    model = build().to(x.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return model, _step_fn(model, x, train, amp, x.device.type)


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


def _peak_memory(steps: dict[str, Callable[[], None]], weights: dict[str, int], device: str) -> dict[str, float | None]:
    """MiB each implementation needs on a CUDA device: its parameters and buffers plus the peak
    that one more step allocates on top of what is held before it (activations, gradients,
    workspace). Measured after every implementation has warmed up, so the libraries' lasting
    workspaces (cuBLAS, cuDNN), made by whichever ran first, count for neither. None on a CPU."""
    if torch.device(device).type != "cuda":
        return dict.fromkeys(steps)
    mems = {}
    for impl, step in steps.items():
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        mems[impl] = (weights[impl] + torch.cuda.max_memory_allocated(device) - held) / 2**20
    return mems


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
    probe_peak: bool = False,
) -> list[BenchResult]:
    """Time each implementation in ``builders`` ({impl: constructor}), rounds interleaved.

    Each round runs ``iters`` steps of every implementation in turn, more for fast models
    (so that the slowest implementation's share of a round lasts ``min_round_s``), and odd
    rounds take the implementations in reverse order, so neither always runs first. The
    median round gives images/s and latency; :func:`paired_ratio` compares two implementations
    round by round. With ``probe_peak`` (CPU only) each round starts with the GEMM probe of
    :func:`gemm_peak_gflops` (best of 3), run by a process of its own, for :func:`peak_fraction`.
    """
    if rounds < 1 or iters < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"need rounds >= 1, iters >= 1, warmup >= 0 and batch_size >= 1, got {rounds}, {iters}, {warmup}, {batch_size}")
    if probe_peak and torch.device(device).type != "cpu":
        raise ValueError(f"probe_peak measures the fp32 GEMM peak of the CPU; the device is {device}")
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    steps, times, weights = {}, {}, {}
    for impl, build in builders.items():
        model, steps[impl] = prepare_step(build, x, train=train, amp=amp, channels_last=channels_last, compile=compile)
        weights[impl] = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        step_s = float("inf")
        for _ in range(warmup):
            _sync(device)
            t = time.perf_counter()
            steps[impl]()
            _sync(device)
            step_s = min(step_s, time.perf_counter() - t)
        if warmup:  # the fastest warm-up step sets the count of steps per round
            iters = max(iters, math.ceil(min_round_s / max(step_s, 1e-6)))
        times[impl] = []
    probe, peaks = (_PeakProbe(), []) if probe_peak else (None, None)
    try:
        if probe is not None:
            probe(1)  # returns once the probe's process is up, before anything is timed
        for r in range(rounds):
            if probe is not None:
                peaks.append(probe(3))
            for impl, step in (list(steps.items()) if r % 2 == 0 else reversed(steps.items())):
                _sync(device)
                t = time.perf_counter()
                for _ in range(iters):
                    step()
                _sync(device)
                times[impl].append((time.perf_counter() - t) / iters)
    finally:
        if probe is not None:
            probe.close()
    mems = _peak_memory(steps, weights, device)
    results = []
    for impl, ts in times.items():
        per_step = statistics.median(ts)
        ips = batch_size / per_step
        results.append(
            BenchResult(impl, name, "train" if train else "infer", batch_size, img_size, ips, per_step * 1e3,
                        mems[impl], gmacs, ips * _gflop_per_image(gmacs, train), [t * 1e3 for t in ts], peaks)
        )
    del steps
    gc.collect()
    return results
