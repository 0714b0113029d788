"""``visionzoo train --task segment``: semantic segmentation on a folder of images and label maps.

The folder holds ``images/`` and ``masks/`` with the same file stems; a mask is a label map
whose pixel values are class indices (255: ignored): one channel (PNG mode ``L``, ``P`` or
``I``), or grey stored as RGB. Colour-coded masks (class = colour) are refused, since no
colour-to-class table comes with them. Optional ``train/`` and ``val/`` sub-folders,
each with ``images/`` and ``masks/``; otherwise a fixed 20 % is held out. The model is
:func:`visionzoo.tasks.create_segmentation_model` (a registered backbone with an FPN head by
default; ``--seg-head aspp``, or ``hrnetv2`` on an HRNet). Training adds horizontal flips and,
when asked, the usual segmentation augmentation (mmsegmentation's RandomResize with a ratio
range and RandomCrop, on the square resize this module trains at): ``--scale-range LO HI`` resizes image and mask by a random factor, then
crops ``--img-size`` at random (a smaller map is padded, its mask with the ignore label), and
``--color-jitter S`` varies brightness, contrast and saturation by factors in [1 - S, 1 + S].
Reported: per-class and mean IoU and Dice on the held-out images, computed at ``--img-size``
(images and masks resized to that square, masks by nearest neighbour).

AdamW, a linear warm-up over the first tenth of the steps, then a cosine decay to 0.

A run writes ``config.json``, ``metrics.csv``, ``summary.json``, ``model.safetensors`` (metadata:
backbone, head and its width, classes, preprocessing, the data folder), ``model_best.safetensors``
(the epoch of the best held-out mIoU), TensorBoard events (``tensorboard/``) and ``curves.png``
(loss, mIoU, mDice and pixel accuracy per epoch) where those packages are installed and, as
classification runs do, a training checkpoint in
``checkpoints/`` at each epoch end (and every ``--save-every-steps``): ``--resume`` continues
from it exactly, Ctrl-C or SIGTERM saves one mid-epoch and stops. Under ``torchrun`` the
processes train one network (DDP), each evaluating a shard of the held-out images; ``--amp``
trains in mixed precision.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from . import distributed as D
from .checkpoint import NewRunFolder, model_metadata, record_epochs, write_json_atomic
from .data import IMAGE_EXTENSIONS, DataError, load_image

__all__ = ["SegFolder", "SegmentConfig", "check_labelled", "check_pairs", "evaluate_segmentation", "folder_pairs", "image_input", "load_segmentation", "read_mask", "seg_metrics", "split_pairs", "train_segmentation"]

IGNORE = 255
# the default backbone: ConvNeXt-T's layout at a quarter of its width and depth
SMALL_BACKBONE = dict(depths=(1, 1, 2, 1), dims=(24, 48, 96, 192))


@dataclass
class SegmentConfig:
    """The options of ``visionzoo train --task segment`` (see the module docstring)."""

    data: str
    #: None: ConvNeXt-T's layout at a quarter of its width and depth (SMALL_BACKBONE, under any
    #: model_args given); "convnext_tiny" named: the whole ConvNeXt-T (its classification weights load)
    model: str | None = None
    head: str = "fpn"
    channels: int = 64
    model_args: dict[str, Any] | None = None
    num_classes: int | None = None
    img_size: int = 64
    #: random rescaling of image and mask by a factor in [lo, hi], then a random img_size crop
    scale_range: tuple[float, float] | None = None
    #: brightness, contrast and saturation factors drawn from [1 - color_jitter, 1 + color_jitter]
    color_jitter: float = 0.0
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    amp: str | None = None
    seed: int = 0
    pretrained: str | None = None
    output: str | None = None
    resume: bool = False
    save_every_steps: int = 0
    keep_checkpoints: int = 1
    workers: int = 0
    device: str | None = None
    progress: str = "auto"

    def check(self) -> None:
        """Raise ValueError (one line) for values training cannot use."""
        whole = self.model in WHOLE_NETWORKS
        if whole and (self.head != "fpn" or self.channels != SegmentConfig.channels):
            raise ValueError(f"{self.model} is a whole segmentation network: it takes no --seg-head or head width")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"--num-classes must be at least 2 (background and one class), got {self.num_classes}")
        if not 0 < self.lr < math.inf:  # inf trained to NaN weights, saved as the run's model
            raise ValueError(f"--lr must be positive and finite, got {self.lr}")
        if not 0 <= self.weight_decay < math.inf:  # (AdamW's own refusal does not name the option)
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        for name in ("epochs", "batch_size", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("save_every_steps", "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"--amp must be bf16 or fp16, got {self.amp!r}")
        if self.scale_range is not None:
            lo, hi = self.scale_range
            if not (0 < lo <= hi and math.isfinite(hi)):
                raise ValueError(f"--scale-range takes LO HI with 0 < LO <= HI, got {lo:g} {hi:g}")
        if not 0 <= self.color_jitter < 1:
            raise ValueError(f"--color-jitter must be in [0, 1), got {self.color_jitter:g}")
        from .engine import check_model_args

        check_model_args(self.model_args, SET_BY_THE_RUN)


#: the share of the steps over which the learning rate warms up, before its cosine decay to 0
WARMUP = 0.1
#: the columns of metrics.csv
METRICS_FIELDS = ("epoch", "step", "lr", "train_loss", "val_loss", "miou", "mdice", "pixel_acc")
#: the panels of curves.png (see :func:`visionzoo.train.engine.plot_curves`)
CURVES = (
    ("loss", (("train_loss", "train", "o-"), ("val_loss", "held-out", "o-"))),
    ("held-out", (("miou", "mIoU", "o-"), ("mdice", "mDice", "o-"), ("pixel_acc", "pixel accuracy", "o--"))),
)

#: create_segmentation_model's arguments that a run sets itself, and what sets each
SET_BY_THE_RUN = {
    "num_classes": "give --num-classes (default: the largest label in the masks + 1)",
    "in_chans": "the data sets it (the images are read as RGB: 3 channels)",
    "img_size": "give --img-size",
    "head": "give --seg-head",
    "channels": f"the head's width is the run's own ({SegmentConfig.channels}; SegmentConfig.channels in Python)",
    "checkpoint": "give --pretrained",
}

#: backbones that are whole segmentation networks: they take no --seg-head or head width, and --pretrained gives all their weights
WHOLE_NETWORKS = ("unext", "unext_s")


def read_mask(path: Path) -> Any:
    """A label map as an (H, W) integer array; colour masks and unreadable files are refused."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as m:
            mode, mask = m.mode, np.array(m)
    except OSError:
        raise DataError(f"{path}: not a readable mask image") from None
    if mask.ndim == 3:  # LA, RGB(A): the alpha channel aside, only grey stored in colour channels is a label map
        rgb = mask[..., :1] if mode in ("LA", "La") else mask[..., :3]
        if not ((rgb == rgb[..., :1]).all()):
            raise DataError(f"{path} is a colour image (mode {mode}); a mask must be a label map: one channel "
                            "(PNG mode L, P or I) whose values are class indices, 255 ignored")
        mask = rgb[..., 0]
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        raise DataError(f"{path}: mask values are {mask.dtype}, not class indices")
    return mask


def folder_pairs(root: Path) -> list[tuple[Path, Path]]:
    """The (image, mask) pairs of ``root/images`` and ``root/masks``, matched by file stem.
    Files in ``masks/`` that are not images (a class list, notes) are no one's mask; two masks
    of one stem, or a JPEG mask (its compression changes the labels along every edge), are
    refused by name."""
    img_dir, mask_dir = root / "images", root / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"{root}: no {d.name}/ folder (segmentation data: images/ and masks/ with the same file names)")
    # a link to nothing is listed, for the reader to name it, not skipped unsaid
    masks: dict[str, list[Path]] = {}
    for p in sorted(mask_dir.iterdir()):
        if not p.is_dir() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS:
            masks.setdefault(p.stem, []).append(p)
    pairs = []
    for p in sorted(img_dir.iterdir()):
        if p.is_dir() or p.name.startswith("."):
            continue
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{p}: not an image file")
        found = masks.get(p.stem)
        if not found:
            raise DataError(f"{p}: no mask {mask_dir / (p.stem + '.png')}")
        if len(found) > 1:
            raise DataError(f"{p} has {len(found)} masks, {' and '.join(m.name for m in found)} in {mask_dir}: keep one")
        if found[0].suffix.lower() in (".jpg", ".jpeg"):
            raise DataError(f"{found[0]}: a JPEG mask; JPEG's compression changes the labels along every edge (and adds "
                            "labels between them): save label maps as PNG")
        pairs.append((p, found[0]))
    if not pairs:
        raise DataError(f"{img_dir} is empty")
    return pairs


#: the fraction of a folder without ``val/`` that is held out (a fixed draw)
HELD_OUT = 0.2


def split_pairs(root: str | Path) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]]]:
    """(training, held-out) (image, mask) pairs of a segmentation folder: ``train/`` and
    ``val/`` where the folder has them, else a fixed ``HELD_OUT`` share of ``images/`` held out
    (the same draw on every call).

    Raises:
        DataError: a missing folder, an image without a mask, fewer than two images to split.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    if (root / "train").is_dir():
        train_pairs = folder_pairs(root / "train")
        val_pairs = folder_pairs(root / "val") if (root / "val").is_dir() else []
    else:
        train_pairs, val_pairs = folder_pairs(root), []
    if not val_pairs:
        if len(train_pairs) < 2:
            raise DataError(f"{root}: at least two images are needed to hold one out")
        shuffled = train_pairs[:]
        random.Random(0).shuffle(shuffled)
        n_val = max(1, round(HELD_OUT * len(shuffled)))
        val_pairs, train_pairs = sorted(shuffled[:n_val]), sorted(shuffled[n_val:])
    return train_pairs, val_pairs


def _rgb(path: str | Path) -> Tensor:
    """An image file as RGB floats in [0, 1], (3, H, W): its pixels as stored (EXIF orientation not
    applied, as classification applies it), for its mask labels those."""
    import numpy as np

    return torch.from_numpy(np.array(load_image(path, upright=False).convert("RGB"))).permute(2, 0, 1).float() / 255


def _normalize(x: Tensor, mean: Any, std: Any) -> Tensor:
    return (x - torch.as_tensor(mean).view(-1, 1, 1)) / torch.as_tensor(std).view(-1, 1, 1)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(3, H, W) image floats to ``size`` (bilinear), as the network's input is made."""
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


def image_input(path: str | Path, size: int, mean: Any, std: Any) -> tuple[Tensor, tuple[int, int]]:
    """An image as the network takes it: RGB, resized to ``size`` x ``size`` (bilinear),
    normalized; (3, size, size), and the image's own (H, W)."""
    x = _rgb(path)
    return _normalize(_resize(x, (size, size)), mean, std), (x.shape[1], x.shape[2])


def color_jitter(x: Tensor, strength: float, g: torch.Generator) -> Tensor:
    """Brightness, contrast and saturation of (3, H, W) floats in [0, 1], each scaled by a
    factor drawn from [1 - strength, 1 + strength], in that order, as torchvision defines them
    (contrast about the image's mean grey level, saturation about each pixel's grey; ITU-R 601
    luma), clamped to [0, 1] after each step."""
    b, c, s = (1 + strength * (2 * torch.rand(3, generator=g) - 1)).tolist()
    luma = torch.tensor([0.2989, 0.587, 0.114], dtype=x.dtype).view(3, 1, 1)
    x = (x * b).clamp_(0, 1)
    x = (x * c + (1 - c) * (x * luma).sum(0).mean()).clamp_(0, 1)
    return (x * s + (1 - s) * (x * luma).sum(0, keepdim=True)).clamp_(0, 1)


def crop_or_pad(x: Tensor, y: Tensor, size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """A random ``size`` x ``size`` window of a normalized square image (3, S, S) and its mask
    (S, S); where S < size, the square is placed at a random offset in a ``size`` square
    filled with 0 (the mean colour) and, in the mask, the ignore label."""
    side = x.shape[-1]
    if side >= size:
        top, left = (int(v) for v in torch.randint(0, side - size + 1, (2,), generator=g))
        return x[:, top : top + size, left : left + size], y[top : top + size, left : left + size]
    top, left = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=g))
    xp, yp = x.new_zeros(3, size, size), y.new_full((size, size), IGNORE)
    xp[:, top : top + side, left : left + side], yp[top : top + side, left : left + side] = x, y
    return xp, yp


class SegFolder(Dataset):
    """(image, mask) pairs resized to a square; training adds horizontal flips and, where
    given, a random rescaling by a factor in ``scale_range`` with :func:`crop_or_pad` back to
    the square, and :func:`color_jitter`. A training sample's random draws depend only on
    (seed, epoch, index), so a resumed run sees the same images."""

    def __init__(self, pairs: list[tuple[Path, Path]], size: int, mean: Any, std: Any, train: bool, *,
                 scale_range: tuple[float, float] | None = None, color_jitter: float = 0.0) -> None:
        self.pairs, self.size, self.train = pairs, size, train
        self.mean, self.std = mean, std
        self.scale_range, self.color_jitter = scale_range, color_jitter
        self.epoch, self.seed = 0, 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        ip, mp = self.pairs[i]
        x = _rgb(ip)
        y = torch.from_numpy(read_mask(mp).astype("int64"))  # H, W
        if x.shape[1:] != y.shape:
            raise DataError(f"{ip} is {tuple(x.shape[1:])} pixels but its mask {tuple(y.shape)}")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 100_003 + i) if self.train else None
        side = self.size
        if g is not None and self.scale_range is not None:  # rescaled by f in scale_range, then cropped or padded
            lo, hi = self.scale_range
            side = max(1, round(self.size * (lo + (hi - lo) * torch.rand((), generator=g).item())))
        x = _resize(x, (side, side))
        # nearest-exact: each cell reads the source pixel under its centre, as the bilinear image resize
        # samples at the centres (torch's "nearest" reads the cell's top-left: the labels half a cell off)
        y = F.interpolate(y[None, None].float(), size=(side, side), mode="nearest-exact")[0, 0].long()
        if g is not None:
            if torch.rand((), generator=g) < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            if self.color_jitter:
                x = color_jitter(x, self.color_jitter, g)
        x = _normalize(x, self.mean, self.std)
        if side != self.size:
            x, y = crop_or_pad(x, y, self.size, g)
        return x, y


def seg_metrics(conf: Tensor) -> dict[str, Any]:
    """Per-class and mean IoU and Dice from a (C, C) confusion matrix (rows: truth).

    Classes absent from both truth and prediction are left out of the means.
    """
    conf = conf.double()
    tp = conf.diag()
    fp = conf.sum(0) - tp
    fn = conf.sum(1) - tp
    union = tp + fp + fn
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.full_like(tp, float("nan")))
    present = union > 0
    return {
        "miou": float(iou[present].mean()) if present.any() else 0.0,
        "mdice": float(dice[present].mean()) if present.any() else 0.0,
        "iou": [None if math.isnan(v) else round(v, 6) for v in iou.tolist()],
        "dice": [None if math.isnan(v) else round(v, 6) for v in dice.tolist()],
        "pixel_acc": float(tp.sum() / conf.sum().clamp(min=1)),
    }


@torch.no_grad()
def evaluate_segmentation(model: torch.nn.Module, loader: DataLoader, num_classes: int, device: torch.device, *,
                          info: D.DistInfo | None = None, autocast: Any = None) -> dict[str, Any]:
    """Held-out loss (per labelled pixel) and :func:`seg_metrics` of ``model`` over ``loader``;
    with ``info`` of a data-parallel run, each rank's shard summed over all ranks."""
    model.eval()
    C = num_classes
    # sums kept on the device and read once at the end (a read per batch waits for the device);
    # the ignored pixels counted in an extra cell, dropped (boolean indexing and bincount read the
    # device too)
    conf = torch.zeros(C * C + 1, dtype=torch.long, device=device)
    losses = []
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast or nullcontext():
            out = model(x)
        out = out.float()
        losses.append(F.cross_entropy(out, y, ignore_index=IGNORE, reduction="sum"))
        cell = torch.where(y == IGNORE, C * C, y * C + out.argmax(1)).flatten()
        conf.index_add_(0, cell, torch.ones_like(cell))
    conf = conf[:-1].view(C, C).cpu()
    loss_sum = float(torch.stack(losses).cpu().double().sum()) if losses else 0.0
    n = int(conf.sum())
    if info is not None and info.enabled:
        conf = D.all_reduce_tensor(conf, info)
        loss_sum, n = D.all_reduce_sum([loss_sum, n], info)
    return {"loss": loss_sum / max(n, 1), **seg_metrics(conf)}


def train_segmentation(cfg: SegmentConfig) -> dict[str, Any]:
    """Train (or, with ``cfg.resume``, continue) a segmentation run; returns its summary.json (one
    resumed at the epochs it has already ended at: as it stands, with ``nothing_to_do`` set)."""
    if cfg.model is None:  # the default backbone: the small ConvNeXt, the options given over its layout
        cfg.model, cfg.model_args = "convnext_tiny", {**SMALL_BACKBONE, **(cfg.model_args or {})}
    cfg.check()
    info = D.init(cfg.device)
    folder = NewRunFolder()
    try:
        return _train(cfg, info, folder)
    except BaseException:
        folder.discard()  # as a classification run's: nothing left of a new run without a checkpoint
        raise
    finally:
        D.cleanup()


def check_pairs(pairs: list[tuple[Path, Path]], num_classes: int | None = None, *, limit: str = "--num-classes") -> int:
    """The class count (largest label + 1, or ``num_classes``), every pair checked first: a
    readable image and mask of the same size, labels within the classes (``limit`` names where
    a given count comes from, in the message)."""
    from PIL import Image

    top, top_mask = 0, None  # the largest label in the masks (255 ignored), and where
    for p, m in pairs:
        a = read_mask(m)
        try:
            with Image.open(p) as im:
                size = im.size[::-1]
        except OSError:
            raise DataError(f"{p}: not a readable image") from None
        if a.shape != size:
            raise DataError(f"{p} is {size} pixels but its mask {a.shape}")
        a = a[a != IGNORE]
        if a.size and int(a.min()) < 0:  # (a mode I mask; cross-entropy's own refusal named no file)
            raise DataError(f"{m} holds label {int(a.min())}; labels are class indices 0, 1, ... ({IGNORE}: ignored)")
        if a.size and int(a.max()) > top:
            top, top_mask = int(a.max()), m
    C = top + 1 if num_classes is None else num_classes
    if top >= C:
        raise DataError(f"{top_mask} holds label {top}, but {limit} {C} allows labels 0..{C - 1} (and {IGNORE}: ignored)")
    if C < 2:
        raise DataError(f"{pairs[0][1].parent.parent}: the masks hold a single class; segmentation needs at least two")
    return C


def check_labelled(pairs: list[tuple[Path, Path]], what: str) -> None:
    """Refuse pairs to score whose masks hold no labelled pixel: scored, they gave mIoU, pixel
    accuracy and loss 0 and every class 'absent', as if the network had failed on them."""
    import numpy as np

    if not any(np.any(read_mask(m) != IGNORE) for _, m in pairs):
        raise DataError(f"{what}: its {len(pairs)} mask{'s hold' if len(pairs) > 1 else ' holds'} no labelled pixel "
                        f"(every pixel {IGNORE}, ignored): nothing to score")


def _train(cfg: SegmentConfig, info: D.DistInfo, folder: NewRunFolder) -> dict[str, Any]:
    from ..checkpoints import save_state_dict
    from ..registry import get_entry
    from ..tasks import create_segmentation_model
    from .checkpoint import (finished_run, float_buffers, gather_per_rank, load_buffers, own_entry, restore_rng, restore_training, run_config,
                             run_folder, save_training_checkpoint)
    from .engine import StopRequests, TrainingStopped, _param_groups, _schedule, _tensorboard, _worker_init, amp_autocast, one_value_per_channel_said, plot_curves, read_step, write_csv

    whole = cfg.model in WHOLE_NETWORKS
    device = info.device
    autocast = amp_autocast(cfg.amp, device)
    out, resume_from = run_folder(cfg.output, cfg.resume, f"runs/seg-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}", info,
                                  what="a segmentation run", marker="model.safetensors")
    cfg.output = str(out)
    if resume_from is not None and (done := finished_run(out, resume_from[0], cfg.epochs)) is not None:
        return {**done, "nothing_to_do": True}  # the run has ended at cfg.epochs: its outputs stay as they are
    root = Path(cfg.data)
    train_pairs, val_pairs = split_pairs(root)
    C = check_pairs(train_pairs + val_pairs, cfg.num_classes)  # every pair checked before the run folder is made
    check_labelled(val_pairs, f"{root}'s held-out split")
    if len(train_pairs) < info.world_size:
        raise ValueError(f"the training split has {len(train_pairs)} images, fewer than the {info.world_size} processes")
    entry = None if whole else get_entry(cfg.model)
    dcfg = entry.default_cfg if entry else {}
    mean, std = dcfg.get("mean", (0.485, 0.456, 0.406)), dcfg.get("std", (0.229, 0.224, 0.225))
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    if cfg.model_args is None:
        cfg.model_args = {}
    kwargs: dict[str, Any] = dict(cfg.model_args)
    kwargs.update(checkpoint=None if resume_from else cfg.pretrained)  # a whole network's: all its weights (its class layer if the count fits)
    if entry is not None:
        kwargs.update(head=cfg.head)
        if cfg.head != "hrnetv2":  # HRNetV2's head has its own width and takes any size
            kwargs.update(channels=cfg.channels, img_size=cfg.img_size)
    model = create_segmentation_model(cfg.model, C, **kwargs).to(device)
    train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if info.enabled else model
    torch.manual_seed(cfg.seed + 1_000_003 * info.rank)  # dropout: independent draws per rank
    train_ds = SegFolder(train_pairs, cfg.img_size, mean, std, train=True, scale_range=cfg.scale_range, color_jitter=cfg.color_jitter)
    train_ds.seed = cfg.seed
    val_ds = SegFolder(val_pairs, cfg.img_size, mean, std, train=False)
    sampler = D.ResumableSampler(train_ds, info, seed=cfg.seed, drop_last=False)
    drop_last = sampler.num_samples > cfg.batch_size
    per_epoch = sampler.num_samples // cfg.batch_size if drop_last else math.ceil(sampler.num_samples / cfg.batch_size)
    loader_kw: dict[str, Any] = dict(num_workers=cfg.workers, pin_memory=device.type == "cuda", worker_init_fn=_worker_init if cfg.workers else None)
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, sampler=D.ShardSampler(len(val_ds), info), **loader_kw)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    total = cfg.epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(total, max(1, round(WARMUP * total)), 0.0))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    epoch, batch_in_epoch, step, train_seconds, sums = 0, 0, 0, 0.0, [0.0, 0.0]  # sums: loss x images, images
    history: list[dict[str, Any]] = []
    if resume_from is not None:
        st = restore_training(resume_from, model, opt, sched, scaler, world_size=info.world_size, epochs=cfg.epochs,
                              name=f"the {cfg.model} network of this run")
        epoch, batch_in_epoch, step = st["epoch"], st["batch_in_epoch"], st["global_step"]
        train_seconds, sums, history = st["train_seconds"], list(own_entry(st["epoch_sums"], info.rank)), list(st["history"])
        restore_rng(own_entry(st["rng"], info.rank))
        if st.get("buffers"):  # torchrun: this rank's own BatchNorm statistics
            load_buffers(model, st["buffers"][info.rank])
    meta = model_metadata(cfg.model, cfg.model_args or {}, [str(c) for c in range(C)],
                          {"img_size": cfg.img_size, "mean": list(mean), "std": list(std)}, task="segment",
                          data_path=str(root.resolve()), **({} if whole else {"head": cfg.head, "channels": kwargs.get("channels")}))
    show = cfg.progress != "none" and info.is_main
    if info.is_main:
        if resume_from is None:
            folder.make(out)
            write_json_atomic({"task": "segment", **run_config(cfg)}, out / "config.json")
        else:
            out.mkdir(parents=True, exist_ok=True)
            record_epochs(out, cfg.epochs)
        if resume_from is not None and show:
            print(f"resuming {out} at epoch {epoch + 1}, step {step} ({resume_from[0].name})", flush=True)
            if "schedule_note" in st:
                print(st["schedule_note"], flush=True)
    D.barrier(info)
    ckpt_path: Path | None = resume_from[0] if resume_from else None

    def save(reason: str = "") -> None:
        nonlocal ckpt_path
        # every rank's RNG states, sums and (torchrun) BatchNorm statistics travel to rank 0, which alone writes
        ranks = gather_per_rank(info, epoch_sums=list(sums), **({"buffers": float_buffers(model)} if info.enabled else {}))
        if not info.is_main:
            return
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                 "epoch": epoch, "batch_in_epoch": batch_in_epoch, "global_step": step, "train_seconds": train_seconds,
                 "history": history, "world_size": info.world_size, **ranks}
        ckpt_path = save_training_checkpoint(out, step, model.state_dict(), meta, state, keep=cfg.keep_checkpoints)
        if reason and show:
            print(f"{reason}: checkpoint {ckpt_path}", flush=True)

    stop = StopRequests()  # Ctrl-C or SIGTERM: finish the current step, save, stop
    interrupted = False
    tb = _tensorboard(out / "tensorboard", purge_step=len(history)) if info.is_main else None
    try:
        while epoch < cfg.epochs:
            train_ds.epoch = epoch
            sampler.set_position(epoch, batch_in_epoch * cfg.batch_size)
            loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last, **loader_kw)
            train_model.train()
            t_last = time.perf_counter()
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with autocast:
                    with one_value_per_channel_said(cfg.batch_size, cfg.model, info):
                        out_ = train_model(x)
                    # per labelled pixel; 0 for a batch whose pixels are all ignored (a crop of an ignored
                    # region), where the mean over no pixel is NaN
                    labelled = (y != IGNORE).sum().clamp(min=1)
                    loss = F.cross_entropy(out_.float(), y, ignore_index=IGNORE, reduction="sum") / labelled
                bad, stop_now, loss_value, _ = read_step(loss, [], stop.requested, info)
                if bad:
                    raise TrainingStopped(f"the loss became NaN/Inf at epoch {epoch + 1}, step {step + 1}; stopped without saving. "
                                          f"Last good checkpoint: {ckpt_path or 'none yet'} (lower --lr)")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                batch_in_epoch += 1
                sums[0] += loss_value * len(x)
                sums[1] += len(x)
                train_seconds += time.perf_counter() - t_last
                if stop_now:
                    interrupted = True
                    break
                if cfg.save_every_steps and step % cfg.save_every_steps == 0 and batch_in_epoch < per_epoch:
                    save()
                t_last = time.perf_counter()
            if interrupted:
                save("interrupted")
                break
            loss_sum, count = D.all_reduce_sum(sums, info)
            D.average_norm_statistics(model, info)
            ev = evaluate_segmentation(model, val_loader, C, device, info=info, autocast=autocast)
            row = {"epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"], "train_loss": loss_sum / max(count, 1), "val_loss": ev["loss"], "miou": ev["miou"],
                   "mdice": ev["mdice"], "pixel_acc": ev["pixel_acc"], "iou": ev["iou"], "dice": ev["dice"]}
            history.append(row)
            epoch, batch_in_epoch, sums = epoch + 1, 0, [0.0, 0.0]
            if show:
                print(f"epoch {epoch}/{cfg.epochs} train loss {row['train_loss']:.4f} | held-out loss {ev['loss']:.4f} "
                      f"mIoU {ev['miou']:.4f} mDice {ev['mdice']:.4f} pixel acc {ev['pixel_acc']:.4f}", flush=True)
            if info.is_main:
                write_csv(history, out / "metrics.csv", METRICS_FIELDS)
                if row["miou"] > max((r["miou"] for r in history[:-1]), default=-1.0):
                    save_state_dict(model.state_dict(), out / "model_best.safetensors", metadata=meta)
                if tb is not None:
                    for k in ("train_loss", "val_loss", "miou", "mdice", "pixel_acc", "lr"):
                        tb.add_scalar(k, row[k], row["epoch"])
                    tb.flush()
            save()
    finally:
        stop.restore()
        if tb is not None:
            tb.close()

    last = history[-1] if history else {}
    best = max(history, key=lambda r: r["miou"]) if history else {}
    summary = {
        "task": "segment", "model": cfg.model, "head": cfg.model if whole else cfg.head, "data": str(root), "num_classes": C,
        "train_images": len(train_ds), "heldout_images": len(val_ds), "img_size": cfg.img_size,
        "miou": last.get("miou"), "mdice": last.get("mdice"), "iou_per_class": last.get("iou"), "dice_per_class": last.get("dice"),
        "pixel_acc": last.get("pixel_acc"), "miou_per_epoch": [r["miou"] for r in history],
        "best_miou": best.get("miou"), "best_epoch": best.get("epoch"),
        "epochs": len(history), "epochs_planned": cfg.epochs, "train_seconds": round(train_seconds, 3), "world_size": info.world_size,
        "batch_size": cfg.batch_size, "amp": cfg.amp, "seed": cfg.seed, "interrupted": interrupted,
        "last_checkpoint": str(ckpt_path) if ckpt_path else None, "checkpoint": None,
    }
    if info.is_main:
        if not interrupted:
            save_state_dict(model.state_dict(), out / "model.safetensors", metadata=meta)
            summary["checkpoint"] = str(out / "model.safetensors")
        write_json_atomic(summary, out / "summary.json")
        if history:
            plot_curves(history, out / "curves.png", CURVES)
    return summary


def load_segmentation(checkpoint: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(network in eval mode, the checkpoint's metadata) of a ``visionzoo train --task segment`` run.

    The metadata names the backbone and its overrides, the head and its width, the classes
    and the preprocessing (``img_size``, ``mean``, ``std``); the network is rebuilt from them.

    Raises:
        CheckpointError: a missing or unreadable file, or a checkpoint that is not a segmentation run's.
    """
    from ..checkpoints import CheckpointError, read_state_dict
    from ..tasks import create_segmentation_model
    from .checkpoint import read_metadata

    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    meta = read_metadata(path)
    if meta.get("task") != "segment":
        raise CheckpointError(f"{path} is not a segmentation run's checkpoint (its metadata names no task 'segment')")
    kwargs: dict[str, Any] = dict(meta.get("overrides") or {})
    if meta["model"] not in WHOLE_NETWORKS:
        kwargs["head"] = meta.get("head", "fpn")
        if meta.get("channels") is not None:
            kwargs.update(channels=meta["channels"], img_size=meta["preprocessing"]["img_size"])
    model = create_segmentation_model(meta["model"], meta["num_classes"], **kwargs)
    try:
        model.load_state_dict(read_state_dict(path))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit the network its metadata describes ({str(e).splitlines()[0]})") from None
    return model.eval(), meta
