"""``visionzoo eval``: top-1 / top-5 of a trained checkpoint on a dataset's held-out split, and its confusion matrix."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import CLIError, check_device, check_picture_output
from ._preprocess import add_preprocessing_args, preprocessing_overrides


def cmd_eval(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from ..train.data import (
        TORCHVISION_SETS,
        DataError,
        ImageFiles,
        Subset,
        build_data,
        eval_transform,
        scan_class_folders,
    )
    from ..train.distributed import DistInfo
    from ..train.engine import amp_autocast, evaluate
    from ..train.inference import load_trained, plot_confusion

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be positive, got {args.batch_size}")
    if args.workers < 0:
        raise CLIError(f"--workers must be >= 0, got {args.workers}")
    check_picture_output(args.output)  # before the evaluation, not after it
    device = torch.device(check_device(args.device) or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        autocast = amp_autocast(args.amp, device)  # the autocast of train --amp, under which training computed its held-out figures
    except ValueError as e:
        raise CLIError(str(e)) from None
    model, info = load_trained(args.checkpoint, args.model, preprocessing=preprocessing_overrides(args))
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
            tf = eval_transform(p["img_size"], p["mean"], p["std"], crop_pct=p["crop_pct"], interpolation=p["interpolation"], in_chans=p["in_chans"])
            dataset, data_classes, split = Subset(ImageFiles(samples), range(len(samples)), tf), classes, "every image"
        else:
            # a dataset's test split, a folder's val/, or the held-out split of the run's own folder
            # (the same images as in training: the split is fixed by the fraction)
            cfg = {"input_size": (p["in_chans"], p["img_size"], p["img_size"]), "mean": p["mean"], "std": p["std"],
                   "crop_pct": p["crop_pct"], "interpolation": p["interpolation"]}
            bundle = build_data(args.data, data_dir=args.data_dir, img_size=p["img_size"], model_cfg=cfg,
                                val_split=info["val_split"] if trained_here else None)
            dataset, data_classes = bundle.val, bundle.classes
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
    print(f"{info['model']} on {args.data} ({split}, {res['count']} images{amp}): top-1 {res['top1']:.4f}  top-5 {res['top5']:.4f}  loss {res['loss']:.4f}")
    out = Path(args.output) if args.output else Path(args.checkpoint).resolve().parent / "confusion_matrix.png"
    if plot_confusion(res["confusion"], names, out, title=f"{info['model']}: top-1 {res['top1']:.4f}"):
        print(f"confusion matrix: {out}")
    else:
        print("confusion matrix not drawn: matplotlib is not installed (pip install 'visionzoo[train]')")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="top-1 / top-5 and a confusion matrix of a trained checkpoint")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="weights written by visionzoo train (model.safetensors)")
    p.add_argument("--model", default=None, help="model name (default: the one stored in the checkpoint)")
    p.add_argument("--data", default="digits", help="digits | cifar10 | cifar100 | mnist | fashion_mnist | PATH")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None,
                   help="mixed precision, as train --amp (fp16 on CUDA only): give the run's --amp to reproduce its held-out figures")
    p.add_argument("--output", default=None, metavar="PNG",
                   help="confusion-matrix picture, e.g. cm.png (default: confusion_matrix.png beside the checkpoint)")
    add_preprocessing_args(p)
    p.set_defaults(func=cmd_eval)
