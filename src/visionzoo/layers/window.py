"""Window operations of Swin-style networks: partition, reverse, cyclic-shift mask.

Maps are channels-last, (B, H, W, C); H and W must be multiples of the window side M
(the caller pads first). Partition and reverse are one ``view`` + ``permute`` each.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["shift_window_mask", "window_partition", "window_reverse"]


def window_partition(x: Tensor, window: tuple[int, int]) -> Tensor:
    """(B, H, W, C) -> (B * nW, Mh * Mw, C), windows in raster order."""
    B, H, W, C = x.shape
    Mh, Mw = window
    x = x.view(B, H // Mh, Mh, W // Mw, Mw, C)  # B, H/Mh, Mh, W/Mw, Mw, C
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, Mh * Mw, C)  # B*nW, Mh*Mw, C


def window_reverse(windows: Tensor, window: tuple[int, int], H: int, W: int) -> Tensor:
    """(B * nW, Mh * Mw, C) -> (B, H, W, C), the inverse of :func:`window_partition`."""
    Mh, Mw = window
    C = windows.shape[-1]
    x = windows.view(-1, H // Mh, W // Mw, Mh, Mw, C)  # B, H/Mh, W/Mw, Mh, Mw, C
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)  # B, H, W, C


def shift_window_mask(
    H: int, W: int, window: tuple[int, int], shift: tuple[int, int], *, device: torch.device | str | None = None
) -> Tensor:
    """Additive attention mask of shifted-window attention, (nW, Mh*Mw, Mh*Mw).

    After the map is rolled by (-shift_h, -shift_w), windows along the bottom and right
    edges hold pixels from regions that were not adjacent in the image. The Swin paper
    labels the 3 x 3 regions cut by the slices (0, -M), (-M, -s), (-s, None) on each axis;
    tokens of different regions in one window must not attend to each other, so their
    pair gets -100 (as the reference implementation; exp(-100) is 0 in fp32 and bf16).

    Args:
        H, W: padded map size (multiples of the window).
        window: (Mh, Mw).
        shift: (sh, sw), each in [0, M).
    """
    Mh, Mw = window
    sh, sw = shift
    img = torch.zeros(1, H, W, 1, device=device)
    cnt = 0
    for hs in (slice(0, -Mh), slice(-Mh, -sh if sh else None), slice(-sh, None) if sh else slice(0, 0)):
        for ws in (slice(0, -Mw), slice(-Mw, -sw if sw else None), slice(-sw, None) if sw else slice(0, 0)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    labels = window_partition(img, window).squeeze(-1)  # nW, Mh*Mw
    diff = labels[:, None, :] - labels[:, :, None]  # nW, N, N
    return torch.zeros_like(diff).masked_fill_(diff != 0, -100.0)
