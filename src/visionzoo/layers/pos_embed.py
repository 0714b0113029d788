"""Resampling of absolute position embeddings and relative-position bias tables.

Used on the fly (an input of another size than the trained one) and by
:func:`visionzoo.load_checkpoint` (a checkpoint trained at another size or window).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["resample_abs_pos_embed", "resize_rel_pos_bias_table", "relative_position_index"]


def resample_abs_pos_embed(
    posemb: Tensor,
    new_size: tuple[int, int],
    old_size: tuple[int, int] | None = None,
    *,
    num_prefix_tokens: int = 0,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """Resample a (1, P + h*w, C) embedding whose last h*w rows form a grid to ``new_size``.

    Args:
        posemb: the embedding; its first ``num_prefix_tokens`` rows (class/distillation
            tokens) are kept as they are.
        new_size: target grid (H', W').
        old_size: source grid; inferred as square when omitted.
        num_prefix_tokens: rows that belong to no grid position.
        interpolation: ``bicubic`` (as the ViT paper's fine-tuning) or ``bilinear``.
        antialias: low-pass filter when shrinking.

    Returns:
        (1, P + H'*W', C) in the dtype of ``posemb``.
    """
    num_grid = posemb.shape[1] - num_prefix_tokens
    if old_size is None:
        side = int(math.sqrt(num_grid))
        if side * side != num_grid:
            raise ValueError(f"cannot infer the grid of a position embedding with {num_grid} grid tokens")
        old_size = (side, side)
    if tuple(old_size) == tuple(new_size):
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    C, dtype = grid.shape[-1], grid.dtype
    grid = grid.reshape(1, old_size[0], old_size[1], C).permute(0, 3, 1, 2).float()  # 1, C, h, w
    grid = F.interpolate(grid, size=tuple(new_size), mode=interpolation, antialias=antialias, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, C).to(dtype)  # 1, H'*W', C
    return torch.cat([prefix, grid], dim=1)


def resize_rel_pos_bias_table(
    table: Tensor, new_window: tuple[int, int], old_window: tuple[int, int] | None = None, *, interpolation: str = "bicubic"
) -> Tensor:
    """Resize a Swin-style ((2Mh-1)*(2Mw-1), nH) table of relative offsets to another window.

    Along an axis where the window shrinks, the table keeps the rows of the offsets the
    smaller window can have, unchanged (the sub-table a smaller window reads; timm's
    checkpoint resize nearly does the same, as its geometric spacing of the old offsets is
    almost uniform then). Along an axis where it grows, the table is interpolated
    (``interpolation``, bicubic by default, as the official Swin code does to fine-tune at
    a larger window).
    """
    nH = table.shape[-1]
    if old_window is None:
        side = int(math.sqrt(table.shape[0]))
        if side * side != table.shape[0]:
            raise ValueError(f"cannot infer the window of a bias table with {table.shape[0]} rows")
        old_window = ((side + 1) // 2, (side + 1) // 2)
    old = (2 * old_window[0] - 1, 2 * old_window[1] - 1)
    new = (2 * new_window[0] - 1, 2 * new_window[1] - 1)
    if old == new:
        return table
    grid = table.reshape(old[0], old[1], nH)
    for axis in (0, 1):
        if new[axis] < old[axis]:  # both odd: the centre row (offset 0) stays in the centre
            grid = grid.narrow(axis, (old[axis] - new[axis]) // 2, new[axis])
    if grid.shape[:2] != new:
        dtype = grid.dtype
        grid = F.interpolate(grid.permute(2, 0, 1)[None].float(), size=new, mode=interpolation, align_corners=False)
        grid = grid[0].permute(1, 2, 0).to(dtype)
    return grid.reshape(-1, nH)  # (2Mh'-1)*(2Mw'-1), nH


def relative_position_index(window: tuple[int, int]) -> Tensor:
    """(Mh*Mw, Mh*Mw) index into a ((2Mh-1)*(2Mw-1)) table of relative offsets.

    Entry (i, j) is the row for the offset between token i and token j of a window, as
    in the Swin paper (offsets shifted to start at 0, row-major).
    """
    Mh, Mw = window
    coords = torch.stack(torch.meshgrid(torch.arange(Mh), torch.arange(Mw), indexing="ij")).flatten(1)  # 2, Mh*Mw
    rel = coords[:, :, None] - coords[:, None, :]  # 2, N, N
    rel = rel.permute(1, 2, 0)  # N, N, 2
    return (rel[..., 0] + Mh - 1) * (2 * Mw - 1) + (rel[..., 1] + Mw - 1)
