"""Resampling of absolute position embeddings and relative-position bias tables; 2-D rotary
position embeddings.

The resampling is used on the fly (an input of another size than the trained one) and by
:func:`visionzoo.load_checkpoint` (a checkpoint trained at another size or window).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["apply_rope", "mixed_rope", "mixed_rope_freqs", "resample_abs_pos_embed", "resize_rel_pos_bias_table", "relative_position_index", "rope_2d"]


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
    grid = grid.reshape(1, old_size[0], old_size[1], C).float()  # 1, h, w, C
    if interpolation == "bicubic" and antialias and torch.compiler.is_compiling() and torch.is_grad_enabled() and posemb.requires_grad:
        # torch's fake kernel of the antialiased bicubic backward takes no symbolic size: a training
        # step compiled again for another input size (dynamic) failed. The resize is separable:
        # the same weights as row and column matrices, whose products' backward takes any size
        rows, cols = (_resize_matrix(n, m, grid) for n, m in zip(old_size, new_size))
        grid = torch.einsum("Hh,bhwc,Ww->bHWc", rows, grid, cols)  # 1, H', W', C
    else:
        grid = F.interpolate(grid.permute(0, 3, 1, 2), size=tuple(new_size), mode=interpolation, antialias=antialias, align_corners=False).permute(0, 2, 3, 1)
    grid = grid.reshape(1, -1, C).to(dtype)  # 1, H'*W', C
    return torch.cat([prefix, grid], dim=1)


def _resize_matrix(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """The (n_out, n_in) weights of an antialiased bicubic resize along one axis: the identity
    matrix as an image resized along its rows (its columns, the unit vectors, kept). (Not as a
    one-pixel-wide image: torch's antialiased kernels weigh those otherwise.)"""
    eye = torch.eye(n_in, dtype=like.dtype, device=like.device)[None, None]  # 1, 1, n_in, n_in
    return F.interpolate(eye, size=(n_out, n_in), mode="bicubic", antialias=True, align_corners=False)[0, 0]


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


def rope_2d(grid: tuple[int, int], head_dim: int, *, temperature: float = 10000.0, ref_grid: tuple[int, int] | None = None,
            xy: bool = False, centered: bool = False, half: bool = False, offset: float = 0.0, device: torch.device | str | None = None) -> Tensor:
    """Axial 2-D rotary position embedding (Su et al., "RoFormer", 2021; in 2-D as EVA-02,
    Fang et al. 2023): the sines and cosines :func:`apply_rope` rotates queries and keys by.

    A head's ``head_dim`` channels form ``head_dim / 2`` pairs (channels 2i, 2i + 1). The
    first half of the pairs turns with the patch's row, the second half with its column (the
    other way round with ``xy``: timm's ``grid_indexing="xy"``, as RoPE-ViT's), pair j of a half
    by the angle ``coordinate * temperature ** (-j / (head_dim / 4))``. With ``ref_grid`` the
    coordinates are rescaled to that grid's extent (``row * ref_h / Gh``): EVA-02's rule for a
    grid other than the one it was trained on.

    ``centered`` is DINOv3's form (Siméoni et al., 2025): a patch's coordinate along an axis is
    the centre of its cell on [-1, 1], ``2 (i + 0.5) / G - 1``, so every grid spans the same
    range whatever its size, and pair j turns by ``2 pi * coordinate / temperature ** (j / (head_dim / 4))``.

    ``offset`` is added to every patch index first (timm's ``rope_grid_offset``: the Perception
    Encoder's 1 in its towers with a class token, 0 in those without).

    ``half`` lays the pairs out as timm's ``rotate_half`` (DINOv3's): channel i of the first half
    of a head pairs with channel i of the second half, instead of the adjacent channels 2i, 2i + 1.

    Returns:
        (Gh * Gw, 2 * head_dim) float32: the sines, then the cosines, each repeated for both
        channels of its pair; patches in raster order.
    """
    if head_dim % 4:
        raise ValueError(f"a 2-D rotary embedding splits each head's channels into 2 axes of pairs: head_dim must divide by 4, got {head_dim}")
    if centered and ref_grid is not None:
        raise ValueError("centred rotary coordinates span [-1, 1] on any grid already: ref_grid must be None with centered=True")
    n = head_dim // 4
    exponents = torch.arange(n, device=device).float() / n
    if centered:
        coords = [(torch.arange(g, device=device).float() + 0.5 + offset) / g * 2.0 - 1.0 for g in grid]
    else:
        coords = [torch.arange(g, device=device).float() + offset for g in grid]
    if ref_grid is not None:
        coords = [c / g * r for c, g, r in zip(coords, grid, ref_grid)]
    rows, cols = torch.meshgrid(*coords, indexing="ij")  # Gh, Gw each
    axes = torch.stack([cols, rows] if xy else [rows, cols], dim=-1)  # Gh, Gw, 2
    if centered:  # as the DINOv3 authors write it: 2 pi * coordinate / period
        angles = 2 * math.pi * axes[..., None] / temperature**exponents
    else:
        angles = axes[..., None] * (1.0 / temperature**exponents)
    angles = angles.flatten(-2).flatten(0, 1)  # Gh*Gw, head_dim/2 (first axis' bands, then the second's)
    return _rotary_table(angles, half=half)


def mixed_rope_freqs(head_dim: int, depth: int, num_heads: int, *, temperature: float = 10.0) -> Tensor:
    """Initial frequencies of RoPE-Mixed (Heo et al., "Rotary Position Embedding for Vision
    Transformer", ECCV 2024), learned afterwards: per block and head, the pairs of channels turn
    with a 2-D frequency vector, the magnitudes of the axial form (base ``temperature``) along a
    random direction for the first half of the pairs and the perpendicular one for the second.

    Returns:
        (2, depth, num_heads, head_dim / 2): the x and the y component of each frequency.
    """
    if head_dim % 4:
        raise ValueError(f"RoPE-Mixed turns 2 halves of channel pairs per head: head_dim must divide by 4, got {head_dim}")
    mag = 1.0 / temperature ** (torch.arange(0, head_dim, 4).float() / head_dim)  # head_dim/4
    theta = torch.rand(depth, num_heads, 1) * 2 * math.pi  # a direction per block and head
    fx = torch.cat([mag * torch.cos(theta), mag * torch.cos(theta + math.pi / 2)], dim=-1)  # depth, nH, head_dim/2
    fy = torch.cat([mag * torch.sin(theta), mag * torch.sin(theta + math.pi / 2)], dim=-1)
    return torch.stack([fx, fy])


def mixed_rope(freqs: Tensor, grid: tuple[int, int], *, xy: bool = True, half: bool = False) -> Tensor:
    """RoPE-Mixed's tables from its (2, ..., hd / 2) frequencies (:func:`mixed_rope_freqs`): pair j
    turns by ``x * fx_j + y * fy_j``, with x the column and y the row of the patch (``xy``; the
    other way round otherwise), computed in float32.

    Returns:
        (..., Gh * Gw, 2 * hd): per block and head, as :func:`rope_2d`'s table (sines, then cosines).
    """
    rows, cols = torch.meshgrid(*(torch.arange(g, device=freqs.device).float() for g in grid), indexing="ij")  # Gh, Gw each
    tx, ty = (cols, rows) if xy else (rows, cols)
    f = freqs.float()
    angles = tx.reshape(-1, 1) * f[0].unsqueeze(-2) + ty.reshape(-1, 1) * f[1].unsqueeze(-2)  # ..., Gh*Gw, hd/2
    return _rotary_table(angles, half=half)


def _rotary_table(angles: Tensor, half: bool = False) -> Tensor:
    """The table :func:`apply_rope` reads from (..., hd / 2) angles, one per pair of channels:
    (..., 2 * hd), the sines, then the cosines, each angle repeated for both channels of its pair
    (adjacent channels, or with ``half`` channel i and i + hd / 2)."""
    angles = torch.cat([angles, angles], dim=-1) if half else angles.repeat_interleave(2, dim=-1)  # ..., hd
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def apply_rope(x: Tensor, rope: Tensor, half: bool = False) -> Tensor:
    """Rotate each pair of channels (2i, 2i + 1) of ``x`` (..., N, hd) by the angles of
    :func:`rope_2d`'s (N, 2 * hd) table (or :func:`mixed_rope`'s per head, (nH, N, 2 * hd)): ``(a, b) -> (a cos - b sin, b cos + a sin)``; computed in
    the table's precision, returned in ``x``'s dtype. With ``half`` (a table built with ``half=True``)
    the pairs are channels (i, i + hd / 2)."""
    sin, cos = rope.chunk(2, dim=-1)  # N, hd each
    if half:
        a, b = x.chunk(2, dim=-1)
        turned = torch.cat([-b, a], dim=-1)  # ..., N, hd: (-b, a) per pair
    else:
        pairs = x.unflatten(-1, (-1, 2))  # ..., N, hd/2, 2
        turned = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)  # ..., N, hd: (-b, a) per pair
    return (x * cos + turned * sin).to(x.dtype)
