"""Write BENCHMARKS.md: visionzoo beside timm, one table per device.

Usage:
    python benchmarks/run_benchmarks.py [--device cpu|cuda] [--models NAME ...] [--batch-size 4]
        [--amp --channels-last] [--train] [--output BENCHMARKS.md]

Each model is timed in the same process as timm's implementation of the same name, the
two alternating round by round (visionzoo.bench.bench_models). The table states the
device, the torch version and the date; an existing BENCHMARKS.md keeps its other
devices' tables (a section is replaced only by a run on the same device and settings).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import re
from pathlib import Path

import torch

import visionzoo
from visionzoo.bench import bench_models, gemm_peak_gflops

# one representative per family that timm also implements (the GEMM-bound ones first)
DEFAULT_MODELS = [
    "vit_base_patch16_224", "swin_tiny_patch4_window7_224", "convnext_tiny", "resnet50",
    "coatnet_0_224", "nest_tiny", "convmixer_768_32", "deit_small_patch16_224", "efficientnet_b0",
    "regnety_040", "densenet121", "mobilenetv2_100", "inception_v3", "vgg16",
]


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def main() -> None:
    import timm

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--train", action="store_true")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--output", default="BENCHMARKS.md")
    args = p.parse_args()

    registered = set(visionzoo.list_models())
    models = [m for m in (args.models or DEFAULT_MODELS) if m in registered and timm.is_model(m)]
    peak = gemm_peak_gflops(device=args.device) if args.device == "cpu" else None
    mode = "train" if args.train else "inference"
    opts = ", ".join(o for o, on in (("bf16", args.amp), ("channels_last", args.channels_last)) if on) or "fp32"
    title = f"## {device_name(args.device)} — {mode}, {opts}, batch {args.batch_size}"
    lines = [
        title, "",
        f"torch {torch.__version__}, timm {timm.__version__}, {dt.date.today().isoformat()}"
        + (f"; measured fp32 GEMM peak {peak:.0f} GFLOP/s" if peak else ""), "",
        "| model | input | GMACs | visionzoo img/s | timm img/s | ratio | visionzoo GFLOP/s" + (" | % of GEMM peak |" if peak else " |"),
        "|---|---|---|---|---|---|---" + ("|---|" if peak else "|"),
    ]
    for name in models:
        size = visionzoo.registry.get_entry(name).default_cfg["input_size"][-1]
        gmacs = visionzoo.model_info(name)["gmacs"]
        res = bench_models(
            {"visionzoo": lambda n=name: visionzoo.create_model(n), "timm": lambda n=name: timm.create_model(n)},
            name=name, batch_size=args.batch_size, img_size=size, train=args.train, amp=args.amp,
            channels_last=args.channels_last, device=args.device, gmacs=gmacs, rounds=args.rounds,
        )
        ours, ref = res
        row = f"| {name} | {size} | {gmacs:.2f} | {ours.images_per_s:.1f} | {ref.images_per_s:.1f} | {ours.images_per_s / ref.images_per_s:.2f} | {ours.gflops_per_s:.0f}"
        row += f" | {100 * ours.gflops_per_s / peak:.0f}% |" if peak else " |"
        lines.append(row)
        print(row, flush=True)
    section = "\n".join(lines) + "\n"
    out = Path(args.output)
    text = out.read_text() if out.exists() else "# Benchmarks\n\nWritten by `benchmarks/run_benchmarks.py`.\n\n"
    pattern = re.compile(re.escape(title) + r"\n.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(section.rstrip("\n"), text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
