"""Time the two CPU inference paths of ``visionzoo.layers.linear`` side by side.

Usage:
    python benchmarks/linear_paths.py [--threads 2] [--rounds 10]

For the linear-layer shapes of ViT-B/16, Swin-T and ConvNeXt-T at batch 4 it prints the
GFLOP/s of PyTorch's ``F.linear`` (BLAS GEMM, then the activation as another pass) and of
oneDNN's inner product with the activation fused, without and with GELU. The two alternate
round by round and the median is reported. Whether the oneDNN path wins depends on the CPU;
this is the measurement behind its default (on only where PyTorch reports AVX-512).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# (tokens at batch 4, in features, out features, model)
SHAPES = [
    (4 * 197, 768, 2304, "ViT-B qkv"), (4 * 197, 768, 3072, "ViT-B fc1"), (4 * 197, 3072, 768, "ViT-B fc2"),
    (4 * 3136, 96, 288, "Swin-T s1 qkv"), (4 * 3136, 96, 384, "Swin-T s1 fc1"), (4 * 3136, 384, 96, "Swin-T s1 fc2"),
    (4 * 784, 192, 768, "ConvNeXt-T s2 fc1"), (4 * 196, 1536, 384, "ConvNeXt-T s3 fc2"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    if args.threads < 1 or args.rounds < 1:
        ap.error(f"--threads and --rounds must be at least 1, got {args.threads} and {args.rounds}")
    torch.set_num_threads(args.threads)
    kernel = torch.ops.mkldnn._linear_pointwise
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads")
    print(f"{'layer':20s} {'M':>6s} {'K':>5s} {'N':>5s} | GFLOP/s: {'F.linear':>9s} {'oneDNN':>7s} | {'+GELU':>6s} {'oneDNN+GELU':>12s}")
    g = torch.Generator().manual_seed(0)
    for m, k, n, label in SHAPES:
        x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        paths = {
            "blas": lambda: F.linear(x, w, b),
            "onednn": lambda: kernel(x, w, b, "none", [], ""),
            "blas_gelu": lambda: F.gelu(F.linear(x, w, b)),
            "onednn_gelu": lambda: kernel(x, w, b, "gelu", [], "none"),
        }
        times: dict[str, list[float]] = {p: [] for p in paths}
        with torch.inference_mode():
            for fn in paths.values():
                fn()
            for r in range(args.rounds):
                for p in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
                    t0 = time.perf_counter()
                    paths[p]()
                    times[p].append(time.perf_counter() - t0)
        gf = {p: 2 * m * k * n / statistics.median(v) / 1e9 for p, v in times.items()}
        print(f"{label:20s} {m:6d} {k:5d} {n:5d} | {'':8s} {gf['blas']:9.0f} {gf['onednn']:7.0f} | {gf['blas_gelu']:6.0f} {gf['onednn_gelu']:12.0f}")


if __name__ == "__main__":
    main()
