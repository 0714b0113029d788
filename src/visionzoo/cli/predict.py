"""``visionzoo predict``: top-k classes of image files with a trained checkpoint; with a segmentation
run's checkpoint, a label map per image, written as a PNG."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import CLIError, check_device, check_output_dir, count
from ._preprocess import (
    PREPROCESSING,
    add_preprocessing_args,
    preprocessing_overrides,
    refuse_classifier_options,
    segmentation_metadata,
)


def _image_files(args: list[str]) -> list[str]:
    """The arguments, a folder replaced by the image files under it (sorted; hidden files and
    folders skipped, as training skips them: :func:`visionzoo.train.data.visible_files`); other
    files in a folder are named on stderr as skipped (training refuses them). A file named on
    the command line is read whatever its name."""
    from ..train.data import IMAGE_EXTENSIONS, visible_files

    files: list[str] = []
    for a in args:
        if Path(a).is_dir():
            listed = visible_files(Path(a))
            found = [str(p) for p in listed if p.suffix.lower() in IMAGE_EXTENSIONS]
            if not found:
                raise CLIError(f"{a}: a folder with no image files (extensions read: {', '.join(IMAGE_EXTENSIONS)})")
            other = [p.name for p in listed if p.suffix.lower() not in IMAGE_EXTENSIONS]
            if other:
                shown = ", ".join(other[:5]) + (f", ... ({len(other) - 5} more)" if len(other) > 5 else "")
                print(f"note: {a}: skipped {count(len(other), 'file')} without an image extension ({shown})", file=sys.stderr)
            files += found
        else:
            files.append(a)
    return files


def cmd_predict(args: argparse.Namespace) -> int:
    from ..train.inference import iter_predictions, load_trained

    seg = segmentation_metadata(args.checkpoint)
    if seg is not None:
        return _predict_segmentation(args, seg)
    if args.output_dir is not None:
        from ..train.inference import check_weights_file

        check_weights_file(args.checkpoint)  # a missing file or a training state: said as such
        raise CLIError(f"--output-dir is where a segmentation network's label maps go; {args.checkpoint} is not a segmentation run's checkpoint")
    topk = 5 if args.topk is None else args.topk
    if topk < 1:
        raise CLIError(f"--topk must be positive, got {topk}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be positive, got {args.batch_size}")
    device = check_device(args.device)
    files = _image_files(args.images)
    model, info = load_trained(args.checkpoint, args.model, preprocessing=preprocessing_overrides(args))
    failed = 0
    for path, top, error in iter_predictions(model, info, files, topk=topk, device=device, batch_size=args.batch_size):
        if error is not None:  # reported, and the other images still predicted
            failed += 1
            print(f"visionzoo predict: error: {error}", file=sys.stderr)
        elif args.json:
            print(json.dumps({"image": str(path), "top": [{"class": name, "p": round(p, 6)} for name, p in top]}))
        else:
            print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in top))
    return _failures(failed, len(files))


def _label_map_paths(files: list[str], out_dir: Path) -> list[Path]:
    """``out_dir / (stem + ".png")`` for each image, refused before any work where an image is
    missing, two would write one file, or one would be written over an image given."""
    given = {Path(f).resolve() for f in files}
    taken: dict[Path, str] = {}
    for f in files:
        if not Path(f).is_file():
            raise CLIError(f"image not found: {f}")
        target = out_dir / (Path(f).stem + ".png")
        if target in taken:
            raise CLIError(f"{taken[target]} and {f} would both write {target} (label maps are named by the image's stem)")
        if target.resolve() in given:
            raise CLIError(f"{target} is one of the images given; write the label maps to another --output-dir")
        taken[target] = f
    return list(taken)


def _iter_label_maps(model: Any, files: list[str], p: dict[str, Any], device: Any, batch_size: int) -> Iterator[tuple[str, Any, Any]]:
    """``(image, label map, None)`` for each readable image, ``(image, None, error)`` for one that
    is not, in order. A label map is the network's logits at its size upsampled (bilinear) to
    the image's own (H, W), then their argmax; ``batch_size`` images a forward pass."""
    import torch
    import torch.nn.functional as F

    from ..train.data import DataError
    from ..train.segment import image_input

    for start in range(0, len(files), batch_size):
        done: list[tuple[str, Any]] = []
        for f in files[start : start + batch_size]:
            try:
                done.append((f, image_input(f, p["img_size"], p["mean"], p["std"])))
            except DataError as e:
                done.append((f, e))
        loaded = [t for _, t in done if not isinstance(t, DataError)]
        with torch.no_grad():
            logits = iter(model(torch.stack([x for x, _ in loaded]).to(device)).float() if loaded else [])  # B, C, S, S
        for f, t in done:
            if isinstance(t, DataError):
                yield f, None, t
            else:
                z = next(logits)
                yield f, F.interpolate(z[None], size=t[1], mode="bilinear", align_corners=False)[0].argmax(0).cpu(), None


def _write_label_map(labels: Any, num_classes: int, path: Path) -> None:
    """A PNG label map: mode L below 256 classes, else 16-bit (I;16), else 32-bit (I)."""
    import numpy as np
    from PIL import Image

    dtype = np.uint8 if num_classes < 256 else np.uint16 if num_classes <= 1 << 16 else np.int32
    Image.fromarray(labels.numpy().astype(dtype)).save(path)


def _class_shares(labels: Any, names: list[str]) -> list[tuple[str, float]]:
    """(class, share of the map's pixels) for the classes in a label map, largest first."""
    import torch

    share = torch.bincount(labels.view(-1), minlength=len(names)).double() / labels.numel()
    return [(names[int(c)], float(share[c])) for c in share.argsort(descending=True) if share[c] > 0]


def _predict_segmentation(args: argparse.Namespace, meta: dict[str, Any]) -> int:
    """``visionzoo predict`` with a segmentation checkpoint: a label map per image, at the image's
    own size, written to ``--output-dir`` as ``STEM.png``; the share of its pixels per class printed."""
    from ..train.segment import load_segmentation

    refuse_classifier_options(args, ("model", "topk", *PREPROCESSING), meta)
    if args.output_dir is None:
        raise CLIError(f"{args.checkpoint} is a segmentation network ({meta['model']}): predict writes its label maps as PNG files; "
                       "pass --output-dir DIR")
    out_dir = check_output_dir(args.output_dir)
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be positive, got {args.batch_size}")
    device = check_device(args.device)
    files = _image_files(args.images)
    targets = dict(zip(files, _label_map_paths(files, out_dir)))
    model, _ = load_segmentation(args.checkpoint)
    failed = 0
    for f, labels, error in _iter_label_maps(model.to(device), files, meta["preprocessing"], device, args.batch_size):
        if error is not None:  # reported, and the other images still predicted
            failed += 1
            print(f"visionzoo predict: error: {error}", file=sys.stderr)
            continue
        out_dir.mkdir(exist_ok=True)  # with the first map: no images read, no folder made
        _write_label_map(labels, meta["num_classes"], targets[f])
        shares = _class_shares(labels, meta["classes"])
        if args.json:
            print(json.dumps({"image": f, "label_map": str(targets[f]), "classes": [{"class": n, "share": round(v, 6)} for n, v in shares]}))
        else:
            print(f"{f} -> {targets[f]}: " + ", ".join(f"{n} {v:.3f}" for n, v in shares[:5]))
    return _failures(failed, len(files))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k classes of images with a trained checkpoint; label maps with a segmentation run's")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of them")
    p.add_argument("--checkpoint", required=True, metavar="FILE")
    p.add_argument("--model", default=None, help="model name (default: the one stored in the checkpoint)")
    p.add_argument("--topk", type=int, default=None, help="classes shown per image (default 5; at most the class count)")
    p.add_argument("--output-dir", default=None, metavar="DIR",
                   help="segmentation checkpoints (required): where each image's label map is written, as STEM.png")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per image: {image, top: [{class, p}]}; segmentation: {image, label_map, classes: [{class, share}]}")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_preprocessing_args(p)
    p.set_defaults(func=cmd_predict)


def _failures(failed: int, total: int) -> int:
    """The exit code, after a count of the images that could not be read where there was more
    than one image (for one, its own error line says it all)."""
    if failed and total > 1:
        print(f"visionzoo predict: {failed} of {total} images could not be read", file=sys.stderr)
    return 2 if failed else 0
