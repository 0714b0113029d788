"""``visionzoo export``: ONNX with a dynamic batch axis, checked with onnxruntime."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import CLIError, check_img_size
from ._preprocess import refuse_classifier_options, segmentation_metadata


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import MAX_OPSET, MIN_OPSET, export_onnx, onnx_files, verify_onnx
    from ..factory import create_model
    from ..train.inference import load_trained

    out = Path(args.output)
    if out.suffix.lower() != ".onnx":
        raise CLIError(f"--output must end in .onnx, got {out}")
    if out.is_dir():
        raise CLIError(f"--output {out} is a directory; give the path of the .onnx file to write")
    check_img_size(args.img_size)
    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise CLIError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET} (torch.onnx's exporter), got {args.opset}")
    if args.num_classes is not None and args.num_classes < 0:
        raise CLIError(f"--num-classes must be 0 or more, got {args.num_classes}")
    img_size = args.img_size
    seg = segmentation_metadata(args.checkpoint) if args.checkpoint else None
    if seg is not None:  # as eval and predict: the network a segmentation run's metadata describes
        model, img_size = _segmentation_network(args, seg)
    elif args.checkpoint:
        # as eval and predict: a visionzoo train run's architecture, classes and input size,
        # or a foreign checkpoint's classifier size
        model, _ = load_trained(args.checkpoint, args.name, num_classes=args.num_classes, img_size=args.img_size)
    else:
        kwargs = {"num_classes": args.num_classes} if args.num_classes is not None else {}
        if args.img_size:
            kwargs["img_size"] = args.img_size
        model = create_model(args.name, **kwargs).eval()
    export_onnx(model, out, img_size=img_size, opset=args.opset, optimize=not args.no_optimize)
    files = onnx_files(out)
    weights = f"; weights in {files[1]}" if len(files) > 1 else ""
    print(f"wrote {out} ({sum(f.stat().st_size for f in files) / 1e6:.1f} MB, opset {args.opset}, dynamic batch{weights})")
    try:
        diff = verify_onnx(model, out, img_size=img_size)
    except ImportError:
        print("onnxruntime is not installed: the file was not checked (pip install onnxruntime)")
        return 0
    status = "ok" if diff < 1e-4 else "MISMATCH"
    print(f"onnxruntime at batch 3: max |difference| = {diff:.2e} of the largest output ({status})")
    return 0 if diff < 1e-4 else 1


def _segmentation_network(args: argparse.Namespace, meta: dict):
    """(network, input side) of a ``visionzoo train --task segment`` checkpoint: the network its
    metadata describes, traced at the run's input size unless ``--img-size`` says otherwise."""
    from ..train.segment import load_segmentation

    if args.name != meta["model"]:
        raise CLIError(f"{args.checkpoint} is a segmentation network on {meta['model']}, not {args.name}: "
                       f"visionzoo export {meta['model']} --checkpoint {args.checkpoint} ...")
    refuse_classifier_options(args, ("num_classes",), meta)
    model, _ = load_segmentation(args.checkpoint)
    return model, args.img_size or meta["preprocessing"]["img_size"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (dynamic batch), verified with onnxruntime")
    p.add_argument("name", help="model name, e.g. vit_base_patch16_224")
    p.add_argument("--checkpoint", default=None, help="weights to load first (any supported layout)")
    p.add_argument("--output", required=True, help="path of the .onnx file to write")
    p.add_argument("--img-size", type=int, default=None, help="input side (default: the model's)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the checkpoint's, else the model's: 1000, 0 for a backbone such as DINOv2)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 18 to 23 (default 18)")
    p.add_argument("--no-optimize", action="store_true",
                   help="skip the exporter's graph optimizer (constant folding, removal of redundant nodes): a faster export; onnxruntime optimises the graph again when it loads it")
    p.set_defaults(func=cmd_export)
