"""HRNet: high-resolution networks (HRNetV1/V2 trunk with the classification head).

Papers:
    Sun et al., "Deep High-Resolution Representation Learning for Human Pose Estimation",
    CVPR 2019; Wang et al., "Deep High-Resolution Representation Learning for Visual
    Recognition", TPAMI 2020 (HRNetV2 and the classification head).

A stem (two 3x3 stride-2 convolutions) leads to four stages. Stage 1 is a ResNet layer of
bottlenecks at 1/4 resolution; each later stage adds one lower-resolution branch (half the
resolution, twice the channels) through a transition layer, and is a sequence of
high-resolution modules: every branch runs its own residual blocks, then every branch
receives the sum of all branches, brought to its resolution (1x1 conv + nearest
upsampling from lower resolutions; strided 3x3 convs from higher ones). The classification
head widens each branch with a bottleneck ("incre" modules, 128/256/512/1024 channels),
aggregates them from high to low resolution with strided convolutions, and projects to
2048 channels before pooling.

``features_only`` returns, as timm does, the stem (1/2) and the four widened branch maps
(1/4 ... 1/32). ``forward_branches`` returns the raw HRNetV2 representation (the four
branch outputs) that segmentation heads and BPR's refiner use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..base import FeatureInfo, VisionModel
from ..checkpoints import identity, register_converter
from ..layers import POOL_TYPES, apply_conv_bn, apply_conv_bn_seq, classifier
from ..param_groups import MATCH_PREV_GROUP
from ..registry import default_cfg, register_family

__all__ = ["HRNet", "HRNetConfig"]


# --------------------------------------------------------------------------- blocks
RELU = nn.ReLU(inplace=True)  # the blocks' and stem's ReLU: a convolution's post-op in CPU inference (layers.apply_conv_bn)


def _bn_conv(in_chs: int, out_chs: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_chs, out_chs, k, stride, k // 2, bias=False), nn.BatchNorm2d(out_chs)]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet's basic block)."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _bn_conv(in_chs, planes, 3, stride)
        self.conv2, self.bn2 = _bn_conv(planes, planes, 3)
        self.downsample = None
        if stride != 1 or in_chs != planes:
            self.downsample = nn.Sequential(*_bn_conv(in_chs, planes, 1, stride))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else apply_conv_bn_seq(self.downsample, x)
        x = apply_conv_bn(self.conv1, self.bn1, x, RELU)
        return apply_conv_bn(self.conv2, self.bn2, x, RELU, residual=shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4), residual (ResNet's bottleneck)."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * 4
        self.conv1, self.bn1 = _bn_conv(in_chs, planes, 1)
        self.conv2, self.bn2 = _bn_conv(planes, planes, 3, stride)
        self.conv3, self.bn3 = _bn_conv(planes, out, 1)
        self.downsample = None
        if stride != 1 or in_chs != out:
            self.downsample = nn.Sequential(*_bn_conv(in_chs, out, 1, stride))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else apply_conv_bn_seq(self.downsample, x)
        x = apply_conv_bn(self.conv1, self.bn1, x, RELU)
        x = apply_conv_bn(self.conv2, self.bn2, x, RELU)
        return apply_conv_bn(self.conv3, self.bn3, x, RELU, residual=shortcut)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _layer(block: type[nn.Module], in_chs: int, planes: int, depth: int) -> nn.Sequential:
    return nn.Sequential(*[block(in_chs if i == 0 else planes * block.expansion, planes) for i in range(depth)])


class HighResolutionModule(nn.Module):
    """Parallel branches of residual blocks, then exchange between all resolutions.

    Args:
        in_chs: channels entering each branch.
        block: residual block class.
        depths: blocks per branch.
        channels: block width per branch.
        multi_scale_output: produce every branch (otherwise only the highest resolution).

    Shapes:
        list of (B, C_i, H / 2**i, W / 2**i) -> the same list (or its first entry).
    """

    def __init__(
        self, in_chs: Sequence[int], block: type[nn.Module], depths: Sequence[int], channels: Sequence[int], multi_scale_output: bool = True
    ) -> None:
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(_layer(block, in_chs[i], channels[i], depths[i]) for i in range(n))
        out = [c * block.expansion for c in channels]
        self.out_chs = out
        if n == 1:
            self.fuse_layers = None
            return
        fuse = []
        for i in range(n if multi_scale_output else 1):
            row = []
            for j in range(n):
                if j > i:  # lower resolution: 1x1 conv, then nearest upsampling
                    row.append(nn.Sequential(*_bn_conv(out[j], out[i], 1), nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                elif j == i:
                    row.append(nn.Identity())
                else:  # higher resolution: i - j strided 3x3 convs, ReLU between them
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        layers = _bn_conv(out[j], out[i] if last else out[j], 3, 2)
                        steps.append(nn.Sequential(*layers) if last else nn.Sequential(*layers, nn.ReLU(inplace=True)))
                    row.append(nn.Sequential(*steps))
            fuse.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        out: list[Tensor | None] = []
        for row in self.fuse_layers:
            if not len(row):  # pruned (prune_for_features): an output no feature map uses
                out.append(None)
                continue
            y = apply_conv_bn_seq(row[0], xs[0])
            for f, x in zip(row[1:], xs[1:]):
                y = y + apply_conv_bn_seq(f, x)
            out.append(F.relu(y, inplace=True))  # y is a fresh sum (every row adds at least once)
        return out


class Stage(nn.Sequential):
    """High-resolution modules applied in turn to a list of branch maps."""

    def forward(self, xs: list[Tensor]) -> list[Tensor]:  # type: ignore[override]
        for m in self:
            xs = m(xs)
        return xs


def _transition(pre: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
    """Adapt the branches of one stage to the next and create its new, lower branch."""
    layers: list[nn.Module] = []
    for i, c in enumerate(cur):
        if i < len(pre):
            layers.append(nn.Sequential(*_bn_conv(pre[i], c, 3), nn.ReLU(inplace=True)) if pre[i] != c else nn.Identity())
        else:
            steps = []
            for j in range(i + 1 - len(pre)):
                out = c if j == i - len(pre) else pre[-1]
                steps.append(nn.Sequential(*_bn_conv(pre[-1], out, 3, 2), nn.ReLU(inplace=True)))
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class StageSpec:
    """One stage: modules, block type, blocks per branch, width per branch."""

    num_modules: int
    block: str
    depths: tuple[int, ...]
    channels: tuple[int, ...]


@dataclass(frozen=True)
class HRNetConfig:
    """An HRNet: the stem width and four stages (stage 1 has a single branch)."""

    stages: tuple[StageSpec, StageSpec, StageSpec, StageSpec]
    stem_width: int = 64
    head_channels: tuple[int, int, int, int] = (32, 64, 128, 256)
    num_features: int = 2048
    #: biases on the head's downsampling and final convolutions (each followed by a BatchNorm);
    #: False for PaddleClas's SSLD-distilled weights (timm's ``head_conv_bias``)
    head_conv_bias: bool = True
    drop_rate: float = 0.0


class HRNet(VisionModel):
    """HRNet classifier (HRNetV2 trunk + the classification head of the TPAMI paper).

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); ``forward_features``: (B, 2048, H/32, W/32).
    """

    family = "hrnet"
    pool_types = POOL_TYPES
    grad_checkpoint_units = (r"layer1\.\d+", r"stage\d\.\d+", r"incre_modules\.\d+\.\d+")
    cpu_channels_last = True
    min_input_size = 32

    def __init__(self, cfg: HRNetConfig, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (224, 224), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes, self.in_chans = num_classes, in_chans
        self.input_multiple = 32  # every branch must halve exactly for the fusion to line up
        self.conv1, self.bn1 = _bn_conv(in_chans, cfg.stem_width, 3, 2)
        self.conv2, self.bn2 = _bn_conv(cfg.stem_width, 64, 3, 2)
        s1 = cfg.stages[0]
        block = BLOCKS[s1.block]
        self.layer1 = _layer(block, 64, s1.channels[0], s1.depths[0])
        pre = [s1.channels[0] * block.expansion]
        for k, spec in enumerate(cfg.stages[1:], start=1):
            block = BLOCKS[spec.block]
            cur = [c * block.expansion for c in spec.channels]
            setattr(self, f"transition{k}", _transition(pre, cur))
            modules, chs = [], cur
            for _ in range(spec.num_modules):
                modules.append(HighResolutionModule(chs, block, spec.depths, spec.channels))
                chs = modules[-1].out_chs
            setattr(self, f"stage{k + 1}", Stage(*modules))
            pre = chs
        self.branch_channels = pre
        head = [c * 4 for c in cfg.head_channels]
        self.incre_modules = nn.ModuleList(_layer(Bottleneck, pre[i], cfg.head_channels[i], 1) for i in range(4))
        self.downsamp_modules = nn.ModuleList(
            nn.Sequential(nn.Conv2d(head[i], head[i + 1], 3, 2, 1, bias=cfg.head_conv_bias), nn.BatchNorm2d(head[i + 1]), nn.ReLU(inplace=True)) for i in range(3)
        )
        self.final_layer = nn.Sequential(nn.Conv2d(head[3], cfg.num_features, 1, bias=cfg.head_conv_bias), nn.BatchNorm2d(cfg.num_features), nn.ReLU(inplace=True))
        self.num_features = cfg.num_features
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.classifier = classifier(cfg.num_features, num_classes)
        self.feature_info = [FeatureInfo(64, 2, "stem")] + [FeatureInfo(c, 4 * 2**i, f"incre_modules.{i}") for i, c in enumerate(head)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def level_ends(self) -> list[str]:
        """The maps come from ``incre_modules``, defined after the whole trunk; the trunk's
        levels end at the stride-2 stem, the stride-4 ``layer1``, and each later stage, which
        adds the next coarser branch."""
        return ["bn1", "layer1", "stage2", "stage3", "stage4"]

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Groups by depth, as timm's: the two stem convolutions and their norms; then each
        block of ``layer1`` and each multi-resolution module ``stage<k>.<m>``, the
        ``transition<k>`` that feeds stage k + 1 joining the last one before it (with
        ``coarse``: one group per level k, ``layer1``/``stage<k>`` with ``transition<k>``).
        timm's head follows: ``incre_modules``, ``downsamp_modules``, ``final_layer`` and the
        classifier, matched by nothing, share the last group."""
        if coarse:
            return {"stem": r"^(?:conv|bn)[12]\.", "levels": r"^(?:layer|stage|transition)(\d+)\."}
        return {
            "stem": r"^(?:conv|bn)[12]\.",
            "levels": [(r"^(?:layer|stage)(\d+)\.(\d+)\.", None), (r"^transition(\d+)\.", MATCH_PREV_GROUP)],
        }

    def _stem(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return apply_conv_bn(self.conv1, self.bn1, x, RELU)  # B, stem, H/2, W/2

    def _trunk(self, x: Tensor) -> list[Tensor]:
        x = self.layer1(apply_conv_bn(self.conv2, self.bn2, x, RELU))  # B, C1, H/4, W/4
        xs = [x]
        for k in (1, 2, 3):
            trans = getattr(self, f"transition{k}")
            xs = [apply_conv_bn_seq(t, xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(trans)]
            xs = getattr(self, f"stage{k + 1}")(xs)
        return xs  # 4 maps, H/4 ... H/32

    def forward_branches(self, x: Tensor) -> list[Tensor]:
        """HRNetV2's representation: the four branch outputs, (B, C * 2**i, H / 2**(i+2), ...)."""
        return self._trunk(self._stem(x))

    def forward_features(self, x: Tensor) -> Tensor:
        if self.final_layer is None:  # pruned (prune_for_features): the last map left
            last = self._pruned_after if self._pruned_after is not None else max(self.out_indices)  # (features_only)
            return self.intermediate_maps(x, [last])[0]
        xs = self._trunk(self._stem(x))
        return self._fuse([incre(b) for incre, b in zip(self.incre_modules, xs)])

    def _fuse(self, incre: list[Tensor]) -> Tensor:
        """The classification head's merge of the four widened branches into one H/32 map."""
        y = incre[0]
        for i in range(1, 4):
            y = incre[i] + apply_conv_bn_seq(self.downsamp_modules[i - 1], y)
        return apply_conv_bn_seq(self.final_layer, y)  # B, 2048, H/32, W/32

    def pooled_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.classifier(x)

    def reset_head(self, num_classes: int) -> None:
        self.classifier = classifier(self.pooled_features, num_classes)

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        stem = self._stem(x)
        out = {0: stem}
        if with_features or max(indices) > 0:
            xs = self._trunk(stem)
            for i in range(4):
                if with_features or i + 1 in indices:
                    out[i + 1] = self.incre_modules[i](xs[i])
        maps = [out[i] for i in indices]
        return (maps, self._fuse([out[i] for i in range(1, 5)])) if with_features else maps

    def prune_for_features(self, indices: Sequence[int]) -> None:
        self.reset_classifier(0)
        self.downsamp_modules = None
        self.final_layer = None
        self.incre_modules = nn.ModuleList(self.incre_modules[i] if i + 1 in indices else nn.Identity() for i in range(4))
        last = self.stage4[-1]  # its outputs at the resolutions no map is taken from are unused
        for i in range(len(last.fuse_layers or ())):
            if i + 1 not in indices:
                last.fuse_layers[i] = nn.ModuleList()


# --------------------------------------------------------------------------- checkpoints
register_converter("hrnet", "timm")(identity)


# --------------------------------------------------------------------------- variants
def _hrnet(w: int, stage3_modules: int = 4, stage4_modules: int = 3) -> HRNetConfig:
    return HRNetConfig(stages=(
        StageSpec(1, "bottleneck", (4,), (64,)),
        StageSpec(1, "basic", (4, 4), (w, 2 * w)),
        StageSpec(stage3_modules, "basic", (4, 4, 4), (w, 2 * w, 4 * w)),
        StageSpec(stage4_modules, "basic", (4, 4, 4, 4), (w, 2 * w, 4 * w, 8 * w)),
    ))


VARIANTS = {
    # W18-small (v1): one module per stage, two blocks per branch, 16/32/64/128 channels
    "hrnet_w18_small": HRNetConfig(stages=(
        StageSpec(1, "bottleneck", (1,), (32,)),
        StageSpec(1, "basic", (2, 2), (16, 32)),
        StageSpec(1, "basic", (2, 2, 2), (16, 32, 64)),
        StageSpec(1, "basic", (2, 2, 2, 2), (16, 32, 64, 128)),
    )),
    "hrnet_w18_small_v2": HRNetConfig(stages=(
        StageSpec(1, "bottleneck", (2,), (64,)),
        StageSpec(1, "basic", (2, 2), (18, 36)),
        StageSpec(3, "basic", (2, 2, 2), (18, 36, 72)),
        StageSpec(2, "basic", (2, 2, 2, 2), (18, 36, 72, 144)),
    )),
    **{f"hrnet_w{w}": _hrnet(w) for w in (18, 30, 32, 40, 44, 48, 64)},
    # PaddleClas's SSLD-distilled HRNets (timm's *_ssld): no biases in the head's convolutions
    **{f"hrnet_w{w}_ssld": replace(_hrnet(w), head_conv_bias=False) for w in (18, 48)},
}

register_family(
    "hrnet",
    HRNet,
    VARIANTS,
    default_cfgs=lambda name, cfg: default_cfg(224, interpolation="bilinear", crop_pct=0.95 if name.endswith("_ssld") else 0.875, first_conv="conv1", classifier="classifier"),
    published={  # TPAMI paper, Table 9 / the authors' classification release (HRNet-W*-C)
        "hrnet_w18_small": dict(params=13.2, top1=72.1, note="paper: 1.49 GFLOPs; the released architecture counts 1.60 GMACs"),
        "hrnet_w18_small_v2": dict(params=15.6, top1=75.1, note="paper: 2.42 GFLOPs; the released architecture counts 2.60 GMACs"),
        "hrnet_w18": dict(params=21.3, top1=76.8, note="paper: 3.99 GFLOPs; the released architecture counts 4.28 GMACs"),
        "hrnet_w30": dict(params=37.7, top1=78.2, note="paper: 7.55 GFLOPs; the released architecture counts 8.11 GMACs"),
        "hrnet_w32": dict(params=41.2, top1=78.5, note="paper: 8.31 GFLOPs; the released architecture counts 8.92 GMACs"),
        "hrnet_w48": dict(params=77.5, top1=79.3, note="paper: 16.1 GFLOPs; the released architecture counts 17.28 GMACs"),
        **{f"hrnet_w{w}_ssld": dict(params=p, note="PaddleClas's SSLD-distilled weights' network (no biases in the head's convolutions); params counted (equal to timm's)")
           for w, p in ((18, 21.3), (48, 77.5))},
    },
    paper="Wang et al., Deep High-Resolution Representation Learning for Visual Recognition, TPAMI 2020",
)
