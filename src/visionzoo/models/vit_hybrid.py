"""The ResNet-50 of the ViT paper's R50+ViT hybrid (Dosovitskiy et al., ICLR 2021): the
convolutional stem that :mod:`.vit` uses as the hybrid's patch embedding.

BiT layout, as the released weights: weight-standardised convolutions with TensorFlow 'SAME'
padding, each followed by GroupNorm(32); the stride on the bottleneck's 3x3.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import StdConv2d, apply_conv_bn, pad_same
from ..layers.helpers import plain_cpu_eager, to_channels_last

__all__ = ["Bottleneck", "HybridBackbone", "HybridEmbed", "ResNetStage"]


class Bottleneck(nn.Module):
    """Bottleneck of the hybrid's ResNet: StdConv + GroupNorm, stride on the 3x3 (BiT layout).

    Shapes:
        (B, C_in, H, W) -> (B, C_out, H/s, W/s).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        mid = out_chs // 4
        conv = partial(StdConv2d, eps=1e-8, same_pad=True, bias=False)
        gn = partial(nn.GroupNorm, 32)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential()
            self.downsample.add_module("conv", conv(in_chs, out_chs, 1, stride=stride))
            self.downsample.add_module("norm", gn(out_chs))
        self.conv1, self.norm1 = conv(in_chs, mid, 1), gn(mid)
        self.conv2, self.norm2 = conv(mid, mid, 3, stride=stride), gn(mid)
        self.conv3, self.norm3 = conv(mid, out_chs, 1), gn(out_chs)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        # GroupNorm's outputs are fresh and its backward needs only its input: ReLU and sum in place
        x = F.relu(self.norm1(self.conv1(x)), inplace=True)
        x = F.relu(self.norm2(self.conv2(x)), inplace=True)
        x = self.norm3(self.conv3(x))
        x += shortcut
        return F.relu(x, inplace=True)


class ResNetStage(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, depth: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Bottleneck(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1) for i in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class HybridBackbone(nn.Module):
    """The ResNet-50 of the R50+ViT hybrid: 7x7 stem, then stages of ``layers`` bottlenecks.

    Stages (3, 4, 9) give a 1024-channel map at stride 16 (ResNet-50's fourth stage is
    dropped and its 6 blocks of stage 3 become 9, as in the ViT paper's hybrid).
    Convolutions are weight-standardised with TensorFlow 'SAME' padding and followed by
    GroupNorm(32), the layout of the released weights.

    Shapes:
        (B, in_chans, H, W) -> (B, 256 * 2**(len(layers)-1), ceil(H/4)/2**(len(layers)-1), ...).
    """

    def __init__(self, in_chans: int, layers: Sequence[int]) -> None:
        super().__init__()
        self.stem = nn.Sequential()
        self.stem.add_module("conv", StdConv2d(in_chans, 64, 7, stride=2, eps=1e-8, same_pad=True, bias=False))
        self.stem.add_module("norm", nn.GroupNorm(32, 64))
        stages, chs = [], 64
        for i, depth in enumerate(layers):
            out = 256 * 2**i
            stages.append(ResNetStage(chs, out, depth, 1 if i == 0 else 2))
            chs = out
        self.stages = nn.Sequential(*stages)
        self.num_features = chs
        self.reduction = 4 * 2 ** (len(layers) - 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem.norm(self.stem.conv(x)), inplace=True)
        x = pad_same(x, (3, 3), (2, 2), value=float("-inf"))
        x = F.max_pool2d(x, 3, 2)  # B, 64, H/4, W/4
        return self.stages(x)


class HybridEmbed(nn.Module):
    """ResNet feature map -> 1x1 projection -> tokens (the hybrid's 'patch' embedding)."""

    def __init__(self, in_chans: int, layers: Sequence[int], embed_dim: int, *, bias: bool = True) -> None:
        super().__init__()
        self.backbone = HybridBackbone(in_chans, layers)
        self.proj = nn.Conv2d(self.backbone.num_features, embed_dim, 1, bias=bias)
        self.patch_size = (self.backbone.reduction, self.backbone.reduction)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training and not torch.is_grad_enabled() and x.dim() == 4 and plain_cpu_eager(x):
            # CPU inference runs the ResNet channels-last: its weight-standardised convolutions take
            # oneDNN's prepacked path (layers.StdConv2d) and GroupNorm its NHWC kernel (R50+ViT-B/16
            # at batch 4: 0.97x the time of NCHW). The map it returns is channels-last: the caller's
            # flatten(2).transpose(1, 2) then gives contiguous tokens without a copy.
            x = to_channels_last(x)
        return apply_conv_bn(self.proj, None, self.backbone(x))  # B, C, H/16, W/16
