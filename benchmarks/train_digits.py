"""`visionzoo train` with no arguments, timed: held-out top-1 on scikit-learn's digits and training seconds.

Usage:
    python benchmarks/train_digits.py [--threads 2] [--seeds 0 1 2] [--output runs/bench-digits]

Runs the default (a 4-block ConvMixer of width 64, 5x5 depthwise kernels, channels-last, on 16x16
upsampled digits, 10 epochs, fixed
stratified 20 % held-out split) with torch limited to ``--threads`` threads and prints, per seed,
the held-out top-1 / top-5 and the seconds spent in training steps (evaluation and checkpoint
writing excluded), the process's CPU seconds and the load average. The goal is >= 99 % top-1 in <= 60 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--output", default="runs/bench-digits")
    ap.add_argument("--epochs", type=int, default=None, help="default: the CLI's default (10)")
    args = ap.parse_args()
    if args.threads < 1 or (args.epochs is not None and args.epochs < 1):
        ap.error(f"--threads and --epochs must be at least 1, got {args.threads} and {args.epochs}")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from visionzoo.train import TrainConfig, train

    top1s, secs = [], []
    for seed in args.seeds:
        out = f"{args.output}-seed{seed}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = TrainConfig(seed=seed, output=out, progress="none")
        if args.epochs is not None:
            cfg.epochs = args.epochs
        t0, c0 = time.perf_counter(), time.process_time()
        s = train(cfg)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        top1s.append(s["top1"])
        secs.append(s["train_seconds"])
        print(f"seed {seed}: top-1 {s['top1']:.4f} ({round(s['top1'] * s['heldout_images'])}/{s['heldout_images']}), "
              f"top-5 {s['top5']:.4f}, train {s['train_seconds']:.1f} s, wall {wall:.1f} s, "
              f"CPU {cpu:.1f} s (all threads; on a busy machine wall time overstates the cost), load {os.getloadavg()[0]:.1f}, "
              f"{s['model']} {s['overrides']} {s['params']} params, threads {torch.get_num_threads()}", flush=True)
    if len(args.seeds) > 1:
        print(f"mean top-1 {statistics.mean(top1s):.4f} (min {min(top1s):.4f}), mean train {statistics.mean(secs):.1f} s (max {max(secs):.1f} s)")


if __name__ == "__main__":
    main()
