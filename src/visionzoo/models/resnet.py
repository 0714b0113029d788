"""ResNet and its direct descendants: ResNeXt, Wide ResNet, SE-ResNet(Xt), ECA-ResNet, ResNet-D.

Papers:
    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (ResNet).
    He et al., "Bag of Tricks for Image Classification with Convolutional Neural Networks",
    CVPR 2019 (ResNet-C's deep stem, ResNet-D's average-pool shortcut: ``stem_type="deep"``,
    ``avg_down=True``; the ``resnet*d`` networks, as timm builds them).
    Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017 (ResNeXt).
    Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (Wide ResNet).
    Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018 (SE-ResNet).
    Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural
    Networks", CVPR 2020 (``attn="eca"``; timm's ``ecaresnet*`` networks).
    Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017
    (output stride, multi-grid); Wang et al., "Understanding Convolution for Semantic
    Segmentation", WACV 2018 (hybrid dilated convolution, HDC).

A 7x7 stride-2 convolution (BN, ReLU) and a 3x3 stride-2 max pool form the stem; four
stages of residual blocks follow at strides 4/8/16/32, then global average pooling and a
linear classifier. The blocks are

    basic:      3x3 -> BN -> ReLU -> 3x3 -> BN               (+ x, ReLU)      ResNet-18/34
    bottleneck: 1x1 -> BN -> ReLU -> 3x3 (groups) -> BN -> ReLU -> 1x1 (4x) -> BN [-> SE/ECA]
                                                              (+ x, ReLU)      ResNet-50+

A stage's first block downsamples in its 3x3 convolution (the "v1.5" placement of
torchvision and timm; the paper strides the first 1x1) and projects the shortcut with a
1x1 convolution + BN. ResNeXt splits the 3x3 into ``groups`` paths of ``base_width``
channels each (for the first stage, doubling per stage); Wide ResNet doubles
``base_width``; SE-ResNet gates the last BN's output with squeeze-and-excitation, ECA-ResNet
with a k-tap 1-D convolution across the pooled channels (no bottleneck; k from the width).
ResNet-D (Bag of Tricks) replaces the 7x7 stem by three 3x3 convolutions (32, 32, 64
channels; stride 2 in the first) and projects the shortcut after a 2x2 stride-2 average pool
with a stride-1 1x1 convolution, so that it reads every pixel instead of one in four; in a
stage whose stride became dilation, timm's rule pools 2x2 with stride 1 over the map padded
by a zero row and column at its end. Keys and evaluation settings are timm's.

Dense prediction (dilation):
    ``output_stride`` (32, 16, 8 or 4) replaces the stride of the last stage(s) by dilation,
    as DeepLab and torchvision's ``replace_stride_with_dilation`` do: with 16 the last stage
    keeps the resolution of the third and dilates its 3x3 convolutions by 2; with 8 the
    third stage is dilated by 2 and the fourth by 4. As in torchvision and timm, the first
    block of a dilated stage still uses the previous stage's rate (it receives the finer
    map) and the later blocks the new one. ``feature_info`` reductions follow the output
    stride. The weights are the same, so any ImageNet checkpoint loads.

    ``multi_grid`` gives unit rates cycled over the blocks of the last stage and multiplied
    by that stage's dilation, as DeepLabv3's multi-grid: with output stride 16 and
    ``multi_grid=(1, 2, 4)`` the three blocks of stage 4 use rates 2, 4, 8.
    ``dilation_rates`` sets the rates of any stage directly (hybrid dilated convolution,
    Wang et al., "Understanding Convolution for Semantic Segmentation", WACV 2018): one
    entry per stage, ``None`` or a non-empty tuple of at most as many rates as the stage has
    blocks, cycled over its blocks, NOT multiplied by the stage's dilation — multiplying
    (1, 2, 5) by 2 would give (2, 4, 10), whose common factor brings back the gridding HDC
    removes. For example, at output stride 8,
    ``(None, None, (1, 2, 5), (5, 9, 17))``. Where rates are given every block of the
    stage uses its own rate, the first one included (check a pattern with
    ``visionzoo.analysis.hdc_check``)::

        create_model("resnet50", output_stride=8, multi_grid=(1, 2, 5))

State-dict keys (``conv1``, ``bn1``, ``layer1`` .. ``layer4``, ``fc``; ``se.fc1``/``se.fc2``)
equal both timm's and torchvision's, so both load without conversion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import FeatureInfo, VisionModel
from ..checkpoints import identity, register_converter
from ..layers import POOL_TYPES, DropPath, MaxPool2d, SqueezeExcite, apply_conv_bn, apply_conv_bn_seq, check_output_stride, classifier, drop_path_rates, make_divisible, pad_same, skippable
from ..layers.helpers import no_hooks, plain_cpu_eager
from ..registry import default_cfg, register_family

__all__ = ["BasicBlock", "Bottleneck", "EfficientChannelAttention", "ResNet", "ResNetConfig", "ResidualStage", "eca_kernel_size", "stage_dilations"]


def _conv_bn(in_chs: int, out_chs: int, kernel_size: int, *, stride: int = 1, dilation: int = 1, groups: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    pad = dilation * (kernel_size - 1) // 2
    conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, pad, dilation=dilation, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(out_chs)


class AvgPool2dSame(nn.AvgPool2d):
    """2x2 stride-1 average pool over a map padded by one zero row and column at its end
    (TensorFlow's 'SAME'), which keeps the size: ResNet-D's shortcut in a stage whose stride
    became dilation (timm's rule). The padded zeros count in the border averages."""

    def __init__(self) -> None:
        super().__init__(2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(pad_same(x, (2, 2), (1, 1)), 2, 1)


#: the shortcut projections of a stage's first block: "conv", the 1x1 convolution with the
#: stride (ResNet-B); "avg", ResNet-D's 2x2 average pool with the stride (nothing at stride 1,
#: ceil mode, padding not counted) before a stride-1 1x1 convolution; "avg_same", ResNet-D's in a
#: stage whose stride became dilation (:class:`AvgPool2dSame`)
SHORTCUTS = ("conv", "avg", "avg_same")


def _downsample(in_chs: int, out_chs: int, stride: int, shortcut: str = "conv") -> nn.Sequential | None:
    """Projection of the shortcut where the shape changes (keys ``downsample.0/1``; after
    ResNet-D's pool, ``downsample.1/2``)."""
    if stride == 1 and in_chs == out_chs:
        return None
    if shortcut == "conv":
        return nn.Sequential(*_conv_bn(in_chs, out_chs, 1, stride=stride))
    if shortcut == "avg_same":
        pool: nn.Module = AvgPool2dSame()
    else:
        pool = nn.Identity() if stride == 1 else nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
    return nn.Sequential(pool, *_conv_bn(in_chs, out_chs, 1))


def _owns_shortcut(block: nn.Module, owns_input: bool) -> bool:
    """Whether ``block``'s shortcut is a tensor nothing else holds, which its last convolution
    may sum into (:func:`~visionzoo.layers.apply_conv_bn`'s ``into_residual``): the block's
    input where its caller handed that over, or the fresh output of its own projection (a
    plain conv + BN ``nn.Sequential``, as built here, that no hook sees)."""
    ds = block.downsample
    if ds is None:
        return owns_input
    parts = (nn.Conv2d, nn.BatchNorm2d, nn.AvgPool2d, AvgPool2dSame, nn.Identity)  # ends in the projection's conv + BN
    return type(ds) is nn.Sequential and all(type(m) in parts for m in ds) and type(ds[-1]) is nn.BatchNorm2d and no_hooks(ds, *ds)


class ResidualStage(nn.Sequential):
    """A stage of residual blocks (an ``nn.Sequential``: keys ``layer1.0.conv1.weight`` ...).

    In CPU inference, where no hook sees any of its modules, each block after the first is
    handed its input, the previous block's output, which nothing outside the stage holds: its
    last convolution then writes the residual sum into that tensor (oneDNN's in-place sum)
    instead of a new one. The stage's input, which a caller may keep (``forward_intermediates``
    keeps every stage's output), is never written. Anywhere else, ``nn.Sequential``'s forward.
    """

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or not plain_cpu_eager(x) or not no_hooks(*self.modules()):
            return super().forward(x)
        for i, block in enumerate(self):
            x = block(x, owns_input=i > 0) if type(block) in (BasicBlock, Bottleneck) else block(x)
        return x


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """ECA-Net's adaptive kernel (Wang et al. 2020): ``t = int((log2(C) + beta) / gamma)``, made
    odd by adding 1 where it is even: 3 below 128 channels, 5 from 128, 7 from 2048. Computed
    as the authors' and timm's code does (``math.log(C, 2)``), so every width gets their
    kernel; at least 3, as timm's (the paper's rule gives 1 below 8 channels)."""
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


class EfficientChannelAttention(nn.Module):
    """ECA (Wang et al., CVPR 2020): squeeze-and-excitation without the bottleneck. The
    pooled channel vector passes one 1-D convolution across neighbouring channels
    (``kernel_size`` weights, no bias), then a sigmoid gates the map.

    Args:
        channels: channels of the map; they set the kernel (:func:`eca_kernel_size`).
        kernel_size: a fixed odd kernel instead.

    Submodule ``conv`` (a ``Conv1d(1, 1, k)``) follows timm's ``EcaModule``, so its
    ``ecaresnet*`` checkpoints load as they are.

    Shapes:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, *, kernel_size: int | None = None) -> None:
        super().__init__()
        k = eca_kernel_size(channels) if kernel_size is None else kernel_size
        if k < 1 or k % 2 == 0:
            raise ValueError(f"ECA's kernel_size must be a positive odd number (the gate keeps the channel count), got {k}")
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        s = self.conv(x.mean((2, 3)).unsqueeze(1))  # B, C -> B, 1, C: channels as a sequence
        return x * self.gate(s).view(x.shape[0], -1, 1, 1)  # B, C, 1, 1 gate


#: channel attention after a block's last BN: SE (``se_ratio`` of the width, 1/16 by default,
#: rounded to a multiple of 8) or ECA
ATTENTION_TYPES = ("", "se", "eca")


def _channel_attention(attn: str, channels: int, se_ratio: float = 1 / 16) -> nn.Module | None:
    if attn == "se":
        return SqueezeExcite(channels, make_divisible(channels * se_ratio, 8, round_limit=0.0))
    return EfficientChannelAttention(channels) if attn == "eca" else None


class BlurPool2d(nn.Module):
    """Anti-aliased downsampling (Zhang, "Making Convolutional Networks Shift-Invariant Again",
    ICML 2019): each channel blurred by the 3x3 binomial filter ([1, 2, 1] / 4 each way) over
    the map reflect-padded by one, at ``stride`` (timm's ``BlurPool2d``; the filter holds no
    state, as timm's is a buffer left out of its state dict).

    Shapes:
        (B, C, H, W) -> (B, C, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, channels: int, stride: int = 2) -> None:
        super().__init__()
        self.channels, self.stride = channels, stride

    def forward(self, x: Tensor) -> Tensor:
        k = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
        w = (k[:, None] * k[None, :]).expand(self.channels, 1, 3, 3).contiguous()  # C, 1, 3, 3
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, stride=self.stride, groups=self.channels)


#: anti-aliased downsampling (timm's ``aa_layer``): "avg", a 2x2 average pool; "blur", :class:`BlurPool2d`
AA_TYPES = ("", "avg", "blur")


def _anti_alias(aa: str, channels: int, stride: int, dilated: bool) -> nn.Module | None:
    """The layer that takes a block's stride after its convolution ran at stride 1, as timm's
    ``create_aa``: where the stride became dilation (first rate != rate) the blur still blurs,
    at stride 1; the average pool is then a 1x1 identity, so none is built."""
    if aa == "avg" and stride == 2:
        return nn.AvgPool2d(2)
    return BlurPool2d(channels, stride) if aa == "blur" and (stride == 2 or dilated) else None


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34).

    Args:
        in_chs: input channels.
        planes: output channels.
        stride: stride of the first convolution.
        dilation: rate of the second convolution.
        first_dilation: rate of the first convolution (``dilation`` when omitted; the first
            block of a dilated stage keeps the previous stage's rate here).
        attn: channel attention after the last BN (:data:`ATTENTION_TYPES`).
        se_ratio: squeeze-excitation width over the block's output width.
        aa: anti-aliased downsampling (:data:`AA_TYPES`): a stride-2 block's first convolution
            runs at stride 1 and a 2x2 average pool or a blur pool follows it (timm's ``aa_layer``).
        drop_path: stochastic-depth rate of the residual branch.
        shortcut: the shortcut's projection where the shape changes (:data:`SHORTCUTS`).

    Shapes:
        (B, in_chs, H, W) -> (B, planes, H/stride, W/stride).
    """

    expansion = 1

    def __init__(
        self,
        in_chs: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        groups: int = 1,
        base_width: int = 64,
        attn: str = "",
        se_ratio: float = 1 / 16,
        aa: str = "",
        drop_path: float = 0.0,
        shortcut: str = "conv",
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("the basic block has no groups / base width (use block='bottleneck' for ResNeXt / Wide ResNet)")
        self.aa = _anti_alias(aa, planes, stride, (first_dilation or dilation) != dilation)
        self.conv1, self.bn1 = _conv_bn(in_chs, planes, 3, stride=1 if self.aa else stride, dilation=first_dilation or dilation)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, dilation=dilation)
        self.se = _channel_attention(attn, planes, se_ratio)  # (timm's key for any kind)
        self.drop_path = DropPath(drop_path)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_chs, planes, stride, shortcut)

    def forward(self, x: Tensor, *, owns_input: bool = False) -> Tensor:
        """``owns_input``: the caller hands ``x`` over (:class:`ResidualStage`), so the
        residual sum may be written into it."""
        shortcut = x if self.downsample is None else apply_conv_bn_seq(self.downsample, x)
        x = apply_conv_bn(self.conv1, self.bn1, x, self.act1)
        if self.aa is not None:
            x = self.aa(x)
        if self.se is None and skippable(self.drop_path):  # sum and ReLU as the convolution's post-ops where it can
            return apply_conv_bn(self.conv2, self.bn2, x, self.act2, residual=shortcut, into_residual=_owns_shortcut(self, owns_input))
        x = apply_conv_bn(self.conv2, self.bn2, x)
        if self.se is not None:
            x = self.se(x)
        x = self.drop_path(x)
        x += shortcut  # x is a fresh conv / BN / attention / drop-path output: sum in place
        return self.act2(x)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (grouped) -> 1x1 expand (4x), residual (ResNet-50+, ResNeXt, WRN).

    Args:
        in_chs: input channels.
        planes: channels of the stage before expansion; the block outputs ``4 * planes``.
        stride: stride of the 3x3 convolution.
        dilation: the stage's rate; taken by the 3x3 unless ``first_dilation`` is given.
        first_dilation: rate of the 3x3 convolution (the first block of a dilated stage
            keeps the previous stage's rate).
        groups: groups of the 3x3 convolution (ResNeXt's cardinality).
        base_width: channels per group at ``planes=64``; the 3x3 has
            ``floor(planes * base_width / 64) * groups`` channels.
        attn: channel attention after the last BN (:data:`ATTENTION_TYPES`).
        aa: anti-aliased downsampling (:data:`AA_TYPES`): a stride-2 block's 3x3 runs at stride 1
            and a 2x2 average pool or a blur pool follows it (timm's ``aa_layer``).
        drop_path: stochastic-depth rate of the residual branch.
        shortcut: the shortcut's projection where the shape changes (:data:`SHORTCUTS`).

    Shapes:
        (B, in_chs, H, W) -> (B, 4 * planes, H/stride, W/stride).
    """

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        groups: int = 1,
        base_width: int = 64,
        attn: str = "",
        se_ratio: float = 1 / 16,
        aa: str = "",
        drop_path: float = 0.0,
        shortcut: str = "conv",
    ) -> None:
        super().__init__()
        width = planes * base_width // 64 * groups
        out_chs = planes * self.expansion
        self.conv1, self.bn1 = _conv_bn(in_chs, width, 1)
        self.act1 = nn.ReLU(inplace=True)
        self.aa = _anti_alias(aa, width, stride, (first_dilation or dilation) != dilation)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride=1 if self.aa else stride, dilation=first_dilation or dilation, groups=groups)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3, self.bn3 = _conv_bn(width, out_chs, 1)
        self.se = _channel_attention(attn, out_chs, se_ratio)  # (timm's key for any kind)
        self.drop_path = DropPath(drop_path)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_chs, out_chs, stride, shortcut)

    def forward(self, x: Tensor, *, owns_input: bool = False) -> Tensor:
        """``owns_input``: the caller hands ``x`` over (:class:`ResidualStage`), so the
        residual sum may be written into it."""
        shortcut = x if self.downsample is None else apply_conv_bn_seq(self.downsample, x)
        x = apply_conv_bn(self.conv1, self.bn1, x, self.act1)
        x = apply_conv_bn(self.conv2, self.bn2, x, self.act2)
        if self.aa is not None:
            x = self.aa(x)
        if self.se is None and skippable(self.drop_path):  # sum and ReLU as the convolution's post-ops where it can
            return apply_conv_bn(self.conv3, self.bn3, x, self.act3, residual=shortcut, into_residual=_owns_shortcut(self, owns_input))
        x = apply_conv_bn(self.conv3, self.bn3, x)
        if self.se is not None:
            x = self.se(x)
        x = self.drop_path(x)
        x += shortcut  # x is a fresh conv / BN / attention / drop-path output: sum in place
        return self.act3(x)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
STEM_TYPES = ("", "deep", "deep_tiered")


@dataclass(frozen=True)
class ResNetConfig:
    """One ResNet-style network.

    Attributes:
        block: "basic" (two 3x3) or "bottleneck" (1x1-3x3-1x1, expansion 4).
        layers: blocks per stage.
        groups: groups of the bottleneck's 3x3 (ResNeXt cardinality).
        base_width: channels per group of the first stage's 3x3 (64 for ResNet; 4 or 8 for
            ResNeXt 32x4d / 32x8d; 128 for Wide ResNet-50-2).
        se: squeeze-and-excitation in every block (SE-ResNet): ``attn="se"``.
        attn: channel attention in every block: ``"se"`` or ``"eca"`` (ECA-Net; timm's
            ``ecaresnet*``), or ``""``.
        se_ratio: the SE bottleneck's width over the block's output width (rounded to a
            multiple of 8): 1/16 as SENet, 1/4 in ResNet-RS (timm's ``rd_ratio``).
        aa_layer: anti-aliased downsampling, timm's ``aa_layer``: each stride-2 convolution of
            the blocks runs at stride 1 and a pool takes the stride. ``"avg"`` (its
            ``nn.AvgPool2d``, the ``resnetaa*`` networks): a 2x2 average pool, and the stem
            pools 2x2 average instead of 3x3 max; ``"blur"`` (its ``BlurPool2d``,
            ``resnetblur*``): a 3x3 binomial blur at the stride, and the stem's max pool runs
            at stride 1 before one; ``""``: none.
        stem_type: ``""``, the 7x7 stride-2 convolution; ``"deep"``, ResNet-C's three 3x3
            convolutions (stride 2, then 1, 1; BN and ReLU between) of ``stem_width``,
            ``stem_width`` and twice ``stem_width`` channels (Bag of Tricks, He et al. 2019);
            ``"deep_tiered"``, timm's: the first of them 3/4 as wide (24, 32, 64 for 32).
        stem_width: the 7x7 stem's channels, or the deep stem's first two widths (timm's
            ResNet-C/D networks: 32, so that the stem gives 64 channels as the plain one does).
        replace_stem_pool: the stem's 3x3 max pool replaced by a 3x3 stride-2 convolution, BN
            and ReLU (ResNet-RS, Bello et al. 2021; timm's ``replace_stem_pool``; keys
            ``maxpool.0`` / ``maxpool.1``, as timm's).
        avg_down: ResNet-D's shortcut: a 2x2 average pool with the stride before a stride-1
            1x1 projection, so the shortcut reads every pixel (timm's ``avg_down``).
        output_stride: 32, 16, 8 or 4; smaller values dilate the last stage(s) instead of
            striding (module docstring).
        multi_grid: unit rates cycled over the last stage's blocks (DeepLabv3).
        dilation_rates: per stage ``None`` or absolute rates cycled over its blocks (HDC).
        drop_rate: dropout before the classifier.
    """

    block: str = "bottleneck"
    layers: tuple[int, ...] = (3, 4, 6, 3)
    groups: int = 1
    base_width: int = 64
    se: bool = False
    attn: str = ""
    se_ratio: float = 1 / 16
    aa_layer: str = ""
    stem_type: str = ""
    stem_width: int = 64
    replace_stem_pool: bool = False
    avg_down: bool = False
    output_stride: int = 32
    multi_grid: tuple[int, ...] | None = None
    dilation_rates: tuple[tuple[int, ...] | None, ...] | None = None
    drop_rate: float = 0.0


def _is_sequence(x: object) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, (str, bytes))


def _check_rates(name: str, rates: Sequence[object]) -> None:
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in rates):
        raise ValueError(f"{name}: dilation rates must be positive ints, got {tuple(rates)!r}")


def stage_dilations(cfg: ResNetConfig) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """Per stage: (stride, reduction after it, [(first_dilation, dilation) per block]).

    Strides are replaced by dilation once the network has reached ``output_stride``; the
    first block of a stage without explicit rates keeps the previous rate (module docstring).
    """
    n = len(cfg.layers)
    rates: list[tuple[int, ...] | None] = [None] * n  # absolute rates (HDC)
    if cfg.dilation_rates is not None:
        if not _is_sequence(cfg.dilation_rates) or len(cfg.dilation_rates) != n:
            raise ValueError(f"dilation_rates needs one entry per stage ({n}): None or a tuple of rates, got {cfg.dilation_rates!r}")
        for i, (r, depth) in enumerate(zip(cfg.dilation_rates, cfg.layers)):
            if r is None:
                continue
            if not _is_sequence(r):
                raise ValueError(f"dilation_rates[{i}] must be None or a tuple of rates (one rate for every block: ({r!r},)), got {r!r}")
            if not r:
                raise ValueError(f"dilation_rates[{i}] is empty: give None for the stage's default rates, or at least one rate")
            if len(r) > depth:
                raise ValueError(f"dilation_rates[{i}] gives {len(r)} rates, but stage {i + 1} has {depth} blocks: {r!r}")
            _check_rates(f"dilation_rates[{i}]", r)
            rates[i] = tuple(r)
    if cfg.multi_grid is not None:
        if not _is_sequence(cfg.multi_grid) or not cfg.multi_grid:
            raise ValueError(f"multi_grid must be None or a non-empty tuple of unit rates, got {cfg.multi_grid!r}")
        _check_rates("multi_grid", cfg.multi_grid)
    if cfg.multi_grid and rates[-1] is not None:
        raise ValueError(f"multi_grid {cfg.multi_grid!r} conflicts with dilation_rates[-1] {rates[-1]!r}: give one of them")
    check_output_stride(cfg.output_stride, (4, 8, 16, 32))

    plan, net_stride, dilation, prev = [], 4, 1, 1
    for i, depth in enumerate(cfg.layers):
        stride = 1 if i == 0 else 2
        if net_stride >= cfg.output_stride:  # trade the stride for dilation
            dilation, stride = dilation * stride, 1
        else:
            net_stride *= stride
        blocks = []
        for j in range(depth):
            if rates[i]:
                r = rates[i][j % len(rates[i])]
                blocks.append((r, r))
            elif cfg.multi_grid and i == n - 1:
                r = dilation * cfg.multi_grid[j % len(cfg.multi_grid)]
                blocks.append((r, r))
            else:
                blocks.append((prev if j == 0 else dilation, dilation))
        plan.append((stride, net_stride, blocks))
        prev = dilation
    return plan


class ResNet(VisionModel):
    """ResNet / ResNeXt / Wide ResNet / SE-ResNet classifier.

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); ``forward_features``:
        (B, num_features, H/s, W/s) with s = ``output_stride`` (rounded up). Any H, W work.

    ``feature_info``: the stem (after ReLU, stride 2, module ``act1``) and the four stages,
    as timm's ``features_only``.
    """

    family = "resnet"
    pool_types = POOL_TYPES
    grad_checkpoint_units = (r"layer\d\.\d+",)
    cpu_channels_last = True  # with prepacked conv weights (layers.conv), faster at every size measured

    def __init__(self, cfg: ResNetConfig, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (224, 224), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if cfg.block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {cfg.block!r}")
        if len(cfg.layers) != 4:
            raise ValueError(f"layers must give four stages, got {cfg.layers!r}")
        if cfg.stem_type not in STEM_TYPES:
            raise ValueError(f"stem_type must be one of {', '.join(map(repr, STEM_TYPES))}, got {cfg.stem_type!r}")
        if cfg.stem_type == "deep_tiered" and cfg.stem_width < 4:
            raise ValueError(f"stem_type='deep_tiered' needs stem_width >= 4 (its first convolution is 3 * (stem_width // 4) wide), got {cfg.stem_width}")
        if cfg.attn not in ATTENTION_TYPES:
            raise ValueError(f"attn must be one of {', '.join(map(repr, ATTENTION_TYPES))}, got {cfg.attn!r}")
        if cfg.se and cfg.attn not in ("", "se"):
            raise ValueError(f"se=True asks for squeeze-and-excitation, attn={cfg.attn!r} for another attention: give one of them")
        attn = "se" if cfg.se else cfg.attn
        if cfg.aa_layer not in AA_TYPES:
            raise ValueError(f"aa_layer must be one of {', '.join(map(repr, AA_TYPES))}, got {cfg.aa_layer!r}")
        block = BLOCKS[cfg.block]
        self.cfg = cfg
        self.num_classes, self.in_chans = num_classes, in_chans

        sw = cfg.stem_width
        if cfg.stem_type:  # deep: keys conv1.0 / .1 / .3 / .4 / .6, then bn1, as timm's
            stem_chs = 2 * sw
            first = 3 * (sw // 4) if cfg.stem_type == "deep_tiered" else sw
            self.conv1: nn.Module = nn.Sequential(
                *_conv_bn(in_chans, first, 3, stride=2), nn.ReLU(inplace=True),
                *_conv_bn(first, sw, 3), nn.ReLU(inplace=True),
                nn.Conv2d(sw, stem_chs, 3, 1, 1, bias=False),
            )
            self.bn1 = nn.BatchNorm2d(stem_chs)
        else:
            stem_chs = sw
            self.conv1, self.bn1 = _conv_bn(in_chans, stem_chs, 7, stride=2)
        self.act1 = nn.ReLU(inplace=True)
        if cfg.replace_stem_pool:  # as timm's: with anti-aliasing the convolution runs at stride 1 and the pool strides
            aa = _anti_alias(cfg.aa_layer, stem_chs, 2, False)
            conv, bn = _conv_bn(stem_chs, stem_chs, 3, stride=1 if aa else 2)
            self.maxpool = nn.Sequential(*(m for m in (conv, aa, bn, nn.ReLU(inplace=True)) if m is not None))
            if cfg.aa_layer == "avg":
                self.input_multiple = cfg.output_stride
        elif cfg.aa_layer == "avg":
            self.maxpool: nn.Module = nn.AvgPool2d(2)
            self.input_multiple = cfg.output_stride  # its pools floor an odd side that the shortcut rounds up (timm then fails)
        elif cfg.aa_layer == "blur":
            self.maxpool = nn.Sequential(MaxPool2d(kernel_size=3, stride=1, padding=1), BlurPool2d(stem_chs, 2))
        else:
            self.maxpool = MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.feature_info = [FeatureInfo(stem_chs, 2, "act1")]
        if cfg.stem_type:  # the deep stem's three convolutions at half resolution are recomputed too
            self.grad_checkpoint_units = (r"conv1", *type(self).grad_checkpoint_units)

        dpr = drop_path_rates(drop_path_rate, sum(cfg.layers))
        in_chs, k = stem_chs, 0
        self.stage_names = [f"layer{i + 1}" for i in range(4)]  # torchvision's / timm's names
        for i, (stride, reduction, rates) in enumerate(stage_dilations(cfg)):
            planes = 64 * 2**i
            shortcut = "conv" if not cfg.avg_down else "avg_same" if i > 0 and stride == 1 else "avg"  # (a stride that became dilation)
            blocks = []
            for j, (first_dilation, dilation) in enumerate(rates):
                blocks.append(block(
                    in_chs, planes, stride=stride if j == 0 else 1, dilation=dilation, first_dilation=first_dilation,
                    groups=cfg.groups, base_width=cfg.base_width, attn=attn, se_ratio=cfg.se_ratio, aa=cfg.aa_layer, drop_path=dpr[k], shortcut=shortcut if j == 0 else "conv",
                ))
                in_chs, k = planes * block.expansion, k + 1
            self.add_module(self.stage_names[i], ResidualStage(*blocks))
            self.feature_info.append(FeatureInfo(in_chs, reduction, self.stage_names[i]))

        self.num_features = in_chs
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.fc = classifier(in_chs, num_classes)
        self._init_weights()

    @classmethod
    def timm_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """timm's ResNet keywords: ``cardinality`` is ``groups``; ``block_args=dict(attn_layer=
        "se" / "eca")`` is ``attn``; ``aa_layer`` as its classes (``nn.AvgPool2d``, timm's
        ``BlurPool2d``) or its strings ("avgpool", "blurpool") is "avg" / "blur"."""
        options = dict(options)
        if "cardinality" in options:
            groups = options.pop("cardinality")
            if options.setdefault("groups", groups) != groups:
                raise ValueError(f"cardinality={groups!r} and groups={options['groups']!r} are timm's and visionzoo's names of one option: give one")
        if "block_args" in options:
            args = dict(options.pop("block_args") or {})
            attn = args.pop("attn_layer", None)
            if args:
                raise ValueError(f"block_args takes attn_layer only ('se' or 'eca', timm's channel attention), got {sorted(args)}")
            if attn is not None and options.setdefault("attn", attn) != attn:
                raise ValueError(f"block_args attn_layer={attn!r} and attn={options['attn']!r} name one option: give one")
        aa = options.get("aa_layer")
        if aa is not None and not isinstance(aa, str):
            options["aa_layer"] = {"AvgPool2d": "avg", "BlurPool2d": "blur"}.get(getattr(aa, "__name__", ""), aa)
        elif isinstance(aa, str):
            options["aa_layer"] = {"avgpool": "avg", "blurpool": "blur"}.get(aa.lower().replace("_", ""), aa)
        return options

    def _init_weights(self) -> None:
        """He init (fan-out) for convolutions; the last BN of each residual branch starts at
        zero, so every block starts as the identity (Goyal et al., 2017; timm's default)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.bn3.weight if isinstance(m, Bottleneck) else m.bn2.weight)

    def _stem(self, x: Tensor) -> Tensor:
        if not self.cfg.stem_type:
            return apply_conv_bn(self.conv1, self.bn1, x, self.act1)  # B, 64, H/2, W/2
        c = self.conv1
        if torch.is_grad_enabled() or not plain_cpu_eager(x) or not no_hooks(c):  # its forward runs: hooks, checkpointing, tracing
            return self.act1(self.bn1(c(x)))
        x = apply_conv_bn(c[0], c[1], x, c[2])
        x = apply_conv_bn(c[3], c[4], x, c[5])
        return apply_conv_bn(c[6], self.bn1, x, self.act1)  # B, 2 * stem_width, H/2, W/2

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x = apply_conv_bn_seq(self.maxpool, self._stem(x))  # B, 64, H/4, W/4
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def pooled_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pool(x))  # B, C (2C: catavgmax)
        return x if pre_logits else self.fc(x)

    def reset_head(self, num_classes: int) -> None:
        self.fc = classifier(self.pooled_features, num_classes)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's grouping: ``stem`` (conv1, bn1, and the convolution that replaces the max pool
        in ResNet-RS), then one group per residual block (``layerS.B``; per stage ``layerS`` with
        ``coarse=True``); ``fc`` last."""
        return dict(stem=r"^(?:conv1|bn1|maxpool)\.", blocks=r"^layer(\d+)\." if coarse else r"^layer(\d+)\.(\d+)\.")

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        self.check_input(x)
        x = self._stem(x)
        out = {0: x}
        x = apply_conv_bn_seq(self.maxpool, x)
        for i in range(1, len(self.stage_names) + 1 if with_features else max(indices) + 1):
            x = getattr(self, self.stage_names[i - 1])(x)
            out[i] = x
        maps = [out[i] for i in indices]
        return (maps, x) if with_features else maps

    def prune_for_features(self, indices: Sequence[int]) -> None:
        self.reset_classifier(0)
        for name in self.stage_names[max(indices):]:
            delattr(self, name)
        self.stage_names = self.stage_names[: max(indices)]


# --------------------------------------------------------------------------- checkpoints
# timm's and torchvision's keys are ours: both layouts load as they are.
register_converter("resnet", "timm")(identity)
register_converter("resnet", "torchvision")(identity)


# --------------------------------------------------------------------------- variants
VARIANTS = {
    "resnet18": ResNetConfig(block="basic", layers=(2, 2, 2, 2)),
    "resnet34": ResNetConfig(block="basic", layers=(3, 4, 6, 3)),
    "resnet26": ResNetConfig(layers=(2, 2, 2, 2)),
    "resnet50": ResNetConfig(),
    "resnet101": ResNetConfig(layers=(3, 4, 23, 3)),
    "resnet152": ResNetConfig(layers=(3, 8, 36, 3)),
    "resnet200": ResNetConfig(layers=(3, 24, 36, 3)),
    "resnext50_32x4d": ResNetConfig(groups=32, base_width=4),
    **{f"resnext101_{g}x{w}d": ResNetConfig(layers=(3, 4, 23, 3), groups=g, base_width=w) for g, w in ((32, 4), (32, 8), (32, 16), (32, 32), (64, 4))},
    "wide_resnet50_2": ResNetConfig(base_width=128),
    "wide_resnet101_2": ResNetConfig(layers=(3, 4, 23, 3), base_width=128),
    "seresnet18": ResNetConfig(block="basic", layers=(2, 2, 2, 2), se=True),
    "seresnet34": ResNetConfig(block="basic", layers=(3, 4, 6, 3), se=True),
    "seresnet50": ResNetConfig(se=True),
    "seresnet101": ResNetConfig(layers=(3, 4, 23, 3), se=True),
    "seresnet152": ResNetConfig(layers=(3, 8, 36, 3), se=True),
    "seresnext50_32x4d": ResNetConfig(groups=32, base_width=4, se=True),
    **{f"seresnext101_{g}x{w}d": ResNetConfig(layers=(3, 4, 23, 3), groups=g, base_width=w, se=True) for g, w in ((32, 4), (32, 8), (64, 4))},
    # ResNet-C (Bag of Tricks' deep stem, plain shortcut), and timm's "s": the deep stem 64 wide
    **{
        f"resnet{depth}{kind}": ResNetConfig(layers=layers, stem_type="deep", stem_width=32 if kind == "c" else 64)
        for depth, layers in ((50, (3, 4, 6, 3)), (101, (3, 4, 23, 3)), (152, (3, 8, 36, 3))) for kind in "cs"
    },
    # ResNet-D (Bag of Tricks): the deep stem (ResNet-C) and the average-pool shortcut
    **{
        f"resnet{depth}d": ResNetConfig(block=block, layers=layers, stem_type="deep", stem_width=32, avg_down=True)
        for depth, block, layers in (
            (18, "basic", (2, 2, 2, 2)), (26, "bottleneck", (2, 2, 2, 2)), (34, "basic", (3, 4, 6, 3)),
            (50, "bottleneck", (3, 4, 6, 3)), (101, "bottleneck", (3, 4, 23, 3)), (152, "bottleneck", (3, 8, 36, 3)),
            (200, "bottleneck", (3, 24, 36, 3)),
        )
    },
    "resnext50d_32x4d": ResNetConfig(groups=32, base_width=4, stem_type="deep", stem_width=32, avg_down=True),
    "seresnext26d_32x4d": ResNetConfig(layers=(2, 2, 2, 2), groups=32, base_width=4, se=True, stem_type="deep", stem_width=32, avg_down=True),
    "seresnext101d_32x8d": ResNetConfig(layers=(3, 4, 23, 3), groups=32, base_width=8, se=True, stem_type="deep", stem_width=32, avg_down=True),
    **{
        f"{attn}resnet{depth}d": ResNetConfig(layers=layers, attn=attn, stem_type="deep", stem_width=32, avg_down=True)
        for attn, depth, layers in (
            ("se", 152, (3, 8, 36, 3)), ("se", 200, (3, 24, 36, 3)), ("se", 269, (3, 30, 48, 8)),
            ("eca", 50, (3, 4, 6, 3)), ("eca", 101, (3, 4, 23, 3)), ("eca", 200, (3, 24, 36, 3)), ("eca", 269, (3, 30, 48, 8)),
        )
    },
    # timm's anti-aliased ResNets (aa_layer=nn.AvgPool2d or BlurPool2d): pools take the strides
    "resnetaa50": ResNetConfig(aa_layer="avg"),
    "resnetblur18": ResNetConfig(block="basic", layers=(2, 2, 2, 2), aa_layer="blur"),
    "resnetblur50": ResNetConfig(aa_layer="blur"),
    "resnetblur50d": ResNetConfig(aa_layer="blur", stem_type="deep", stem_width=32, avg_down=True),
    "resnetblur101d": ResNetConfig(layers=(3, 4, 23, 3), aa_layer="blur", stem_type="deep", stem_width=32, avg_down=True),
    **{
        name: ResNetConfig(block=block, layers=layers, groups=g, base_width=w, se=se, aa_layer="avg", stem_type="deep", stem_width=sw, avg_down=True)
        for name, block, layers, g, w, se, sw in (
            ("resnetaa34d", "basic", (3, 4, 6, 3), 1, 64, False, 32), ("resnetaa50d", "bottleneck", (3, 4, 6, 3), 1, 64, False, 32),
            ("resnetaa101d", "bottleneck", (3, 4, 23, 3), 1, 64, False, 32), ("seresnetaa50d", "bottleneck", (3, 4, 6, 3), 1, 64, True, 32),
            ("seresnextaa101d_32x8d", "bottleneck", (3, 4, 23, 3), 32, 8, True, 32), ("seresnextaa201d_32x8d", "bottleneck", (3, 24, 36, 4), 32, 8, True, 64),
        )
    },
    # ECA-ResNet-light (timm): ResNet-D's shortcut on the plain stem, stages of 1, 1, 11, 3 blocks
    "ecaresnetlight": ResNetConfig(layers=(1, 1, 11, 3), attn="eca", avg_down=True),
    # timm's tiered deep stem (24, 32, 64 channels) with ResNet-D's shortcut
    **{
        f"resnet{depth}t": ResNetConfig(block=block, layers=layers, stem_type="deep_tiered", stem_width=32, avg_down=True)
        for depth, block, layers in (
            (10, "basic", (1, 1, 1, 1)), (14, "bottleneck", (1, 1, 1, 1)), (26, "bottleneck", (2, 2, 2, 2)), (50, "bottleneck", (3, 4, 6, 3)),
        )
    },
    **{
        f"{attn}resnext{depth}t_32x4d": ResNetConfig(layers=layers, groups=32, base_width=4, attn=attn, stem_type="deep_tiered", stem_width=32, avg_down=True)
        for attn, depth, layers in (("se", 26, (2, 2, 2, 2)), ("eca", 26, (2, 2, 2, 2)), ("eca", 50, (3, 4, 6, 3)))
    },
    **{
        f"{attn}resnet{depth}t": ResNetConfig(layers=layers, attn=attn, stem_type="deep_tiered", stem_width=32, avg_down=True)
        for attn, depth, layers in (("se", 50, (3, 4, 6, 3)), ("eca", 26, (2, 2, 2, 2)), ("eca", 50, (3, 4, 6, 3)))
    },
    # ResNet-RS (Bello et al., "Revisiting ResNets", NeurIPS 2021): ResNet-D's stem and shortcut, SE
    # a quarter of the width in every block, and a 3x3 stride-2 convolution for the stem's max pool
    **{
        f"resnetrs{depth}": ResNetConfig(layers=layers, attn="se", se_ratio=0.25, stem_type="deep", stem_width=32, replace_stem_pool=True, avg_down=True)
        for depth, layers in (
            (50, (3, 4, 6, 3)), (101, (3, 4, 23, 3)), (152, (3, 8, 36, 3)), (200, (3, 24, 36, 3)), (270, (4, 29, 53, 4)),
            (350, (4, 36, 72, 4)), (420, (4, 44, 87, 4)),
        )
    },
}
#: the networks timm trained (no torchvision weights): timm's evaluation of its default weights
#: (bicubic; side, crop_pct), where ResNet's is torchvision's
TIMM_EVAL = {
    **{n: (224, 0.875) for n in ("seresnext50_32x4d", "seresnext101_32x4d", "resnet18d", "resnet26d", "resnet34d", "resnet50d")},
    # ResNet-RS: the authors' training sizes (timm's input_size; each evaluates at a larger test_input_size)
    **{f"resnetrs{d}": (side, crop) for d, side, crop in ((50, 160, 0.91), (101, 192, 0.94), (152, 256, 1.0), (200, 256, 1.0), (270, 256, 1.0), (350, 288, 1.0), (420, 320, 1.0))},
    "resnet101d": (256, 0.95),
    "resnet152d": (256, 0.95),
    **{n: (224, 0.875) for n in ("resnext50d_32x4d", "seresnext26d_32x4d", "seresnext26t_32x4d", "resnet50t")},
    "resnet10t": (176, 0.875),
    "resnet14t": (176, 0.875),
    "resnet26t": (256, 0.94),
    **{n: (224, 0.875) for n in (
        "resnet26", "resnet50c", "resnet50s", "resnet101c", "resnet101s", "resnet152c", "resnet152s", "resnet200",
        "seresnet18", "seresnet34", "seresnet50t", "seresnet152", "seresnext101_64x4d",
        "ecaresnet50d", "ecaresnet101d", "ecaresnetlight", "ecaresnext26t_32x4d", "ecaresnext50t_32x4d",
    )},
    **{n: (224, 0.95) for n in ("seresnext101_32x8d", "seresnext101d_32x8d")},
    **{n: (256, 0.875) for n in ("seresnet200d", "seresnet269d", "ecaresnet26t", "ecaresnet50t")},
    **{n: (256, 0.95) for n in ("resnet200d", "seresnet152d", "ecaresnet200d")},
    "ecaresnet269d": (320, 0.95),
    **{n: (224, 0.875) for n in ("resnetaa34d", "seresnetaa50d", "resnetblur18", "resnetblur50", "resnetblur50d", "resnetblur101d")},
    **{n: (224, 0.95) for n in ("resnetaa50", "resnetaa50d", "resnetaa101d")},
    "seresnextaa101d_32x8d": (288, 0.95),
    "seresnextaa201d_32x8d": (384, 1.0),
}

# Params: the papers' where they give them, else the reference implementations' (equal to
# ours). The papers count the v1 block (stride in the first 1x1), so their GFLOPs are a
# little lower than the v1.5 block that every released weight uses: ResNet-50 3.8 (paper)
# vs 4.1 counted. GMACs below are the v1.5 counts (REFERENCE.md; torchvision's docs);
# top-1: torchvision's weights for ResNet (the paper gives 10-crop errors), the papers'
# single-crop 224 errors otherwise.
PUBLISHED: dict[str, dict] = {
    "resnet18": dict(params=11.7, gmacs=1.8, top1=69.8, note="top-1 of torchvision's weights; paper: 1.8 GFLOPs (v1 block)"),
    "resnet34": dict(params=21.8, gmacs=3.7, top1=73.3, note="top-1 of torchvision's weights; paper: 3.6 GFLOPs (v1 block)"),
    "resnet50": dict(params=25.6, gmacs=4.1, top1=76.1, note="top-1 of torchvision's weights; paper: 3.8 GFLOPs (v1 block)"),
    "resnet101": dict(params=44.5, gmacs=7.8, top1=77.4, note="top-1 of torchvision's weights; paper: 7.6 GFLOPs (v1 block)"),
    "resnet152": dict(params=60.2, gmacs=11.5, top1=78.3, note="top-1 of torchvision's weights; paper: 11.3 GFLOPs (v1 block)"),
    "resnext50_32x4d": dict(params=25.0, gmacs=4.2, top1=77.8, note="ResNeXt paper Tables 1 and 3 (22.2 % top-1 error)"),
    "resnext101_32x8d": dict(params=88.8, gmacs=16.4, top1=79.3, note="not in the paper; torchvision's figures and weights"),
    "wide_resnet50_2": dict(params=68.9, gmacs=11.4, top1=78.1, note="WRN paper (WRN-50-2-bottleneck, 21.9 % error); torchvision's weights: 78.5"),
    "seresnet50": dict(params=28.1, gmacs=4.1, top1=76.7, note="SENet paper Table 2: 23.29 % error, 3.87 GFLOPs with the v1 block; 4.1 = v1.5 (timm)"),
    "seresnet101": dict(params=49.3, gmacs=7.8, top1=77.6, note="SENet paper Table 2: 22.38 % error, 7.60 GFLOPs with the v1 block; 7.8 = v1.5; params counted"),
    "seresnext50_32x4d": dict(params=27.6, top1=79.0, note="top-1 of the SENet authors' released model (20.97 % error); params counted (equal to timm's)"),
    "seresnext101_32x4d": dict(params=49.0, top1=80.2, note="top-1 of the SENet authors' released model (19.81 % error); params counted (equal to timm's)"),
    "resnet50d": dict(params=25.6, top1=77.2, note="Bag of Tricks (He et al., CVPR 2019): ResNet-50-D 77.16 % top-1, 25 M params (counted: 25.58)"),
    **{
        name: dict(params=params, note="ResNet-D tweaks applied as timm does; no paper gives this network: params counted (equal to timm's)")
        for name, params in (("resnet18d", 11.7), ("resnet26d", 16.0), ("resnet34d", 21.8), ("resnet101d", 44.6), ("resnet152d", 60.2))
    },
    **{
        name: dict(params=params, note="timm's network (deep or tiered stem, ResNet-D shortcut); no paper gives it: params counted (equal to timm's)")
        for name, params in (
            ("resnext50d_32x4d", 25.0), ("seresnext26d_32x4d", 16.8), ("seresnext26t_32x4d", 16.8),
            ("resnet10t", 5.4), ("resnet14t", 10.1), ("resnet26t", 16.0), ("resnet50t", 25.6),
            ("resnet26", 16.0), ("resnet200", 64.7), ("resnet200d", 64.7),
            ("resnet50c", 25.6), ("resnet50s", 25.7), ("resnet101c", 44.6), ("resnet101s", 44.7), ("resnet152c", 60.2), ("resnet152s", 60.3),
            ("seresnet18", 11.8), ("seresnet34", 22.0), ("seresnet50t", 28.1), ("seresnet152", 66.8), ("seresnet152d", 66.8),
            ("seresnet200d", 71.9), ("seresnet269d", 113.7),
            ("seresnext101_32x8d", 93.6), ("seresnext101_64x4d", 88.2), ("seresnext101d_32x8d", 93.6),
        )
    },
    # ECA-Net's figures (Wang et al. 2020: ResNet-50 + ECA, 24.37 M, 77.48 %) are for the plain
    # network; timm's ECA-ResNets add ResNet-D's stem and shortcut
    **{
        name: dict(params=params, note="timm's ECA-ResNet (ECA after every block's last BN; ResNet-D tweaks); no paper gives it: params counted (equal to timm's)")
        for name, params in (
            ("ecaresnet26t", 16.0), ("ecaresnet50d", 25.6), ("ecaresnet50t", 25.6), ("ecaresnet101d", 44.6), ("ecaresnet200d", 64.7),
            ("ecaresnet269d", 102.1), ("ecaresnetlight", 30.2), ("ecaresnext26t_32x4d", 15.4), ("ecaresnext50t_32x4d", 25.0),
        )
    },
    **{
        name: dict(params=params, note="timm's anti-aliased ResNet (average or blur pool downsampling); no paper gives it: params counted (equal to timm's)")
        for name, params in (
            ("resnetaa50", 25.6), ("resnetaa34d", 21.8), ("resnetaa50d", 25.6), ("resnetaa101d", 44.6), ("seresnetaa50d", 28.1),
            ("seresnextaa101d_32x8d", 93.6), ("seresnextaa201d_32x8d", 149.4),
            ("resnetblur18", 11.7), ("resnetblur50", 25.6), ("resnetblur50d", 25.6), ("resnetblur101d", 44.6),
        )
    },
    **{
        f"resnetrs{d}": dict(params=params, note="ResNet-RS (Bello et al. 2021; timm's port of the authors' TensorFlow weights): params counted (equal to timm's)")
        for d, params in ((50, 35.7), (101, 63.6), (152, 86.6), (200, 93.2), (270, 129.9), (350, 164.0), (420, 191.9))
    },
    "resnext101_32x4d": dict(params=44.2, note="Facebook's semi-supervised release (YFCC100M pre-training; timm's default weights); params counted (equal to timm's)"),
    "resnext101_32x16d": dict(params=194.0, note="Facebook's WSL release (Instagram pre-training; timm's default weights); params counted (equal to timm's)"),
    "resnext101_32x32d": dict(params=468.5, note="Facebook's WSL release (Instagram pre-training; timm's default weights); params counted (equal to timm's)"),
    "resnext101_64x4d": dict(params=83.5, gmacs=15.5, top1=83.2, note="not in the paper's 224 tables; torchvision's figures and weights (its 2022 recipe)"),
    "wide_resnet101_2": dict(params=126.9, gmacs=22.8, top1=78.8, note="not in the WRN paper; torchvision's figures and IMAGENET1K_V1 weights (82.5 with V2)"),
}

def _default_cfg(name: str, cfg: ResNetConfig) -> dict:
    """torchvision's evaluation (resize 256 bilinear, centre crop 224), or timm's (bicubic) for the
    networks only timm trained; the first convolution is the deep stem's first where it has one."""
    size, crop = TIMM_EVAL.get(name, (224, 0.875))
    interpolation = "bicubic" if name in TIMM_EVAL else "bilinear"
    extra = {"test_input_size": (3, _TEST_SIZES[name], _TEST_SIZES[name])} if name in _TEST_SIZES else {}
    return default_cfg(size, crop_pct=crop, interpolation=interpolation, first_conv="conv1.0" if cfg.stem_type else "conv1", classifier="fc", **extra)


#: ResNet-RS's evaluation sides (timm's test_input_size): the paper trains smaller than it tests
_TEST_SIZES = {f"resnetrs{d}": side for d, side in ((50, 224), (101, 288), (152, 320), (200, 320), (270, 352), (350, 384), (420, 416))}


register_family(
    "resnet",
    ResNet,
    VARIANTS,
    default_cfgs=_default_cfg,
    published=PUBLISHED,
    paper=(
        "He et al., Deep Residual Learning for Image Recognition, CVPR 2016; ResNeXt: Xie et al., CVPR 2017; "
        "Wide ResNet: Zagoruyko & Komodakis, BMVC 2016; SE-ResNet: Hu et al., CVPR 2018; "
        "ResNet-C/D: He et al., Bag of Tricks for Image Classification with Convolutional Neural Networks, CVPR 2019; "
        "ECA: Wang et al., CVPR 2020; anti-aliasing: Zhang, Making Convolutional Networks Shift-Invariant Again, ICML 2019; "
        "ResNet-RS: Bello et al., Revisiting ResNets: Improved Training and Scaling Strategies, NeurIPS 2021"
    ),
)
