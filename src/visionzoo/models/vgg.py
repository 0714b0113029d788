"""VGG: very deep plain networks of 3x3 convolutions.

Paper: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015.

Five stages of 3x3 convolutions (stride 1, padding 1), each followed by ReLU (and, in the
``_bn`` variants, BatchNorm before the ReLU) and ended by a 2x2 max pool: 64, 128, 256, 512
and 512 channels. Configurations A, B, D and E of the paper (VGG-11/13/16/19) differ only in
the number of convolutions per stage. The head pools the last map to 7x7 (adaptively, so
any input of at least 32x32 works, as in torchvision), flattens it and applies three fully
connected layers: 25088 -> 4096 -> 4096 -> classes, ReLU and dropout between them.

The convolutions are keyed ``features.N`` as in both timm and torchvision. The fully
connected layers are ``nn.Linear`` keyed as timm's (``pre_logits.fc1``, ``pre_logits.fc2``,
``head.fc``). timm stores the first two as convolutions (7x7 and 1x1), which its converter
reshapes; torchvision's ``classifier.0/3/6`` are renamed. For inputs of 32..255 pixels (a
last map of at most 7x7) all three compute the same function; above that timm slides its
7x7 convolution over the larger map and averages, while visionzoo and torchvision pool
the map down to 7x7 first.

As in timm, ``num_features`` is the width of the map ``forward_features`` returns (512, after
the last max pool) and ``head_hidden_size`` the width the classifier sees (fc7's 4096).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..base import FeatureInfo, VisionModel, tap_outputs
from ..checkpoints import register_converter, rename_keys
from ..layers import Conv2d, MaxPool2d, apply_conv_bn_seq, classifier
from ..registry import default_cfg, register_family

__all__ = ["VGG", "VGGConfig"]


@dataclass(frozen=True)
class VGGConfig:
    """Convolutions per stage, stage widths, BatchNorm or not, width of the hidden FC layers."""

    depths: tuple[int, ...] = (2, 2, 3, 3, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    batch_norm: bool = False
    mlp_dim: int = 4096
    drop_rate: float = 0.5


class PreLogits(nn.Module):
    """Pool to 7x7 -> flatten -> fc1 -> ReLU -> dropout -> fc2 -> ReLU -> dropout.

    Shapes:
        (B, C, H, W) -> (B, hidden).
    """

    pool_size = 7

    def __init__(self, in_chs: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_chs * self.pool_size**2, hidden)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(x, self.pool_size).flatten(1)  # B, C*7*7 (channel-major, as torchvision)
        x = self.drop1(F.relu(self.fc1(x)))
        return self.drop2(F.relu(self.fc2(x)))


class LinearHead(nn.Module):
    """The classifier, ``fc`` (timm's key ``head.fc``); Identity for ``num_classes=0``."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = classifier(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class VGG(VisionModel):
    """VGG classifier.

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes), H, W >= 32; ``forward_features``:
        (B, 512, H/32, W/32). ``features_only`` gives, as timm, six maps: each stage's
        output before its max pool (strides 1, 2, 4, 8, 16) and the last pool's (stride 32).
    """

    family = "vgg"
    cpu_channels_last = True  # with prepacked conv weights (layers.conv), faster at every size measured
    min_input_size = 32

    def __init__(self, cfg: VGGConfig, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (224, 224), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if len(cfg.depths) != len(cfg.widths):
            raise ValueError(f"depths and widths must have the same length, got {cfg.depths} and {cfg.widths}")
        self.cfg = cfg
        self.num_classes, self.in_chans = num_classes, in_chans
        self.min_input_size = 2 ** len(cfg.depths)
        layers: list[nn.Module] = []
        self._taps: list[int] = []  # index into ``features`` of each feature map
        self.feature_info = []
        prev = in_chans
        for i, (depth, width) in enumerate(zip(cfg.depths, cfg.widths)):
            for _ in range(depth):
                layers.append(Conv2d(prev, width, 3, padding=1))
                if cfg.batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                prev = width
            self._taps.append(len(layers) - 1)
            self.feature_info.append(FeatureInfo(width, 2**i, f"features.{len(layers) - 1}"))
            layers.append(MaxPool2d(2, 2))
        self._taps.append(len(layers) - 1)
        self.feature_info.append(FeatureInfo(prev, 2 ** len(cfg.depths), f"features.{len(layers) - 1}"))
        self.features = nn.Sequential(*layers)
        self.num_features, self.head_hidden_size = prev, cfg.mlp_dim
        self.pre_logits = PreLogits(prev, cfg.mlp_dim, cfg.drop_rate)
        self.head = LinearHead(cfg.mlp_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return apply_conv_bn_seq(self.features, x)  # conv (+ BN) + ReLU as one call each in CPU inference

    def pooled_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.pre_logits(x)
        return x if pre_logits else self.head(x)

    def unpooled_head(self, x: Tensor) -> Tensor:
        """timm's ``global_pool=''``: the fc6/fc7 features as a (B, 4096, 1, 1) map, which timm
        (whose fc6 is a 7x7 convolution) also returns at 224 px; at larger inputs timm slides
        that convolution over the map, while ours pools to 7x7 first, as torchvision does."""
        return self.pre_logits(x)[:, :, None, None]

    def reset_head(self, num_classes: int) -> None:
        self.head = LinearHead(self.head_hidden_size, num_classes)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's grouping, the same fine and coarse: ``stem`` (the first convolution), then
        one group per parametrised layer of ``features`` (in the ``_bn`` variants each
        BatchNorm is a group of its own, as in timm); ``pre_logits`` and ``head`` last."""
        return dict(stem=r"^features\.0\.", blocks=r"^features\.(\d+)\.")

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        self.check_input(x)
        return tap_outputs(x, self.features, [self._taps[i] for i in indices], to_end=with_features)

    def prune_for_features(self, indices: Sequence[int]) -> None:
        self.features = self.features[: self._taps[max(indices)] + 1]
        self.pre_logits = nn.Identity()  # type: ignore[assignment]
        self.reset_classifier(0)


# --------------------------------------------------------------------------- checkpoints
@register_converter("vgg", "timm")
def _from_timm(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """timm's ConvMlp: fc1 is a 7x7 convolution, fc2 a 1x1 convolution; flatten their kernels.

    A (O, C, 7, 7) kernel flattened to (O, C*49) is channel-major, the order in which the
    pooled (B, C, 7, 7) map is flattened.
    """
    if "pre_logits.fc1.weight" not in sd:
        raise KeyError("pre_logits.fc1.weight")
    return {k: v.flatten(1) if k.startswith("pre_logits.") and v.ndim == 4 else v for k, v in sd.items()}


@register_converter("vgg", "torchvision")
def _from_torchvision(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """torchvision's ``classifier`` Sequential (Linear at 0, 3, 6)."""
    if "classifier.0.weight" not in sd:
        raise KeyError("classifier.0.weight")
    return rename_keys(sd, [
        (r"^classifier\.0\.", "pre_logits.fc1."),
        (r"^classifier\.3\.", "pre_logits.fc2."),
        (r"^classifier\.6\.", "head.fc."),
    ])


# --------------------------------------------------------------------------- variants
_DEPTHS = {"vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
VARIANTS = {
    f"{name}{suffix}": VGGConfig(depths=depths, batch_norm=bool(suffix))
    for name, depths in _DEPTHS.items()
    for suffix in ("", "_bn")
}

# Params: paper Table 2 (configurations A, B, D, E). GMACs and top-1 (single 224 crop) are
# torchvision's figures for its weights; the paper reports single-scale top-1 errors of
# 29.6 / 28.7 / 27.0 / 27.3 % at a test scale of 256 (Table 3, training scale 256).
_TV = {
    "vgg11": (7.61, 69.0), "vgg11_bn": (7.61, 70.4), "vgg13": (11.31, 69.9), "vgg13_bn": (11.31, 71.6),
    "vgg16": (15.47, 71.6), "vgg16_bn": (15.47, 73.4), "vgg19": (19.63, 72.4), "vgg19_bn": (19.63, 74.2),
}
_PAPER_PARAMS = {"vgg11": 133.0, "vgg13": 133.0, "vgg16": 138.0, "vgg19": 144.0}

register_family(
    "vgg",
    VGG,
    VARIANTS,
    default_cfgs=lambda name, cfg: default_cfg(224, interpolation="bilinear", crop_pct=0.875, first_conv="features.0", classifier="head.fc"),
    published={
        name: dict(
            params=_PAPER_PARAMS[name.split("_")[0]],
            gmacs=_TV[name][0],
            top1=_TV[name][1],
            note="params: paper Table 2; GMACs and top-1: torchvision's weights" + (" (BatchNorm is not in the paper)" if name.endswith("_bn") else ""),
        )
        for name in VARIANTS
    },
    paper="Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, ICLR 2015",
)
