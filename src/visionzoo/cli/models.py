"""``visionzoo list`` and ``visionzoo info``."""

from __future__ import annotations

import argparse
import json
import sys

from . import CLIError, check_img_size, count, no_model_matches


def _fmt(v: object, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec) if spec and isinstance(v, (int, float)) else str(v)


def report_unfit(unfit: list[tuple[str, str]], img_size: int | None) -> None:
    """Where a table at ``--img-size`` left out models that cannot take it (some, not all:
    :func:`~visionzoo.factory.infos_at_size` raises then), a note on stderr naming them."""
    if not unfit:
        return
    names = [n for n, _ in unfit]
    shown = ", ".join(names[:6]) + (f", ... ({len(names) - 6} more)" if len(names) > 6 else "")
    print(f"note: left out {count(len(names), 'model')} that cannot take {img_size}x{img_size}: {shown} (visionzoo info NAME --img-size {img_size} says why)", file=sys.stderr)


def paper_gmacs(row: dict) -> str:
    """The published GMACs as the paper gives them, with their input size where the row was
    counted at another (``model_info`` / ``flops_table`` rows)."""
    v = row["published_gmacs"]
    if v is None:
        return "-"
    at = row["published_input_size"]
    return str(v) if tuple(at[1:]) == tuple(row["input_size"][1:]) else f"{v} at {at[1]}x{at[2]}"


def cmd_list(args: argparse.Namespace) -> int:
    from ..registry import families, list_models

    if args.family is not None and args.family not in families():
        raise CLIError(f"unknown family {args.family!r}; families: {', '.join(families())}")
    names = list_models(args.pattern, family=args.family, aliases=args.aliases)
    if not names:
        where = f" in family {args.family}" if args.family else ""
        if not args.aliases and list_models(args.pattern, family=args.family, aliases=True):  # torchvision's names
            raise CLIError(f"no model name matches {args.pattern!r}{where}, but aliases do: visionzoo list --aliases shows them")
        raise no_model_matches(args.pattern, where)
    print("\n".join(names))
    return 0


def _info_table(args: argparse.Namespace) -> int:
    """One row per model matching a wildcard pattern."""
    from ..factory import infos_at_size
    from ..registry import list_models

    names = list_models(args.name, sort=False)  # each family's own order
    if not names:
        raise no_model_matches(args.name)
    unfit: list[tuple[str, str]] = []
    infos = infos_at_size(names, args.img_size, unfit)
    report_unfit(unfit, args.img_size)
    names = [i["name"] for i in infos]
    if args.json:
        print(json.dumps([{k: v for k, v in i.items() if k != "default_cfg"} for i in infos], indent=2, default=str))
        return 0
    width = max(len(n) for n in names)
    paper = max(11, *(len(paper_gmacs(i)) for i in infos))
    print(f"{'model':<{width}}  {'params (M)':>10}  {'GMACs':>7}  {'paper GMACs':>{paper}}  {'paper top-1':>11}  input")
    for i in infos:
        print(
            f"{i['name']:<{width}}  {i['params'] / 1e6:>10.2f}  {i['gmacs']:>7.3f}  {paper_gmacs(i):>{paper}}  "
            f"{_fmt(i['published_top1']):>11}  {i['input_size'][1]}x{i['input_size'][2]}"
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..factory import model_info

    check_img_size(args.img_size)
    if any(c in args.name for c in "*?["):
        if args.set:
            raise ValueError("--set applies to one model, not to a pattern")
        return _info_table(args)

    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if "img_size" in overrides:  # --img-size under another name: taken as it, once
        if args.img_size is not None:
            raise ValueError("give the input size once: --img-size or --set img_size=..., not both")
        args.img_size = overrides.pop("img_size")
    info = model_info(args.name, img_size=args.img_size, **overrides)
    if args.json:
        print(json.dumps({k: v for k, v in info.items() if k != "default_cfg"}, indent=2, default=str))
        return 0
    cfg = info["default_cfg"]
    paper_params = "-" if info["published_params_m"] is None else f"{info['published_params_m']} M"
    rows = [
        ("model", info["name"]),
        ("family", info["family"]),
        ("params", f"{info['params']:,} ({info['params'] / 1e6:.2f} M; paper: {paper_params})"),
        ("GMACs", f"{info['gmacs']:.3f} at {info['input_size'][1]}x{info['input_size'][2]} (paper: {paper_gmacs(info)})"),
        ("input", f"{info['input_size']}, mean {cfg['mean']}, std {cfg['std']}, {cfg['interpolation']}, crop_pct {cfg['crop_pct']}"
                  + (f", crop_mode {cfg['crop_mode']}" if cfg.get("crop_mode", "center") != "center" else "")),
        *([("top-1", f"{info['published_top1']} % (paper)")] if info["published_top1"] is not None else []),
        ("paper", info["paper"] or "-"),
    ]
    if info.get("published_note"):
        rows.append(("note", info["published_note"]))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered models (fnmatch pattern, e.g. 'vit*')")
    p.add_argument("pattern", nargs="?", default=None, help="wildcard pattern, e.g. 'swin_*'")
    p.add_argument("--family", default=None, help="only this family")
    p.add_argument("--aliases", action="store_true", help="include aliases (torchvision names)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="parameters, GMACs, input and published figures of a model")
    p.add_argument("name", help="a model name, or a wildcard pattern for a table (e.g. 'convnext_roadmap*')")
    p.add_argument("--img-size", type=int, default=None, help="input side (default: the model's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="configuration override, e.g. pos_embed=learned_2d")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)
