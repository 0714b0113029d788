"""PNG pictures of the analyses; each function writes one file of exactly ``size`` pixels.

matplotlib is not a dependency of visionzoo: it is imported here, inside the functions,
and a clear error says how to install it (``pip install 'visionzoo[analysis]'``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .attention import (
    attention_rollout,
    mean_attention_distance,
    position_embedding_similarity,
    shift_window_masks,
    shift_window_regions,
)
from ..layers.helpers import to_2tuple
from .receptive import hdc_check, receptive_field

__all__ = [
    "plot_attention_distance",
    "plot_attention_rollout",
    "plot_position_embedding_similarity",
    "plot_receptive_field",
    "plot_shift_window_masks",
]

PathLike = str | os.PathLike


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "visionzoo's pictures need matplotlib: pip install matplotlib (or 'visionzoo[analysis]')"
        ) from e
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _figure(size: tuple[int, int], ncols: int = 1) -> tuple[Any, Any]:
    plt = _pyplot()
    w, h = size
    fig, axes = plt.subplots(1, ncols, figsize=(w / 100, h / 100), dpi=100, squeeze=False)
    return fig, axes[0]


def _save(fig: Any, path: PathLike) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(os.fspath(path), dpi=100)  # no bbox_inches: the file is exactly `size`
    plt.close(fig)
    return os.fspath(path)


def plot_receptive_field(
    rates: Sequence[int], path: PathLike, *, kernel_size: int = 3, size: tuple[int, int] = (640, 640)
) -> dict[str, Any]:
    """Draw the count map of :func:`receptive_field`, each cell's count written in it (small maps).

    Returns:
        :func:`hdc_check`'s verdict, which is also the title.
    """
    rf = receptive_field(rates, kernel_size)
    verdict = hdc_check(rates, kernel_size)
    fig, (ax,) = _figure(size)
    ax.imshow(rf, cmap="viridis", interpolation="nearest")
    n = rf.shape[0]
    if n <= 33:
        fs = max(3.0, min(9.0, 260 / n))
        hi = rf.max()
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(rf[i, j]), ha="center", va="center", fontsize=fs, color="white" if rf[i, j] < hi / 2 else "black")
    ax.set_xticks([])
    ax.set_yticks([])
    status = f"gridding: {verdict['holes']} holes" if verdict["gridding"] else "no gridding"
    ax.set_title(f"rates {list(rates)}, k={kernel_size}: RF {n}x{n}, {status}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return verdict


def _denormalise(image: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    img = image.detach().float().cpu()
    if mean is not None and std is not None:
        img = img * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    img = img.permute(1, 2, 0).numpy()
    if img.shape[-1] == 1:
        img = img[..., 0]
    return np.clip(img, 0, 1)


def plot_attention_rollout(
    model: nn.Module, image: Tensor, path: PathLike, *, head_fusion: str = "mean", size: tuple[int, int] = (900, 450)
) -> np.ndarray:
    """The image beside its attention rollout overlaid (:func:`attention_rollout`).

    Args:
        image: (C, H, W), normalised with the model's ``default_cfg`` mean/std (used to undo it).

    Returns:
        the (H, W) rollout map.
    """
    image = image[0] if image.ndim == 4 else image
    rollout = attention_rollout(model, image, head_fusion=head_fusion)
    cfg = getattr(model, "default_cfg", {}) or {}
    shown = _denormalise(image, cfg.get("mean"), cfg.get("std"))
    fig, (a, b) = _figure(size, 2)
    a.imshow(shown, cmap="gray")
    a.set_title("image")
    b.imshow(shown, cmap="gray")
    b.imshow(rollout, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    b.set_title(f"attention rollout ({head_fusion} over heads)")
    for ax in (a, b):
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)
    return rollout


def plot_attention_distance(
    model: nn.Module, images: Tensor, path: PathLike, *, size: tuple[int, int] = (640, 480)
) -> np.ndarray:
    """Mean attention distance of every head against depth (ViT paper, Fig. 7 right).

    Returns:
        the (layers, heads) distances in pixels.
    """
    d = mean_attention_distance(model, images)
    fig, (ax,) = _figure(size)
    layers = np.arange(d.shape[0])
    for h in range(d.shape[1]):
        ax.scatter(layers, d[:, h], s=12)
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_title(getattr(model, "model_name", type(model).__name__))
    fig.tight_layout()
    _save(fig, path)
    return d


def plot_position_embedding_similarity(model: nn.Module, path: PathLike, *, size: tuple[int, int] = (640, 640)) -> np.ndarray:
    """Cosine similarity of each patch's position embedding with all others (ViT paper, Fig. 7 centre).

    The Gh x Gw small maps are tiled in one image, one per patch, in patch order.

    Returns:
        the (Gh, Gw, Gh, Gw) similarities.
    """
    sim = position_embedding_similarity(model)
    gh, gw = sim.shape[:2]
    tile = np.full((gh * (gh + 1), gw * (gw + 1)), np.nan)
    for i in range(gh):
        for j in range(gw):
            tile[i * (gh + 1) : i * (gh + 1) + gh, j * (gw + 1) : j * (gw + 1) + gw] = sim[i, j]
    fig, (ax,) = _figure(size)
    im = ax.imshow(tile, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("position embedding similarity")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    fig.tight_layout()
    _save(fig, path)
    return sim


def plot_shift_window_masks(
    H: int, W: int, window: int | Sequence[int], shift: int | Sequence[int], path: PathLike, *, size: tuple[int, int] = (1200, 420)
) -> np.ndarray:
    """Swin's cyclic shift and its attention masks for an H x W map (Liu et al. 2021, Fig. 4).

    ``window`` and ``shift`` are one side for both axes or (height, width): a Swin block
    shifts only along an axis it partitions (:func:`visionzoo.models.swin.plan_windows`).
    Panels: the map with the shifted windows outlined (where they lie in the image); the
    map after ``roll(-shift)`` with its regular windows and the 3 x 3 region labels; and
    the (Mh*Mw, Mh*Mw) mask of every window, black where attention is masked (-100).

    Returns:
        the (nW, Mh*Mw, Mh*Mw) masks.
    """
    (Mh, Mw), (sh, sw) = to_2tuple(window), to_2tuple(shift)
    labels = shift_window_regions(H, W, (Mh, Mw), (sh, sw))
    masks = shift_window_masks(H, W, (Mh, Mw), (sh, sw))
    plt = _pyplot()
    fig, (a, b, c) = _figure(size, 3)
    # panel a: the image-space map; shifted windows start at -s + k M along each axis
    a.imshow(np.roll(labels, (sh, sw), (0, 1)), cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    for side, M, s, line in ((H, Mh, sh, a.axhline), (W, Mw, sw, a.axvline)):
        for k in range(-1, side // M + 1):
            v = k * M + s - 0.5  # rolled window k starts at k M + s in the image
            if -0.5 <= v <= side - 0.5:
                line(v, color="k", lw=1)
    a.set_title(f"shifted windows on the {H}x{W} map", fontsize=9)
    # panel b: after the cyclic shift, regular windows and region labels
    b.imshow(labels, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    for side, M, line in ((H, Mh, b.axhline), (W, Mw, b.axvline)):
        for k in range(1, side // M):
            line(k * M - 0.5, color="k", lw=1)
    if H * W <= 400:
        for i in range(H):
            for j in range(W):
                b.text(j, i, str(labels[i, j]), ha="center", va="center", fontsize=6)
    b.set_title(f"after roll by -{sh if sh == sw else (sh, sw)}: regions", fontsize=9)
    # panel c: all window masks tiled in the windows' raster order
    nh, nw = H // Mh, W // Mw
    n = Mh * Mw
    tile = np.full((nh * (n + 1) - 1, nw * (n + 1) - 1), np.nan)
    for w_i in range(nh * nw):
        r, q = divmod(w_i, nw)
        tile[r * (n + 1) : r * (n + 1) + n, q * (n + 1) : q * (n + 1) + n] = masks[w_i] == 0
    cmap = plt.get_cmap("gray").with_extremes(bad="tab:red")  # red lines between windows
    c.imshow(np.ma.masked_invalid(tile), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    c.set_title(f"masks of the {nh * nw} windows (black: masked)", fontsize=9)
    for ax in (a, b, c):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    _save(fig, path)
    return masks
