"""The preprocessing options ``visionzoo eval`` and ``predict`` share (timm's validate.py has the same),
and how both tell a segmentation checkpoint, which takes none of them, from a classifier's."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from typing import Any

from ..train.data import CROP_MODES
from . import CLIError, check_img_size

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
#: the destinations of the options add_preprocessing_args adds
PREPROCESSING = ("img_size", "crop_pct", "crop_mode", "interpolation", "mean", "std")


def add_preprocessing_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "preprocessing", "default: what the checkpoint stores (visionzoo train), else the model's default_cfg; "
        "a checkpoint from elsewhere may need its own (timm's resnet50.a1_in1k: --interpolation bicubic --crop-pct 0.95)"
    )
    g.add_argument("--img-size", type=int, default=None, metavar="S", help="input side (the model is built for it)")
    g.add_argument("--crop-pct", type=float, default=None, metavar="F", help="resize to floor(S / F) (see --crop-mode), then centre-crop S")
    g.add_argument("--crop-mode", choices=CROP_MODES, default=None,
                   help="what --crop-pct resizes: center, the short side (the aspect ratio kept); squash, both sides "
                        "(the whole image squashed to a square; timm's tf_efficientnetv2_m/l/xl)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, default=None)
    g.add_argument("--mean", type=float, nargs="+", default=None, metavar="M", help="one value per input channel")
    g.add_argument("--std", type=float, nargs="+", default=None, metavar="SD", help="one value per input channel")


def preprocessing_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, checked."""
    out: dict[str, Any] = {}
    check_img_size(args.img_size)
    if args.img_size is not None:
        out["img_size"] = args.img_size
    if args.crop_pct is not None:
        if not 0 < args.crop_pct <= 1:
            raise CLIError(f"--crop-pct must be in (0, 1], got {args.crop_pct}")
        out["crop_pct"] = args.crop_pct
    if args.crop_mode is not None:
        out["crop_mode"] = args.crop_mode
    if args.interpolation is not None:
        out["interpolation"] = args.interpolation
    for key in ("mean", "std"):
        values = getattr(args, key)
        if values is None:
            continue
        if not all(math.isfinite(v) for v in values):
            raise CLIError(f"--{key} must be finite numbers, got {' '.join(map(str, values))}")
        if key == "std" and min(values) <= 0:
            raise CLIError(f"--std must be positive, got {values}")
        out[key] = list(values)
    return out


def segmentation_metadata(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The metadata of a ``visionzoo train --task segment`` checkpoint; None for any other file
    (a classifier's, or one that is missing or not a safetensors file: the classifier's loader
    says what is wrong with it)."""
    from ..train.checkpoint import read_metadata

    meta = read_metadata(checkpoint)
    return meta if meta.get("task") == "segment" else None


def refuse_classifier_options(args: argparse.Namespace, dests: Sequence[str], meta: dict[str, Any]) -> None:
    """A :class:`CLIError` naming those of ``dests`` given (not None) with a segmentation
    checkpoint: they mean something for classifiers only, and its own preprocessing is used."""
    given = ["--" + d.replace("_", "-") for d in dests if getattr(args, d) is not None]
    if given:
        raise CLIError(f"{args.checkpoint} is a segmentation network ({meta['model']}): {', '.join(given)} "
                       f"{'is an option' if len(given) == 1 else 'are options'} of classifiers only")
