"""MobileNet v1 and v2: networks built from depthwise separable convolutions.

Papers:
    Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
    Applications", arXiv 2017 (v1); Sandler et al., "MobileNetV2: Inverted Residuals and
    Linear Bottlenecks", CVPR 2018 (v2).

v1: a 3x3 stride-2 convolution (32 channels), then 13 depthwise separable convolutions, each
a 3x3 depthwise convolution and a 1x1 pointwise one, both followed by BN and an activation;
the width doubles (64 ... 1024) wherever a depthwise convolution has stride 2.

v2: the same stem, then inverted residual blocks: a 1x1 convolution expands the channels
six-fold (BN, ReLU6), a 3x3 depthwise convolution filters them (BN, ReLU6) and a 1x1
convolution projects them back down with BN but no activation (the linear bottleneck); a
block whose input and output shapes agree adds its input. A 1x1 convolution to 1280
channels (BN, ReLU6), global pooling and a linear classifier end it.

The width multiplier scales every layer's channels (rounded to multiples of 8, never by
more than 10 % down); v2's head keeps at least 1280 channels. Keys follow timm's layout
(``conv_stem``, ``bn1``, ``blocks.S.J.conv_dw`` ..., ``conv_head``, ``bn2``, ``classifier``);
torchvision's ``mobilenet_v2`` converts. v1 uses ReLU6 as timm and TF-slim (the paper: ReLU).

``output_stride`` (8 or 16; default 32) trades the last strides for dilation of the 3x3
depthwise convolutions, as timm's (and EfficientNet's, :func:`~visionzoo.layers.dilate_strides`):
the first block of a stage that loses its stride keeps the previous dilation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..base import FeatureInfo, VisionModel, tap_outputs
from ..checkpoints import identity, register_converter
from ..layers import POOL_TYPES, DropPath, apply_conv_bn, check_output_stride, classifier, dilate_strides, make_divisible, skippable
from ..param_groups import MATCH_PREV_GROUP
from ..registry import INCEPTION_MEAN, INCEPTION_STD, default_cfg, register_alias, register_family

__all__ = ["MobileNetV1", "MobileNetV1Config", "MobileNetV2", "MobileNetV2Config"]

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}

# (channels, blocks, stride of the first block) per stage
V1_STAGES = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2))
# (expansion, channels, blocks, stride of the first block) per stage, paper Table 2
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


# --------------------------------------------------------------------------- blocks
class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv -> BN -> act -> 1x1 pointwise conv -> BN (-> act).

    Args:
        in_chs, out_chs: channels.
        stride, dilation: of the depthwise convolution.
        pw_act: activation after the pointwise convolution (v1); v2's first block is linear.
        act_layer: the activation class.
        residual: add the input (only where shapes agree).
        drop_path: stochastic-depth rate of the residual branch.

    Shapes:
        (B, in_chs, H, W) -> (B, out_chs, H/stride, W/stride).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, *, pw_act: bool, act_layer: type[nn.Module] = nn.ReLU6, residual: bool = False,
                 dilation: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_chs, in_chs, 3, stride, dilation, dilation, groups=in_chs, bias=False)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = act_layer(inplace=True)  # in place: every activation here acts on a fresh BN output
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = act_layer(inplace=True) if pw_act else nn.Identity()
        self.residual = residual and stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = apply_conv_bn(self.conv_dw, self.bn1, x, self.act1)
        y = apply_conv_bn(self.conv_pw, self.bn2, y, self.act2)
        return x + self.drop_path(y) if self.residual else y


class InvertedResidual(nn.Module):
    """1x1 expand -> BN -> ReLU6 -> 3x3 depthwise -> BN -> ReLU6 -> 1x1 project -> BN (+ x).

    Shapes:
        (B, in_chs, H, W) -> (B, out_chs, H/stride, W/stride); residual when stride is 1
        and in_chs == out_chs.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, *, expand_ratio: int = 6, act_layer: type[nn.Module] = nn.ReLU6, dilation: int = 1,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        mid = in_chs * expand_ratio
        self.conv_pw = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = act_layer(inplace=True)  # in place: every activation here acts on a fresh BN output
        self.conv_dw = nn.Conv2d(mid, mid, 3, stride, dilation, dilation, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = act_layer(inplace=True)
        self.conv_pwl = nn.Conv2d(mid, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.residual = stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = apply_conv_bn(self.conv_pw, self.bn1, x, self.act1)
        y = apply_conv_bn(self.conv_dw, self.bn2, y, self.act2)
        if self.residual and skippable(self.drop_path):  # the sum as the projection's post-op where it can
            return apply_conv_bn(self.conv_pwl, self.bn3, y, residual=x)
        y = apply_conv_bn(self.conv_pwl, self.bn3, y)  # linear bottleneck: no activation
        return x + self.drop_path(y) if self.residual else y


# --------------------------------------------------------------------------- network
class _MobileNet(VisionModel):
    """Stem, stages of blocks, optional 1x1 head convolution, pooling, classifier.

    Subclasses build the stages and call :meth:`_finish`. Feature maps are taken, as timm
    does, at the end of every stage after which the resolution would halve (at full output
    stride), and at the last.
    """

    pool_types = POOL_TYPES

    cpu_channels_last = True

    def _build_stem(self, in_chans: int, chs: int, act_layer: type[nn.Module]) -> None:
        self.conv_stem = nn.Conv2d(in_chans, chs, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(chs)
        self.act1 = act_layer(inplace=True)  # on BN's fresh output

    def _finish(self, stages: list[nn.Sequential], strides: list[int], reductions: list[int], chs: list[int], head_chs: int, act_layer: type[nn.Module],
                num_classes: int, drop_rate: float, bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        self.blocks = nn.Sequential(*stages)
        if head_chs:
            self.conv_head = nn.Conv2d(chs[-1], head_chs, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(head_chs)
            self.act2 = act_layer(inplace=True)  # on BN's fresh output
        else:
            self.conv_head, self.bn2, self.act2 = nn.Identity(), nn.Identity(), nn.Identity()
        self.num_features = head_chs or chs[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.num_classes = num_classes
        self.classifier = classifier(self.pooled_features, num_classes)
        self._taps = []
        self.feature_info = []
        for i in range(len(strides)):
            if i == len(strides) - 1 or strides[i + 1] > 1:  # the stage strides, before output_stride removes any
                self._taps.append(i)
                self.feature_info.append(FeatureInfo(chs[i], reductions[i], f"blocks.{i}"))
        if not (bn_eps > 0 and 0 <= bn_momentum <= 1):
            raise ValueError(f"bn_eps must be positive and bn_momentum in [0, 1], got bn_eps={bn_eps}, bn_momentum={bn_momentum}")
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):  # timm's bn_eps / bn_momentum (PyTorch's defaults unless given)
                m.eps, m.momentum = bn_eps, bn_momentum
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Groups by depth, as timm's (its EfficientNet class builds both MobileNets): the stem
        convolution and its norm; then each block ``blocks.<stage>.<block>`` (each stage with
        ``coarse``), v2's 1x1 head convolution and its norm joining the last one; the
        classifier, matched by nothing, last."""
        unit = r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)"
        return {"stem": r"^(?:conv_stem|bn1)\.", "blocks": [(unit, None), (r"^(?:conv_head|bn2)\.", MATCH_PREV_GROUP)]}

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self._conv_head(self.blocks(self._stem(x)))

    def _stem(self, x: Tensor) -> Tensor:
        return apply_conv_bn(self.conv_stem, self.bn1, x, self.act1)

    def _conv_head(self, x: Tensor) -> Tensor:
        return apply_conv_bn(self.conv_head, self.bn2, x, self.act2)

    def pooled_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.classifier(x)

    def reset_head(self, num_classes: int) -> None:
        self.classifier = classifier(self.pooled_features, num_classes)

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        self.check_input(x)
        return tap_outputs(self._stem(x), self.blocks, [self._taps[i] for i in indices], to_end=with_features, tail=self._conv_head)

    def prune_for_features(self, indices: Sequence[int]) -> None:
        self.blocks = self.blocks[: self._taps[max(indices)] + 1]
        self.conv_head, self.bn2, self.act2 = nn.Identity(), nn.Identity(), nn.Identity()
        self.reset_classifier(0)


@dataclass(frozen=True)
class MobileNetV1Config:
    """Width multiplier, activation ('relu6' as timm; 'relu' as the paper), classifier dropout,
    output stride (8, 16 or 32; module docstring), BatchNorm eps and momentum (timm's kwargs)."""

    width_mult: float = 1.0
    act: str = "relu6"
    drop_rate: float = 0.0
    output_stride: int = 32
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1


class MobileNetV1(_MobileNet):
    """MobileNet v1.

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); ``forward_features``: (B, 1024 w, H/s, W/s),
        s = ``output_stride``.
    """

    family = "mobilenetv1"
    grad_checkpoint_units = (r"blocks\.\d+\.\d+",)

    def __init__(self, cfg: MobileNetV1Config, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (224, 224), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if cfg.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {cfg.act!r}")
        if cfg.width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {cfg.width_mult}")
        check_output_stride(cfg.output_stride)
        self.cfg, self.in_chans = cfg, in_chans
        act = ACTIVATIONS[cfg.act]
        prev = make_divisible(32 * cfg.width_mult)
        self._build_stem(in_chans, prev, act)
        strides = [s for _, _, s in V1_STAGES]
        plan = dilate_strides(strides, 2, cfg.output_stride)
        stages, chs = [], []
        for (c, n, _), (s, _, first_dilation, dilation) in zip(V1_STAGES, plan):
            c = make_divisible(c * cfg.width_mult)
            blocks = []
            for j in range(n):
                blocks.append(DepthwiseSeparable(prev, c, s if j == 0 else 1, pw_act=True, act_layer=act, dilation=first_dilation if j == 0 else dilation))
                prev = c
            stages.append(nn.Sequential(*blocks))
            chs.append(c)
        self._finish(stages, strides, [r for _, r, _, _ in plan], chs, 0, act, num_classes, cfg.drop_rate, cfg.bn_eps, cfg.bn_momentum)


@dataclass(frozen=True)
class MobileNetV2Config:
    """Width and depth multipliers, classifier dropout (the paper's and torchvision's 0.2),
    output stride (8, 16 or 32; module docstring).

    ``fix_stem_head`` keeps the stem (32), the head (1280) and the depth of the first and
    last stages unscaled, as timm's ``mobilenetv2_110d`` / ``_120d``. ``bn_eps`` and
    ``bn_momentum``: the BatchNorms' (timm's kwargs).
    """

    width_mult: float = 1.0
    depth_mult: float = 1.0
    fix_stem_head: bool = False
    drop_rate: float = 0.2
    output_stride: int = 32
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1


def v2_stage_depths(cfg: MobileNetV2Config) -> list[int]:
    """Blocks per stage: ceil(n * depth_mult) (first and last unscaled with fix_stem_head)."""
    last = len(V2_STAGES) - 1
    return [
        n if cfg.fix_stem_head and i in (0, last) else math.ceil(n * cfg.depth_mult)
        for i, (_, _, n, _) in enumerate(V2_STAGES)
    ]


class MobileNetV2(_MobileNet):
    """MobileNet v2.

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); ``forward_features``: (B, 1280, H/s, W/s),
        s = ``output_stride`` (more than 1280 channels for width_mult > 1).
    """

    family = "mobilenetv2"
    grad_checkpoint_units = (r"blocks\.\d+\.\d+",)

    def __init__(self, cfg: MobileNetV2Config, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (224, 224), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if cfg.width_mult <= 0 or cfg.depth_mult <= 0:
            raise ValueError(f"width_mult and depth_mult must be positive, got {cfg.width_mult}, {cfg.depth_mult}")
        check_output_stride(cfg.output_stride)
        self.cfg, self.in_chans = cfg, in_chans
        act = nn.ReLU6
        prev = 32 if cfg.fix_stem_head else make_divisible(32 * cfg.width_mult)
        self._build_stem(in_chans, prev, act)
        depths = v2_stage_depths(cfg)
        total, idx = sum(depths), 0
        strides = [s for _, _, _, s in V2_STAGES]
        plan = dilate_strides(strides, 2, cfg.output_stride)
        stages, chs = [], []
        for (t, c, _, _), n, (s, _, first_dilation, dilation) in zip(V2_STAGES, depths, plan):
            c = make_divisible(c * cfg.width_mult)
            blocks: list[nn.Module] = []
            for j in range(n):
                stride, dp = (s if j == 0 else 1), drop_path_rate * idx / total  # timm's stochastic-depth rule
                kw = dict(act_layer=act, dilation=first_dilation if j == 0 else dilation, drop_path=dp)
                if t == 1:  # no expansion: a depthwise separable convolution with a linear pointwise
                    blocks.append(DepthwiseSeparable(prev, c, stride, pw_act=False, residual=True, **kw))
                else:
                    blocks.append(InvertedResidual(prev, c, stride, expand_ratio=t, **kw))
                prev, idx = c, idx + 1
            stages.append(nn.Sequential(*blocks))
            chs.append(c)
        head = 1280 if cfg.fix_stem_head else max(1280, make_divisible(1280 * cfg.width_mult))
        self._finish(stages, strides, [r for _, r, _, _ in plan], chs, head, act, num_classes, cfg.drop_rate, cfg.bn_eps, cfg.bn_momentum)


# --------------------------------------------------------------------------- checkpoints
register_converter("mobilenetv1", "timm")(identity)
register_converter("mobilenetv2", "timm")(identity)


@register_converter("mobilenetv2", "torchvision")
def _from_torchvision(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """torchvision's ``features.N`` (0: stem, 1..n: blocks, n+1: head conv) and ``classifier.1``."""
    if "features.0.0.weight" not in sd:
        raise KeyError("features.0.0.weight")
    depths = v2_stage_depths(model.cfg)
    where = [(s, j) for s, n in enumerate(depths) for j in range(n)]  # block N-1 -> (stage, index)
    expanded = {  # torchvision's Sequential ``conv`` of an inverted residual with / without expansion
        True: {"conv.0.0": "conv_pw", "conv.0.1": "bn1", "conv.1.0": "conv_dw", "conv.1.1": "bn2", "conv.2": "conv_pwl", "conv.3": "bn3"},
        False: {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"},
    }
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "classifier":
            k = f"classifier.{parts[-1]}"
        elif parts[0] == "features":
            n, rest = int(parts[1]), parts[2:]
            if n == 0:
                k = f"{['conv_stem', 'bn1'][int(rest[0])]}.{rest[-1]}"
            elif n == len(where) + 1:
                k = f"{['conv_head', 'bn2'][int(rest[0])]}.{rest[-1]}"
            else:
                s, j = where[n - 1]
                table = expanded[f"features.{n}.conv.3.weight" in sd]
                k = f"blocks.{s}.{j}.{table['.'.join(rest[:-1])]}.{rest[-1]}"
        out[k] = v
    return out


# --------------------------------------------------------------------------- variants
V1_VARIANTS = {
    "mobilenetv1_100": MobileNetV1Config(width_mult=1.0),
    "mobilenetv1_125": MobileNetV1Config(width_mult=1.25),
}

register_family(
    "mobilenetv1",
    MobileNetV1,
    V1_VARIANTS,
    default_cfgs=lambda name, cfg: default_cfg(
        224, mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=0.9 if name == "mobilenetv1_125" else 0.875,
        first_conv="conv_stem", classifier="classifier",
    ),
    published={  # paper Table 6 / 8 (1.0 MobileNet-224)
        "mobilenetv1_100": dict(params=4.2, gmacs=0.569, top1=70.6),
        "mobilenetv1_125": dict(note="width 1.25 is not in the paper (timm's variant)"),
    },
    paper="Howard et al., MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications, arXiv 2017",
)

V2_VARIANTS = {
    "mobilenetv2_035": MobileNetV2Config(width_mult=0.35),
    "mobilenetv2_050": MobileNetV2Config(width_mult=0.5),
    "mobilenetv2_075": MobileNetV2Config(width_mult=0.75),
    "mobilenetv2_100": MobileNetV2Config(width_mult=1.0),
    "mobilenetv2_140": MobileNetV2Config(width_mult=1.4),
    "mobilenetv2_110d": MobileNetV2Config(width_mult=1.1, depth_mult=1.2, fix_stem_head=True),
    "mobilenetv2_120d": MobileNetV2Config(width_mult=1.2, depth_mult=1.4, fix_stem_head=True),
}

_SLIM = "TF-slim MobileNetV2 model table (tensorflow/models, research/slim/nets/mobilenet)"
register_family(
    "mobilenetv2",
    MobileNetV2,
    V2_VARIANTS,
    default_cfgs=lambda name, cfg: default_cfg(224, crop_pct=0.875, interpolation="bicubic", first_conv="conv_stem", classifier="classifier"),
    published={
        "mobilenetv2_100": dict(params=3.5, gmacs=0.30, top1=72.0, note="paper Table 4 (3.4M there; 3.50M counted)"),
        "mobilenetv2_140": dict(params=6.9, gmacs=0.585, top1=74.7, note="paper Table 4; 6.11M counted (TF-slim's table: 6.06M)"),
        "mobilenetv2_075": dict(params=2.61, gmacs=0.209, top1=69.8, note=_SLIM),
        "mobilenetv2_050": dict(params=1.95, gmacs=0.097, top1=65.4, note=_SLIM),
        "mobilenetv2_035": dict(params=1.66, gmacs=0.059, top1=60.3, note=_SLIM),
        "mobilenetv2_110d": dict(note="timm's variant (depth x1.2), not in the paper"),
        "mobilenetv2_120d": dict(note="timm's variant (depth x1.4), not in the paper"),
    },
    paper="Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018",
)
register_alias("mobilenet_v2", "mobilenetv2_100")  # torchvision's name; same network, 3,504,872 parameters
