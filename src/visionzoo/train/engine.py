"""The training loop: one function, :func:`train`, driven by a :class:`TrainConfig`.

What it does, in order: join the process group (torchrun) and pick the device; build the
data and the model (optionally from a pretrained checkpoint, with a new classifier);
optimizer (AdamW or SGD, no decay on norms, biases, tokens), per-step warmup + cosine
schedule, EMA, AMP scaler; then epochs of training (optionally summing the gradients of
``grad_accum_steps`` batches per optimizer step) with per-step checkpoints, evaluation
after each epoch and the run's records (CSV, TensorBoard, PNG, summary.json) on rank 0.

Resuming restores everything the next step depends on (weights, optimizer, scheduler, EMA,
scaler, the sampler's position inside the epoch, every RNG), so a run killed and resumed
ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from . import distributed as D
from ..checkpoints import CheckpointError
from .checkpoint import (
    STATE_SUFFIX,
    effective_overrides,
    finished_run,
    float_buffers,
    gather_per_rank,
    load_buffers,
    model_metadata,
    NewRunFolder,
    own_entry,
    record_epochs,
    restore_rng,
    restore_training,
    run_config,
    run_folder,
    save_training_checkpoint,
    write_json_atomic,
)
from ..base import count
from ..param_groups import param_groups_layer_decay, weight_decayed
from .data import DataBundle, build_data, builtin_dataset

__all__ = ["DEFAULT_MODELS", "TrainConfig", "TrainingStopped", "accuracy_text", "amp_autocast", "evaluate", "train"]

# The model ``visionzoo train`` uses when none is named: per dataset, (name, config overrides).
# On digits, a 4-block ConvMixer of width 64 with 5x5 depthwise kernels on 16x16 inputs (patch 1)
# reaches >= 99 % in 10 epochs; channels-last memory halves its CPU step time.
DEFAULT_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "digits": ("convmixer_256_8", dict(dim=64, depth=4, kernel_size=5, patch_size=1)),
}
DEFAULT_MODEL = ("convmixer_256_8", {})

#: create_model's arguments that a classification run sets itself, and what sets each
SET_BY_THE_RUN = {
    "num_classes": "the data sets it (one output per class: the class folders, or the dataset's classes)",
    "in_chans": "the data sets it (the images' channels: 1 for digits, mnist and fashion_mnist; 3 for cifar10, cifar100 "
                "and image folders, read as RGB)",
    "img_size": "give --img-size",
    "drop_path_rate": "give --drop-path",
    "features_only": "a classification run trains the classifier (backbones for dense heads: --task segment)",
    "out_indices": "it chooses features_only maps, and a classification run trains the classifier (--task segment takes it)",
    "device": "give --device",
    "dtype": "the run keeps float32 weights (give --amp bf16 or fp16 for mixed precision)",
}

#: create_model's arguments that name the weights it starts from: the model a run saves holds its
#: own, so the overrides recorded to rebuild it (its metadata) leave these out, and eval, predict
#: and --resume do not read the starting file again (which may have moved since)
WEIGHT_ARGUMENTS = ("checkpoint", "checkpoint_path", "pretrained", "pretrained_cfg_overlay")


def check_model_args(model_args: Mapping[str, Any] | None, set_by: Mapping[str, str]) -> None:
    """ValueError (one line) for a ``--model-arg`` that the run sets itself (``set_by``: each
    such argument and what sets it): it used to fail as a keyword given twice, or be overwritten."""
    taken = [k for k in model_args or {} if k in set_by]
    if taken:
        raise ValueError("; ".join(f"--model-arg {k}: not taken, {set_by[k]}" for k in taken))


class TrainingStopped(RuntimeError):
    """Training stopped on a condition the user should see as one line (a NaN loss)."""


@dataclass
class TrainConfig:
    """Every option of ``visionzoo train`` (see ``visionzoo train --help``)."""

    data: str = "digits"
    data_dir: str = "data"
    val_split: float | None = None
    model: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    img_size: int | None = None
    pretrained: str | None = None
    freeze_backbone: bool = False
    epochs: int = 10
    batch_size: int = 64
    #: optimizer step every N batches (their gradients summed, each loss divided by N): the
    #: effective batch is N * batch_size (per process)
    grad_accum_steps: int = 1
    lr: float = 1e-2
    #: None: 0.05 with AdamW (decoupled, DeiT's and ConvNeXt's), 1e-4 with SGD (an L2 term in the
    #: gradient that momentum amplifies: torchvision's ResNet recipe)
    weight_decay: float | None = None
    #: layer-wise learning-rate decay (BEiT's fine-tuning recipe): group i of n (stem 0 ... head,
    #: visionzoo.param_groups.layer_ids) learns at lr x layer_decay ** (n - 1 - i); None: off
    layer_decay: float | None = None
    opt: str = "adamw"
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    randaugment: bool = False
    clip_grad: float | None = None
    drop_path: float = 0.0
    ema: bool = False
    ema_decay: float = 0.998
    amp: str | None = None
    channels_last: bool | None = None  # None: on for the default digits model, off otherwise
    compile: bool = False
    grad_checkpointing: bool = False
    seed: int = 0
    teacher: str | None = None
    teacher_checkpoint: str | None = None
    distill_alpha: float = 0.5
    distill_tau: float = 1.0
    output: str | None = None
    resume: bool = False
    save_every_steps: int = 0
    keep_checkpoints: int = 1
    workers: int = 0
    device: str | None = None
    progress: str = "auto"
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.weight_decay is None:
            self.weight_decay = 1e-4 if self.opt == "sgd" else 0.05

    def check(self) -> None:
        """Raise ValueError (one line) for values training cannot use."""
        # NaN passes every comparison below and inf most of them: both would fail mid-run (a NaN
        # loss blamed on --lr, or an OverflowError building the schedule), not here naming the option
        for name in ("lr", "weight_decay", "warmup_epochs", "mixup", "cutmix", "clip_grad"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.grad_accum_steps < 1:
            raise ValueError(f"--grad-accum-steps must be at least 1, got {self.grad_accum_steps}")
        if not 0 <= self.min_lr_ratio < 1:
            raise ValueError(f"--min-lr-ratio must be in [0, 1), got {self.min_lr_ratio}")
        if self.log_every < 1:
            raise ValueError(f"--log-every must be at least 1, got {self.log_every}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"--layer-decay must be in (0, 1] (1: every layer at --lr), got {self.layer_decay}")
        if self.opt not in ("adamw", "sgd"):
            raise ValueError(f"--opt must be adamw or sgd, got {self.opt!r}")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"--amp must be bf16 or fp16, got {self.amp!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError("--mixup and --cutmix take a Beta-distribution alpha >= 0")
        if self.save_every_steps < 0:
            raise ValueError(f"--save-every-steps must be >= 0, got {self.save_every_steps}")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")
        if self.img_size is not None and self.img_size < 1:
            raise ValueError(f"--img-size must be positive, got {self.img_size}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"--clip-grad must be positive, got {self.clip_grad}")
        if bool(self.teacher) != bool(self.teacher_checkpoint):
            raise ValueError("distillation needs both --teacher NAME and --teacher-checkpoint FILE")
        if self.val_split is not None and not 0 < self.val_split < 1:
            raise ValueError(f"--val-split must be between 0 and 1, got {self.val_split}")
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"--drop-path must be in [0, 1), got {self.drop_path}")
        if self.warmup_epochs < 0:
            raise ValueError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.distill_alpha <= 1:
            raise ValueError(f"--distill-alpha must be in [0, 1] (the distillation term's weight, the labels' 1 - alpha), got {self.distill_alpha}")
        if not 0 < self.distill_tau < math.inf:
            raise ValueError(f"--distill-tau must be a positive temperature, got {self.distill_tau}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"--keep-checkpoints must be at least 1, got {self.keep_checkpoints}")
        check_model_args(self.model_args, SET_BY_THE_RUN)

    def resolve_channels_last(self) -> None:
        if self.channels_last is None:
            self.channels_last = self.model is None and self.data in DEFAULT_MODELS

    def resolved_model(self) -> tuple[str, dict[str, Any]]:
        if self.model:
            return self.model, dict(self.model_args)
        name, overrides = DEFAULT_MODELS.get(self.data, DEFAULT_MODEL)
        return name, {**overrides, **self.model_args}


# --------------------------------------------------------------------------- helpers
def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    spec = (getattr(model, "default_cfg", {}) or {}).get("classifier", "head")
    return (spec,) if isinstance(spec, str) else tuple(spec)


def _freeze_norm_statistics(model: nn.Module) -> None:
    """BatchNorms whose parameters are frozen (``--freeze-backbone``) in eval mode: they normalise
    with, and keep, their running statistics, so the frozen backbone computes what it did."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def enable_grad_checkpointing(model: nn.Module) -> None:
    """``set_grad_checkpointing`` on the model, or on the visionzoo classifiers inside it (a
    segmentation model's backbone)."""
    from ..base import VisionModel

    nets = [model] if isinstance(model, VisionModel) else [m for m in model.modules() if isinstance(m, VisionModel)]
    if not nets:
        raise ValueError(f"--grad-checkpointing: {type(model).__name__} has no blocks to recompute")
    for net in nets:
        net.set_grad_checkpointing()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decayed = weight_decayed(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if decayed(name, p) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _schedule(total: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return factor


def amp_autocast(amp: str | None, device: torch.device):
    """The autocast context of ``--amp`` (``bf16`` or ``fp16``) on ``device``, a null context
    for None; ValueError for fp16 off CUDA (its loss scaling is CUDA's)."""
    if amp is None:
        return nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class ModelEma(nn.Module):
    """An exponential moving average of a model's weights and buffers (``--ema``), with a warm-up:
    after n updates the decay is min(d, (1 + n) / (10 + n)), so early averages follow the weights;
    the first update copies them. timm's ModelEmaV3 with that decay.

    The state dict is ``torch.optim.swa_utils.AveragedModel``'s (``module.*`` and ``n_averaged``),
    which earlier versions used, so their training states resume. The count lives on the host: an
    AveragedModel compares it on its device and copies it there on every update, two waits for a
    GPU each step. As ``lerp`` (ema + (1 - d) (p - ema)): a tensor that does not change (a frozen
    backbone's weights, BatchNorm statistics) stays bit-identical, where ``ema d + p (1 - d)``
    rounds it away a little on every step (up to 4e-6 relative after 2,000 steps). Integer buffers
    (BatchNorm's ``num_batches_tracked``) are copied.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.decay = decay
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long))  # (kept on the host: never moved)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        ours = [*self.module.parameters(), *self.module.buffers()]
        theirs = [t.detach() for t in (*model.parameters(), *model.buffers())]
        k = int(self.n_averaged)
        floats = [i for i, t in enumerate(ours) if t.is_floating_point()]
        rest = [i for i, t in enumerate(ours) if not t.is_floating_point()]
        if k == 0:
            torch._foreach_copy_(ours, theirs)
        else:
            if floats:
                torch._foreach_lerp_([ours[i] for i in floats], [theirs[i] for i in floats], 1 - min(self.decay, (1 + k) / (10 + k)))
            if rest:
                torch._foreach_copy_([ours[i] for i in rest], [theirs[i] for i in rest])
        self.n_averaged += 1


def read_step(loss: Tensor, counts: Sequence[Tensor], stop_requested: bool, info: D.DistInfo) -> tuple[bool, bool, float, list[float]]:
    """A training step's numbers in one read of the device: whether the loss is NaN/Inf on any
    rank, whether any rank was asked to stop, this rank's loss and ``counts`` (0-d tensors).

    Each read (``.item()``) waits for the device to finish the step; on a GPU, three a step kept
    the host from queueing the next step's work while the device ran this one.
    """
    local = torch.stack([loss.detach().float().reshape(())] + [c.detach().float().reshape(()) for c in counts])
    if info.enabled:  # every rank stops together: the flags summed over the ranks
        # (new_full fills on the device: torch.tensor(..., device=) copies from the host and waits)
        flags = torch.stack([(~torch.isfinite(local[0])).float(), local.new_full((), float(stop_requested))])
        values = torch.cat([D.all_reduce_tensor(flags, info), local]).tolist()
        return values[0] > 0, values[1] > 0, values[2], values[3:]
    values = local.tolist()
    return not math.isfinite(values[0]), stop_requested, values[0], values[1:]


def all_finite(module: nn.Module) -> bool:
    """Whether every parameter of ``module`` is finite, read from the device once (a read per
    parameter is a GPU synchronisation each)."""
    flags = [torch.isfinite(p).all() for p in module.parameters()]
    return not flags or bool(torch.stack([f.to(flags[0].device) for f in flags]).all())


def _mixer(mixup: float, cutmix: float, num_classes: int) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """``(images, labels) -> (mixed images, soft targets)`` of ``--mixup`` / ``--cutmix`` (their
    Beta alphas; None where both are 0): torchvision's MixUp and CutMix, one of them chosen at
    random per batch where both are on (timm's ``switch_prob`` 0.5). As timm's Mixup (batch mode):
    one lambda per batch, each image mixed with another of the batch (the previous one; timm's: the
    mirrored one), CutMix's lambda corrected to the pasted box's area (its sides even: 2 floor(r W / 2)
    against timm's floor(r W)). Label smoothing is the loss's, which on these targets gives timm's
    smoothed ones."""
    if not (mixup > 0 or cutmix > 0):
        return None
    from torchvision.transforms import v2

    parts = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []) + (
        [v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else [])
    return parts[0] if len(parts) == 1 else v2.RandomChoice(parts)


def _worker_init(_: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, info: D.DistInfo, *, num_classes: int,
             autocast: Any = None, channels_last: bool = False, confusion: bool = False) -> dict[str, Any]:
    """Loss, top-1 and top-5 (fractions) and, with ``confusion``, the (true, predicted) count matrix
    over the loader, summed over all ranks."""
    model.eval()
    # per batch, sums kept on the device and read once at the end (a read per batch waits for the
    # device each time): the loss summed in float32 per batch, the batches' sums added in float64
    n, losses, hits = 0, [], []
    cm = torch.zeros(num_classes * num_classes, dtype=torch.long, device=info.device) if confusion else None
    k = min(5, num_classes)
    for x, y in loader:
        x, y = x.to(info.device, non_blocking=True), y.to(info.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast or nullcontext():
            out = model(x)
        if isinstance(out, (tuple, list)):
            out = (out[0] + out[1]) / 2
        out = out.float()
        losses.append(F.cross_entropy(out, y, reduction="sum"))
        # ranked by a stable sort: among equal logits (bf16 autocast, a collapsed network) the lowest class
        # index first, as argmax (the training accuracy), numpy and scikit-learn rank them; topk's order
        # among ties is its kernel's, and differs between CPU and GPU
        top = out.sort(dim=1, descending=True, stable=True).indices[:, :k]
        hits.append(torch.stack([(top[:, 0] == y).sum(), (top == y[:, None]).any(dim=1).sum()]))
        n += len(y)
        if cm is not None:
            cell = y * num_classes + top[:, 0]  # (bincount reads the largest index from a GPU first)
            cm.index_add_(0, cell, torch.ones_like(cell))
    loss_sum = float(torch.stack(losses).cpu().double().sum()) if losses else 0.0
    c1, c5 = torch.stack(hits).sum(dim=0).tolist() if hits else (0, 0)
    n, loss_sum, c1, c5 = D.all_reduce_sum([n, loss_sum, c1, c5], info)
    if n == 0:
        raise ValueError("the evaluation split is empty")
    out = {"loss": loss_sum / n, "top1": c1 / n, "top5": c5 / n, "count": int(n)}
    if cm is not None:  # (each rank's matrix holds its own images only)
        out["confusion"] = D.all_reduce_tensor(cm.view(num_classes, num_classes).cpu(), info)
    return out


def shows_top5(num_classes: int) -> bool:
    """Whether top-5 is shown (printed, plotted) for data of ``num_classes`` classes: only with
    more than 5, since with 5 or fewer every class is among the best 5, so it is 1 whatever the
    network (timm prints it as 100 %). summary.json and ``--json`` keep it."""
    return num_classes > 5


def accuracy_text(top1: float, top5: float, num_classes: int, sep: str = " ") -> str:
    """``top-1 0.9000 top-5 0.9900`` as the command line prints it; top-5 only where
    :func:`shows_top5`."""
    return f"top-1 {top1:.4f}" + (f"{sep}top-5 {top5:.4f}" if shows_top5(num_classes) else "")


class _Progress:
    """tqdm bar on a terminal, plain log lines otherwise; silent on ranks other than 0."""

    def __init__(self, mode: str, is_main: bool, log_every: int) -> None:
        tty = sys.stderr.isatty()
        self.bar_mode = is_main and (mode == "bar" or (mode == "auto" and tty))
        self.lines = is_main and not self.bar_mode and mode != "none"
        self.log_every = max(1, log_every)
        self.bar = None

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int) -> None:
        self.epoch, self.epochs, self.total = epoch, epochs, total
        if self.bar_mode:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)

    def step(self, i: int, loss: float, acc: float, ips: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", img_s=f"{ips:.0f}", refresh=False)
        elif self.lines and (i + 1) % self.log_every == 0 and i + 1 < self.total:
            print(f"epoch {self.epoch + 1}/{self.epochs} step {i + 1}/{self.total} loss {loss:.4f} acc {acc:.4f} img/s {ips:.0f}", flush=True)

    def end_epoch(self, line: str) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.bar_mode or self.lines:
            print(line, flush=True)

    def note(self, line: str) -> None:
        if self.bar_mode or self.lines:
            (self.bar.write if self.bar is not None else print)(line)


# --------------------------------------------------------------------------- records
CSV_FIELDS = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "epoch_seconds", "img_per_s"]


def write_csv(history: list[dict[str, Any]], path: Path, fields: Sequence[str] = CSV_FIELDS) -> None:
    """The per-epoch rows' ``fields`` as a CSV file (floats to 6 significant digits), replaced whole."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    tmp = path.with_suffix(".csv.tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(path)


#: the panels of a classification run's curves.png: (y label, [(metrics.csv column, legend, style)])
CLASSIFICATION_CURVES = (
    ("loss", (("train_loss", "train", "o-"), ("val_loss", "held-out", "o-"))),
    ("accuracy", (("train_acc", "train", "o-"), ("val_top1", "held-out top-1", "o-"), ("val_top5", "held-out top-5", "o--"))),
)


def _curves(num_classes: int) -> Sequence:
    """The panels of a classification run's curves.png: without top-5 where it is 1 throughout
    (:func:`shows_top5`)."""
    if shows_top5(num_classes):
        return CLASSIFICATION_CURVES
    return tuple((label, tuple(c for c in cols if c[0] != "val_top5")) for label, cols in CLASSIFICATION_CURVES)


def plot_curves(history: list[dict[str, Any]], path: Path, panels: Sequence = CLASSIFICATION_CURVES) -> bool:
    """The per-epoch ``history`` as a PNG, one panel per entry of ``panels`` (a y label and
    the columns it plots); False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ep = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels):
        for key, label, style in lines:
            ax.plot(ep, [r[key] for r in history], style, label=label)
        ax.set_xlabel("epoch"), ax.set_ylabel(ylabel), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _tensorboard(path: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path), purge_step=purge_step)


# --------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) a classifier; returns the summary written to summary.json. A run resumed
    at the epochs it has already ended at trains nothing and writes nothing: its summary.json as
    it stands comes back, with ``nothing_to_do`` set."""
    cfg.check()
    cfg.resolve_channels_last()
    info = D.init(cfg.device)
    folder = NewRunFolder()
    try:
        return _train(cfg, info, folder)
    except BaseException:
        folder.discard()  # a new run that failed before its first checkpoint leaves nothing behind
        raise
    finally:
        D.cleanup()


def _starting_weights(cfg: TrainConfig, model_name: str, overrides: Mapping[str, Any]) -> str | None:
    """The file a new run starts from: ``--pretrained``, or create_model's own ways of naming
    weights given as ``--model-arg`` (``checkpoint=FILE``, timm's ``checkpoint_path=FILE``, and
    ``pretrained=True`` with ``pretrained_cfg_overlay=dict(file=FILE)``), checked as create_model
    checks them. Loaded as ``--pretrained`` is, so both say what they loaded (a new classifier);
    ValueError (one line) where both name a file."""
    from ..factory import _timm_weight_arguments

    given = {k: overrides[k] for k in WEIGHT_ARGUMENTS if k in overrides}
    file, _ = _timm_weight_arguments(model_name, bool(given.get("pretrained")), given.get("checkpoint"), given.get("checkpoint_path"),
                                     given.get("pretrained_cfg_overlay"))
    if file is not None and cfg.pretrained:
        raise ValueError(f"--pretrained {cfg.pretrained} and --model-arg {', '.join(sorted(given))} both name the weights to start from; give one")
    file = cfg.pretrained or file
    if file is not None and not isinstance(file, (str, os.PathLike)):
        raise ValueError(f"--model-arg checkpoint takes a file, got {file!r}")
    if file is not None and str(file).endswith(STATE_SUFFIX):  # (its loader's words: "entries that are not tensors")
        from .inference import _training_state_message

        raise CheckpointError(_training_state_message(Path(file)))
    return None if file is None else str(file)


def _train(cfg: TrainConfig, info: D.DistInfo, folder: NewRunFolder) -> dict[str, Any]:
    from ..checkpoints import load_checkpoint
    from ..factory import create_model, default_cfg_of
    from ..registry import get_entry

    device = info.device
    autocast = amp_autocast(cfg.amp, device)
    model_name, overrides = cfg.resolved_model()
    if cfg.pretrained and not cfg.model_args:
        # weights written by visionzoo train name their model and configuration: fine-tune that architecture
        from .checkpoint import read_metadata

        meta = read_metadata(cfg.pretrained)
        if meta.get("model") and (cfg.model is None or get_entry(cfg.model).name == meta["model"]):
            model_name, overrides = meta["model"], dict(meta.get("overrides", {}))
    entry = get_entry(model_name)  # unknown names fail before any work
    model_name = entry.name

    # ---- output folder (rank 0 chooses, everyone agrees)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out, resume_from = run_folder(cfg.output, cfg.resume, f"runs/{model_name}-{stamp}", info)
    cfg.output = str(out)
    if resume_from is not None and (done := finished_run(out, resume_from[0], cfg.epochs)) is not None:
        return {**done, "nothing_to_do": True}  # the run has ended at cfg.epochs: its outputs stay as they are
    if resume_from is not None:
        # the configuration the run trained, as its checkpoint records it: loading --pretrained
        # may have changed it when the run began (EfficientNet's TensorFlow numerics)
        from .checkpoint import read_metadata

        saved = read_metadata(resume_from[0])
        if saved.get("model") == model_name and "overrides" in saved:
            overrides = dict(saved["overrides"])

    torch.manual_seed(cfg.seed)
    # ---- data
    # an image folder is prepared as the model expects (its default_cfg, which also checks the
    # --model-args before any data is read); digits and the torchvision sets as their own
    model_cfg = default_cfg_of(model_name, overrides)
    recorded = resume_from is not None  # (--data as config.json records it: a folder by its absolute path)
    data: DataBundle = build_data(
        cfg.data, data_dir=cfg.data_dir, img_size=cfg.img_size, seed=cfg.seed + 7919 * info.rank, val_split=cfg.val_split,
        randaugment=cfg.randaugment, model_cfg=None if builtin_dataset(cfg.data, recorded=recorded) else model_cfg, recorded=recorded,
    )
    if len(data.train) < info.world_size:
        raise ValueError(f"the training split has {len(data.train)} images, fewer than the {info.world_size} processes")
    # what the run says about itself, printed once it starts: a refusal on the way there is its one line
    # alone. (The split's note advises --val-split, which a resumed run does not take: said when it began.)
    notes = [data.split_note] if data.split_note and resume_from is None else []
    warned = []  # (on stderr)
    start = _starting_weights(cfg, model_name, overrides) if resume_from is None else None  # (a resumed run loads its own)
    overrides = {k: v for k, v in overrides.items() if k not in WEIGHT_ARGUMENTS}
    if cfg.freeze_backbone and start is None and resume_from is None:
        # a warning, not a refusal: random features under a trained classifier can be what is meant (a baseline)
        warned.append("warning: --freeze-backbone without --pretrained (or --model-arg checkpoint=FILE): only the classifier trains, "
                     "on a randomly initialised backbone")

    # ---- model (same initial weights on every rank: DDP also broadcasts rank 0's)
    torch.manual_seed(cfg.seed)
    model = create_model(model_name, num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size,
                         drop_path_rate=cfg.drop_path, **overrides)
    if start is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = load_checkpoint(model, start)
        new_head = f"; new classifier for {data.num_classes} classes" if report["dropped"] else ""
        # keys that fit ours as they are tell nothing of the file's origin (timm's ResNets have our
        # keys; plain torch.save files carry no metadata): say what was found, not who wrote it
        src = report["source"][0]
        layout = "keys already in visionzoo's layout" if src == "visionzoo" else f"{src} layout"
        notes.append(f"fine-tuning from {start} ({layout}){new_head}")
        del caught
    overrides = effective_overrides(model, entry.config, overrides)  # what the checkpoints must rebuild
    torch.manual_seed(cfg.seed + 1_000_003 * info.rank)  # dropout, mixup: independent draws per rank
    if cfg.freeze_backbone:
        heads = _classifier_prefixes(model)
        for name, p in model.named_parameters():
            p.requires_grad = any(name == h or name.startswith(h + ".") for h in heads)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"--freeze-backbone: found no classifier parameters ({heads}) to train")
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    distilled_student = bool(getattr(getattr(model, "cfg", None), "distilled", False)) and hasattr(model, "set_distilled_training")
    aux_weights = tuple(getattr(model, "aux_loss_weights", ()))  # Inception's auxiliary classifiers, when built
    teacher = None
    if cfg.teacher:
        from .inference import load_trained

        # a checkpoint written by visionzoo train carries its configuration overrides and class count
        teacher, tinfo = load_trained(cfg.teacher_checkpoint, cfg.teacher, img_size=data.img_size)
        if tinfo["num_classes"] != data.num_classes:
            raise ValueError(f"the teacher predicts {tinfo['num_classes']} classes, the data has {data.num_classes}")
        if tinfo["classes"] and list(tinfo["classes"]) != list(data.classes):  # (as eval refuses a checkpoint of other classes)
            diff = [f"{d!r} vs {t!r}" for d, t in zip(data.classes, tinfo["classes"]) if d != t]
            raise ValueError(f"{cfg.data}'s classes are not the teacher's ({cfg.teacher_checkpoint}): {', '.join(diff[:3])}"
                             f"{' ...' if len(diff) > 3 else ''} (data vs teacher, in label order)")
        teacher.requires_grad_(False).eval().to(device)
        if distilled_student:
            model.set_distilled_training(True)
            if cfg.distill_tau != 1.0:
                notes.append(f"note: --distill-tau {cfg.distill_tau:g} does not apply: {model_name} learns the teacher's hard labels "
                             f"through its distillation token, without a temperature (--distill-alpha weights that loss)")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    base_model = model
    ema = None
    if cfg.ema:
        ema = ModelEma(base_model, cfg.ema_decay)
    train_model: nn.Module = model
    ddp = None
    if info.enabled:
        train_model = ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    # evaluation runs the unwrapped model: DDP's forward first broadcasts rank 0's buffers, a
    # collective every rank must join, and a rank whose share of a small held-out split is empty
    # (more ranks than held-out images) never calls it; the others then waited for it until
    # Gloo's 30-minute timeout. The ranks' BatchNorm statistics are averaged before evaluation.
    plain_model: nn.Module = base_model
    if ddp is not None and cfg.compile:
        plain_model = torch.compile(base_model)
    elif ddp is None:
        plain_model = train_model

    # ---- loaders
    sampler = D.ResumableSampler(data.train, info, seed=cfg.seed, drop_last=False)
    # a last partial batch is dropped, as timm's loader drops it (a BatchNorm network cannot train
    # on a batch of one image with a 1x1 map), unless the split holds less than one batch
    drop_last = len(sampler) > cfg.batch_size
    loader_kw = dict(num_workers=cfg.workers, pin_memory=device.type == "cuda", worker_init_fn=_worker_init if cfg.workers else None,
                     persistent_workers=False)
    val_loader = DataLoader(data.val, batch_size=max(cfg.batch_size, 64), sampler=D.ShardSampler(len(data.val), info),
                            generator=torch.Generator().manual_seed(0), **loader_kw)
    per_rank = sampler.num_samples
    batches_per_epoch = per_rank // cfg.batch_size if drop_last else math.ceil(per_rank / cfg.batch_size)
    accum = cfg.grad_accum_steps
    steps_per_epoch = math.ceil(batches_per_epoch / accum)  # optimizer steps: the last may sum fewer batches
    total_steps = steps_per_epoch * cfg.epochs

    # ---- optimisation
    if cfg.layer_decay is None:
        groups = _param_groups(base_model, cfg.weight_decay)
    else:
        groups = param_groups_layer_decay(base_model, cfg.weight_decay, cfg.layer_decay)
        for g in groups:
            g["lr"] = cfg.lr * g["lr_scale"]  # the schedule scales each group's own peak
        if resume_from is None:
            notes.append(f"layer-wise lr decay {cfg.layer_decay:g}: {len({g['layer_id'] for g in groups})} depth groups, "
                         f"lr x {min(g['lr_scale'] for g in groups):.3g} (stem) to x 1 (head)")
    if cfg.opt == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    else:
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total_steps // 2)
    if warmup < int(round(cfg.warmup_epochs * steps_per_epoch)) and resume_from is None:
        span = (f"warming up over its first half ({count(warmup, 'step')})" if warmup
                else f"no warm-up in a run of {count(total_steps, 'step')}")  # (both counts >= 1: --epochs >= 1)
        notes.append(f"note: --warmup-epochs {cfg.warmup_epochs:g} is more than half of the run; {span}")
    schedule = _schedule(total_steps, warmup, cfg.min_lr_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    mix = _mixer(cfg.mixup, cfg.cutmix, data.num_classes)

    # ---- state to resume
    epoch, batch_in_epoch, global_step, train_seconds = 0, 0, 0, 0.0
    acc_sums = [0.0, 0.0, 0.0]  # loss sum, correct, count of the epoch so far
    history: list[dict[str, Any]] = []
    if resume_from is not None:
        st = restore_training(resume_from, base_model, opt, sched, scaler, world_size=info.world_size, epochs=cfg.epochs, name=model_name)
        if ema is not None and st.get("ema") is not None:
            ema.load_state_dict(st["ema"])
        epoch, batch_in_epoch, global_step = st["epoch"], st["batch_in_epoch"], st["global_step"]
        if "schedule_note" in st:
            notes.append(st["schedule_note"])
        train_seconds, acc_sums, history = st["train_seconds"], list(own_entry(st["epoch_sums"], info.rank)), list(st["history"])
        restore_rng(own_entry(st["rng"], info.rank))
        if st.get("buffers"):  # torchrun: this rank's own BatchNorm statistics of the weights it evaluates
            load_buffers(ema.module if ema is not None else base_model, st["buffers"][info.rank])
        notes.append(f"resuming {out} at epoch {epoch + 1}, step {global_step} ({resume_from[0].name})")
    if info.is_main:
        for line in warned:
            print(line, file=sys.stderr, flush=True)
        for note in notes:
            print(note, flush=True)
        if resume_from is None:
            folder.make(out)
            write_json_atomic(run_config(cfg), out / "config.json")
        else:
            out.mkdir(parents=True, exist_ok=True)
            record_epochs(out, cfg.epochs)
    D.barrier(info)

    preprocessing = data.preprocessing()
    split = {}
    if data.name == "digits":  # eval --data digits later holds out the same split
        split = {"data_path": "digits", "val_split": cfg.val_split}
    elif Path(data.name).is_dir():  # an image folder: eval on it later evaluates the same held-out split
        split = {"data_path": str(Path(data.name).resolve()), "val_split": cfg.val_split}
    meta = model_metadata(model_name, overrides, data.classes, preprocessing, data=data.name, task="classify", **split)
    tb = _tensorboard(out / "tensorboard", purge_step=len(history)) if info.is_main else None
    progress = _Progress(cfg.progress, info.is_main, cfg.log_every)
    ckpt_path: Path | None = resume_from[0] if resume_from else None

    def eval_model() -> nn.Module:
        return ema.module if ema is not None else plain_model

    def eval_weights() -> nn.Module:  # the evaluated weights, unwrapped: what model.safetensors holds
        return ema.module if ema is not None else base_model

    def save(reason: str = "") -> None:
        nonlocal ckpt_path
        # every rank's own state travels to rank 0, which alone writes: its RNG states, its sums of the
        # epoch so far and, under torchrun, the BatchNorm statistics of the weights it evaluates (each
        # rank updates its own, the EMA's through the epoch, until the epoch's end averages them)
        own = dict(epoch_sums=list(acc_sums), **({"buffers": float_buffers(eval_weights())} if info.enabled else {}))
        ranks = gather_per_rank(info, **own)
        if not info.is_main:
            return
        if not all_finite(base_model):
            raise TrainingStopped(f"weights became NaN/Inf at step {global_step}; kept the last good checkpoint {ckpt_path}")
        state = {
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "ema": ema.state_dict() if ema is not None else None,
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "global_step": global_step,
            "train_seconds": train_seconds, "history": history, "world_size": info.world_size, **ranks,
        }
        ckpt_path = save_training_checkpoint(out, global_step, base_model.state_dict(), meta, state, keep=cfg.keep_checkpoints)
        if reason:
            progress.note(f"{reason}: checkpoint {ckpt_path}")

    stop = StopRequests()  # Ctrl-C or SIGTERM: finish the current step, save, stop
    interrupted = False
    try:
        while epoch < cfg.epochs:
            sampler.set_position(epoch, batch_in_epoch * cfg.batch_size)
            if hasattr(data.train, "epoch"):
                data.train.epoch = epoch  # type: ignore[attr-defined]
            loader = DataLoader(data.train, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last,
                                generator=torch.Generator().manual_seed(cfg.seed + epoch), **loader_kw)
            train_model.train()
            if cfg.freeze_backbone:
                _freeze_norm_statistics(model)
            progress.start_epoch(epoch, cfg.epochs, batches_per_epoch, batch_in_epoch)
            t_epoch, seen = time.perf_counter(), 0
            t_last = t_epoch  # train_seconds: data loading + steps, without evaluation and checkpoint writing
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                hard = y
                if mix is not None:
                    x, y = mix(x, y)
                    hard = y.argmax(dim=1)
                # gradient accumulation: one optimizer step per group of `accum` batches (the epoch's
                # last group may be smaller), each batch's loss divided by its group's size
                group_start = batch_in_epoch - batch_in_epoch % accum
                group = min(accum, batches_per_epoch - group_start)
                last_of_group = batch_in_epoch + 1 - group_start == group
                if batch_in_epoch == group_start:
                    opt.zero_grad(set_to_none=True)
                with nullcontext() if last_of_group or ddp is None else ddp.no_sync():  # DDP averages gradients once per step
                    with autocast:
                        with one_value_per_channel_said(cfg.batch_size, model_name, info):
                            out_ = train_model(x)
                        loss, logits = _loss(out_, y, x, teacher, cfg, distilled_student, aux_weights)
                    n = len(hard)
                    bad, stop_now, loss_value, (correct,) = read_step(
                        loss, [(logits.detach().argmax(dim=1) == hard).sum()], stop.requested, info)
                    if bad:
                        raise TrainingStopped(
                            f"the loss became NaN/Inf at epoch {epoch + 1}, step {global_step + 1}; stopped without saving. "
                            f"Last good checkpoint: {ckpt_path or 'none yet'} (lower --lr or add --clip-grad)"
                        )
                    scaler.scale(loss / group).backward()
                batch_in_epoch += 1
                if last_of_group:
                    if cfg.clip_grad:
                        scaler.unscale_(opt)
                        nn.utils.clip_grad_norm_(base_model.parameters(), cfg.clip_grad)
                    scaler.step(opt)
                    scaler.update()
                    sched.step()
                    if ema is not None:
                        ema.update_parameters(base_model)
                    global_step += 1
                train_seconds += time.perf_counter() - t_last
                acc_sums[0] += loss_value * n
                acc_sums[1] += correct
                acc_sums[2] += n
                seen += n
                progress.step(batch_in_epoch - 1, acc_sums[0] / acc_sums[2], acc_sums[1] / acc_sums[2],
                              seen * info.world_size / max(time.perf_counter() - t_epoch, 1e-9))
                if last_of_group and stop_now:  # (a stop or a checkpoint waits for the optimizer step)
                    interrupted = True
                    break
                if last_of_group and cfg.save_every_steps and global_step % cfg.save_every_steps == 0 and batch_in_epoch < batches_per_epoch:
                    save()
                t_last = time.perf_counter()
            if interrupted:
                save("interrupted")
                break
            # ---- end of epoch: metrics over all ranks, evaluation, records, checkpoint
            epoch_time = time.perf_counter() - t_epoch
            loss_sum, correct, n_train = D.all_reduce_sum(acc_sums, info)
            D.average_norm_statistics(eval_weights(), info)
            ev = evaluate(eval_model(), val_loader, info, num_classes=data.num_classes, autocast=autocast,
                          channels_last=cfg.channels_last)
            row = {
                "epoch": epoch + 1, "step": global_step, "lr": max(g["lr"] for g in opt.param_groups),
                "train_loss": loss_sum / max(n_train, 1), "train_acc": correct / max(n_train, 1),
                "val_loss": ev["loss"], "val_top1": ev["top1"], "val_top5": ev["top5"],
                "epoch_seconds": epoch_time, "img_per_s": seen * info.world_size / max(epoch_time, 1e-9),
            }
            history.append(row)
            epoch += 1
            batch_in_epoch = 0
            acc_sums = [0.0, 0.0, 0.0]
            progress.end_epoch(
                f"epoch {row['epoch']}/{cfg.epochs} train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
                f"held-out loss {row['val_loss']:.4f} {accuracy_text(row['val_top1'], row['val_top5'], data.num_classes)} | "
                f"{row['img_per_s']:.0f} img/s"
            )
            if info.is_main:
                write_csv(history, out / "metrics.csv")
                best = row["val_top1"] > max((r["val_top1"] for r in history[:-1]), default=-1.0)  # timm's model_best
                if best and all_finite(eval_weights()):  # (NaN weights: save() stops the run)
                    from ..checkpoints import save_state_dict

                    save_state_dict(eval_weights().state_dict(), out / "model_best.safetensors", metadata=meta)
                if tb is not None:
                    for k in ("train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "lr"):
                        tb.add_scalar(k, row[k], row["epoch"])
                    tb.flush()
            save()
    finally:
        stop.restore()
        if tb is not None:
            tb.close()
        progress.end_epoch("") if progress.bar is not None else None

    summary = _summary(cfg, info, model_name, overrides, data, history, train_seconds, base_model, interrupted, ckpt_path)
    if info.is_main:
        if not interrupted:
            from ..checkpoints import save_state_dict

            save_state_dict(eval_weights().state_dict(), out / "model.safetensors", metadata=meta)
            summary["checkpoint"] = str(out / "model.safetensors")
        write_json_atomic(summary, out / "summary.json")
        if history:
            plot_curves(history, out / "curves.png", _curves(data.num_classes))
    return summary


@contextmanager
def one_value_per_channel_said(batch_size: int, model_name: str, info: D.DistInfo) -> Iterator[None]:
    """Around a training forward: torch's error for a BatchNorm layer that meets one value per
    channel raised again in :func:`_one_value_per_channel`'s words; any other error as it is."""
    try:
        yield
    except ValueError as e:
        if (why := _one_value_per_channel(e, batch_size, model_name, info)) is None:
            raise
        raise ValueError(why) from None


def _one_value_per_channel(e: ValueError, batch_size: int, model_name: str, info: D.DistInfo) -> str | None:
    """torch's error for a BatchNorm layer that sees one value per channel in training (a batch
    of one image, a 1x1 map: nothing to normalise by) in words that name what to change: torch's
    name no option. None for any other error."""
    if "Expected more than 1 value per channel when training" not in str(e):
        return None
    shape = str(e).rsplit("input size ", 1)[-1].removeprefix("torch.Size(").removesuffix(")")
    where = f"a BatchNorm layer of {model_name} got one value per channel in training (input {shape}: one image, a 1x1 map), which it cannot normalise"
    if batch_size == 1:
        return f"--batch-size 1: {where}; give a --batch-size of 2 or more, or a larger --img-size"
    # (a last batch of one image is dropped: only a split of one image per process gives one)
    each = " for each of its processes" if info.world_size > 1 else ""
    return f"{where}: the training split holds one image{each}; add images, or give a larger --img-size"


class StopRequests:
    """Ctrl-C (SIGINT) or SIGTERM (torchrun, job schedulers) sets ``requested`` instead of
    stopping, so a training loop can finish its step, save a checkpoint and stop; a second
    signal stops at once. Installed on creation (in the main thread only: elsewhere signals
    cannot be caught and ``requested`` stays False); :meth:`restore` puts the old handlers back."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}
        if threading_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _loss(out: Any, y: Tensor, x: Tensor, teacher: nn.Module | None, cfg: TrainConfig, distilled_student: bool,
          aux_weights: tuple[float, ...] = ()) -> tuple[Tensor, Tensor]:
    """(loss, logits for accuracy). Hard-label distillation through DeiT's distillation token; soft KD otherwise.
    A model with auxiliary classifiers (Inception's, ``aux_weights``) returns ``(logits, *aux)``
    in training: each auxiliary loss is added with its weight, and distillation acts on the logits."""
    ce = lambda logits, target: F.cross_entropy(logits.float(), target, label_smoothing=cfg.label_smoothing)
    if isinstance(out, (tuple, list)) and not distilled_student:
        if len(out) != len(aux_weights) + 1:
            raise ValueError(f"the model returned {len(out)} outputs in training; expected the logits and {len(aux_weights)} auxiliary logits")
        loss, logits = _loss(out[0], y, x, teacher, cfg, False)
        return loss + sum(w * ce(a, y) for w, a in zip(aux_weights, out[1:])), logits
    if isinstance(out, (tuple, list)):
        cls_logits, dist_logits = out
        logits = (cls_logits + dist_logits) / 2
        if teacher is None:  # no teacher: both heads learn the labels
            return 0.5 * ce(cls_logits, y) + 0.5 * ce(dist_logits, y), logits
        with torch.no_grad():
            t = teacher(x)
        # DeiT's hard-label distillation: (1 - alpha) CE(labels) + alpha CE(teacher's argmax), alpha 1/2 in the paper
        a = cfg.distill_alpha
        return (1 - a) * ce(cls_logits, y) + a * F.cross_entropy(dist_logits.float(), t.argmax(dim=1)), logits
    loss = ce(out, y)
    if teacher is not None:
        with torch.no_grad():
            t = teacher(x).float()
        tau = cfg.distill_tau
        kd = F.kl_div(F.log_softmax(out.float() / tau, dim=1), F.log_softmax(t / tau, dim=1), reduction="batchmean", log_target=True)
        loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * tau * tau * kd
    return loss, out


def _summary(cfg: TrainConfig, info: D.DistInfo, model_name: str, overrides: Mapping[str, Any], data: DataBundle,
             history: list[dict[str, Any]], train_seconds: float, model: nn.Module, interrupted: bool, ckpt: Path | None) -> dict[str, Any]:
    last = history[-1] if history else {}
    return {
        "model": model_name, "overrides": dict(overrides), "data": data.name,
        "num_classes": data.num_classes, "train_images": len(data.train), "heldout_images": len(data.val),
        "img_size": data.img_size, "params": sum(p.numel() for p in model.parameters()),
        "top1": last.get("val_top1"), "top5": last.get("val_top5"), "loss": last.get("val_loss"),
        "best_top1": max((r["val_top1"] for r in history), default=None),
        "best_epoch": max(history, key=lambda r: r["val_top1"])["epoch"] if history else None,
        "epochs": len(history), "epochs_planned": cfg.epochs, "train_seconds": round(train_seconds, 3),
        "world_size": info.world_size, "batch_size": cfg.batch_size, "grad_accum_steps": cfg.grad_accum_steps, "seed": cfg.seed,
        "ema": cfg.ema, "interrupted": interrupted, "last_checkpoint": str(ckpt) if ckpt else None,
        "device": str(info.device), "torch_threads": torch.get_num_threads(),
    }
