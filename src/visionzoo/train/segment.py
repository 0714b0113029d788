"""``visionzoo train --task segment``: semantic segmentation on a folder of images and label maps.

The folder holds ``images/`` and ``masks/`` with the same file stems; a mask is a label map
whose pixel values are class indices (255: ignored): one channel (PNG mode ``L``, ``P`` or
``I``), or grey stored as RGB. Colour-coded masks (class = colour) are refused, since no
colour-to-class table comes with them. Optional ``train/`` and ``val/`` sub-folders,
each with ``images/`` and ``masks/``; otherwise a fixed 20 % is held out. The model is
:func:`visionzoo.tasks.create_segmentation_model` (a registered backbone with an FPN head by
default; ``--seg-head aspp``, or ``hrnetv2`` on an HRNet). Training adds horizontal flips.
Reported: per-class and mean IoU and Dice on the held-out images, computed at ``--img-size``
(images and masks resized to that square, masks by nearest neighbour).

A run writes ``model.safetensors`` (metadata: backbone, head and its width, classes,
preprocessing), ``metrics.csv`` and ``summary.json``. Single process, no resume (classification
has those); the checkpoint is rewritten at each epoch end.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .checkpoint import model_metadata, write_json_atomic
from .data import IMAGE_EXTENSIONS, DataError, load_image

__all__ = ["SegFolder", "SegmentConfig", "load_segmentation", "read_mask", "seg_metrics", "split_pairs", "train_segmentation"]

IGNORE = 255
# the default backbone: ConvNeXt-T's layout at a quarter of its width and depth
SMALL_BACKBONE = dict(depths=(1, 1, 2, 1), dims=(24, 48, 96, 192))


@dataclass
class SegmentConfig:
    data: str
    model: str = "convnext_tiny"
    head: str = "fpn"
    channels: int = 64
    model_args: dict[str, Any] | None = None  # None: a small ConvNeXt (SMALL_BACKBONE) when model is the default
    num_classes: int | None = None
    img_size: int = 64
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 0
    pretrained: str | None = None
    output: str | None = None
    device: str | None = None
    progress: str = "auto"


#: backbones that are whole segmentation networks: they take no --seg-head, head width or checkpoint
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
    if mask.ndim == 3:  # RGB(A): only grey stored in colour channels is a label map
        rgb = mask[..., :3]
        if not ((rgb == rgb[..., :1]).all()):
            raise DataError(f"{path} is a colour image (mode {mode}); a mask must be a label map: one channel "
                            "(PNG mode L, P or I) whose values are class indices, 255 ignored")
        mask = rgb[..., 0]
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        raise DataError(f"{path}: mask values are {mask.dtype}, not class indices")
    return mask


def _pairs(root: Path) -> list[tuple[Path, Path]]:
    img_dir, mask_dir = root / "images", root / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"{root}: no {d.name}/ folder (segmentation data: images/ and masks/ with the same file names)")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    pairs = []
    for p in sorted(img_dir.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{p}: not an image file")
        if p.stem not in masks:
            raise DataError(f"{p}: no mask {mask_dir / (p.stem + '.png')}")
        pairs.append((p, masks[p.stem]))
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
        train_pairs = _pairs(root / "train")
        val_pairs = _pairs(root / "val") if (root / "val").is_dir() else []
    else:
        train_pairs, val_pairs = _pairs(root), []
    if not val_pairs:
        if len(train_pairs) < 2:
            raise DataError(f"{root}: at least two images are needed to hold one out")
        shuffled = train_pairs[:]
        random.Random(0).shuffle(shuffled)
        n_val = max(1, round(HELD_OUT * len(shuffled)))
        val_pairs, train_pairs = sorted(shuffled[:n_val]), sorted(shuffled[n_val:])
    return train_pairs, val_pairs


class SegFolder(Dataset):
    """(image, mask) pairs resized to a square; training adds horizontal flips."""

    def __init__(self, pairs: list[tuple[Path, Path]], size: int, mean: Any, std: Any, train: bool) -> None:
        self.pairs, self.size, self.train = pairs, size, train
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.epoch, self.seed = 0, 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        import numpy as np

        ip, mp = self.pairs[i]
        img = load_image(ip).convert("RGB")
        mask = read_mask(mp)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255  # 3, H, W
        y = torch.from_numpy(mask.astype("int64"))  # H, W
        if x.shape[-2:] != y.shape:
            raise DataError(f"{ip} is {tuple(x.shape[-2:])} pixels but its mask {tuple(y.shape)}")
        x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        y = F.interpolate(y[None, None].float(), size=(self.size, self.size), mode="nearest")[0, 0].long()
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 100_003 + i)
            if torch.rand((), generator=g) < 0.5:
                x, y = x.flip(-1), y.flip(-1)
        return (x - self.mean) / self.std, y


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
def _evaluate(model: torch.nn.Module, loader: DataLoader, C: int, device: torch.device) -> dict[str, Any]:
    model.eval()
    conf = torch.zeros(C, C, dtype=torch.long)
    loss_sum, n = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss_sum += F.cross_entropy(out, y, ignore_index=IGNORE, reduction="sum").item()
        n += int((y != IGNORE).sum())
        pred = out.argmax(1)
        keep = y != IGNORE
        conf += torch.bincount((y[keep] * C + pred[keep]).cpu(), minlength=C * C).view(C, C)
    return {"loss": loss_sum / max(n, 1), **seg_metrics(conf)}


def train_segmentation(cfg: SegmentConfig) -> dict[str, Any]:
    from PIL import Image

    from ..checkpoints import save_state_dict
    from ..registry import get_entry
    from ..tasks import create_segmentation_model

    whole = cfg.model in WHOLE_NETWORKS
    if whole and (cfg.head != "fpn" or cfg.pretrained is not None or cfg.channels != SegmentConfig.channels):
        raise ValueError(f"{cfg.model} is a whole segmentation network: it takes no --seg-head, head width or --pretrained backbone")
    if cfg.num_classes is not None and cfg.num_classes < 2:
        raise ValueError(f"--num-classes must be at least 2 (background and one class), got {cfg.num_classes}")
    if not cfg.lr > 0:
        raise ValueError(f"--lr must be positive, got {cfg.lr}")
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    out = Path(cfg.output or f"runs/seg-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} is a file; give the folder to write the run to")
    if (out / "model.safetensors").exists():
        raise ValueError(f"{out} already holds a segmentation run; choose another --output")
    root = Path(cfg.data)
    train_pairs, val_pairs = split_pairs(root)
    top, top_mask = 0, None  # the largest label in the masks (255 ignored), and where
    for p, m in train_pairs + val_pairs:  # every pair checked before the run folder is made
        a = read_mask(m)
        try:
            with Image.open(p) as im:
                size = im.size[::-1]
        except OSError:
            raise DataError(f"{p}: not a readable image") from None
        if a.shape != size:
            raise DataError(f"{p} is {size} pixels but its mask {a.shape}")
        a = a[a != IGNORE]
        if a.size and int(a.max()) > top:
            top, top_mask = int(a.max()), m
    C = top + 1 if cfg.num_classes is None else cfg.num_classes
    if top >= C:
        raise DataError(f"{top_mask} holds label {top}, but --num-classes {C} allows labels 0..{C - 1} (and {IGNORE}: ignored)")
    if C < 2:
        raise DataError(f"{root}: the masks hold a single class; segmentation needs at least two")
    entry = None if whole else get_entry(cfg.model)
    dcfg = entry.default_cfg if entry else {}
    mean, std = dcfg.get("mean", (0.485, 0.456, 0.406)), dcfg.get("std", (0.229, 0.224, 0.225))
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.model_args is None:
        cfg.model_args = dict(SMALL_BACKBONE) if cfg.model == "convnext_tiny" else {}
    kwargs: dict[str, Any] = dict(cfg.model_args)
    if entry is not None:
        kwargs.update(head=cfg.head, checkpoint=cfg.pretrained)
        if cfg.head != "hrnetv2":  # HRNetV2's head has its own width and takes any size
            kwargs.update(channels=cfg.channels, img_size=cfg.img_size)
    model = create_segmentation_model(cfg.model, C, **kwargs).to(device)
    train_ds = SegFolder(train_pairs, cfg.img_size, mean, std, train=True)
    train_ds.seed = cfg.seed
    val_ds = SegFolder(val_pairs, cfg.img_size, mean, std, train=False)
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=g, drop_last=len(train_ds) > cfg.batch_size)
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    train_seconds = 0.0
    show = cfg.progress != "none"
    for epoch in range(cfg.epochs):
        train_ds.epoch = epoch
        model.train()
        loss_sum, n = 0.0, 0
        t0 = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y, ignore_index=IGNORE)
            if not torch.isfinite(loss):
                raise RuntimeError(f"the loss became NaN/Inf at epoch {epoch + 1}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(x)
            n += len(x)
        train_seconds += time.perf_counter() - t0
        ev = _evaluate(model, val_loader, C, device)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(n, 1), "val_loss": ev["loss"], "miou": ev["miou"],
               "mdice": ev["mdice"], "pixel_acc": ev["pixel_acc"]}
        history.append(row)
        if show:
            print(f"epoch {epoch + 1}/{cfg.epochs} train loss {row['train_loss']:.4f} | held-out loss {ev['loss']:.4f} "
                  f"mIoU {ev['miou']:.4f} mDice {ev['mdice']:.4f} pixel acc {ev['pixel_acc']:.4f}", flush=True)
        meta = model_metadata(cfg.model, cfg.model_args or {}, [str(c) for c in range(C)],
                              {"img_size": cfg.img_size, "mean": list(mean), "std": list(std)}, task="segment",
                              **({} if whole else {"head": cfg.head, "channels": kwargs.get("channels")}))
        save_state_dict(model.state_dict(), out / "model.safetensors", metadata=meta)
        lines = ["epoch,train_loss,val_loss,miou,mdice,pixel_acc"] + [
            ",".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in ("epoch", "train_loss", "val_loss", "miou", "mdice", "pixel_acc"))
            for r in history
        ]
        (out / "metrics.csv").write_text("\n".join(lines) + "\n")
    summary = {
        "task": "segment", "model": cfg.model, "head": cfg.model if whole else cfg.head, "data": str(root), "num_classes": C,
        "train_images": len(train_ds), "heldout_images": len(val_ds), "img_size": cfg.img_size,
        "miou": ev["miou"], "mdice": ev["mdice"], "iou_per_class": ev["iou"], "dice_per_class": ev["dice"],
        "pixel_acc": ev["pixel_acc"], "miou_per_epoch": [r["miou"] for r in history],
        "epochs": cfg.epochs, "train_seconds": round(train_seconds, 3), "world_size": 1,
        "checkpoint": str(out / "model.safetensors"),
    }
    write_json_atomic(summary, out / "summary.json")
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
