"""Rebuilding a trained classifier from its checkpoint; predicting images; confusion-matrix plots."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoints import CheckpointError, converted_state_dict, load_checkpoint, read_state_dict
from ..registry import default_num_classes
from .checkpoint import STATE_SUFFIX, read_metadata
from .data import DataError, eval_transform, load_image

__all__ = ["iter_predictions", "load_trained", "plot_confusion", "predict_images"]


def load_trained(checkpoint: str | os.PathLike, model_name: str | None = None, *, num_classes: int | None = None,
                 img_size: int | None = None, preprocessing: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, info) from a checkpoint written by ``visionzoo train`` or any known layout.

    ``info`` has ``classes`` (names, or None), ``preprocessing`` (img_size, in_chans, mean,
    std, crop_pct, crop_mode, interpolation: the checkpoint's when saved by training, else the model's
    default_cfg, then any given in ``preprocessing``) and ``model``. The model is built for
    the resulting img_size.

    Raises:
        CheckpointError: unreadable file, a checkpoint of another model.
        ValueError: no model name given and none stored in the checkpoint; a mean or std
            without one value per input channel.
    """
    from ..factory import create_model
    from ..registry import get_entry

    path = check_weights_file(checkpoint)
    meta = read_metadata(path)
    stored = meta.get("model")
    if meta.get("task") == "segment":
        raise CheckpointError(f"{path} is a segmentation network ({stored}); load_trained rebuilds classifiers: "
                              "visionzoo.train.segment.load_segmentation rebuilds it (visionzoo eval, predict and export take it too)")
    if model_name is None:
        if not stored:
            read_state_dict(path)  # an unreadable file is called that first, as it is with a model name
            raise ValueError(f"{path} does not name its model (not written by visionzoo train); pass --model NAME")
        model_name = stored
    entry = get_entry(model_name)
    if stored and stored != entry.name:
        raise CheckpointError(f"{path} is a checkpoint of {stored}, not of {entry.name}")
    overrides = dict(meta.get("overrides", {})) if stored else {}
    dcfg = entry.default_cfg
    prep = dict(meta.get("preprocessing") or {})
    prep.setdefault("img_size", int(dcfg["input_size"][-1]))
    foreign = None
    if "in_chans" not in prep:
        # a checkpoint without visionzoo's metadata: the channels its first convolution takes (a
        # 1-channel network was rebuilt for RGB, its stem adapted), the mean and std of the
        # default's channels repeated for a count that differs
        foreign = read_state_dict(path)  # read once for the channels and the classifier size
        prep["in_chans"] = _infer_in_chans(foreign, dcfg)
        for key, default in (("mean", (0.485, 0.456, 0.406)), ("std", (0.229, 0.224, 0.225))):
            values = list(dcfg.get(key, default))
            if key not in prep and len(values) != prep["in_chans"]:
                prep[key] = [sum(values) / len(values)] * prep["in_chans"]
    prep.setdefault("mean", list(dcfg.get("mean", (0.485, 0.456, 0.406))))
    prep.setdefault("std", list(dcfg.get("std", (0.229, 0.224, 0.225))))
    prep.setdefault("crop_pct", float(dcfg.get("crop_pct", 0.875)))
    prep.setdefault("crop_mode", str(dcfg.get("crop_mode", "center")))  # (checkpoints written before it was stored)
    prep.setdefault("interpolation", str(dcfg.get("interpolation", "bilinear")))
    prep.update(preprocessing or {})
    if img_size:
        prep["img_size"] = img_size
    for key in ("mean", "std"):
        if len(prep[key]) != prep["in_chans"]:
            raise ValueError(f"{key} {list(prep[key])} needs one value per input channel ({prep['in_chans']})")
    classes = meta.get("classes")
    if num_classes is None:
        num_classes = meta.get("num_classes")
        if not num_classes:  # a foreign checkpoint: its classifier as loading would convert it (CLIP's visual.proj)
            sd = foreign if foreign is not None else read_state_dict(path)
            try:
                probe = create_model(entry.name, in_chans=prep["in_chans"], img_size=prep["img_size"], device="meta", **overrides)
                sd = converted_state_dict(probe, sd, name=str(path))
            except (CheckpointError, ValueError):
                pass  # no layout fits: the load below says so
            num_classes = _infer_num_classes(sd, dcfg)
    model = create_model(entry.name, num_classes=num_classes, in_chans=prep["in_chans"], img_size=prep["img_size"], **overrides)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = load_checkpoint(model, path)
    if report["dropped"]:
        raise CheckpointError(f"{path}: its classifier does not have {num_classes} outputs")
    model.eval()
    return model, {"model": entry.name, "classes": classes, "preprocessing": prep, "num_classes": num_classes,
                   "data_path": meta.get("data_path"), "val_split": meta.get("val_split")}


def check_weights_file(checkpoint: str | os.PathLike) -> Path:
    """``checkpoint`` as a Path; CheckpointError where it names a folder, no file, or a training
    state (``step_*.state.pt``) instead of weights."""
    path = Path(checkpoint)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file (a run's weights are its model.safetensors)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.name.endswith(STATE_SUFFIX):
        raise CheckpointError(_training_state_message(path))
    return path


def _training_state_message(path: Path) -> str:
    """The error for a ``step_*.state.pt`` file of ``visionzoo train``, naming the weights to
    use: the run's final ``model.safetensors`` where it exists, and the step's own weights."""
    weights = [path.with_name(path.name.removesuffix(STATE_SUFFIX) + ".safetensors")]
    final = path.parent.parent / "model.safetensors"  # <run>/checkpoints/step_*.state.pt -> <run>/model.safetensors
    if path.parent.name == "checkpoints" and final.is_file():
        weights.insert(0, final)
    return (f"{path} is a training state of visionzoo train (optimizer, scheduler, RNG: what --resume reads), "
            f"not model weights; pass the weights instead: {' or '.join(map(str, weights))}")


def _infer_in_chans(sd: dict[str, Any], dcfg: dict[str, Any]) -> int:
    """The input channels of the state dict's ``first_conv`` weight (out, in, kH, kW); the
    default's where it has no such key (a foreign layout)."""
    w = sd.get(f"{dcfg.get('first_conv')}.weight")
    return int(w.shape[1]) if w is not None and w.ndim == 4 else int(dcfg["input_size"][0])


def _infer_num_classes(sd: dict[str, Any], dcfg: dict[str, Any]) -> int:
    """The outputs of the checkpoint's classifier; without one (a backbone's weights, as
    DINOv2's), the variant's default class count (0 there: pooled features)."""
    spec = dcfg.get("classifier", "head")
    for head in (spec,) if isinstance(spec, str) else spec:
        w = sd.get(f"{head}.weight")
        if w is not None and w.ndim >= 2:
            return int(w.shape[0])
    return default_num_classes(dcfg)


def predict_images(model: nn.Module, info: dict[str, Any], images: Sequence[str | os.PathLike], *, topk: int = 5,
                   device: str = "cpu", batch_size: int = 32) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each image file, with the checkpoint's preprocessing;
    :class:`DataError` for the first file that is not a readable image."""
    results = []
    for _, top, error in iter_predictions(model, info, images, topk=topk, device=device, batch_size=batch_size):
        if error is not None:
            raise error
        results.append(top)
    return results


@torch.no_grad()
def iter_predictions(model: nn.Module, info: dict[str, Any], images: Sequence[str | os.PathLike], *, topk: int = 5,
                     device: str = "cpu", batch_size: int = 32) -> Iterator[tuple[str | os.PathLike, list[tuple[str, float]] | None, DataError | None]]:
    """``(image, top-k, None)`` for each readable image file, ``(image, None, error)`` for one
    that is not, in order; ``batch_size`` images at a time in memory."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    p = info["preprocessing"]
    tf = eval_transform(p["img_size"], p["mean"], p["std"], crop_pct=p["crop_pct"], interpolation=p["interpolation"],
                        in_chans=p["in_chans"], crop_mode=p["crop_mode"])
    model.to(device)
    for start in range(0, len(images), batch_size):
        done: list[tuple[str | os.PathLike, Tensor | DataError]] = []
        for f in images[start : start + batch_size]:
            try:
                done.append((f, tf(load_image(f))))
            except DataError as e:
                done.append((f, e))
        loaded = [t for _, t in done if isinstance(t, Tensor)]
        tops = iter(_top_k(model, info, torch.stack(loaded).to(device), topk) if loaded else [])
        for f, t in done:
            yield (f, next(tops), None) if isinstance(t, Tensor) else (f, None, t)


def _top_k(model: nn.Module, info: dict[str, Any], x: Tensor, topk: int) -> list[list[tuple[str, float]]]:
    logits = model(x)
    if isinstance(logits, (tuple, list)):
        logits = (logits[0] + logits[1]) / 2
    probs = logits.float().softmax(dim=1)
    vals, idx = probs.topk(min(topk, probs.shape[1]), dim=1)
    classes = info.get("classes") or [str(i) for i in range(probs.shape[1])]
    return [[(classes[int(i)], float(v)) for v, i in zip(vr, ir)] for vr, ir in zip(vals, idx)]


def plot_confusion(cm: Tensor, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> bool:
    """Confusion matrix (rows: true class, columns: predicted) as a PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    n = cm.shape[0]
    size = min(4 + 0.35 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm.numpy(), cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), labels=list(classes), rotation=90)
        ax.set_yticks(range(n), labels=list(classes))
        if n <= 15:
            thresh = cm.max().item() / 2
            for i in range(n):
                for j in range(n):
                    v = int(cm[i, j])
                    ax.text(j, i, str(v), ha="center", va="center", color="white" if v > thresh else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
