"""``visionzoo train``: train a classifier (default: a small ConvMixer on scikit-learn's digits)."""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import CLIError, check_device, count

# options whose value a resumed run takes from the command line rather than from config.json
_RUNTIME = ("workers", "device", "progress", "log_every", "save_every_steps", "keep_checkpoints")


# configuration fields whose flag is not their name with dashes (one --model-arg per override;
# a segmentation run's head is its --seg-head)
_FLAGS = {"model_args": "--model-arg", "head": "--seg-head"}


def _flag(field: str) -> str:
    """The command-line flag of a configuration field: ``drop_path`` -> ``--drop-path``,
    ``model_args`` -> ``--model-arg``."""
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


def _as_json(value: Any) -> Any:
    """``value`` as config.json holds it (tuples become lists)."""
    return json.loads(json.dumps(value))


def _parse_model_args(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise CLIError(f"--model-arg takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import DataError, TrainConfig, TrainingStopped, train
    from ..train.engine import accuracy_text

    check_device(args.device)
    if args.task == "segment":
        return _segment(args)
    if args.num_classes is not None:
        raise CLIError("--num-classes is an option of --task segment (a classifier takes its classes from its data)")
    if args.seg_head is not None:
        raise CLIError("--seg-head is an option of --task segment (the head a segmentation network puts on its backbone)")
    for opt in ("scale_range", "color_jitter"):
        if getattr(args, opt) is not None:
            raise CLIError(f"{_flag(opt)} is an option of --task segment (a classifier's augmentation: --randaugment, --mixup, --cutmix)")
    given = {k: v for k, v in vars(args).items() if v is not None and k in {f for f in TrainConfig.__dataclass_fields__}}
    given["model_args"] = _parse_model_args(args.model_arg)
    if args.resume:
        cfg = _resumed(TrainConfig, "classify", given, args.output)
    else:
        cfg = TrainConfig(**{k: v for k, v in given.items() if k != "resume"})
    for flag, value in (("--distill-alpha", args.distill_alpha), ("--distill-tau", args.distill_tau)):
        if value is not None and not cfg.teacher:
            raise CLIError(f"{flag} is an option of distillation; give --teacher NAME --teacher-checkpoint FILE or leave {flag} out")
    if args.ema_decay is not None and not cfg.ema:
        raise CLIError("--ema-decay is an option of --ema (the decay of its moving average of the weights); add --ema or leave --ema-decay out")
    if cfg.freeze_backbone and cfg.layer_decay is not None:  # (it was accepted and changed nothing)
        raise CLIError("--layer-decay lowers the learning rate of the backbone's layers, which --freeze-backbone freezes (only the classifier trains, at --lr); leave one out")
    try:
        summary = train(cfg)
    except TrainingStopped as e:
        raise CLIError(str(e)) from None
    except DataError as e:
        raise CLIError(str(e)) from None
    except ImportError as e:
        raise CLIError(f"a package is missing: {e} (pip install 'visionzoo[train]')") from None
    if summary.get("world_size", 1) > 1 and not _is_rank0():
        return 0
    if summary.get("nothing_to_do"):
        return _nothing_to_do(summary, cfg.output, args.json)
    if summary["interrupted"]:
        print(f"interrupted; continue with: {_launcher(summary['world_size'])} --output {cfg.output} --resume", file=sys.stderr)
        return 130
    held_out = accuracy_text(summary["top1"], summary["top5"], summary["num_classes"], sep=", ")
    print(
        f"{summary['model']} on {summary['data']}: held-out {held_out} after {count(summary['epochs'], 'epoch')}, "
        f"{summary['train_seconds']:.1f} s of training (world size {summary['world_size']}); outputs in {cfg.output}"
    )
    if args.json:
        print(json.dumps(summary))
    return 0


def _launcher(world_size: int) -> str:
    """How a run of ``world_size`` processes is started again (a resume takes the same number):
    ``visionzoo train``, or under torchrun its processes per node (and nodes, with the run's
    own rendezvous options)."""
    if world_size <= 1:
        return "visionzoo train"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if local == world_size:
        return f"torchrun --nproc_per_node {local} -m visionzoo train"
    return f"torchrun --nnodes {world_size // local} --nproc_per_node {local} <this run's rendezvous options> -m visionzoo train"


def _resumed(config_cls: type, task: str, given: dict[str, Any], output: str | None) -> Any:
    """The configuration of the ``task`` run in ``output`` (its config.json, as a ``config_cls``),
    with ``--epochs`` and the run options in ``given`` applied; CLIError where ``given`` would
    change any other setting, or no ``--output`` names the run."""
    from ..train.checkpoint import read_run_config, recorded_path

    if not output:
        raise CLIError("--resume needs --output DIR (the folder of the run to continue)")
    try:
        cfg = read_run_config(Path(output), config_cls, task)
    except ValueError as e:
        raise CLIError(str(e)) from None
    runtime = [k for k in _RUNTIME if hasattr(cfg, k)]
    unset = lambda k, v: k == "model_args" and not v  # noqa: E731  (no --model-arg given)
    changed = [k for k, v in given.items() if k not in (*runtime, "epochs", "output", "resume")
               and not unset(k, v) and _as_json(recorded_path(k, v)) != _as_json(recorded_path(k, getattr(cfg, k)))]
    if changed:
        flags = ", ".join(f"{_flag(k)} ({getattr(cfg, k)!r} in the run, {given[k]!r} given)" for k in changed)
        raise CLIError(f"--resume continues the run with the settings in its config.json and cannot change {flags}; "
                       f"it takes {', '.join(_flag(k) for k in ('epochs', *runtime))}")
    for k in ("epochs", *runtime):
        if k in given:
            setattr(cfg, k, given[k])
    cfg.resume, cfg.output = True, output
    return cfg


def _segment(args: argparse.Namespace) -> int:
    from ..train.data import DataError
    from ..train.engine import TrainingStopped
    from ..train.segment import SegmentConfig, train_segmentation

    fields = set(SegmentConfig.__dataclass_fields__)
    ignored = [_flag(k) for k, v in vars(args).items()
               if v is not None and v is not False and k not in (*fields, "model_arg", "seg_head", "task", "func", "command", "debug", "json")]
    if ignored:
        raise CLIError(f"--task segment does not take {', '.join(ignored)} (a classifier's options)")
    given = {k: v for k, v in vars(args).items() if v is not None and k in fields and k != "resume"}
    if args.model_arg:
        given["model_args"] = _parse_model_args(args.model_arg)
    if args.seg_head:
        given["head"] = args.seg_head
    if args.scale_range is not None:
        given["scale_range"] = tuple(args.scale_range)
    if args.resume:
        cfg = _resumed(SegmentConfig, "segment", given, args.output)
    elif not args.data or args.data == "digits":
        raise CLIError("--task segment needs --data PATH (a folder with images/ and masks/)")
    else:
        cfg = SegmentConfig(**given)
    try:
        s = train_segmentation(cfg)
    except (DataError, TrainingStopped) as e:
        raise CLIError(str(e)) from None
    if s["world_size"] > 1 and not _is_rank0():
        return 0
    if s.get("nothing_to_do"):
        return _nothing_to_do(s, cfg.output, args.json)
    if s["interrupted"]:
        print(f"interrupted; continue with: {_launcher(s['world_size'])} --task segment --output {cfg.output} --resume", file=sys.stderr)
        return 130
    print(f"{s['model']} ({s['head']}) on {s['data']}: held-out mIoU {s['miou']:.4f}, mDice {s['mdice']:.4f} after {count(s['epochs'], 'epoch')}, "
          f"{s['train_seconds']:.1f} s of training (world size {s['world_size']}); outputs in {cfg.output}")
    if args.json:
        print(json.dumps(s))
    return 0


def _nothing_to_do(summary: dict[str, Any], output: str, as_json: bool) -> int:
    """Exit code 0 for a run resumed at the epochs it has already ended at, saying so; its
    outputs were left as they were."""
    n = summary["epochs"]
    print(f"the run in {output} is complete: it has trained its {count(n, 'epoch')} and written its outputs, so there is nothing to do "
          f"(give --epochs above {n} to train it further)")
    if as_json:
        print(json.dumps({k: v for k, v in summary.items() if k != "nothing_to_do"}))
    return 0


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a classifier (no arguments: a small model on scikit-learn's digits, ~1 min on CPU)",
        description="Train a classifier. Without arguments: a 4-block ConvMixer (5x5 depthwise kernels) on scikit-learn's 8x8 digits "
        "(upsampled to 16x16, fixed 20 percent held-out split). Under torchrun, data-parallel (DDP).",
    )
    p.add_argument("--task", choices=["classify", "segment"], default="classify",
                   help="segment: --data PATH with images/ and masks/ (PNG label maps); reports IoU and Dice")
    p.add_argument("--num-classes", type=int, default=None, help="segment: classes of the masks (default: largest label + 1)")
    p.add_argument("--seg-head", choices=["fpn", "aspp", "hrnetv2"], default=None, help="segment: head on the backbone (default fpn; hrnetv2 on an HRNet)")
    p.add_argument("--scale-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="segment: rescale image and mask by a random factor in [LO, HI], then crop (or pad) --img-size (e.g. 0.5 2.0)")
    p.add_argument("--color-jitter", type=float, default=None, metavar="S",
                   help="segment: brightness, contrast and saturation factors in [1 - S, 1 + S] (e.g. 0.4)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, help="digits (default) | cifar10 | cifar100 | mnist | fashion_mnist | PATH "
                   "(folder with train/ and val/ class folders, or class folders and --val-split)")
    g.add_argument("--data-dir", default=None, help="where torchvision datasets are stored (default: data)")
    g.add_argument("--val-split", type=float, default=None,
                   help="fraction held out for validation where the data has no val/ folder: digits and a PATH of "
                   "class folders hold out 0.2 unless told (a PATH with train/ but no val/ needs it)")
    g.add_argument("--img-size", type=int, default=None)
    g.add_argument("--randaugment", action="store_true", default=None, help="RandAugment (digits: small random affine)")
    g.add_argument("--workers", type=int, default=None, help="data-loading processes (default 0)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="a registered model name (default: convmixer_256_8 with small overrides on digits; --task segment: ConvNeXt-T's layout at a quarter of its width and depth, --model convnext_tiny the whole network)")
    g.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="configuration override, e.g. depth=4 (repeatable)")
    g.add_argument("--pretrained", default=None, metavar="CHECKPOINT", help="fine-tune from these weights (new classifier when the class count differs)")
    g.add_argument("--freeze-backbone", action="store_true", default=None, help="train the classifier only (the backbone's BatchNorm statistics stay as loaded)")
    g.add_argument("--drop-path", type=float, default=None)
    g.add_argument("--grad-checkpointing", action="store_true", default=None, help="recompute blocks in the backward pass")
    g.add_argument("--channels-last", action="store_true", default=None)
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="default 10")
    g.add_argument("--batch-size", type=int, default=None, help="per process; default 64")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate; default 0.01")
    g.add_argument("--weight-decay", type=float, default=None, help="default 0.05 with AdamW, 1e-4 with SGD")
    g.add_argument("--layer-decay", type=float, default=None, metavar="D",
                   help="layer-wise lr decay for fine-tuning, 0 < D <= 1: the head learns at --lr, each group of "
                   "layers below it (block by block, to the stem) at D times the one above (BEiT / MAE: 0.65-0.75)")
    g.add_argument("--opt", choices=["adamw", "sgd"], default=None)
    g.add_argument("--grad-accum-steps", type=int, default=None, metavar="N",
                   help="sum the gradients of N batches per optimizer step: an effective batch of N x --batch-size (default 1)")
    g.add_argument("--warmup-epochs", type=float, default=None, help="linear warm-up over the optimizer steps of this many epochs (W steps: the first at --lr / W, the last at --lr), "
                   "then cosine decay over the rest (default 1)")
    g.add_argument("--min-lr-ratio", type=float, default=None, metavar="R",
                   help="where the cosine ends, as a fraction of the peak --lr, 0 <= R < 1 (default 0.01)")
    g.add_argument("--label-smoothing", type=float, default=None, help="default 0.1")
    g.add_argument("--mixup", type=float, default=None, metavar="ALPHA")
    g.add_argument("--cutmix", type=float, default=None, metavar="ALPHA")
    g.add_argument("--clip-grad", type=float, default=None, metavar="NORM")
    g.add_argument("--ema", action="store_true", default=None, help="evaluate and export an exponential moving average of the weights")
    g.add_argument("--ema-decay", type=float, default=None,
                   help="decay of --ema (default 0.998), warmed up: min(D, (1 + n) / (10 + n)) after n optimizer steps")
    g.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="mixed precision (fp16 on CUDA only)")
    g.add_argument("--seed", type=int, default=None)
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", default=None, metavar="NAME")
    g.add_argument("--teacher-checkpoint", default=None, metavar="FILE")
    g.add_argument("--distill-alpha", type=float, default=None,
                   help="weight of the distillation term, in [0, 1] (the labels' 1 - alpha): soft KD's, or deit_*_distilled's hard-label loss through its distillation token (default 0.5, DeiT's)")
    g.add_argument("--distill-tau", type=float, default=None, help="soft-KD temperature (default 1; hard-label distillation has none)")
    g = p.add_argument_group("run")
    g.add_argument("--output", default=None, help="output folder (default runs/<model>-<time>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint, with its own settings (only --epochs and the run options may change)")
    g.add_argument("--save-every-steps", type=int, default=None, help="also checkpoint every N steps (mid-epoch resume)")
    g.add_argument("--keep-checkpoints", type=int, default=None, help="how many step checkpoints to keep (default 1)")
    g.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    g.add_argument("--progress", choices=["auto", "bar", "lines", "none"], default=None)
    g.add_argument("--log-every", type=int, default=None, metavar="N",
                   help="progress as lines (--progress lines, or auto off a terminal): a line every N steps (default 50)")
    g.add_argument("--json", action="store_true", help="print summary.json on the last line")
    p.set_defaults(func=cmd_train)
