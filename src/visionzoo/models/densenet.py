"""DenseNet: every layer of a block sees the feature maps of all layers before it.

Paper: Huang, Liu, van der Maaten & Weinberger, "Densely Connected Convolutional Networks",
CVPR 2017 (the ImageNet models are the DenseNet-BC of its Sec. 3).

A 7x7 stride-2 convolution with 2k channels and a 3x3 stride-2 max pool (k: the growth rate)
lead to four dense blocks. Each dense layer is BN -> ReLU -> 1x1 conv (4k channels, the
bottleneck) -> BN -> ReLU -> 3x3 conv (k channels), and its k new channels are concatenated
to its input, so a block of n layers on C channels ends with C + n k. Between blocks a
transition, BN -> ReLU -> 1x1 conv (half the channels: compression 0.5) -> 2x2 average pool,
halves width and resolution. A final BN and ReLU, global pooling and a linear classifier end
the network.

State-dict keys equal torchvision's and timm's (``features.denseblock1.denselayer1.norm1``
...). torchvision's own pretrained files use an older spelling (``norm.1``, ``conv.2``) that
its loader renames; the "torchvision" converter does the same.

CPU inference runs channels-last (``cpu_channels_last``): each block writes into one
preallocated channels-last output, a layer's BN -> ReLU on the channel slice it reads is one
``addcmul`` with the cached affine (:func:`~visionzoo.layers.apply_bn_act`), the bottleneck runs
on a packed weight with its BatchNorm folded and the ReLU fused, and the 3x3 and transition
convolutions on packed weights (:mod:`visionzoo.layers.conv`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import FeatureInfo, VisionModel, tap_outputs
from ..checkpoints import identity, register_converter, rename_keys
from ..layers import POOL_TYPES, Conv2d, MaxPool2d, apply_bn_act, apply_conv_bn, apply_conv_bn_seq, classifier
from ..layers.helpers import autograd_off, channels_last_map
from ..param_groups import MATCH_PREV_GROUP
from ..registry import default_cfg, register_family

__all__ = ["DenseNet", "DenseNetConfig"]


_RELU = nn.ReLU(inplace=True)


class DenseLayer(nn.Module):
    """BN -> ReLU -> 1x1 conv (bn_size * k) -> BN -> ReLU -> 3x3 conv (k): k new channels.

    Shapes:
        (B, C, H, W), or the maps to concatenate into it -> (B, k, H, W).
    """

    def __init__(self, in_chs: int, growth_rate: int, bn_size: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        mid = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.conv2 = Conv2d(mid, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        if not isinstance(x, Tensor):  # the concatenation inside: gradient checkpointing recomputes it too
            x = torch.cat(tuple(x), 1)
        # BN's output is fresh: ReLU in place (in CPU inference one addcmul, and conv1 with norm2
        # folded in and the ReLU as its post-op)
        x = apply_conv_bn(self.conv1, self.norm2, apply_bn_act(self.norm1, x, _RELU), _RELU)
        x = self.conv2(x)
        return F.dropout(x, self.drop_rate, self.training) if self.drop_rate > 0 else x


class DenseBlock(nn.ModuleDict):
    """``depth`` dense layers (keys ``denselayer1`` ...), each fed the concatenation of all before.

    Shapes:
        (B, C, H, W) -> (B, C + depth * k, H, W).
    """

    def __init__(self, in_chs: int, depth: int, growth_rate: int, bn_size: int, drop_rate: float = 0.0) -> None:
        super().__init__({
            f"denselayer{i + 1}": DenseLayer(in_chs + i * growth_rate, growth_rate, bn_size, drop_rate) for i in range(depth)
        })

    #: CPU inference preallocates the block output from this many elements on (see forward)
    PREALLOC_MIN_ELEMENTS = 1 << 18

    def _preallocates(self, x: Tensor, k: int) -> bool:
        """CPU inference with an output of ``PREALLOC_MIN_ELEMENTS`` or more.

        CPU only: on an H100 (bf16, channels-last, batch 128) the channel slices of one wide
        map made DenseNet-121 1.5x slower than concatenating, 5074 vs 7673 img/s. Large outputs
        only: below 256k elements, concatenating in cache beat the strided channel views
        (DenseNet-121 at batch 2 and 64 px: 35.9-42.5 ms concatenating vs 38.7-45.2 preallocated
        in three alternating runs), while at batch 1 and 224 px the preallocated large blocks
        still win (91-97 vs 107 ms).
        """
        if not autograd_off() or torch.compiler.is_compiling() or x.device.type != "cpu":
            return False
        B, C, H, W = x.shape
        return B * (C + len(self) * k) * H * W >= self.PREALLOC_MIN_ELEMENTS

    def forward(self, x: Tensor) -> Tensor:
        k = next(iter(self.values())).conv2.out_channels
        if not self._preallocates(x, k):
            maps = [x]
            for layer in self.values():
                maps.append(layer(tuple(maps)))  # (an immutable copy: a checkpointed layer reads it again)
            return torch.cat(maps, 1)
        # CPU inference: every layer writes its k channels into one preallocated output, and reads
        # the channels before them as a view, instead of concatenating all maps again per layer
        B, C, H, W = x.shape
        out = torch.empty((B, C + len(self) * k, H, W), dtype=x.dtype, device=x.device, memory_format=torch.channels_last if channels_last_map(x) else torch.contiguous_format)
        out[:, :C] = x
        for i, layer in enumerate(self.values()):
            c = C + i * k
            out[:, c : c + k] = layer(out[:, :c])
        return out


class Transition(nn.Sequential):
    """BN -> ReLU -> 1x1 conv -> 2x2 average pool (keys ``norm``, ``conv``)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__(OrderedDict(
            norm=nn.BatchNorm2d(in_chs),
            relu=nn.ReLU(inplace=True),
            conv=Conv2d(in_chs, out_chs, 1, bias=False),
            pool=nn.AvgPool2d(2, 2),
        ))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.conv(apply_bn_act(self.norm, x, self.relu)))


@dataclass(frozen=True)
class DenseNetConfig:
    """Growth rate k, dense layers per block, bottleneck width factor, compression, dropout.

    The stem has 2k channels. ``drop_rate`` is the dropout before the classifier and
    ``proj_drop_rate`` the dropout after each dense layer, as timm names them (torchvision's
    ``drop_rate`` is the latter; the paper uses 0.2 on CIFAR without augmentation, none on
    ImageNet). ``memory_efficient`` (timm's and torchvision's keyword) builds the model with
    :meth:`~visionzoo.base.VisionModel.set_grad_checkpointing` on: each dense layer is
    recomputed in the backward pass (Pleiss et al., "Memory-Efficient Implementation of
    DenseNets", 2017); outputs and gradients are the plain model's.
    """

    growth_rate: int = 32
    depths: tuple[int, ...] = (6, 12, 24, 16)
    bn_size: int = 4
    compression: float = 0.5
    drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    memory_efficient: bool = False


class DenseNet(VisionModel):
    """DenseNet-BC classifier.

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); ``forward_features``: (B, C, H/32, W/32)
        after the final BN and ReLU. ``features_only`` gives, as timm, the stem before its
        max pool (stride 2), blocks 1-3 before their transitions (4, 8, 16) and the final map (32).
    """

    family = "densenet"
    cpu_channels_last = True
    pool_types = POOL_TYPES
    grad_checkpoint_units = (r"features\.denseblock\d+\.denselayer\d+",)

    def __init__(self, cfg: DenseNetConfig, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (224, 224), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes, self.in_chans = num_classes, in_chans
        k = cfg.growth_rate
        # stride 4 in the stem (ceil(H/4) after conv and pool), then one 2x2 pool per transition
        self.min_input_size = 4 * (2 ** (len(cfg.depths) - 1) - 1) + 1
        chs = 2 * k
        layers = OrderedDict(
            conv0=nn.Conv2d(in_chans, chs, 7, stride=2, padding=3, bias=False),
            norm0=nn.BatchNorm2d(chs),
            relu0=nn.ReLU(inplace=True),
            pool0=MaxPool2d(3, stride=2, padding=1),
        )
        self.feature_info = [FeatureInfo(chs, 2, "features.relu0")]
        for i, depth in enumerate(cfg.depths):
            layers[f"denseblock{i + 1}"] = DenseBlock(chs, depth, k, cfg.bn_size, cfg.proj_drop_rate)
            chs += depth * k
            if i < len(cfg.depths) - 1:
                self.feature_info.append(FeatureInfo(chs, 4 * 2**i, f"features.denseblock{i + 1}"))
                layers[f"transition{i + 1}"] = Transition(chs, int(chs * cfg.compression))
                chs = int(chs * cfg.compression)
        layers["norm5"] = nn.BatchNorm2d(chs)
        layers["relu5"] = nn.ReLU(inplace=True)  # torchvision applies it in forward, timm fuses it into norm5
        self.feature_info.append(FeatureInfo(chs, 4 * 2 ** (len(cfg.depths) - 1), "features.relu5"))
        self.features = nn.Sequential(layers)
        self._taps = [list(layers).index(fi.module.split(".")[1]) for fi in self.feature_info]
        self.num_features = chs
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.classifier = classifier(chs, num_classes)
        for m in self.modules():  # the paper's (He) initialisation, as torchvision
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        if cfg.memory_efficient:
            self.set_grad_checkpointing()

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return apply_conv_bn_seq(self.features, x)

    def pooled_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.classifier(x)

    def reset_head(self, num_classes: int) -> None:
        self.classifier = classifier(self.pooled_features, num_classes)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's grouping: ``stem`` (conv0, norm0), then one group per dense layer, each
        transition joining the last layer of the block before it (per dense block, its
        transition included, with ``coarse=True``). As in timm, the final ``norm5`` matches
        nothing and learns with the classifier."""
        if coarse:
            return dict(stem=r"^features\.(?:conv|norm)0\.", blocks=r"^features\.(?:denseblock|transition)(\d+)\.")
        return dict(
            stem=r"^features\.(?:conv|norm)0\.",
            blocks=[
                (r"^features\.denseblock(\d+)\.denselayer(\d+)\.", None),
                (r"^features\.transition(\d+)\.", MATCH_PREV_GROUP),
            ],
        )

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        self.check_input(x)
        return tap_outputs(x, self.features, [self._taps[i] for i in indices], to_end=with_features)

    def prune_for_features(self, indices: Sequence[int]) -> None:
        self.features = self.features[: self._taps[max(indices)] + 1]
        self.reset_classifier(0)


# --------------------------------------------------------------------------- checkpoints
register_converter("densenet", "timm")(identity)


@register_converter("densenet", "torchvision")
def _from_torchvision(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """torchvision's layout is ours; its released files spell ``denselayerN.norm.1`` for ``norm1``."""
    if "features.conv0.weight" not in sd:
        raise KeyError("features.conv0.weight")
    return rename_keys(sd, [(r"(denselayer\d+\.(?:norm|conv))\.([12])\.", r"\1\2.")])


# --------------------------------------------------------------------------- variants
VARIANTS = {
    "densenet121": DenseNetConfig(growth_rate=32, depths=(6, 12, 24, 16)),
    "densenet169": DenseNetConfig(growth_rate=32, depths=(6, 12, 32, 32)),
    "densenet201": DenseNetConfig(growth_rate=32, depths=(6, 12, 48, 32)),
    "densenet161": DenseNetConfig(growth_rate=48, depths=(6, 12, 36, 24)),
}

register_family(
    "densenet",
    DenseNet,
    VARIANTS,
    default_cfgs=lambda name, cfg: default_cfg(224, crop_pct=0.875, interpolation="bicubic", first_conv="features.conv0", classifier="classifier"),
    # params / GMACs / top-1 (single 224 crop) of the torchvision weights (REFERENCE.md); the
    # paper's Table 3 gives single-crop top-1 errors of 25.0 / 23.8 / 22.6 % for 121 / 169 / 201
    published={
        "densenet121": dict(params=8.0, gmacs=2.83, top1=74.4, note="torchvision's weights"),
        "densenet169": dict(params=14.1, gmacs=3.36, top1=75.6, note="torchvision's weights"),
        "densenet201": dict(params=20.0, gmacs=4.29, top1=76.9, note="torchvision's weights"),
        "densenet161": dict(params=28.7, gmacs=7.73, top1=77.1, note="torchvision's weights (k=48)"),
    },
    paper="Huang et al., Densely Connected Convolutional Networks, CVPR 2017",
)
