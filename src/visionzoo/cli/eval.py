"""``visionzoo eval``: top-1 / top-5 of a trained checkpoint on a dataset's held-out split, and its confusion
matrix; for a segmentation run's checkpoint, per-class and mean IoU and Dice, as training reported them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from . import CLIError, check_device, check_picture_output, count, writable
from ._preprocess import (
    PREPROCESSING,
    add_preprocessing_args,
    preprocessing_overrides,
    refuse_classifier_options,
    segmentation_metadata,
)


def cmd_eval(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from ..train.data import (
        TORCHVISION_SETS,
        DataError,
        ImageFiles,
        NoValFolder,
        Subset,
        build_data,
        eval_transform,
        scan_class_folders,
    )
    from ..train.distributed import DistInfo
    from ..train.engine import accuracy_text, amp_autocast, evaluate
    from ..train.inference import load_trained, plot_confusion

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be positive, got {args.batch_size}")
    if args.workers < 0:
        raise CLIError(f"--workers must be >= 0, got {args.workers}")
    seg = segmentation_metadata(args.checkpoint)
    if seg is not None:
        refuse_classifier_options(args, ("model", "data_dir", "output", *PREPROCESSING), seg)
    check_picture_output(args.output)  # before the evaluation, not after it
    device = torch.device(check_device(args.device) or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        autocast = amp_autocast(args.amp, device)  # the autocast of train --amp, under which training computed its held-out figures
    except ValueError as e:
        raise CLIError(str(e)) from None
    if seg is not None:
        return _eval_segmentation(args, seg, device, autocast)
    model, info = load_trained(args.checkpoint, args.model, preprocessing=preprocessing_overrides(args))
    recorded = args.data is None  # a folder is recorded by its absolute path: a bare name is the dataset
    if recorded:  # the data the run trained on, as its weights record it (digits or its folder)
        args.data = info["data_path"] or "digits"
    p = info["preprocessing"]
    try:
        folder = Path(args.data)
        if args.data == "digits":  # the run's own held-out fraction (recorded since runs record it for digits)
            trained_here = info["data_path"] == "digits"
        else:
            trained_here = folder.is_dir() and info["data_path"] is not None and folder.resolve() == Path(info["data_path"])
        split = "held-out split"
        if args.data != "digits" and args.data not in TORCHVISION_SETS and folder.is_dir() and not (folder / "train").is_dir() and not trained_here:
            # a folder of class folders the model was not trained on: evaluate every image in it
            classes, samples = scan_class_folders(folder)
            tf = eval_transform(p["img_size"], p["mean"], p["std"], crop_pct=p["crop_pct"], interpolation=p["interpolation"],
                                in_chans=p["in_chans"], crop_mode=p["crop_mode"])
            dataset, data_classes, split = Subset(ImageFiles(samples), range(len(samples)), tf), classes, "every image"
        else:
            # a dataset's test split, a folder's val/, or the held-out split of the run's own folder
            # (the same images as in training: the split is fixed by the fraction)
            cfg = {"input_size": (p["in_chans"], p["img_size"], p["img_size"]), "mean": p["mean"], "std": p["std"],
                   "crop_pct": p["crop_pct"], "crop_mode": p["crop_mode"], "interpolation": p["interpolation"]}
            bundle = build_data(args.data, data_dir=args.data_dir or "data", img_size=p["img_size"], model_cfg=cfg,
                                val_split=info["val_split"] if trained_here else None, recorded=recorded)
            dataset, data_classes = bundle.val, bundle.classes
    except NoValFolder:  # (build_data's words advise --val-split, an option of train only)
        raise CLIError(f"--data {args.data}: has train/ but no val/ folder to evaluate on; add one, or give "
                       f"--data {folder / 'train'} to evaluate every image in it") from None
    except DataError as e:
        raise CLIError(str(e)) from None
    if len(data_classes) != info["num_classes"]:
        raise CLIError(f"{args.data} has {len(data_classes)} classes, the checkpoint's classifier {info['num_classes']}")
    if info["classes"] and list(info["classes"]) != list(data_classes):
        diff = [f"{d!r} vs {c!r}" for d, c in zip(data_classes, info["classes"]) if d != c]
        raise CLIError(f"{args.data}'s classes are not the checkpoint's: {', '.join(diff[:3])}{' ...' if len(diff) > 3 else ''} "
                       "(data vs checkpoint, in label order)")
    names = info["classes"] or data_classes
    model.to(device)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    dist = DistInfo(device=device)
    res = evaluate(model, loader, dist, num_classes=info["num_classes"], autocast=autocast, confusion=True)
    amp = f", {args.amp} autocast" if args.amp else ""
    out = Path(args.output) if args.output else Path(args.checkpoint).resolve().parent / "confusion_matrix.png"
    if args.output or writable(out):  # (--output was checked before the evaluation)
        drawn = plot_confusion(res["confusion"], names, out, title=f"{info['model']}: top-1 {res['top1']:.4f}")
        why_not = "matplotlib is not installed (pip install 'visionzoo[train]')"
    else:  # the default picture beside a checkpoint in a read-only folder: the figures all the same
        drawn, why_not = False, f"{out.parent} is not writable (--output PATH draws it elsewhere)"
    if args.json:
        print(json.dumps({"model": info["model"], "data": args.data, "split": split, "images": res["count"], "amp": args.amp,
                          "top1": res["top1"], "top5": res["top5"], "loss": res["loss"], "confusion_matrix": str(out) if drawn else None}))
        return 0
    print(f"{info['model']} on {args.data} ({split}, {count(res['count'], 'image')}{amp}): "
          f"{accuracy_text(res['top1'], res['top5'], info['num_classes'], sep='  ')}  loss {res['loss']:.4f}")
    if drawn:
        print(f"confusion matrix: {out}")
    else:
        print(f"confusion matrix not drawn: {why_not}")
    return 0


def _segmentation_pairs(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[list[tuple[Path, Path]], str]:
    """The (image, mask) pairs to score and what they are: the held-out split of the run's own
    folder (the images training reported on) or of a folder with ``train/``, else every pair
    of a folder the run did not train on (as for classifiers)."""
    from ..train.segment import folder_pairs, split_pairs

    if args.data is None:  # the folder the run trained on, as its weights record it
        if not meta.get("data_path"):
            raise CLIError(f"{args.checkpoint} is a segmentation network ({meta['model']}) that records no training folder; "
                           "give --data PATH, a folder of images/ and masks/")
        args.data = meta["data_path"]
    folder = Path(args.data)
    if not folder.is_dir():
        raise CLIError(f"--data {args.data}: {args.checkpoint} is a segmentation network ({meta['model']}); evaluate it on a folder "
                       f"of images/ and masks/ (its run trained on {meta.get('data_path')})")
    if (folder / "train").is_dir() or str(folder.resolve()) == meta.get("data_path"):
        return split_pairs(folder)[1], "held-out split"
    return folder_pairs(folder), "every image"


def _eval_segmentation(args: argparse.Namespace, meta: dict[str, Any], device: Any, autocast: Any) -> int:
    """``visionzoo eval`` of a segmentation checkpoint: :func:`~visionzoo.train.segment.evaluate_segmentation`
    on :class:`~visionzoo.train.segment.SegFolder` at the run's size, mean and std, as training
    evaluated its held-out images."""
    from torch.utils.data import DataLoader

    from ..train.data import DataError
    from ..train.segment import SegFolder, check_labelled, check_pairs, evaluate_segmentation, load_segmentation

    C, p = meta["num_classes"], meta["preprocessing"]
    try:
        pairs, split = _segmentation_pairs(args, meta)
        check_pairs(pairs, C, limit="the network's class count")  # readable pairs of one size, labels within the classes, before any is scored
        check_labelled(pairs, f"--data {args.data} ({split})")
    except DataError as e:
        raise CLIError(str(e)) from None
    model, _ = load_segmentation(args.checkpoint)
    loader = DataLoader(SegFolder(pairs, p["img_size"], p["mean"], p["std"], train=False), batch_size=args.batch_size, num_workers=args.workers)
    ev = evaluate_segmentation(model.to(device), loader, C, device, autocast=autocast)
    head = meta["model"] if meta.get("head") is None else f"{meta['model']} ({meta['head']})"
    if args.json:
        print(json.dumps({"model": meta["model"], "head": meta.get("head"), "data": args.data, "split": split, "images": len(pairs),
                          "amp": args.amp, **ev}))
        return 0
    amp = f", {args.amp} autocast" if args.amp else ""
    print(f"{head} on {args.data} ({split}, {count(len(pairs), 'image')}{amp}): mIoU {ev['miou']:.4f}  mDice {ev['mdice']:.4f}  "
          f"pixel acc {ev['pixel_acc']:.4f}  loss {ev['loss']:.4f}")
    for name, iou, dice in zip(meta["classes"], ev["iou"], ev["dice"]):
        print(f"  class {name}: " + ("absent (not in the masks, never predicted)" if iou is None else f"IoU {iou:.4f}  Dice {dice:.4f}"))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="top-1 / top-5 and a confusion matrix of a trained checkpoint; IoU and Dice of a segmentation run's")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="weights written by visionzoo train (model.safetensors)")
    p.add_argument("--model", default=None, help="model name (default: the one stored in the checkpoint)")
    p.add_argument("--data", default=None,
                   help="digits | cifar10 | cifar100 | mnist | fashion_mnist | PATH; a segmentation run's: PATH with images/ and masks/ "
                        "(its own folder or one with train/: the held-out split; another: every pair). Default: the data the run "
                        "trained on where its weights record it (digits or its folder), else digits")
    p.add_argument("--data-dir", default=None, help="where cifar10 and the like are kept (default: data)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None,
                   help="mixed precision, as train --amp (fp16 on CUDA only): give the run's --amp to reproduce its held-out figures")
    p.add_argument("--output", default=None, metavar="PNG",
                   help="confusion-matrix picture, e.g. cm.png (default: confusion_matrix.png beside the checkpoint)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    add_preprocessing_args(p)
    p.set_defaults(func=cmd_eval)
