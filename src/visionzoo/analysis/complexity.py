"""Multiply-adds of one self-attention layer, as the papers count them.

All figures are multiply-accumulates (MACs) of one layer on an h x w map of width C,
batch 1: the four C x C projections (query, key, value, output) on each of the hw
tokens cost 4 hw C^2, and the two token products (q k^T and attention @ v) cost
2 N^2 C for every group of N tokens that attend to each other. Softmax, scaling,
biases and normalisation are not multiply-adds and are left out, as in the papers.
"""

from __future__ import annotations

from ..layers.helpers import as_int

__all__ = ["attention_complexity", "coatnet_attention_complexity", "nest_attention_complexity"]


def _check(h: int, w: int, C: int, **more: int | None) -> None:
    """Refuse sizes that are not positive integers (``more``: other named counts, None skipped)."""
    if not all(as_int(v) is not None and v >= 1 for v in (h, w, C)):
        raise ValueError(f"h, w and C must be positive integers, got {(h, w, C)}")
    for name, v in more.items():
        if v is not None and not (as_int(v) is not None and v >= 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def _windowed_side(side: int, window: int, pad_small: bool) -> tuple[int, int]:
    """(window, padded side) along one axis, as a Swin block takes it
    (:func:`visionzoo.models.swin.plan_windows`)."""
    if side <= window:  # one window covers the axis: shrunk to it, or the side padded up to it
        return (window, window) if pad_small else (side, side)
    return window, -(-side // window) * window


def attention_complexity(h: int, w: int, C: int, window: int, *, pad_small: bool = False) -> dict[str, int]:
    """Global versus window attention (Swin Transformer, Liu et al. 2021, eqs. 1-2).

        Omega(MSA)   = 4 hw C^2 + 2 (hw)^2 C
        Omega(W-MSA) = 4 hw C^2 + 2 M^2 hw C

    with M = ``window``: every token attends to the M^2 tokens of its window, so the
    quadratic term becomes linear in hw. The equations are for a map that is a multiple
    of M; on any other, W-MSA is counted as Swin runs it: each side is padded to a
    multiple of M, and the projections and products run on the padded tokens. A side no
    longer than M is one window of its length (the official code and timm; the MSA cost
    along that axis), or with ``pad_small`` padded up to M (torchvision's Swin).

    Returns:
        ``{"msa": ..., "w_msa": ...}`` in multiply-adds.
    """
    _check(h, w, C, window=window)
    (mh, hp), (mw, wp) = _windowed_side(h, window, pad_small), _windowed_side(w, window, pad_small)
    hw, padded = h * w, hp * wp
    return {"msa": 4 * hw * C**2 + 2 * hw**2 * C, "w_msa": 4 * padded * C**2 + 2 * mh * mw * padded * C}


def nest_attention_complexity(h: int, w: int, C: int, block: int) -> int:
    """NesT's local attention (Zhang et al. 2022): attention only within blocks of side ``block``.

    The image is cut into non-overlapping ``block`` x ``block`` blocks and each block runs
    ordinary multi-head attention, so the cost is Swin's W-MSA with M = ``block``:

        4 hw C^2 + 2 block^2 hw C
    """
    _check(h, w, C, block=block)
    return attention_complexity(h, w, C, block)["w_msa"]


def coatnet_attention_complexity(h: int, w: int, C: int, num_heads: int | None = None) -> int:
    """CoAtNet's global relative attention (Dai et al. 2021, eq. 3).

    The logits are x_i . x_j + w_{i-j}: a pre-softmax relative bias added to global
    attention. The bias is a table look-up and one addition per logit and head, so the
    count is MSA's plus nH (hw)^2 additions:

        4 hw C^2 + 2 (hw)^2 C + nH (hw)^2

    The additions are counted one each (they are not multiply-adds; a flop counter
    that counts only matrix products reports the first two terms).

    Args:
        num_heads: nH, by default C / 32 (CoAtNet's head width is 32).
    """
    _check(h, w, C, num_heads=num_heads)
    heads = num_heads if num_heads is not None else max(C // 32, 1)
    hw = h * w
    return attention_complexity(h, w, C, 1)["msa"] + heads * hw**2
