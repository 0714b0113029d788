"""Max pooling for CPU inference: separable strided maxima instead of the NCHW kernel.

PyTorch's CPU ``max_pool2d`` on contiguous NCHW maps walks each k x k window per output
element and also computes argmax indices; on the 2-core AMD EPYC the benchmarks ran on, a
3x3 stride-2 pool of a (4, 64, 112, 112) map (the ResNet stem) took 15 ms, about 5 % of
ResNet-50's forward pass. The same pool is a maximum over k strided row slices, then over k
strided column slices of that (2(k - 1) elementwise maxima on -inf padded memory), which
took 3.3 ms. The results are identical: every window holds at least one real element
(PyTorch requires padding <= k / 2 and, with ``ceil_mode``, a last window that starts
inside the map), the maximum is exact, and both propagate NaN.

:func:`max_pool2d` takes that path only when nothing else can observe the difference:
autograd off (the two differ in which tied element receives the gradient), a plain
floating-point contiguous NCHW CPU tensor of at least ``MIN_ELEMENTS`` elements, no
dilation, no indices requested, and no tracing, compiling or dispatch mode active.
Elsewhere it is ``F.max_pool2d``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .helpers import needs_grad, plain_cpu_eager, to_2tuple

__all__ = ["POOL_TYPES", "MaxPool2d", "global_pool_2d", "max_pool2d"]

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

#: smaller maps go to PyTorch's kernel: a few slicing calls cost more than the pool itself
#: (1x8x4x4, 2x2/2: 15 us vs 3 us; parity near 1x64x16x16, 3x3/2: 42 vs 43 us)
MIN_ELEMENTS = 1 << 14


def _out_size(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """Output length of a pool along one axis, as PyTorch computes it."""
    out = (math.ceil if ceil_mode else math.floor)((n + 2 * p - k) / s) + 1
    if ceil_mode and (out - 1) * s >= n + p:  # the last window must start inside the map
        out -= 1
    return out


def _fast_path_ok(x: Tensor) -> bool:
    if needs_grad(x):
        return False
    if x.dtype not in _DTYPES or x.dim() != 4 or x.numel() < MIN_ELEMENTS:
        return False
    if not x.is_contiguous():  # channels-last and other layouts: PyTorch's kernel is fast there
        return False
    return plain_cpu_eager(x)


def _strided_max(x: Tensor, dim: int, k: int, s: int, out: int) -> Tensor:
    """Maximum over i < k of every s-th element of ``x`` along ``dim`` from offset i."""
    span = (out - 1) * s + 1
    idx = [slice(None)] * x.dim()

    def window_row(i: int) -> Tensor:
        idx[dim] = slice(i, i + span, s)
        return x[tuple(idx)]

    if k == 1:
        return window_row(0).contiguous()
    y = torch.maximum(window_row(0), window_row(1))  # a fresh tensor: the rest accumulate into it
    for i in range(2, k):
        torch.maximum(y, window_row(i), out=y)
    return y


def max_pool2d(x: Tensor, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
               padding: int | tuple[int, int] = 0, ceil_mode: bool = False) -> Tensor:
    """``F.max_pool2d`` (no dilation, no indices); separable in CPU inference (module doc)."""
    kh, kw = to_2tuple(kernel_size)
    sh, sw = to_2tuple(stride if stride is not None else kernel_size)
    ph, pw = to_2tuple(padding)
    if not _fast_path_ok(x) or ph > kh // 2 or pw > kw // 2:
        return F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil_mode=ceil_mode)
    H, W = x.shape[-2:]
    Ho, Wo = _out_size(H, kh, sh, ph, ceil_mode), _out_size(W, kw, sw, pw, ceil_mode)
    if Ho <= 0 or Wo <= 0:
        return F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil_mode=ceil_mode)  # its own error
    # right/bottom padding: what the last window reaches past the map (with ceil_mode, or
    # trimmed to nothing when the windows stop short of the end)
    rh, rw = max(0, (Ho - 1) * sh + kh - H - ph), max(0, (Wo - 1) * sw + kw - W - pw)
    if ph or pw or rh or rw:
        x = F.pad(x, (pw, rw, ph, rh), value=float("-inf"))
    return _strided_max(_strided_max(x, 2, kh, sh, Ho), 3, kw, sw, Wo)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose forward is :func:`max_pool2d` (same arguments and state)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.return_indices or to_2tuple(self.dilation) != (1, 1):
            return super().forward(x)
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)


#: timm's global pools of a classifier head (its ``SelectAdaptivePool2d``): the mean, the
#: maximum, their average, and the two side by side (twice the channels)
POOL_TYPES = ("avg", "max", "avgmax", "catavgmax")
#: the pools of a head that normalises the pooled features (ConvNeXt's, CoAtNet's; timm's
#: ``NormMlpClassifierHead``): ``catavgmax`` would double the width its LayerNorm was built for
NORM_POOL_TYPES = POOL_TYPES[:3]


def global_pool_2d(x: Tensor, pool_type: str = "avg", dims: int | tuple[int, ...] = (2, 3)) -> Tensor:
    """(B, C, H, W) -> (B, C) pooled over H and W as ``pool_type`` (:data:`POOL_TYPES`) says;
    (B, 2C) for ``catavgmax`` (the means, then the maxima). ``dims``: the positions' axes of
    another layout ((1, 2) for (B, H, W, C), 1 for (B, N, C) tokens)."""
    if pool_type == "avg":
        return x.mean(dims)
    if pool_type == "max":
        return x.amax(dims)
    if pool_type == "avgmax":
        return 0.5 * (x.mean(dims) + x.amax(dims))
    if pool_type == "catavgmax":
        return torch.cat([x.mean(dims), x.amax(dims)], dim=-1)
    raise ValueError(f"pool_type must be one of {POOL_TYPES}, got {pool_type!r}")
