"""``visionzoo predict``: top-k classes of image files with a trained checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import CLIError, check_device
from ._preprocess import add_preprocessing_args, preprocessing_overrides


def _image_files(args: list[str]) -> list[str]:
    """The arguments, a folder replaced by the image files under it (sorted)."""
    from ..train.data import IMAGE_EXTENSIONS

    files: list[str] = []
    for a in args:
        if Path(a).is_dir():
            found = sorted(str(p) for p in Path(a).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise CLIError(f"{a}: a folder with no image files (extensions read: {', '.join(IMAGE_EXTENSIONS)})")
            files += found
        else:
            files.append(a)
    return files


def cmd_predict(args: argparse.Namespace) -> int:
    from ..train.inference import iter_predictions, load_trained

    if args.topk < 1:
        raise CLIError(f"--topk must be positive, got {args.topk}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be positive, got {args.batch_size}")
    device = check_device(args.device)
    files = _image_files(args.images)
    model, info = load_trained(args.checkpoint, args.model, preprocessing=preprocessing_overrides(args))
    failed = 0
    for path, top, error in iter_predictions(model, info, files, topk=args.topk, device=device, batch_size=args.batch_size):
        if error is not None:  # reported, and the other images still predicted
            failed += 1
            print(f"visionzoo predict: error: {error}", file=sys.stderr)
        elif args.json:
            print(json.dumps({"image": str(path), "top": [{"class": name, "p": round(p, 6)} for name, p in top]}))
        else:
            print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in top))
    if failed:
        print(f"visionzoo predict: {failed} of {len(files)} images could not be read", file=sys.stderr)
    return 2 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k classes of images with a trained checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of them")
    p.add_argument("--checkpoint", required=True, metavar="FILE")
    p.add_argument("--model", default=None, help="model name (default: the one stored in the checkpoint)")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default 5; at most the class count)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--json", action="store_true", help="one JSON object per image: {image, top: [{class, p}]}")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_preprocessing_args(p)
    p.set_defaults(func=cmd_predict)
