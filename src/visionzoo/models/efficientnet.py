"""EfficientNet B0-B7, EfficientNet-Lite0-4 and EfficientNetV2: compound-scaled MBConv networks.

Papers: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML 2019; Tan & Le, "EfficientNetV2: Smaller Models and Faster Training", ICML
2021. Lite: tensorflow/tpu ``models/official/efficientnet/lite``.

A 3x3 stride-2 stem, seven stages of MBConv blocks

    1x1 expand (x e) -> BN -> act -> depthwise k x k -> BN -> act -> SE -> 1x1 project -> BN (+ x)

(stage 1 has e = 1 and no expansion convolution), a 1x1 head convolution, global pooling,
dropout and a linear classifier. Every variant is generated from the B0 block table
(:data:`B0_STAGES`) and four numbers (width coefficient, depth coefficient, resolution,
dropout): widths are ``round_filters(c * w)`` (nearest multiple of 8, never more than 10 %
below), repeats are ``ceil(r * d)``, as in the official ``efficientnet_model.py``.

Lite (for mobile accelerators) drops squeeze-and-excitation, uses ReLU6, keeps the stem
(32) and head (1280) widths and the repeats of the first and last stages unscaled.

EfficientNetV2 keeps the stem, head and scaling rules and changes the block table
(:data:`V2_S_STAGES` and its kin, the V2 paper's Table 4 and the official ``effnetv2_configs.py``):
its early stages use *Fused-MBConv* (the expansion and the depthwise convolution fused into one
k x k convolution, then a 1x1 projection; with expansion 1 a single k x k convolution, BN and
SiLU with a residual), squeeze-excitation only in the MBConv stages, and smaller expansion
ratios. Each stage's block kind is a field of :class:`StageSpec`, so any table of the four kinds
(``"ds"`` depthwise-separable, ``"ir"`` MBConv, ``"er"`` Fused-MBConv, ``"cn"`` conv-BN-act) can
be built. V2-S/M/L/XL are the paper's; ``tf_efficientnetv2_b0-b3`` the official smaller models
scaled from the V2 base table (widths rounded to the nearest multiple of 8 without the 10 %
rule); ``efficientnetv2_rw_t/s/m`` are timm's variants (a wider last stage and head, and a
Fused-MBConv of expansion 1 with a projection in the first stage, for ``rw_s`` / ``rw_m``).

``tf_efficientnet_b0-b7`` and ``tf_efficientnet_lite0-4`` are timm's names for the same
networks with TensorFlow's numerics (BatchNorm eps 1e-3, 'SAME' padding), the numerics of
the weights timm ported from TensorFlow: a timm ``tf_`` checkpoint belongs in the ``tf_``
model of the same name. Their keys equal the plain variants', so only the name tells them
apart.

``output_stride`` (8 or 16; default 32) trades the strides that would take the network below
it for dilation, for dense prediction (DeepLab), as timm's ``output_stride``: the stage whose
stride is removed keeps the previous dilation in its first block and doubles it for the rest
(and for every later block); ``feature_info`` reports the reductions reached.

State-dict keys follow timm (``conv_stem``, ``bn1``, ``blocks.S.J.*``, ``conv_head``,
``bn2``, ``classifier``). Converters read torchvision's layout (``features.N.M.block.*``)
and efficientnet_pytorch's (lukemelas, ``_blocks.N.*``; the key mapping is tabled in
:func:`official_key_map`). Those two layouts also decide the numerics the weights were
trained with: torchvision's B5-B7 use BatchNorm eps 1e-3 (B0-B4 PyTorch's 1e-5),
efficientnet_pytorch eps 1e-3 and TensorFlow 'SAME' padding. Their converters return these
as configuration changes, which ``load_checkpoint`` applies (:meth:`EfficientNet.reconfigure`)
only once the checkpoint has passed every check. A timm or visionzoo checkpoint carries no
numerics: it runs with those the model was built with.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor, nn

from ..base import FeatureInfo, VisionModel, tap_outputs
from ..checkpoints import identity, register_converter
from ..checkpoints.convert import ConfigChanges
from ..layers import POOL_TYPES, Conv2d, DropPath, apply_conv_bn, check_output_stride, classifier, conv2d, dilate_strides, he_normal_fan_out_, make_divisible, pad_same, skippable
from ..param_groups import MATCH_PREV_GROUP
from ..registry import INCEPTION_MEAN, INCEPTION_STD, default_cfg, register_alias, register_family

__all__ = ["ConvBnAct", "EfficientNet", "EfficientNetConfig", "FusedMBConv", "StageSpec", "round_filters", "round_repeats", "set_numerics", "stage_specs"]

_log = logging.getLogger(__name__)

ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {"silu": nn.SiLU, "relu6": nn.ReLU6, "relu": nn.ReLU}


# --------------------------------------------------------------------------- compound scaling
BLOCKS = ("ds", "ir", "er", "cn")


@dataclass(frozen=True)
class StageSpec:
    """One stage: expansion, kernel, stride of its first block, width, repeats, block kind, SE.

    ``block`` is timm's code of the block: ``"ir"`` MBConv (inverted residual), ``"ds"``
    depthwise-separable (MBConv of expansion 1 without the expansion), ``"er"`` Fused-MBConv
    (timm's EdgeResidual: k x k expansion, 1x1 projection), ``"cn"`` one k x k convolution, BN
    and activation, with a residual where it keeps the shape. ``se``: whether the stage's blocks
    have squeeze-excitation (of the configuration's ``se_ratio``; never in ``"cn"``).
    """

    expand_ratio: int
    kernel_size: int
    stride: int
    out_chs: int
    repeats: int
    block: str = "ir"
    se: bool = True


#: EfficientNet-B0, the paper's Table 1 (stages 2-8; stage 1 is the stem, 9 the head).
B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 16, 1, "ds"),
    StageSpec(6, 3, 2, 24, 2),
    StageSpec(6, 5, 2, 40, 2),
    StageSpec(6, 3, 2, 80, 3),
    StageSpec(6, 5, 1, 112, 3),
    StageSpec(6, 5, 2, 192, 4),
    StageSpec(6, 3, 1, 320, 1),
)


def _v2(*rows: tuple[str, int, int, int, int]) -> tuple[StageSpec, ...]:
    """V2 stages from (block, expansion, stride, width, repeats) rows: 3x3 kernels throughout,
    squeeze-excitation in the MBConv ("ir") stages only."""
    return tuple(StageSpec(e, 3, s, c, r, block, se=block == "ir") for block, e, s, c, r in rows)


#: EfficientNetV2-S, the V2 paper's Table 4 (stem 24, head 1280).
V2_S_STAGES = _v2(("cn", 1, 1, 24, 2), ("er", 4, 2, 48, 4), ("er", 4, 2, 64, 4), ("ir", 4, 2, 128, 6), ("ir", 6, 1, 160, 9), ("ir", 6, 2, 256, 15))
#: V2-M, -L, -XL (official effnetv2_configs.py; stems 24, 32, 32, head 1280).
V2_M_STAGES = _v2(("cn", 1, 1, 24, 3), ("er", 4, 2, 48, 5), ("er", 4, 2, 80, 5), ("ir", 4, 2, 160, 7), ("ir", 6, 1, 176, 14), ("ir", 6, 2, 304, 18), ("ir", 6, 1, 512, 5))
V2_L_STAGES = _v2(("cn", 1, 1, 32, 4), ("er", 4, 2, 64, 7), ("er", 4, 2, 96, 7), ("ir", 4, 2, 192, 10), ("ir", 6, 1, 224, 19), ("ir", 6, 2, 384, 25), ("ir", 6, 1, 640, 7))
V2_XL_STAGES = _v2(("cn", 1, 1, 32, 4), ("er", 4, 2, 64, 8), ("er", 4, 2, 96, 8), ("ir", 4, 2, 192, 16), ("ir", 6, 1, 256, 24), ("ir", 6, 2, 512, 32), ("ir", 6, 1, 640, 8))
#: the official V2 base (B0) table, from which B1-B3 are scaled (stem 32, head 1280).
V2_BASE_STAGES = _v2(("cn", 1, 1, 16, 1), ("er", 4, 2, 32, 2), ("er", 4, 2, 48, 2), ("ir", 4, 2, 96, 3), ("ir", 6, 1, 112, 5), ("ir", 6, 2, 192, 8))
#: timm's first V2-S ("rw", before the official code): a projected Fused-MBConv of expansion 1
#: in the first stage and a last stage of 272 (head 1792).
V2_RW_S_STAGES = _v2(("er", 1, 1, 24, 2), ("er", 4, 2, 48, 4), ("er", 4, 2, 64, 4), ("ir", 4, 2, 128, 6), ("ir", 6, 1, 160, 9), ("ir", 6, 2, 272, 15))


def round_filters(channels: int, width_coefficient: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Width scaling: ``channels * w`` to the nearest multiple of ``divisor``, and one multiple
    more where that lost more than ``1 - round_limit`` (10 %; V2's base models: 0, never)."""
    return make_divisible(channels * width_coefficient, divisor, round_limit=round_limit)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """Depth scaling: ``ceil(repeats * d)``, so any d > 1 deepens every stage."""
    return int(math.ceil(repeats * depth_coefficient))


@dataclass(frozen=True)
class EfficientNetConfig:
    """One compound-scaled EfficientNet (V1, Lite or V2).

    Args:
        stages: the unscaled block table (:data:`B0_STAGES`, or a V2 table).
        width_coefficient: w, multiplies every width (then :func:`round_filters`).
        depth_coefficient: d, multiplies every stage's repeats (then :func:`round_repeats`);
            or one per stage (timm's ``efficientnetv2_rw_m``).
        resolution: the input side the variant was trained at (the third coefficient).
        drop_rate: dropout before the classifier.
        stem_chs, head_chs: the unscaled stem and head widths (B0's 32 and 1280; V2-S 24 and 1280),
            scaled unless ``scale_stem_head`` is off.
        scale_stem_head: Lite keeps 32 / 1280.
        scale_first_last_repeats: Lite keeps the first and last stages at their B0 repeats.
        se_ratio: SE width as a fraction of the block's input width (0: no SE, as Lite).
        act: "silu" (swish, B0-B7) or "relu6" (Lite).
        bn_eps, bn_momentum: BatchNorm numerics (PyTorch defaults as timm's efficientnet_*;
            TensorFlow-trained weights use 1e-3 / 0.01).
        tf_padding: TensorFlow 'SAME' padding (extra row/column right/bottom in the stride-2
            convolutions) instead of symmetric k // 2; needed by TF-trained weights
            (efficientnet_pytorch, timm's ``tf_efficientnet_*``).
        divisor: channel rounding multiple.
        round_limit: a rounded width may lose at most ``1 - round_limit`` of ``c * w`` (0: any).
        output_stride: 8, 16 or 32; below 32 the last strides become dilation (module docstring).
    """

    stages: tuple[StageSpec, ...] = B0_STAGES
    width_coefficient: float = 1.0
    depth_coefficient: float | tuple[float, ...] = 1.0
    resolution: int = 224
    drop_rate: float = 0.2
    stem_chs: int = 32
    head_chs: int = 1280
    scale_stem_head: bool = True
    scale_first_last_repeats: bool = True
    se_ratio: float = 0.25
    act: str = "silu"
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    tf_padding: bool = False
    divisor: int = 8
    round_limit: float = 0.9
    output_stride: int = 32


def stage_specs(cfg: EfficientNetConfig) -> list[StageSpec]:
    """``cfg.stages`` scaled by its width and depth coefficients.

    Raises:
        ValueError: for an unknown block kind, or a per-stage depth tuple of another length.
    """
    n = len(cfg.stages)
    depths = cfg.depth_coefficient if isinstance(cfg.depth_coefficient, tuple) else (cfg.depth_coefficient,) * n
    if len(depths) != n:
        raise ValueError(f"depth_coefficient gives {len(depths)} values for {n} stages: give one, or one per stage")
    out = []
    for i, (s, d) in enumerate(zip(cfg.stages, depths)):
        if s.block not in BLOCKS:
            raise ValueError(f"stage {i}: block must be one of {BLOCKS}, got {s.block!r}")
        fixed_depth = not cfg.scale_first_last_repeats and i in (0, n - 1)
        repeats = s.repeats if fixed_depth else round_repeats(s.repeats, d)
        out.append(replace(s, out_chs=round_filters(s.out_chs, cfg.width_coefficient, cfg.divisor, cfg.round_limit), repeats=repeats))
    return out


# --------------------------------------------------------------------------- blocks
class Conv2dPad(Conv2d):
    """Bias-free ``nn.Conv2d`` padded symmetrically (d (k - 1) / 2) or as TensorFlow's 'SAME'.

    'SAME' is computed from each input's size, so any input size works either way; the two
    differ only for stride-2 convolutions on even sides, where 'SAME' pads right/bottom only
    (a dilated stride-1 convolution pads ``dilation * (k - 1) / 2`` on every side either way).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, *, dilation: int = 1, groups: int = 1,
                 tf_padding: bool = False) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(in_chs, out_chs, kernel_size, stride, padding=padding, dilation=dilation, groups=groups, bias=False)
        self.tf_padding = tf_padding

    @property
    def plain_padding(self) -> bool:
        """Padded as ``nn.Conv2d`` (symmetric): the packed CPU path of ``layers.apply_conv_bn`` may run it."""
        return not self.tf_padding

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if not self.tf_padding:
            return super()._conv_forward(x, weight, bias)
        x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return conv2d(x, weight, bias, self.stride, (0, 0), self.dilation, self.groups)


class SqueezeExcite(nn.Module):
    """SE with timm's EfficientNet key names (``conv_reduce`` / ``conv_expand``) and the block's act.

    Shapes:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, rd_channels: int, act_layer: Callable[..., nn.Module]) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, rd_channels, 1)
        self.act1 = act_layer(inplace=True)  # on the fresh 1x1 conv output
        self.conv_expand = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)  # B, C, 1, 1
        return x * self.conv_expand(self.act1(self.conv_reduce(s))).sigmoid()


def project(conv: nn.Module, bn: nn.Module, y: Tensor, shortcut: Tensor | None, drop_path: nn.Module) -> Tensor:
    """A block's linear 1x1 projection ``bn(conv(y))``, plus ``shortcut`` through ``drop_path``
    where the block has a residual: the sum as the projection's post-op where it can be."""
    if shortcut is not None and skippable(drop_path):
        return apply_conv_bn(conv, bn, y, residual=shortcut)
    y = apply_conv_bn(conv, bn, y)
    return shortcut + drop_path(y) if shortcut is not None else y


class DepthwiseSeparable(nn.Module):
    """MBConv with expansion 1 (stage 1): depthwise k x k -> BN -> act -> SE -> 1x1 -> BN (+ x).

    timm (and efficientnet_pytorch) name its layers apart from :class:`MBConv`'s, hence a class.

    Shapes:
        (B, in_chs, H, W) -> (B, out_chs, H / stride, W / stride).
    """

    def __init__(self, in_chs: int, out_chs: int, *, kernel_size: int, stride: int, se_chs: int, act_layer: Callable[..., nn.Module],
                 norm_layer: Callable[[int], nn.Module], dilation: int = 1, tf_padding: bool = False, drop_path: float = 0.0) -> None:
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_dw = Conv2dPad(in_chs, in_chs, kernel_size, stride, dilation=dilation, groups=in_chs, tf_padding=tf_padding)
        self.bn1 = norm_layer(in_chs)
        self.act = act_layer(inplace=True)  # in place: it acts on BN's fresh output
        self.se = SqueezeExcite(in_chs, se_chs, act_layer) if se_chs > 0 else nn.Identity()
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = norm_layer(out_chs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.se(apply_conv_bn(self.conv_dw, self.bn1, x, self.act))
        return project(self.conv_pw, self.bn2, y, x if self.has_skip else None, self.drop_path)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise k x k -> SE -> 1x1 project, residual with drop path.

    The residual (and its drop path) exists only where the block keeps shape (stride 1,
    in = out); the projection has no activation ("linear bottleneck").

    Shapes:
        (B, in_chs, H, W) -> (B, out_chs, H / stride, W / stride).
    """

    def __init__(self, in_chs: int, out_chs: int, *, expand_ratio: int, kernel_size: int, stride: int, se_chs: int,
                 act_layer: Callable[..., nn.Module], norm_layer: Callable[[int], nn.Module], dilation: int = 1,
                 tf_padding: bool = False, drop_path: float = 0.0) -> None:
        super().__init__()
        mid = make_divisible(in_chs * expand_ratio)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.bn1 = norm_layer(mid)
        self.conv_dw = Conv2dPad(mid, mid, kernel_size, stride, dilation=dilation, groups=mid, tf_padding=tf_padding)
        self.bn2 = norm_layer(mid)
        self.act = act_layer(inplace=True)  # in place: both uses act on BN's fresh output
        self.se = SqueezeExcite(mid, se_chs, act_layer) if se_chs > 0 else nn.Identity()
        self.conv_pwl = nn.Conv2d(mid, out_chs, 1, bias=False)
        self.bn3 = norm_layer(out_chs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = apply_conv_bn(self.conv_pw, self.bn1, x, self.act)
        y = self.se(apply_conv_bn(self.conv_dw, self.bn2, y, self.act))
        return project(self.conv_pwl, self.bn3, y, x if self.has_skip else None, self.drop_path)


class FusedMBConv(nn.Module):
    """Fused-MBConv (EfficientNetV2; timm's EdgeResidual): k x k expand -> BN -> act -> SE -> 1x1
    project -> BN (+ x).

    The expansion and MBConv's depthwise convolution become one full k x k convolution (strided
    in a stage's first block), which runs faster on accelerators in early, narrow stages.

    Shapes:
        (B, in_chs, H, W) -> (B, out_chs, H / stride, W / stride).
    """

    def __init__(self, in_chs: int, out_chs: int, *, expand_ratio: int, kernel_size: int, stride: int, se_chs: int,
                 act_layer: Callable[..., nn.Module], norm_layer: Callable[[int], nn.Module], dilation: int = 1,
                 tf_padding: bool = False, drop_path: float = 0.0) -> None:
        super().__init__()
        mid = make_divisible(in_chs * expand_ratio)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_exp = Conv2dPad(in_chs, mid, kernel_size, stride, dilation=dilation, tf_padding=tf_padding)
        self.bn1 = norm_layer(mid)
        self.act = act_layer(inplace=True)  # in place on BN's fresh output
        self.se = SqueezeExcite(mid, se_chs, act_layer) if se_chs > 0 else nn.Identity()
        self.conv_pwl = nn.Conv2d(mid, out_chs, 1, bias=False)
        self.bn2 = norm_layer(out_chs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.se(apply_conv_bn(self.conv_exp, self.bn1, x, self.act))
        return project(self.conv_pwl, self.bn2, y, x if self.has_skip else None, self.drop_path)


class ConvBnAct(nn.Module):
    """k x k convolution -> BN -> act, plus the input where the shape is kept (EfficientNetV2's
    Fused-MBConv of expansion 1: no projection, the residual added after the activation).

    Shapes:
        (B, in_chs, H, W) -> (B, out_chs, H / stride, W / stride).
    """

    def __init__(self, in_chs: int, out_chs: int, *, kernel_size: int, stride: int, act_layer: Callable[..., nn.Module],
                 norm_layer: Callable[[int], nn.Module], dilation: int = 1, tf_padding: bool = False, drop_path: float = 0.0) -> None:
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv = Conv2dPad(in_chs, out_chs, kernel_size, stride, dilation=dilation, tf_padding=tf_padding)
        self.bn1 = norm_layer(out_chs)
        self.act = act_layer(inplace=True)  # in place on BN's fresh output
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = apply_conv_bn(self.conv, self.bn1, x, self.act)
        return x + self.drop_path(y) if self.has_skip else y


# --------------------------------------------------------------------------- model
class EfficientNet(VisionModel):
    """EfficientNet / EfficientNet-Lite / EfficientNetV2 classifier.

    Stochastic depth grows linearly with the block index, ``drop_path_rate * i / n_blocks``
    (the official code's drop-connect schedule; the first block gets 0).

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); ``forward_features``: (B, head_chs, H/s, W/s)
        with s = ``output_stride`` (sides rounded up). Feature maps: the last block of each
        stage after which the stride would double, and the last (reductions 2 to s).
    """

    family = "efficientnet"
    #: configuration fields a checkpoint's layout may set (:meth:`reconfigure`)
    reconfigurable = ("bn_eps", "bn_momentum", "tf_padding")
    pool_types = POOL_TYPES
    grad_checkpoint_units = (r"blocks\.\d+\.\d+",)
    cpu_channels_last = True

    def __init__(self, cfg: EfficientNetConfig, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (224, 224), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if cfg.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {cfg.act!r}")
        check_output_stride(cfg.output_stride)
        self.cfg = self.built_cfg = cfg
        self.num_classes, self.in_chans = num_classes, in_chans
        act = ACTIVATIONS[cfg.act]

        def norm(c: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(c, eps=cfg.bn_eps, momentum=cfg.bn_momentum)

        def width(c: int) -> int:
            return round_filters(c, cfg.width_coefficient, cfg.divisor, cfg.round_limit) if cfg.scale_stem_head else c

        stem_chs, head_chs = width(cfg.stem_chs), width(cfg.head_chs)
        self.conv_stem = Conv2dPad(in_chans, stem_chs, 3, 2, tf_padding=cfg.tf_padding)
        self.bn1 = norm(stem_chs)
        self.act = act(inplace=True)  # stem and head: in place on BN's fresh output

        specs = stage_specs(cfg)
        n_blocks, idx = sum(s.repeats for s in specs), 0
        stages, prev = [], stem_chs
        self.feature_info = []
        plan = dilate_strides([s.stride for s in specs], 2, cfg.output_stride)  # after the stride-2 stem
        for i, (s, (stage_stride, stride, first_dilation, dilation)) in enumerate(zip(specs, plan)):
            blocks = []
            for j in range(s.repeats):
                kw = dict(kernel_size=s.kernel_size, stride=stage_stride if j == 0 else 1, dilation=first_dilation if j == 0 else dilation,
                          act_layer=act, norm_layer=norm, tf_padding=cfg.tf_padding, drop_path=drop_path_rate * idx / n_blocks)
                if s.block == "cn":
                    blocks.append(ConvBnAct(prev, s.out_chs, **kw))
                else:
                    # SE width from the block's input width, as the official code (not the expanded one)
                    kw["se_chs"] = max(1, int(prev * cfg.se_ratio)) if cfg.se_ratio > 0 and s.se else 0
                    if s.block == "ds":
                        blocks.append(DepthwiseSeparable(prev, s.out_chs, **kw))
                    else:
                        blocks.append((MBConv if s.block == "ir" else FusedMBConv)(prev, s.out_chs, expand_ratio=s.expand_ratio, **kw))
                prev, idx = s.out_chs, idx + 1
            stages.append(nn.Sequential(*blocks))
            if i == len(specs) - 1 or specs[i + 1].stride > 1:  # last stage at this resolution
                self.feature_info.append(FeatureInfo(s.out_chs, stride, f"blocks.{i}"))
        self.blocks = nn.Sequential(*stages)
        self._feature_stages = [int(f.module.split(".")[1]) for f in self.feature_info]

        self.conv_head = nn.Conv2d(prev, head_chs, 1, bias=False)
        self.bn2 = norm(head_chs)
        self.num_features = head_chs
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.classifier = classifier(head_chs, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # the official initialisation: fan-out normal convolutions, uniform(+-1/sqrt(out)) classifier
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                he_normal_fan_out_(m)
            elif isinstance(m, nn.Linear):
                r = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -r, r)
                nn.init.zeros_(m.bias)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Groups by depth, as timm's EfficientNet (which also builds MobileNet v1 / v2): the
        stem convolution and its norm; then each block ``blocks.<stage>.<block>`` (each stage
        with ``coarse``), the 1x1 head convolution and its norm joining the last one; the
        classifier, matched by nothing, last."""
        unit = r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)"
        return {"stem": r"^(?:conv_stem|bn1)\.", "blocks": [(unit, None), (r"^(?:conv_head|bn2)\.", MATCH_PREV_GROUP)]}

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self._conv_head(self.blocks(self._stem(x)))

    def _stem(self, x: Tensor) -> Tensor:
        return apply_conv_bn(self.conv_stem, self.bn1, x, self.act)

    def _conv_head(self, x: Tensor) -> Tensor:
        if type(self.conv_head) is nn.Identity:  # pruned (prune_for_features): the blocks' map as it is
            return x
        return apply_conv_bn(self.conv_head, self.bn2, x, self.act)

    def pooled_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pool(x))  # B, C
        return x if pre_logits else self.classifier(x)

    def reset_head(self, num_classes: int) -> None:
        self.classifier = classifier(self.pooled_features, num_classes)

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        self.check_input(x)
        return tap_outputs(self._stem(x), self.blocks, [self._feature_stages[i] for i in indices], to_end=with_features, tail=self._conv_head)

    def prune_for_features(self, indices: Sequence[int]) -> None:
        self.reset_classifier(0)
        self.blocks = self.blocks[: self._feature_stages[max(indices)] + 1]
        self.conv_head = self.bn2 = nn.Identity()  # type: ignore[assignment]

    def reconfigure(self, **changes: Any) -> None:
        """Set the numerics a loaded checkpoint runs with: those the model was built with,
        updated by ``changes`` (fields of :attr:`reconfigurable`, from the checkpoint's layout).

        ``load_checkpoint`` calls this on every successful load, with no changes for a layout
        that carries no numerics (visionzoo's, timm's), so the last checkpoint loaded decides
        and a model never keeps the numerics of an earlier one.
        """
        unknown = sorted(set(changes) - set(self.reconfigurable))
        if unknown:
            raise ValueError(f"{self.model_name}: a checkpoint cannot set {unknown}; only {list(self.reconfigurable)}")
        cfg = replace(self.built_cfg, **changes)
        set_numerics(self, bn_eps=cfg.bn_eps, bn_momentum=cfg.bn_momentum, tf_padding=cfg.tf_padding)


def set_numerics(model: EfficientNet, *, bn_eps: float, bn_momentum: float, tf_padding: bool) -> None:
    """Switch a built model's BatchNorm eps/momentum and padding (and ``model.cfg`` with them).

    Weights trained in TensorFlow need eps 1e-3 and 'SAME' padding to give their logits.
    ``model.cfg`` then differs from the registry entry's configuration, and a training run
    records the difference with the weights, so that the model is rebuilt the same. timm's
    ``tf_efficientnet_*`` share timm's keys and cannot be told apart from the plain
    variants' by the keys: load them into the ``tf_efficientnet_*`` models.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = bn_eps, bn_momentum
        elif isinstance(m, Conv2dPad):
            m.tf_padding = tf_padding
    if (model.cfg.bn_eps, model.cfg.bn_momentum, model.cfg.tf_padding) != (bn_eps, bn_momentum, tf_padding):
        _log.info("%s: BatchNorm eps %g, momentum %g, TF padding %s, as the checkpoint's layout", model.model_name, bn_eps, bn_momentum, tf_padding)
    model.cfg = replace(model.cfg, bn_eps=bn_eps, bn_momentum=bn_momentum, tf_padding=tf_padding)


# --------------------------------------------------------------------------- checkpoints
register_converter("efficientnet", "timm")(identity)

# our block keys -> torchvision's ``block.I.J`` (I: position in its Sequential), by block kind;
# its FusedMBConv is our "cn" with expansion 1 and "er" otherwise (V2 has no SE there)
_TV_BLOCKS = {
    "ds": {"conv_dw": "0.0", "bn1": "0.1", "se.conv_reduce": "1.fc1", "se.conv_expand": "1.fc2", "conv_pw": "2.0", "bn2": "2.1"},
    "ir": {"conv_pw": "0.0", "bn1": "0.1", "conv_dw": "1.0", "bn2": "1.1", "se.conv_reduce": "2.fc1", "se.conv_expand": "2.fc2", "conv_pwl": "3.0", "bn3": "3.1"},
    "er": {"conv_exp": "0.0", "bn1": "0.1", "conv_pwl": "1.0", "bn2": "1.1"},
    "cn": {"conv": "0.0", "bn1": "0.1"},
}
#: (width, depth) coefficients that torchvision builds with BatchNorm eps 1e-3, momentum 0.01
#: (its B5-B7 weights were ported from TensorFlow); B0-B4 use PyTorch's defaults.
_TV_TF_BN = {(1.6, 2.2), (1.8, 2.6), (2.0, 3.1)}


@register_converter("efficientnet", "torchvision")
def _from_torchvision(sd: dict[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor], ConfigChanges]:
    """torchvision: ``features.0`` stem, ``features.1-N`` stages, ``features.N+1`` head conv, ``classifier.1``.

    Returns torchvision's BatchNorm numerics for the variant (eps 1e-3, momentum 0.01 for
    B5-B7; eps 1e-3 for every V2; PyTorch's defaults otherwise) and symmetric padding as the
    configuration changes.
    """
    if "features.0.0.weight" not in sd:
        raise KeyError("features.0.0.weight")
    specs = stage_specs(model.cfg)
    rev = {"features.0.0": "conv_stem", "features.0.1": "bn1", "classifier.1": "classifier"}
    rev |= {f"features.{len(specs) + 1}.0": "conv_head", f"features.{len(specs) + 1}.1": "bn2"}
    for i, s in enumerate(specs):
        for j in range(s.repeats):
            for ours, theirs in _TV_BLOCKS[s.block].items():
                rev[f"features.{i + 1}.{j}.block.{theirs}"] = f"blocks.{i}.{j}.{ours}"
    out = {}
    for k, v in sd.items():
        prefix, name = k.rsplit(".", 1)
        out[f"{rev[prefix]}.{name}" if prefix in rev else k] = v
    if any(s.block in ("er", "cn") for s in specs):  # V2: torchvision's norm_layer has eps 1e-3
        return out, dict(bn_eps=1e-3, bn_momentum=0.1, tf_padding=False)
    tf_bn = (model.cfg.width_coefficient, model.cfg.depth_coefficient) in _TV_TF_BN
    return out, dict(bn_eps=1e-3 if tf_bn else 1e-5, bn_momentum=0.01 if tf_bn else 0.1, tf_padding=False)


def official_key_map(cfg: EfficientNetConfig) -> dict[str, str]:
    """Our key prefix -> efficientnet_pytorch's (lukemelas), for every module with weights.

    Blocks are numbered globally there (``_blocks.N``); inside a block the BatchNorms are
    numbered by position, so ``_bn0`` belongs to the expansion (absent with expansion 1):

    ============================  ====================================
    ours                          efficientnet_pytorch
    ============================  ====================================
    conv_stem / bn1               _conv_stem / _bn0
    blocks.S.J.conv_pw / bn1      _blocks.N._expand_conv / _bn0   (MBConv)
    blocks.S.J.conv_dw / bn2      _blocks.N._depthwise_conv / _bn1 (MBConv)
    blocks.S.J.se.conv_reduce     _blocks.N._se_reduce
    blocks.S.J.se.conv_expand     _blocks.N._se_expand
    blocks.S.J.conv_pwl / bn3     _blocks.N._project_conv / _bn2  (MBConv)
    blocks.0.J.conv_dw / bn1      _blocks.N._depthwise_conv / _bn1 (expansion 1)
    blocks.0.J.conv_pw / bn2      _blocks.N._project_conv / _bn2  (expansion 1)
    conv_head / bn2               _conv_head / _bn1
    classifier                    _fc
    ============================  ====================================

    Raises:
        ValueError: for a V2 table: efficientnet_pytorch has no Fused-MBConv.
    """
    if any(s.block in ("er", "cn") for s in cfg.stages):
        raise ValueError("efficientnet_pytorch's layout has no Fused-MBConv blocks (EfficientNetV2)")
    ds = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand", "conv_pw": "_project_conv", "bn2": "_bn2"}
    mb = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1", "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand", "conv_pwl": "_project_conv", "bn3": "_bn2"}
    out = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    n = 0
    for i, s in enumerate(stage_specs(cfg)):
        for j in range(s.repeats):
            for ours, theirs in (ds if s.block == "ds" else mb).items():
                out[f"blocks.{i}.{j}.{ours}"] = f"_blocks.{n}.{theirs}"
            n += 1
    return out


@register_converter("efficientnet", "official")
def _from_official(sd: dict[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor], ConfigChanges]:
    """efficientnet_pytorch (lukemelas), the PyTorch port of the official TensorFlow weights.

    Keys by :func:`official_key_map`. Its weights were trained in TensorFlow: the changes
    returned switch the model to BatchNorm eps 1e-3, momentum 0.01 and 'SAME' padding.
    """
    if "_conv_stem.weight" not in sd:
        raise KeyError("_conv_stem.weight")
    rev = {theirs: ours for ours, theirs in official_key_map(model.cfg).items()}
    out = {}
    for k, v in sd.items():
        prefix, name = k.rsplit(".", 1)
        out[f"{rev[prefix]}.{name}" if prefix in rev else k] = v
    return out, dict(bn_eps=1e-3, bn_momentum=0.01, tf_padding=True)


# --------------------------------------------------------------------------- variants
def _b(w: float, d: float, res: int, drop: float) -> EfficientNetConfig:
    return EfficientNetConfig(width_coefficient=w, depth_coefficient=d, resolution=res, drop_rate=drop)


def _lite(w: float, d: float, res: int, drop: float) -> EfficientNetConfig:
    return EfficientNetConfig(width_coefficient=w, depth_coefficient=d, resolution=res, drop_rate=drop,
                              scale_stem_head=False, scale_first_last_repeats=False, se_ratio=0.0, act="relu6")


def _tf(cfg: EfficientNetConfig, res: int | None = None) -> EfficientNetConfig:
    """timm's ``tf_`` port: TensorFlow's BatchNorm eps and 'SAME' padding. The momentum stays
    PyTorch's 0.1 as in timm (TensorFlow trained with 0.01; it matters only when training)."""
    return replace(cfg, bn_eps=1e-3, tf_padding=True, resolution=res or cfg.resolution)


# (width, depth, resolution, dropout): efficientnet_builder.py / efficientnet_lite_builder.py.
# Lite3 / Lite4 resolutions are the official 280 / 300 (timm's untrained cfgs say 300 / 380).
VARIANTS = {
    "efficientnet_b0": _b(1.0, 1.0, 224, 0.2),
    "efficientnet_b1": _b(1.0, 1.1, 240, 0.2),
    "efficientnet_b2": _b(1.1, 1.2, 260, 0.3),
    "efficientnet_b3": _b(1.2, 1.4, 300, 0.3),
    "efficientnet_b4": _b(1.4, 1.8, 380, 0.4),
    "efficientnet_b5": _b(1.6, 2.2, 456, 0.4),
    "efficientnet_b6": _b(1.8, 2.6, 528, 0.5),
    "efficientnet_b7": _b(2.0, 3.1, 600, 0.5),
    "efficientnet_lite0": _lite(1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": _lite(1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": _lite(1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": _lite(1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": _lite(1.4, 1.8, 300, 0.3),
}
# timm's tf_ ports, at the input sizes of timm's pretrained cfgs (Lite3 / Lite4: 300 / 380)
VARIANTS |= {f"tf_{name}": _tf(cfg) for name, cfg in VARIANTS.items()}
VARIANTS |= {"tf_efficientnet_lite3": _tf(VARIANTS["efficientnet_lite3"], 300), "tf_efficientnet_lite4": _tf(VARIANTS["efficientnet_lite4"], 380)}


def _v2cfg(stages: tuple[StageSpec, ...], res: int, drop: float, *, stem: int = 24, head: int = 1280, w: float = 1.0,
           d: float | tuple[float, ...] = 1.0, round_limit: float = 0.9) -> EfficientNetConfig:
    return EfficientNetConfig(stages=stages, width_coefficient=w, depth_coefficient=d, resolution=res, drop_rate=drop,
                              stem_chs=stem, head_chs=head, round_limit=round_limit)


# V2: (stages, training resolution, dropout): the official effnetv2_configs.py (dropout 0.2 S,
# 0.3 M, 0.4 L / XL; B0-B3 0.2, 0.2, 0.3, 0.3), at the training sizes of timm's cfgs; the
# evaluation sizes are each default_cfg's test_input_size. timm's rw_ models take S's / M's dropout.
V2_VARIANTS = {
    "efficientnetv2_s": _v2cfg(V2_S_STAGES, 288, 0.2),
    "efficientnetv2_m": _v2cfg(V2_M_STAGES, 320, 0.3),
    "efficientnetv2_l": _v2cfg(V2_L_STAGES, 384, 0.4, stem=32),
    "efficientnetv2_xl": _v2cfg(V2_XL_STAGES, 384, 0.4, stem=32),
    "efficientnetv2_rw_t": _v2cfg(V2_S_STAGES, 224, 0.2, w=0.8, d=0.9),
    "efficientnetv2_rw_s": _v2cfg(V2_RW_S_STAGES, 288, 0.2, head=1792),
    "efficientnetv2_rw_m": _v2cfg(V2_RW_S_STAGES, 320, 0.3, head=1792, w=1.2, d=(1.2,) * 4 + (1.6,) * 2),
}
V2_VARIANTS |= {f"tf_{name}": _tf(V2_VARIANTS[name], res) for name, res in (("efficientnetv2_s", 300), ("efficientnetv2_m", 384),
                                                                            ("efficientnetv2_l", 384), ("efficientnetv2_xl", 384))}
V2_VARIANTS |= {f"tf_efficientnetv2_b{i}": _tf(_v2cfg(V2_BASE_STAGES, res, drop, stem=32, w=w, d=d, round_limit=0.0))
                for i, (w, d, res, drop) in enumerate([(1.0, 1.0, 192, 0.2), (1.0, 1.1, 192, 0.2), (1.1, 1.2, 208, 0.3), (1.2, 1.4, 240, 0.3)])}
VARIANTS |= V2_VARIANTS

#: timm's preprocessing of its tf_ weights where it is not the official crop res / (res + 32)
#: truncated: B3's and Lite3's 0.904 (rounded, so timm resizes to 331), Lite4's 0.920; Lite's
#: [-1, 1] inputs, bilinear from Lite3.
_TIMM_TF_CFGS = {
    "tf_efficientnet_b3": dict(crop_pct=0.904),
    **{f"tf_efficientnet_lite{i}": dict(mean=INCEPTION_MEAN, std=INCEPTION_STD) for i in range(3)},
    "tf_efficientnet_lite3": dict(mean=INCEPTION_MEAN, std=INCEPTION_STD, interpolation="bilinear", crop_pct=0.904),
    "tf_efficientnet_lite4": dict(mean=INCEPTION_MEAN, std=INCEPTION_STD, interpolation="bilinear", crop_pct=0.920),
}


#: V2's preprocessing as timm's default cfgs: (evaluation size, crop_pct, other entries). The
#: tf_ S-XL and B3 weights take [-1, 1] inputs, and M-XL and B3 are evaluated on the whole image
#: resized to a square (``crop_mode="squash"``).
_HALF = dict(mean=INCEPTION_MEAN, std=INCEPTION_STD)
_V2_PREPROCESSING: dict[str, tuple[int, float, dict[str, Any]]] = {
    "efficientnetv2_s": (384, 1.0, {}), "efficientnetv2_m": (416, 1.0, {}), "efficientnetv2_l": (480, 1.0, {}),
    "efficientnetv2_xl": (512, 1.0, {}), "efficientnetv2_rw_t": (288, 1.0, {}), "efficientnetv2_rw_s": (384, 1.0, {}),
    "efficientnetv2_rw_m": (416, 1.0, {}), "tf_efficientnetv2_s": (384, 1.0, _HALF),
    **{f"tf_efficientnetv2_{v}": (t, 1.0, dict(_HALF, crop_mode="squash")) for v, t in (("m", 480), ("l", 480), ("xl", 512))},
    **{f"tf_efficientnetv2_b{i}": (t, c, {}) for i, (t, c) in enumerate([(224, 0.875), (240, 0.882), (260, 0.89)])},
    "tf_efficientnetv2_b3": (300, 0.9, dict(_HALF, crop_mode="squash")),  # timm's default weights: fine-tuned from ImageNet-21k
}


def _default_cfg(name: str, cfg: EfficientNetConfig) -> dict[str, Any]:
    kw: dict[str, Any] = dict(first_conv="conv_stem", classifier="classifier")
    if name in _V2_PREPROCESSING:
        test, crop_pct, extra = _V2_PREPROCESSING[name]
        if cfg.resolution == VARIANTS[name].resolution:  # (an overridden resolution has no evaluation size of its own)
            kw["test_input_size"] = (3, test, test)
        return default_cfg(cfg.resolution, crop_pct=crop_pct, **kw, **extra)
    # the official evaluation crop: resize to res + 32, centre-crop res; the ratio truncated to
    # 3 decimals, as timm's, so that floor(res / crop_pct) is res + 32 (rounded, B6's 0.943
    # resized to 559)
    crop_pct = math.floor(1000 * cfg.resolution / (cfg.resolution + 32)) / 1000
    return default_cfg(cfg.resolution, **{**kw, "crop_pct": crop_pct, **_TIMM_TF_CFGS.get(name, {})})


#: paper Table 2 (params, FLOPs = multiply-adds, top-1); Lite0 from the official Lite release.
#: B4/B5: visionzoo counts 4.39 / 10.27 GMACs at 380 / 456 (as timm and torchvision's nets
#: give), 4-5 % above the paper's 4.2 / 9.9, so those figures are notes. The tf_ names carry
#: the same figures: their weights are the paper's, ported from TensorFlow.
PUBLISHED = {
    "efficientnet_b0": dict(params=5.3, gmacs=0.39, top1=77.1),
    "efficientnet_b1": dict(params=7.8, gmacs=0.70, top1=79.1),
    "efficientnet_b2": dict(params=9.2, gmacs=1.0, top1=80.1),
    "efficientnet_b3": dict(params=12.0, gmacs=1.8, top1=81.6),
    "efficientnet_b4": dict(params=19.0, top1=82.9, note="paper: 4.2 B FLOPs; counted 4.39 GMACs at 380"),
    "efficientnet_b5": dict(params=30.0, top1=83.6, note="paper: 9.9 B FLOPs; counted 10.27 GMACs at 456"),
    "efficientnet_b6": dict(params=43.0, gmacs=19.0, top1=84.0),
    "efficientnet_b7": dict(params=66.0, gmacs=37.0, top1=84.3),
    "efficientnet_lite0": dict(params=4.7, top1=75.1, note="release: 0.41 B FLOPs; counted 0.385 GMACs (convolutions and classifier)"),
}
#: V2 paper Table 7 (S, M, L: ImageNet-1k; XL: pre-trained on ImageNet-21k) and the official
#: release's table (B0-B3), all evaluated at the test_input_size, where the FLOPs are counted too.
_V2_PUBLISHED = {
    "efficientnetv2_s": dict(params=22.0, top1=83.9, note="paper: 8.8 B FLOPs at 384; counted 8.37 GMACs at 384 (as torchvision's 8.366)"),
    "efficientnetv2_m": dict(params=54.0, top1=85.1, note="paper: 24 B FLOPs at 480; counted 24.58 GMACs at 480"),
    "efficientnetv2_l": dict(params=120.0, top1=85.7, note="paper: 53 B FLOPs at 480; counted 56.08 GMACs at 480 (as torchvision's)"),
    "efficientnetv2_xl": dict(params=208.0, top1=87.3, note="paper: 94 B FLOPs at 512, top-1 after ImageNet-21k pre-training; counted 93.35 GMACs"),
    **{f"tf_efficientnetv2_b{i}": dict(params=p, top1=t, note=f"official release: {f} B FLOPs at {r}; counted {c} GMACs")
       for i, (p, t, f, r, c) in enumerate([(7.1, 78.7, 0.72, 224, 0.718), (8.1, 79.8, 1.2, 240, 1.197), (10.1, 80.5, 1.7, 260, 1.698), (14.4, 82.1, 3.0, 300, 3.011)])},
}

register_family(
    "efficientnet",
    EfficientNet,
    VARIANTS,
    default_cfgs=_default_cfg,
    # the tf_ names carry the papers' figures too: their weights are the papers' own (TensorFlow)
    published={n: f for name, f in (PUBLISHED | _V2_PUBLISHED).items() for n in (name, f"tf_{name}") if n in VARIANTS},  # (B0-B3 are tf_ only)
    paper="Tan & Le, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks, ICML 2019; "
          "EfficientNetV2: Smaller Models and Faster Training, ICML 2021",
)
# torchvision's names of the V2 networks (its weights, converted on loading, set BatchNorm eps 1e-3)
for _size in "sml":
    register_alias(f"efficientnet_v2_{_size}", f"efficientnetv2_{_size}")
