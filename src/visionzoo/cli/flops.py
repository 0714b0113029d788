"""``visionzoo flops``: multiply-adds per stage and per kind of layer, or a table of models."""

from __future__ import annotations

import argparse
import json

from . import CLIError, check_img_size, no_model_matches
from .models import paper_gmacs, report_unfit


def _fmt(v: object, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _table(args: argparse.Namespace) -> int:
    from ..analysis import flops_table

    unfit: list[tuple[str, str]] = []
    rows = flops_table(args.table, img_size=args.img_size, unfit=unfit)
    if not rows:
        raise no_model_matches(args.table)
    report_unfit(unfit, args.img_size)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    paper = max(7, *(len(paper_gmacs(r)) for r in rows))
    print(f"{'model':<{width}}  {'input':>7}  {'params M':>9}  {'paper':>7}  {'GMACs':>8}  {'paper':>{paper}}  {'top-1':>6}")
    for r in rows:
        size = f"{r['input_size'][1]}x{r['input_size'][2]}"
        print(
            f"{r['name']:<{width}}  {size:>7}  {r['params_m']:9.2f}  {_fmt(r['published_params_m'], '7.1f'):>7}"
            f"  {r['gmacs']:8.3f}  {paper_gmacs(r):>{paper}}  {_fmt(r['published_top1'], '6.1f'):>6}"
        )
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    check_img_size(args.img_size)
    if args.table is not None:
        if args.name:
            raise CLIError("give a model name or --table PATTERN, not both")
        return _table(args)
    if not args.name:
        raise CLIError("give a model name, or --table PATTERN for a table")
    from ..analysis import flops_breakdown

    b = flops_breakdown(args.name, img_size=args.img_size)
    if args.json:
        print(json.dumps(b, indent=2, default=str))
        return 0
    total = b["gmacs"] or 1.0
    pub = b["published"]
    size = f"{b['input_size'][1]}x{b['input_size'][2]}"
    print(f"{b['name']} at {size}: {b['gmacs']:.3f} GMACs (paper: {paper_gmacs({**b, 'published_gmacs': pub.get('gmacs')})}), "
          f"{b['params'] / 1e6:.2f} M params (paper: {_fmt(pub.get('params'), '.1f')})")
    width = max(len(s) for s in [*b["stages"], *b["kinds"], "per stage"])
    print("\nper stage")
    for s, g in b["stages"].items():
        print(f"  {s:<{width}}  {g:9.3f}  {100 * g / total:5.1f} %")
    print("\nper kind of layer")
    for k, g in b["kinds"].items():
        print(f"  {k:<{width}}  {g:9.3f}  {100 * g / total:5.1f} %")
    print("\n(multiply-adds of matrix products and convolutions; norms, activations and softmax count 0)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flops", help="GMACs of a model per stage and kind of layer, or a table (--table 'swin*')")
    p.add_argument("name", nargs="?", default=None, help="model name")
    p.add_argument("--table", default=None, metavar="PATTERN", help="one row per model matching the wildcard pattern")
    p.add_argument("--img-size", type=int, default=None, help="input side (default: each model's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_flops)
