"""Where visionzoo and timm spend a step: the operators (or GPU kernels) of one model, side by side.

Usage:
    python benchmarks/profile_pair.py NAME [NAME ...] [--device cpu|cuda] [--batch-size 4]
        [--amp --channels-last] [--train] [--steps 5] [--top 15]

For each model both implementations run the same steps as ``benchmarks/run_benchmarks.py``
times (visionzoo.bench.prepare_step), after warm-up, under torch.profiler. Printed per
implementation: the wall time per step, the time per step on the device (the CUDA kernels
on a GPU, the CPU operators' self time otherwise) and the ``--top`` kernels or operators by
that time, with their calls per step. On a GPU a wall time well above the kernels' time says
the step is bound by the CPU launching them (Python and dispatch), not by the GPU. It answers "which kernels make the slower one slower" when a
row of BENCHMARKS.md is below timm; it does not replace the paired timing of that script.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import visionzoo
from visionzoo.bench import prepare_step


def profile_impl(build, x: torch.Tensor, args: argparse.Namespace) -> tuple[float, float, list[tuple[str, float, int]]]:
    """(wall ms per step, device ms per step, [(operator, ms per step, calls per step)] by time)."""
    cuda = x.device.type == "cuda"
    _, step = prepare_step(build, x, train=args.train, amp=args.amp, channels_last=args.channels_last)
    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize(x.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        if cuda:
            torch.cuda.synchronize(x.device)
        wall = (time.perf_counter() - t) / args.steps * 1e3
    rows = []
    for e in prof.key_averages():
        if cuda and e.device_type != DeviceType.CUDA:
            continue  # an operator's device time is its kernels' time: count each kernel once
        self_us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if self_us > 0:
            rows.append((e.key, self_us / 1e3 / args.steps, round(e.count / args.steps)))
    rows.sort(key=lambda r: -r[1])
    return wall, sum(r[1] for r in rows), rows


def main() -> None:
    import timm

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--train", action="store_true", help="forward + backward + SGD step (default: inference)")
    p.add_argument("--steps", type=int, default=5, help="profiled steps per implementation")
    p.add_argument("--top", type=int, default=15, help="operators listed per implementation")
    args = p.parse_args()
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        raise SystemExit(f"--device must be cpu, or cuda on a machine with a CUDA GPU; got {args.device!r}")
    if min(args.batch_size, args.steps, args.top) < 1:
        raise SystemExit("--batch-size, --steps and --top must be at least 1")
    unknown = [m for m in args.models if m not in visionzoo.list_models() or not timm.is_model(m)]
    if unknown:
        raise SystemExit(f"not a model that both visionzoo and timm have: {', '.join(unknown)}")
    where = "device (CUDA kernels)" if args.device == "cuda" else "CPU operators"
    for name in args.models:
        size = visionzoo.registry.get_entry(name).default_cfg["input_size"][-1]
        x = torch.randn(args.batch_size, 3, size, size, device=args.device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        print(f"== {name}, {'train' if args.train else 'inference'}, batch {args.batch_size}, {size}px, "
              f"{'bf16' if args.amp else 'fp32'}{', channels_last' if args.channels_last else ''}, {args.device}")
        for impl, build in (("visionzoo", lambda: visionzoo.create_model(name)), ("timm", lambda: timm.create_model(name))):
            wall, total, rows = profile_impl(build, x, args)
            print(f"-- {impl}: {wall:.2f} ms per step wall, {total:.2f} ms per step self time on the {where}")
            for key, ms, calls in rows[: args.top]:
                print(f"   {ms:9.3f} ms  {100 * ms / total:5.1f}%  x{calls:<4d} {key[:110]}")
        print(flush=True)


if __name__ == "__main__":
    main()
