"""Inception-v4 and Inception-ResNet-v2.

Paper: Szegedy, Ioffe, Vanhoucke & Alemi, "Inception-v4, Inception-ResNet and the Impact
of Residual Connections on Learning", AAAI 2017.

Inception-v4 is a uniform stack of Inception modules on three grids (35x35, 17x17, 8x8
at 299 input: 4 x A, 7 x B, 3 x C) between a branched stem and two reduction modules.
Inception-ResNet-v2 turns each module into a residual block: the concatenated branches
go through a linear 1x1 convolution back to the block's width, are scaled down (0.17,
0.10, 0.20 on the three grids, Sec. 3.3: scaling keeps very wide residual networks from
dying early in training) and added to the input.

Both follow the released TensorFlow-slim weights as timm ports them; keys equal timm's
(``features.N`` and ``last_linear`` for v4; ``conv2d_1a``, ``repeat``, ``repeat_1``,
``repeat_2``, ``block8``, ``conv2d_7b`` and ``classif`` for Inception-ResNet-v2).
Convolutions and poolings are mostly 'valid', so maps are a few pixels smaller than
input / stride; averages in the pooled branches leave the padding out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..base import FeatureInfo, VisionModel, tap_outputs
from ..checkpoints import identity, register_converter
from ..layers import POOL_TYPES, Conv2d, MaxPool2d, classifier
from ..registry import INCEPTION_MEAN, INCEPTION_STD, default_cfg, register_family
from .inception import SequentialNet, conv_bn

__all__ = ["InceptionResNetV2", "InceptionResNetV2Config", "InceptionV4", "InceptionV4Config"]


class Concat(nn.Module):
    """Branches run on one input; their outputs are concatenated along channels.

    Branches are registered under the given names (``branch0``, ``branch1``, ... or
    ``conv`` / ``maxpool``) in forward order.
    """

    def __init__(self, **branches: nn.Module) -> None:
        super().__init__()
        for name, branch in branches.items():
            self.add_module(name, branch)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.children()], 1)


def _seq(*layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(*layers)


def _avg_pool() -> nn.AvgPool2d:
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


# --------------------------------------------------------------------------- Inception-v4


def _stem_v4(in_chans: int) -> list[nn.Module]:
    """Figure 3: three 3x3 convolutions, then three two-branch concatenations -> 384 x 35 x 35."""
    return [
        conv_bn(in_chans, 32, 3, stride=2),
        conv_bn(32, 32, 3),
        conv_bn(32, 64, 3, padding=1),
        Concat(maxpool=MaxPool2d(3, stride=2), conv=conv_bn(64, 96, 3, stride=2)),  # 160
        Concat(
            branch0=_seq(conv_bn(160, 64, 1), conv_bn(64, 96, 3)),
            branch1=_seq(conv_bn(160, 64, 1), conv_bn(64, 64, (1, 7), padding=(0, 3)), conv_bn(64, 64, (7, 1), padding=(3, 0)), conv_bn(64, 96, 3)),
        ),  # 192
        Concat(conv=conv_bn(192, 192, 3, stride=2), maxpool=MaxPool2d(3, stride=2)),  # 384
    ]


def _inception_a() -> Concat:
    """Figure 4, 35x35: 1x1 96 | 1x1 64 -> 3x3 96 | 1x1 64 -> 3x3 96 -> 3x3 96 | avg -> 1x1 96."""
    return Concat(
        branch0=conv_bn(384, 96, 1),
        branch1=_seq(conv_bn(384, 64, 1), conv_bn(64, 96, 3, padding=1)),
        branch2=_seq(conv_bn(384, 64, 1), conv_bn(64, 96, 3, padding=1), conv_bn(96, 96, 3, padding=1)),
        branch3=_seq(_avg_pool(), conv_bn(384, 96, 1)),
    )


def _reduction_a() -> Concat:
    """Figure 7 with (k, l, m, n) = (192, 224, 256, 384): 35x35x384 -> 17x17x1024."""
    return Concat(
        branch0=conv_bn(384, 384, 3, stride=2),
        branch1=_seq(conv_bn(384, 192, 1), conv_bn(192, 224, 3, padding=1), conv_bn(224, 256, 3, stride=2)),
        branch2=MaxPool2d(3, stride=2),
    )


def _inception_b() -> Concat:
    """Figure 5, 17x17: 1x1 384 | 1x1 -> 1x7 -> 7x1 | 1x1 -> (7x1 -> 1x7) x 2 | avg -> 1x1 128."""
    return Concat(
        branch0=conv_bn(1024, 384, 1),
        branch1=_seq(conv_bn(1024, 192, 1), conv_bn(192, 224, (1, 7), padding=(0, 3)), conv_bn(224, 256, (7, 1), padding=(3, 0))),
        branch2=_seq(
            conv_bn(1024, 192, 1),
            conv_bn(192, 192, (7, 1), padding=(3, 0)), conv_bn(192, 224, (1, 7), padding=(0, 3)),
            conv_bn(224, 224, (7, 1), padding=(3, 0)), conv_bn(224, 256, (1, 7), padding=(0, 3)),
        ),
        branch3=_seq(_avg_pool(), conv_bn(1024, 128, 1)),
    )


def _reduction_b() -> Concat:
    """Figure 8: 17x17x1024 -> 8x8x1536."""
    return Concat(
        branch0=_seq(conv_bn(1024, 192, 1), conv_bn(192, 192, 3, stride=2)),
        branch1=_seq(
            conv_bn(1024, 256, 1), conv_bn(256, 256, (1, 7), padding=(0, 3)),
            conv_bn(256, 320, (7, 1), padding=(3, 0)), conv_bn(320, 320, 3, stride=2),
        ),
        branch2=MaxPool2d(3, stride=2),
    )


class InceptionV4C(nn.Module):
    """Figure 6, 8x8: 1x1 256 | 1x1 384 -> (1x3 | 3x1) | 1x1 384 -> 3x1 448 -> 1x3 512 -> (1x3 | 3x1) | avg -> 1x1 256."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = conv_bn(1536, 256, 1)
        self.branch1_0 = conv_bn(1536, 384, 1)
        self.branch1_1a = conv_bn(384, 256, (1, 3), padding=(0, 1))
        self.branch1_1b = conv_bn(384, 256, (3, 1), padding=(1, 0))
        self.branch2_0 = conv_bn(1536, 384, 1)
        self.branch2_1 = conv_bn(384, 448, (3, 1), padding=(1, 0))
        self.branch2_2 = conv_bn(448, 512, (1, 3), padding=(0, 1))
        self.branch2_3a = conv_bn(512, 256, (1, 3), padding=(0, 1))
        self.branch2_3b = conv_bn(512, 256, (3, 1), padding=(1, 0))
        self.branch3 = _seq(_avg_pool(), conv_bn(1536, 256, 1))

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1_0(x)
        b2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return torch.cat([
            self.branch0(x),
            self.branch1_1a(b1), self.branch1_1b(b1),
            self.branch2_3a(b2), self.branch2_3b(b2),
            self.branch3(x),
        ], 1)


@dataclass(frozen=True)
class InceptionV4Config:
    """Inception-v4 options (``drop_rate``: dropout before the classifier; the paper keeps 0.8)."""

    drop_rate: float = 0.2


class InceptionV4(VisionModel):
    """Inception-v4 (Figure 9): stem, 4 x Inception-A, Reduction-A, 7 x Inception-B,
    Reduction-B, 3 x Inception-C, average pooling, dropout, linear.

    ``features`` is one ``nn.Sequential`` of 22 modules as in timm (stem: 0-5, A: 6-9,
    Reduction-A: 10, B: 11-17, Reduction-B: 18, C: 19-21).

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); ``forward_features``: (B, 1536, h, w), h = 8 at H = 299.
    """

    family = "inception_v4"
    pool_types = POOL_TYPES
    grad_checkpoint_units = (r"features\.\d+",)
    cpu_channels_last = True  # with prepacked conv weights (layers.conv), faster at every size measured
    min_input_size = 75

    def __init__(self, cfg: InceptionV4Config, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (299, 299), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, 1536
        self.features = nn.Sequential(
            *_stem_v4(in_chans),
            *[_inception_a() for _ in range(4)],
            _reduction_a(),
            *[_inception_b() for _ in range(7)],
            _reduction_b(),
            *[InceptionV4C() for _ in range(3)],
        )
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.last_linear = classifier(1536, num_classes)
        self.feature_info = [
            FeatureInfo(64, 2, "features.2"),
            FeatureInfo(160, 4, "features.3"),
            FeatureInfo(384, 8, "features.9"),
            FeatureInfo(1024, 16, "features.17"),
            FeatureInfo(1536, 32, "features.21"),
        ]
        self._taps = [int(f.module.split(".")[1]) for f in self.feature_info]

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.features(x)

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        self.check_input(x)
        return tap_outputs(x, self.features, [self._taps[i] for i in indices], to_end=with_features)

    def pooled_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.last_linear(x)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's grouping, the same fine and coarse: ``stem`` (the first three
        convolutions, features.0-2), then one group per later module of ``features``
        (the stem's mixed modules 3-5 included); ``last_linear`` last."""
        return dict(stem=r"^features\.[012]\.", blocks=r"^features\.(\d+)\.")

    def reset_head(self, num_classes: int) -> None:
        self.last_linear = classifier(self.pooled_features, num_classes)

    def prune_for_features(self, indices: Sequence[int]) -> None:
        self.reset_classifier(0)
        self.features = self.features[: self._taps[max(indices)] + 1]


# --------------------------------------------------------------------------- Inception-ResNet-v2


class InceptionResBlock(nn.Module):
    """x + scale * conv1x1(concat(branches(x))), then ReLU (none after the last block).

    Args:
        branches: the Inception branches, registered as ``branch0``, ``branch1``, ...
        cat_chs: their concatenated width; dim: the block's width.
        scale: residual scaling (Sec. 3.3).
        relu: a ReLU after the sum.
    """

    def __init__(self, branches: Sequence[nn.Module], cat_chs: int, dim: int, scale: float, relu: bool = True) -> None:
        super().__init__()
        self.scale = scale
        for i, branch in enumerate(branches):
            self.add_module(f"branch{i}", branch)
        self._n = len(branches)
        self.conv2d = Conv2d(cat_chs, dim, 1)  # linear: no norm, no activation
        self.act = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = torch.cat([getattr(self, f"branch{i}")(x) for i in range(self._n)], 1)
        return self.act(self.conv2d(out).mul_(self.scale).add_(x))  # the conv output is fresh: all in place


def _block35(scale: float = 0.17) -> InceptionResBlock:
    """Inception-ResNet-A (35x35, 320): 1x1 32 | 1x1 32 -> 3x3 32 | 1x1 32 -> 3x3 48 -> 3x3 64."""
    return InceptionResBlock([
        conv_bn(320, 32, 1),
        _seq(conv_bn(320, 32, 1), conv_bn(32, 32, 3, padding=1)),
        _seq(conv_bn(320, 32, 1), conv_bn(32, 48, 3, padding=1), conv_bn(48, 64, 3, padding=1)),
    ], 128, 320, scale)


def _block17(scale: float = 0.10) -> InceptionResBlock:
    """Inception-ResNet-B (17x17, 1088): 1x1 192 | 1x1 128 -> 1x7 160 -> 7x1 192."""
    return InceptionResBlock([
        conv_bn(1088, 192, 1),
        _seq(conv_bn(1088, 128, 1), conv_bn(128, 160, (1, 7), padding=(0, 3)), conv_bn(160, 192, (7, 1), padding=(3, 0))),
    ], 384, 1088, scale)


def _block8(scale: float = 0.20, relu: bool = True) -> InceptionResBlock:
    """Inception-ResNet-C (8x8, 2080): 1x1 192 | 1x1 192 -> 1x3 224 -> 3x1 256."""
    return InceptionResBlock([
        conv_bn(2080, 192, 1),
        _seq(conv_bn(2080, 192, 1), conv_bn(192, 224, (1, 3), padding=(0, 1)), conv_bn(224, 256, (3, 1), padding=(1, 0))),
    ], 448, 2080, scale, relu)


@dataclass(frozen=True)
class InceptionResNetV2Config:
    """Inception-ResNet-v2 options: blocks per grid, residual scales, dropout (paper: keep 0.8)."""

    depths: tuple[int, int, int] = (10, 20, 10)
    scales: tuple[float, float, float] = (0.17, 0.10, 0.20)
    drop_rate: float = 0.2


class InceptionResNetV2(SequentialNet):
    """Inception-ResNet-v2 in the layout of the released TensorFlow-slim weights.

    Stem as Inception-v3's (3x3/2 32, 3x3 32, 3x3 64, max-pool, 1x1 80, 3x3 192, max-pool),
    a 35x35 mixed module to 320 channels (mixed_5b), 10 x Inception-ResNet-A (repeat),
    Reduction-A to 1088 (mixed_6a), 20 x Inception-ResNet-B (repeat_1), Reduction-B to
    2080 (mixed_7a), 9 x Inception-ResNet-C (repeat_2) and a tenth without scaling or ReLU
    (block8), a 1x1 convolution to 1536 (conv2d_7b), pooling, dropout, linear.

    The released network is not the one the paper draws: its Figure 15 shares
    Inception-v4's stem (Figure 3) and its Figures 16-19 give other widths. timm and the
    released weights define the network everyone uses; so does visionzoo.

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); ``forward_features``: (B, 1536, h, w), h = 8 at H = 299.
    """

    family = "inception_resnet_v2"
    grad_checkpoint_units = (r"mixed_\w+", r"repeat(_\d)?\.\d+", r"block8")
    min_input_size = 75

    def __init__(self, cfg: InceptionResNetV2Config, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (299, 299), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, 1536
        s35, s17, s8 = cfg.scales
        self.conv2d_1a = conv_bn(in_chans, 32, 3, stride=2)
        self.conv2d_2a = conv_bn(32, 32, 3)
        self.conv2d_2b = conv_bn(32, 64, 3, padding=1)
        self.maxpool_3a = MaxPool2d(3, stride=2)
        self.conv2d_3b = conv_bn(64, 80, 1)
        self.conv2d_4a = conv_bn(80, 192, 3)
        self.maxpool_5a = MaxPool2d(3, stride=2)
        self.mixed_5b = Concat(
            branch0=conv_bn(192, 96, 1),
            branch1=_seq(conv_bn(192, 48, 1), conv_bn(48, 64, 5, padding=2)),
            branch2=_seq(conv_bn(192, 64, 1), conv_bn(64, 96, 3, padding=1), conv_bn(96, 96, 3, padding=1)),
            branch3=_seq(_avg_pool(), conv_bn(192, 64, 1)),
        )
        self.repeat = nn.Sequential(*[_block35(s35) for _ in range(cfg.depths[0])])
        self.mixed_6a = Concat(
            branch0=conv_bn(320, 384, 3, stride=2),
            branch1=_seq(conv_bn(320, 256, 1), conv_bn(256, 256, 3, padding=1), conv_bn(256, 384, 3, stride=2)),
            branch2=MaxPool2d(3, stride=2),
        )
        self.repeat_1 = nn.Sequential(*[_block17(s17) for _ in range(cfg.depths[1])])
        self.mixed_7a = Concat(
            branch0=_seq(conv_bn(1088, 256, 1), conv_bn(256, 384, 3, stride=2)),
            branch1=_seq(conv_bn(1088, 256, 1), conv_bn(256, 288, 3, stride=2)),
            branch2=_seq(conv_bn(1088, 256, 1), conv_bn(256, 288, 3, padding=1), conv_bn(288, 320, 3, stride=2)),
            branch3=MaxPool2d(3, stride=2),
        )
        self.repeat_2 = nn.Sequential(*[_block8(s8) for _ in range(cfg.depths[2] - 1)])
        self.block8 = _block8(1.0, relu=False)
        self.conv2d_7b = conv_bn(2080, 1536, 1)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.classif = classifier(1536, num_classes)
        self.layer_names = [
            "conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "maxpool_5a",
            "mixed_5b", "repeat", "mixed_6a", "repeat_1", "mixed_7a", "repeat_2", "block8", "conv2d_7b",
        ]
        self.feature_info = [
            FeatureInfo(64, 2, "conv2d_2b"),
            FeatureInfo(192, 4, "conv2d_4a"),
            FeatureInfo(320, 8, "repeat"),
            FeatureInfo(1088, 16, "repeat_1"),
            FeatureInfo(1536, 32, "conv2d_7b"),
        ]
        self._taps = [self.layer_names.index(f.module) for f in self.feature_info]

    def pooled_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.classif(x)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's grouping, the same fine and coarse, in forward order: conv2d_1a-2b (before
        the first max-pool), conv2d_3b-4a, mixed_5b, each block of ``repeat``, mixed_6a,
        each block of ``repeat_1``, mixed_7a, each block of ``repeat_2``, then block8 with
        conv2d_7b in one group (timm puts both after every other module); ``classif`` last."""
        return dict(
            stem=r"^conv2d_[12]",
            stem_convs=r"^conv2d_[34]",
            mixed_5b=r"^mixed_5b\.",
            repeat=r"^repeat\.(\d+)\.",
            mixed_6a=r"^mixed_6a\.",
            repeat_1=r"^repeat_1\.(\d+)\.",
            mixed_7a=r"^mixed_7a\.",
            repeat_2=r"^repeat_2\.(\d+)\.",
            final=r"^(?:block8|conv2d_7b)\.",
        )

    def reset_head(self, num_classes: int) -> None:
        self.classif = classifier(self.pooled_features, num_classes)


register_converter("inception_v4", "timm")(identity)
register_converter("inception_resnet_v2", "timm")(identity)

register_family(
    "inception_v4",
    InceptionV4,
    {"inception_v4": InceptionV4Config()},
    default_cfgs=lambda name, cfg: default_cfg(
        299, mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=0.875, first_conv="features.0.conv", classifier="last_linear",
    ),
    published={"inception_v4": dict(params=42.7, gmacs=12.3, top1=80.0, note="paper: 20.0 % top-1 error, 1 crop (Table 2)")},
    paper="Szegedy et al., Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning, AAAI 2017",
)

register_family(
    "inception_resnet_v2",
    InceptionResNetV2,
    {"inception_resnet_v2": InceptionResNetV2Config()},
    default_cfgs=lambda name, cfg: default_cfg(
        299, mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=0.8975, first_conv="conv2d_1a.conv", classifier="classif",
    ),
    published={"inception_resnet_v2": dict(params=55.8, gmacs=13.2, top1=80.1, note="paper: 19.9 % top-1 error, 1 crop (Table 2)")},
    paper="Szegedy et al., Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning, AAAI 2017",
)
