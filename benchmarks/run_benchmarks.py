"""Write BENCHMARKS.md: visionzoo beside timm, one table per device.

Usage:
    python benchmarks/run_benchmarks.py [--device cpu|cuda] [--models NAME ...] [--batch-size 4]
        [--amp --channels-last] [--mode inference|train|both] [--malloc-fixed] [--output BENCHMARKS.md]

Each model is timed in the same process as timm's implementation of the same name, the
two alternating round by round (visionzoo.bench.bench_models). The ratio is the median of
the per-round ratios, with their quartiles (visionzoo.bench.paired_ratio: it holds up when
the machine drifts between rounds); img/s are each implementation's median round. Every
model gets a fresh process: what ran before does not change the row (glibc's malloc adapts
its mmap threshold to the frees it has seen, so a process that has run other models serves
large tensors from different memory than a fresh one). ``--malloc-fixed`` runs those processes
with glibc's mmap and trim thresholds set high (visionzoo.runtime.retain_freed_memory, what the
``visionzoo`` command does at start-up), so large tensors are reused instead of mapped fresh
(page faults) on every call; implementations that allocate many large temporaries gain the
most from it. On a CPU the fp32 GEMM peak is probed at the start of
every round (visionzoo.bench.peak_fraction), and the "% of GEMM peak" column is the median
over rounds of visionzoo's GFLOP/s over that round's probe. The table states the device, the torch version and
the date; an existing BENCHMARKS.md keeps its other tables (a section is replaced only by
a run on the same device and settings). ``--mode both`` writes the inference and the training
table in one run, each model's process timing inference first and then training (half the
process starts: on a lent GPU, where a process takes ~10 s to start, that decides whether
both tables fit the device time). The file is rewritten after every model, so a run that is
stopped keeps the rows it timed; until the last model is done, a table says how many it has.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import torch

import visionzoo
from visionzoo.bench import bench_models, device_description, paired_ratio, peak_fraction
from visionzoo.runtime import retain_freed_memory

# every family timm also implements (the GEMM-bound ones first; the ResNet and Inception
# families by their variants: hybrid ViT, ResNeXt, SE-ResNet, v3, v4, Inception-ResNet)
DEFAULT_MODELS = [
    "vit_base_patch16_224", "swin_tiny_patch4_window7_224", "convnext_tiny", "resnet50",
    "coatnet_0_224", "nest_tiny", "convmixer_768_32", "deit_small_patch16_224", "efficientnet_b0",
    "regnety_040", "densenet121", "mobilenetv2_100", "inception_v3", "vgg16",
    "vit_base_r50_s16_224", "resnext50_32x4d", "seresnet50", "hrnet_w18", "inception_v4",
    "inception_resnet_v2", "mobilenetv1_100", "swinv2_tiny_window8_256",
]


def _modes(args: argparse.Namespace) -> list[str]:
    return ["inference", "train"] if args.mode == "both" else [args.mode]


def bench_one(name: str, args: argparse.Namespace, mode: str) -> dict:
    """Time ``name`` beside timm's model of that name in this process; the row's numbers."""
    import timm

    size = visionzoo.registry.get_entry(name).default_cfg["input_size"][-1]
    gmacs = visionzoo.model_info(name)["gmacs"]
    ours, ref = bench_models(
        {"visionzoo": lambda: visionzoo.create_model(name), "timm": lambda: timm.create_model(name)},
        name=name, batch_size=args.batch_size, img_size=size, train=mode == "train", amp=args.amp,
        channels_last=args.channels_last, device=args.device, gmacs=gmacs, rounds=args.rounds, probe_peak=args.device == "cpu",
    )
    ratio, q1, q3 = paired_ratio(ours, ref)
    row = {"size": size, "gmacs": gmacs, "ours": ours.images_per_s, "timm": ref.images_per_s, "gflops": ours.gflops_per_s,
           "ratio": ratio, "q1": q1, "q3": q3}
    if ours.round_peak_gflops:
        row.update(peak=statistics.median(ours.round_peak_gflops), peak_frac=peak_fraction(ours)[0])
    return row


def bench_in_subprocess(name: str, args: argparse.Namespace) -> dict[str, dict]:
    """{mode: :func:`bench_one`'s row} from a fresh Python process."""
    cmd = [sys.executable, __file__, "--worker", name, "--device", args.device, "--batch-size", str(args.batch_size),
           "--rounds", str(args.rounds), "--mode", args.mode]
    cmd += [flag for flag, on in (("--amp", args.amp), ("--channels-last", args.channels_last), ("--malloc-fixed", args.malloc_fixed)) if on]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark of {name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    import timm

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--mode", choices=("inference", "train", "both"), default="inference",
                   help="inference, training steps (forward + backward + SGD step), or both tables from one run")
    p.add_argument("--train", action="store_true", help="the same as --mode train")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--malloc-fixed", action="store_true", help="freed memory kept for reuse, as the visionzoo command does (see above)")
    p.add_argument("--output", default="BENCHMARKS.md")
    p.add_argument("--update-rows", action="store_true",
                   help="re-run only --models and replace their rows in the existing table (noted under its header)")
    p.add_argument("--worker", metavar="NAME", help=argparse.SUPPRESS)  # internal: time one model, print JSON
    args = p.parse_args()
    if args.train:
        if args.mode == "both":
            raise SystemExit("--train is --mode train; give one of --train and --mode both")
        args.mode = "train"
    if args.worker:
        if args.malloc_fixed and not retain_freed_memory():
            raise SystemExit("--malloc-fixed: the C library here is not glibc")
        print(json.dumps({mode: bench_one(args.worker, args, mode) for mode in _modes(args)}))
        return

    if args.device not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available here")
    if args.batch_size < 1 or args.rounds < 1:
        raise SystemExit(f"--batch-size and --rounds must be at least 1, got {args.batch_size} and {args.rounds}")
    registered = set(visionzoo.list_models())
    models = args.models or DEFAULT_MODELS
    unknown = [m for m in models if m not in registered or not timm.is_model(m)]
    if unknown:  # before anything is timed or written: a typo must not empty a table
        raise SystemExit(f"not a model that both visionzoo and timm have: {', '.join(unknown)}")
    peak = args.device == "cpu"  # the fp32 GEMM peak, probed in every round beside the models
    opts = ", ".join(o for o, on in (("bf16", args.amp), ("channels_last", args.channels_last)) if on) or "fp32"
    if args.malloc_fixed:
        opts += ", glibc malloc thresholds fixed"
    titles = {mode: f"## {device_description(args.device)} — {mode}, {opts}, batch {args.batch_size}" for mode in _modes(args)}
    header = "| model | input | GMACs | visionzoo img/s | timm img/s | ratio | ratio quartiles | visionzoo GFLOP/s" + (" | GEMM peak GFLOP/s | % of GEMM peak |" if peak else " |")
    out = Path(args.output)
    original = out.read_text() if out.exists() else "# Benchmarks\n\nWritten by `benchmarks/run_benchmarks.py`.\n\n"
    if args.update_rows:  # the tables and their rows must exist, with these columns, before anything is timed
        for title in titles.values():
            section = _find_section(out, title)
            if header not in section.splitlines():
                raise SystemExit(f"--update-rows: the table '{title}' has other columns than this script writes; re-run it whole")
            _update_rows(section, [f"| {m} | " for m in models], "")
    run_line = (f"torch {torch.__version__}, timm {timm.__version__}, {dt.date.today().isoformat()}"
                + ("; % of GEMM peak: the median over rounds of visionzoo's GFLOP/s over the fp32 GEMM peak probed in the same round"
                   " (GEMM peak: the median of those probes)" if peak else ""))
    results: dict[str, dict[str, dict]] = {mode: {} for mode in titles}
    failed: dict[str, str] = {}
    for i, name in enumerate(models):  # a model that fails is reported, and the others still get their rows
        try:
            rows = bench_in_subprocess(name, args)
        except RuntimeError as e:
            failed[name] = str(e).strip().splitlines()[-1]
            print(f"{name}: FAILED: {failed[name]}", flush=True)
        else:
            for mode, r in rows.items():
                results[mode][name] = r
                print(f"{name} ({mode}): visionzoo {r['ours']:.1f} img/s, timm {r['timm']:.1f} img/s, "
                      f"ratio {r['ratio']:.2f} ({r['q1']:.2f}-{r['q3']:.2f})", flush=True)
        if any(results.values()):  # after every model: a run stopped part way keeps what it timed
            text = original
            for mode, title in titles.items():
                lines = _table(title, run_line, header, results[mode], peak, failed, pending=len(models) - i - 1)
                if args.update_rows:  # only the rows timed so far change; failures and the rest keep their old rows
                    section = _update_rows(_find_section(out, title, original), [ln for ln in lines[6:] if ln.startswith("| ")], run_line)
                else:
                    section = "\n".join(lines) + "\n"
                text = _put_section(text, title, section)
            out.write_text(text)
    if not any(results.values()):
        raise SystemExit(f"every model failed; {args.output} is left as it was")
    print(f"wrote {out}")
    if failed:
        raise SystemExit(f"{len(failed)} of {len(models)} models failed: {', '.join(failed)}")


def _table(title: str, run_line: str, header: str, results: dict[str, dict], peak: bool, failed: dict[str, str], pending: int) -> list[str]:
    """The lines of one table: title, run line, header, a row per timed model, then what failed
    and, while models are still to come, how many rows the table has so far."""
    lines = [title, "", run_line, "", header, "|" + "---|" * (header.count("|") - 1)]
    for name, r in results.items():
        row = f"| {name} | {r['size']} | {r['gmacs']:.2f} | {r['ours']:.1f} | {r['timm']:.1f} | {r['ratio']:.2f} | {r['q1']:.2f}-{r['q3']:.2f} | {r['gflops']:.0f}"
        lines.append(row + (f" | {r['peak']:.0f} | {100 * r['peak_frac']:.0f}% |" if peak else " |"))
    notes = [f"Failed: {name}: {why}" for name, why in failed.items()]
    if pending:
        notes.append(f"Partial: {len(results)} rows so far, {pending} models still to run (a run stopped here has no more).")
    return lines + ([""] + notes if notes else [])


def _put_section(text: str, title: str, section: str) -> str:
    """``text`` with the section titled ``title`` replaced by ``section``, or ``section`` appended."""
    pattern = _section_pattern(title)
    return pattern.sub(lambda _: section.rstrip("\n") + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section


def _section_pattern(title: str) -> re.Pattern:
    return re.compile(re.escape(title) + r"\n.*?(?=\n## |\Z)", re.DOTALL)


def _find_section(out: Path, title: str, text: str | None = None) -> str:
    if text is None:
        text = out.read_text() if out.exists() else ""
    found = _section_pattern(title).search(text)
    if found is None:
        raise SystemExit(f"--update-rows: {out} has no table '{title}' to update")
    return found.group(0)


_RERUN = re.compile(r"Rows re-run later \((.*?)\): (.*)")


def _update_rows(section: str, rows: list[str], run_line: str) -> str:
    """``section`` with the rows of the models in ``rows`` replaced, and a line saying when.

    Each "Rows re-run later (models): run" line names the rows that run wrote and still
    stand: a model timed again leaves its older line (a line left with no model goes), and
    rows timed by runs with the same run line share one line.
    """
    new = {row.split(" | ", 1)[0]: row for row in rows}
    missing = sorted(set(new) - {line.split(" | ", 1)[0] for line in section.splitlines()})
    if missing:
        raise SystemExit(f"--update-rows: no rows for {', '.join(m[2:] for m in missing)} in the table")
    names = [name[2:] for name in new]
    reruns: dict[str, list[str]] = {}  # run line -> the models whose rows it wrote, oldest run first
    lines, out = section.splitlines(), []
    for i, line in enumerate(lines):
        found = _RERUN.fullmatch(line)
        if found:
            run = reruns.setdefault(found.group(2), [])
            run.extend(m for m in found.group(1).split(", ") if m not in names and m not in run)
        elif line.startswith("| "):
            out.append(new.get(line.split(" | ", 1)[0], line))
        elif not (line == "" and i and _RERUN.fullmatch(lines[i - 1])):  # the blank line after a re-run line goes with it
            out.append(line)
    run = reruns.setdefault(run_line, [])
    run.extend(m for m in names if m not in run)
    at = next(i for i, line in enumerate(out) if line.startswith("| model"))
    out[at:at] = [part for when, models in reruns.items() if models for part in (f"Rows re-run later ({', '.join(models)}): {when}", "")]
    return "\n".join(out) + ("\n" if section.endswith("\n") else "")


if __name__ == "__main__":
    main()
