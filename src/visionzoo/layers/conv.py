"""Convolution building blocks: conv-norm-act, weight-standardised convolution."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from .helpers import pad_same, to_2tuple

__all__ = ["ConvNormAct", "StdConv2d", "bn_affine"]


def bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor] | None:
    """(scale, shift) of a BatchNorm in inference (running statistics), else None."""
    if bn.training or bn.running_var is None:
        return None
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


class ConvNormAct(nn.Sequential):
    """Conv2d -> norm -> activation, with 'same'-style symmetric padding by default.

    Args:
        in_chs, out_chs: channel counts.
        kernel_size, stride, groups, dilation: as ``nn.Conv2d``.
        padding: explicit padding; default ``dilation * (kernel_size - 1) // 2``.
        norm_layer: a class taking the channel count, or ``None`` for no norm.
        act_layer: a class taking no arguments, or ``None`` for no activation; one with an
            ``inplace`` attribute (ReLU, ReLU6, SiLU, ...) is switched to in place.
        bias: bias on the convolution (default: only without a norm).

    Submodules are named ``conv``, ``bn`` and ``act``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        padding: int | None = None,
        groups: int = 1,
        dilation: int = 1,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] | None = nn.ReLU,
        bias: bool | None = None,
    ) -> None:
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        if bias is None:
            bias = norm_layer is None
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=bias)
        self.bn = norm_layer(out_chs) if norm_layer is not None else nn.Identity()
        self.act = act_layer() if act_layer is not None else nn.Identity()
        if hasattr(self.act, "inplace"):
            self.act.inplace = True  # its input is always the fresh norm (or conv) output


class StdConv2d(nn.Conv2d):
    """Weight-standardised convolution (Qiao et al., 2019), as in BiT and the ViT hybrids.

    The kernel of each output channel is normalised to zero mean and unit variance before
    the convolution. With ``same_pad=True`` the input is padded as TensorFlow's 'SAME'
    (the layout the official BiT / R50+ViT weights were trained with).
    """

    def __init__(self, *args, eps: float = 1e-6, same_pad: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps
        if same_pad and self.padding in ((0, 0), "valid"):
            # where 'SAME' does not depend on the input size (stride 1 and an odd reach, or a 1x1
            # kernel), it is the convolution's own symmetric padding: no padded copy of the map
            reach = [(k - 1) * d for k, d in zip(self.kernel_size, self.dilation)]
            if all(k == 1 for k in self.kernel_size):
                same_pad = False
            elif all(s == 1 for s in self.stride) and all(r % 2 == 0 for r in reach):
                self.padding, same_pad = tuple(r // 2 for r in reach), False
        self.same_pad = same_pad

    def forward(self, x: Tensor) -> Tensor:
        if self.same_pad:
            x = pad_same(x, to_2tuple(self.kernel_size), to_2tuple(self.stride), to_2tuple(self.dilation))
        w = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0, eps=self.eps
        ).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
