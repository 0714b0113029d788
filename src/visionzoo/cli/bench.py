"""``visionzoo bench``: images/s, latency, memory and achieved GFLOP/s, optionally beside timm."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

from . import CLIError, check_device, check_img_size, count, no_model_matches


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from ..bench import bench_models, device_description, paired_ratio, peak_fraction
    from ..factory import create_model, model_info
    from ..registry import get_entry, list_models
    from ..runtime import MALLOC_ENV, memory_retained

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be positive, got {args.batch_size}")
    check_img_size(args.img_size)
    for flag, value, least in (("--rounds", args.rounds, 1), ("--iters", args.iters, 1), ("--warmup", args.warmup, 0)):
        if value < least:
            raise CLIError(f"{flag} must be at least {least}, got {value}")
    check_device(args.device)
    timm = None
    if args.compare:
        if args.compare != "timm":
            raise CLIError(f"--compare supports 'timm' only, got {args.compare!r}")
        try:
            import timm  # noqa: F811  (optional: only for the side-by-side comparison)
        except ImportError:
            raise CLIError("--compare timm needs timm installed (pip install timm)") from None
    names = []
    for pattern in args.names:  # wildcards as in `visionzoo list`; unknown names fail before any timing
        matched = list_models(pattern) if any(c in pattern for c in "*?[") else [get_entry(pattern).name]
        if not matched:
            raise no_model_matches(pattern)
        names += [n for n in matched if n not in names]
    sizes = {name: args.img_size or get_entry(name).default_cfg["input_size"][-1] for name in names}
    gmacs = {name: model_info(name, img_size=sizes[name])["gmacs"] for name in names}  # and sizes a model refuses
    print(f"device {args.device}: {device_description(args.device)}; torch {torch.__version__}")
    precision = "bf16 autocast" if args.amp else "fp32"
    layout = ", channels_last" if args.channels_last else ""
    print(f"{'training steps (forward + backward + SGD step)' if args.train else 'inference (eval, inference_mode)'}, batch {args.batch_size}, "
          f"{precision}{layout}{', torch.compile' if args.compile else ''}; {count(args.rounds, 'round')} of at least {count(args.iters, 'step')} after {count(args.warmup, 'warm-up step')}"
          + (" (a round of a fast model runs more: at least 0.5 s of steps per implementation)" if args.warmup else ""))
    print("GMACs: per image, forward; GFLOP/s: 2 x GMACs x img/s" + (" x 3 (forward + backward)" if args.train else ""))
    retained = memory_retained()
    if args.device == "cpu":  # (host memory: what the C library does with freed activations)
        print(f"malloc: freed memory kept for reuse (blocks up to {retained[0] >> 20} MiB, up to {retained[1] >> 20} MiB free; {MALLOC_ENV}=default turns this off)"
              if retained else f"malloc: left as the process had it ({MALLOC_ENV}=default or not glibc; freed memory may go back to the OS between steps)")
    if args.warmup == 0:
        print("note: --warmup 0 times the first steps too (weight packing, caches, allocator growth)")
    peak = args.device == "cpu"  # the fp32 GEMM peak, probed in every round beside the models
    if peak:
        print("%peak: the median over rounds of a model's GFLOP/s over the fp32 GEMM peak probed in the same round"
              + (" (an fp32 peak: bf16 runs may exceed it)" if args.amp else ""))
    width = max(34, *(len(n) for n in names))  # the model column fits the longest name (Swin-MLP's are 36)
    header = f"{'model':<{width}} {'impl':<9} {'mode':<6} {'input':>5} {'img/s':>9} {'ms/step':>9} {'GMACs':>7} {'GFLOP/s':>9}"
    header += f" {'%peak':>6}" if peak else f" {'MiB':>8}"
    print(header)
    for name in names:
        size = sizes[name]
        builders = {"visionzoo": lambda n=name, s=size: create_model(n, img_size=s)}
        if timm is not None:
            if not timm.is_model(name):
                print(f"{name}: timm has no model of this name; timing visionzoo alone")
            else:
                model, why = _checked(_timm_builder(timm, name, size), size, args.device)
                if why is not None:
                    print(f"{name}: timm's model does not run at {size}x{size} ({why}); timing visionzoo alone")
                else:
                    builders["timm"] = lambda m=model: m
        try:
            results = bench_models(
                builders, name=name, batch_size=args.batch_size, img_size=size, train=args.train, amp=args.amp,
                channels_last=args.channels_last, compile=args.compile, device=args.device, gmacs=gmacs[name],
                warmup=args.warmup, rounds=args.rounds, iters=args.iters, probe_peak=peak,
            )
        except Exception as e:
            if args.train and "Expected more than 1 value per channel when training" in str(e):
                raise CLIError(f"{name}: a BatchNorm layer got one value per channel in training (batch {args.batch_size} at "
                               f"{size}x{size}: a 1x1 map), which it cannot normalise; give a --batch-size of 2 or more, or a larger --img-size") from None
            if not args.compile:
                raise
            # inductor needs a working C++ compiler (CPU) or Triton (GPU); its errors run to pages
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise CLIError(f"torch.compile failed for {name}: {first[:300]}") from None
        for r in results:
            line = f"{r.name:<{width}} {r.impl:<9} {r.mode:<6} {size:>5} {r.images_per_s:>9.1f} {r.latency_ms:>9.1f} {r.gmacs:>7.2f} {r.gflops_per_s:>9.1f}"
            line += f" {100 * peak_fraction(r)[0]:>5.0f}%" if peak else f" {r.peak_mem_mb or 0:>8.0f}"
            print(line)
        if peak:
            probes = sorted(results[0].round_peak_gflops)
            print(f"{name:<{width}} GEMM peak probed in each round: median {statistics.median(probes):.1f} GFLOP/s (range {probes[0]:.1f}-{probes[-1]:.1f})")
        if len(results) == 2:
            ratio, q1, q3 = paired_ratio(*results)
            faster = "visionzoo faster" if ratio > 1 else "timm faster" if ratio < 1 else "equal"
            print(f"{name:<{width}} speed-up of visionzoo over timm = {ratio:.3f} ({faster}; timm's time per step over visionzoo's, "
                  f"median of {len(results[0].round_ms)} per-round ratios; quartiles {q1:.3f}-{q3:.3f})")
    return 0


def _timm_builder(timm, name: str, size: int):
    """timm's model of ``name`` built for ``size`` where its constructor takes img_size (CNNs don't)."""

    def build():
        try:
            return timm.create_model(name, img_size=size)
        except TypeError:
            return timm.create_model(name)

    return build


def _checked(build: Callable[[], Any], size: int, device: str) -> tuple[Any, str | None]:
    """(the model ``build()`` makes, None) where it runs an image of ``size`` on ``device``;
    (None, why it cannot, in one line) otherwise. timm's models refuse some sizes that ours
    take (its CoAtNet 48 or 100 px), from deep inside the model: without this check the run
    would end there with a traceback. The model that ran is the one timed (it was built twice,
    a large model's construction and memory spent again): one image in eval and inference
    mode leaves nothing in it, and what a first run warms (the allocator, oneDNN's and cuDNN's
    caches) is the process's, warmed as much by a model thrown away."""
    import torch

    try:
        model = build().to(device).eval()
        with torch.inference_mode():
            model(torch.randn(1, 3, size, size, device=device))
    except Exception as e:  # any error of the other library's: its comparison is left out, not the run
        first = next((line for line in str(e).splitlines() if line.strip()), "no details")
        return None, f"{type(e).__name__}: {first[:200]}"
    return model, None


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after each option's help, except where the help names its
    default itself or there is none to show (None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput / latency / memory, optionally beside timm", formatter_class=_DefaultsHelp)
    p.add_argument("names", nargs="+", metavar="NAME", help="model names; wildcards as in `visionzoo list` ('resnet*')")
    p.add_argument("--batch-size", type=int, default=4, help="images per step")
    p.add_argument("--img-size", type=int, default=None, help="input side in pixels (default: each model's)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--channels-last", action="store_true", help="model and input in channels-last memory")
    p.add_argument("--compile", action="store_true", help="torch.compile both implementations")
    p.add_argument("--train", action="store_true", help="time training steps: forward + backward + optimizer step")
    p.add_argument("--compare", default=None, metavar="timm", help="time timm's implementation alongside and print visionzoo's speed-up")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per implementation first")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (implementations alternate)")
    p.add_argument("--iters", type=int, default=5, help="least steps per round")
    p.set_defaults(func=cmd_bench)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False
