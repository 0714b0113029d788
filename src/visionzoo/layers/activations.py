"""Activations that overwrite their input when nothing can need it again."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .grad_mode import needs_grad

__all__ = ["GELU", "INPLACE_ACTS", "QuickGELU", "gelu"]


def gelu(x: Tensor) -> Tensor:
    """Exact GELU, in place when autograd does not need the input.

    Callers pass a tensor they just computed (a convolution's or a norm's output). On CPU
    a fresh output for a large map costs several times the arithmetic in first-touch page
    faults (77 MB at 112x112x384, batch 4); writing over the input avoids the allocation.
    With autograd recording, GELU's backward needs its input, so the result is a new tensor.
    """
    if needs_grad(x):
        return F.gelu(x)
    return torch.ops.aten.gelu_(x)


class QuickGELU(nn.Module):
    """OpenAI CLIP's sigmoid approximation of GELU, ``x * sigmoid(1.702 x)`` (timm's
    ``quick_gelu``): the activation its ViTs (and models tuned from them) were trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class GELU(nn.GELU):
    """``nn.GELU`` (exact) that applies :func:`gelu`: in place outside autograd.

    Use it only where its input is a fresh tensor nothing else reads (as ``inplace=True``
    ReLUs after a norm).
    """

    def __init__(self) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return gelu(x)


#: activation module type -> ``f(y, act)`` applying ``act`` in place on ``y``, a fresh tensor
#: nothing else reads (the output of a GEMM or of a BatchNorm's affine in inference)
INPLACE_ACTS = {
    nn.GELU: lambda y, act: torch.ops.aten.gelu_(y, approximate=act.approximate),
    GELU: lambda y, act: torch.ops.aten.gelu_(y),  # exact, act.approximate == "none"
    nn.ReLU: lambda y, act: y.relu_(),
    nn.ReLU6: lambda y, act: y.clamp_(0, 6),
    nn.SiLU: lambda y, act: F.silu(y, inplace=True),
    nn.Hardswish: lambda y, act: F.hardswish(y, inplace=True),
}
