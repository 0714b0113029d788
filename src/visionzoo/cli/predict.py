"""``visionzoo predict``: top-k classes of image files with a trained checkpoint."""

from __future__ import annotations

import argparse

from . import CLIError
from ._preprocess import add_preprocessing_args, preprocessing_overrides


def cmd_predict(args: argparse.Namespace) -> int:
    from ..train.data import DataError
    from ..train.inference import load_trained, predict_images

    if args.topk < 1:
        raise CLIError(f"--topk must be positive, got {args.topk}")
    model, info = load_trained(args.checkpoint, args.model, preprocessing=preprocessing_overrides(args))
    try:
        results = predict_images(model, info, args.images, topk=args.topk, device=args.device)
    except DataError as e:
        raise CLIError(str(e)) from None
    for path, top in zip(args.images, results):
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in top))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k classes of images with a trained checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", required=True, metavar="FILE")
    p.add_argument("--model", default=None, help="model name (default: the one stored in the checkpoint)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="cpu")
    add_preprocessing_args(p)
    p.set_defaults(func=cmd_predict)
