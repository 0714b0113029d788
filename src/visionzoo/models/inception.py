"""GoogLeNet (Inception v1), Inception-v2 and Inception-v3.

Papers:
    Szegedy et al., "Going Deeper with Convolutions", CVPR 2015 (GoogLeNet).
    Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016
    (Inception-v2 and -v3).

An Inception module runs a few convolution branches of different receptive fields side by
side on one input and concatenates their outputs along channels. GoogLeNet stacks nine
such modules (1x1, 3x3, 5x5 and a pooled branch). The 2016 paper factorises the large
kernels: a 5x5 becomes two 3x3 (35x35 grid), an n x n becomes 1 x n then n x 1 (17x17
grid), the 8x8 modules widen their filter banks with parallel 1x3 / 3x1 convolutions, and
grid reductions run a stride-2 convolution beside a stride-2 pooling. Every convolution is
followed by BatchNorm (eps 1e-3) and ReLU.

Layouts: GoogLeNet keys equal torchvision's ``googlenet``; Inception-v3 keys equal both
timm's and torchvision's ``inception_v3`` (``Conv2d_1a_3x3``, ``Mixed_5b``, ...,
``AuxLogits``, ``fc``). Inception-v3 pads like the TensorFlow original: most convolutions
and poolings are 'valid', so feature maps are a few pixels smaller than input / stride.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import FeatureInfo, VisionModel, tap_outputs
from ..checkpoints import identity, register_converter
from ..layers import POOL_TYPES, ConvNormAct, MaxPool2d, classifier, max_pool2d
from ..registry import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, default_cfg, register_family

__all__ = ["GoogLeNet", "GoogLeNetConfig", "InceptionV3", "InceptionV3Config", "conv_bn"]


def conv_bn(
    in_chs: int,
    out_chs: int,
    kernel_size: int | tuple[int, int],
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
) -> ConvNormAct:
    """Conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU, 'valid' unless ``padding`` is given.

    The Inception networks were trained in TensorFlow with BatchNorm epsilon 1e-3; the
    ported weights need it.
    """
    return ConvNormAct(
        in_chs, out_chs, kernel_size, stride, padding=padding,
        norm_layer=partial(nn.BatchNorm2d, eps=1e-3), act_layer=partial(nn.ReLU, inplace=True),
    )


class SequentialNet(VisionModel):
    """Shared machinery of networks that are a list of named layers run in order.

    Subclasses fill ``self.layer_names`` (forward order), ``self._taps`` (the index in
    ``layer_names`` of each ``feature_info`` entry) and ``self._aux_after`` ({layer name:
    attribute of the auxiliary classifier on its output}, the attribute ``None`` when the
    model is built without). In training mode ``forward`` returns the logits followed by
    the auxiliary logits, deepest first (torchvision's order); otherwise the logits.
    """

    pool_types = POOL_TYPES

    layer_names: list[str]
    _taps: list[int]
    _aux_after: dict[str, str] = {}
    #: weight of each auxiliary classifier's loss, in ``forward``'s order (training adds
    #: ``sum(w * loss(aux))`` to the main loss)
    aux_loss_weights: tuple[float, ...] = ()
    cpu_channels_last = True  # with prepacked conv weights (layers.conv), faster at every size measured

    def _body(self, x: Tensor, with_aux: bool) -> tuple[Tensor, list[Tensor]]:
        self.check_input(x)
        x = self._preprocess(x)
        aux: list[Tensor] = []
        for name in self.layer_names:
            x = getattr(self, name)(x)
            head = getattr(self, self._aux_after[name]) if with_aux and name in self._aux_after else None
            if head is not None:
                aux.append(head(x))
        return x, aux[::-1]

    def forward_features(self, x: Tensor) -> Tensor:
        return self._body(x, with_aux=False)[0]

    def _forward_classifier(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        x, aux = self._body(x, with_aux=self.training)
        x = self.forward_head(x)
        return (x, *aux) if aux else x

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        self.check_input(x)
        layers = [getattr(self, name) for name in self.layer_names]
        return tap_outputs(self._preprocess(x), layers, [self._taps[i] for i in indices], to_end=with_features)

    def prune_for_features(self, indices: Sequence[int]) -> None:
        self.reset_classifier(0)
        for head in self._aux_after.values():
            setattr(self, head, None)
        last = self._taps[max(indices)]
        for name in self.layer_names[last + 1:]:
            delattr(self, name)
        self.layer_names = self.layer_names[: last + 1]

    def _preprocess(self, x: Tensor) -> Tensor:
        return x

    def adapt_state_dict(self, state_dict: dict[str, Tensor], source: VisionModel | None = None) -> dict[str, Tensor]:
        """Drop the checkpoint's auxiliary classifiers when this model has none."""
        absent = tuple(f"{h}." for h in self._aux_after.values() if getattr(self, h) is None)
        return {k: v for k, v in state_dict.items() if not (absent and k.startswith(absent))}


# --------------------------------------------------------------------------- GoogLeNet


class InceptionV1Block(nn.Module):
    """GoogLeNet's module: 1x1 | 1x1 -> 3x3 | 1x1 -> '5x5' | 3x3 max-pool -> 1x1.

    The '5x5' branch uses a 3x3 kernel (``b3_kernel=3``), as torchvision's port and its
    weights do (pytorch/vision#906); ``b3_kernel=5`` gives the paper's module.
    """

    def __init__(self, in_chs: int, c1: int, c3_red: int, c3: int, c5_red: int, c5: int, pool_proj: int, b3_kernel: int = 3) -> None:
        super().__init__()
        self.branch1 = conv_bn(in_chs, c1, 1)
        self.branch2 = nn.Sequential(conv_bn(in_chs, c3_red, 1), conv_bn(c3_red, c3, 3, padding=1))
        self.branch3 = nn.Sequential(conv_bn(in_chs, c5_red, 1), conv_bn(c5_red, c5, b3_kernel, padding=b3_kernel // 2))
        self.branch4 = nn.Sequential(MaxPool2d(3, stride=1, padding=1, ceil_mode=True), conv_bn(in_chs, pool_proj, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNetAux(nn.Module):
    """Auxiliary classifier on a 14x14 map: pool to 4x4, 1x1 conv 128, FC 1024, FC classes."""

    def __init__(self, in_chs: int, num_classes: int, drop_rate: float) -> None:
        super().__init__()
        self.conv = conv_bn(in_chs, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = classifier(1024, num_classes)
        self.dropout = nn.Dropout(drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, 4)).flatten(1)  # B, 128*4*4
        return self.fc2(self.dropout(F.relu(self.fc1(x), inplace=True)))


# (name, in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj): Table 1 of the paper
_GOOGLENET_BLOCKS = [
    ("inception3a", 192, 64, 96, 128, 16, 32, 32),
    ("inception3b", 256, 128, 128, 192, 32, 96, 64),
    ("maxpool3", 3, 2),
    ("inception4a", 480, 192, 96, 208, 16, 48, 64),
    ("inception4b", 512, 160, 112, 224, 24, 64, 64),
    ("inception4c", 512, 128, 128, 256, 24, 64, 64),
    ("inception4d", 512, 112, 144, 288, 32, 64, 64),
    ("inception4e", 528, 256, 160, 320, 32, 128, 128),
    ("maxpool4", 2, 2),
    ("inception5a", 832, 256, 160, 320, 32, 128, 128),
    ("inception5b", 832, 384, 192, 384, 48, 128, 128),
]

# torchvision's transform_input: ImageNet-normalised input -> (x - 0.5) / 0.5
_TRANSFORM_SCALE = tuple(s / 0.5 for s in IMAGENET_STD)
_TRANSFORM_SHIFT = tuple((m - 0.5) / 0.5 for m in IMAGENET_MEAN)


@dataclass(frozen=True)
class GoogLeNetConfig:
    """GoogLeNet options.

    Attributes:
        aux_logits: build the two auxiliary classifiers (after inception4a and 4d); in
            training mode ``forward`` then returns ``(logits, aux2, aux1)``.
        transform_input: take ImageNet-normalised input and map it to the (x - 0.5) / 0.5
            normalisation the weights were trained with (torchvision's option). Off by
            default: the default preprocessing is then the Inception one.
        b3_kernel: kernel of the '5x5' branch: 3 as torchvision's port, 5 as the paper.
        drop_rate, aux_drop_rate: dropout before the classifiers (0.4 / 0.7 in the paper,
            torchvision uses 0.2 / 0.7).
    """

    aux_logits: bool = False
    transform_input: bool = False
    b3_kernel: int = 3
    drop_rate: float = 0.2
    aux_drop_rate: float = 0.7


class GoogLeNet(SequentialNet):
    """GoogLeNet (Inception v1), torchvision's BatchNorm port.

    Differences from the paper (all as torchvision's weights): BatchNorm after every
    convolution (the paper predates it), no local response normalisation, 3x3 kernels in
    the '5x5' branches (see :class:`InceptionV1Block`), and the auxiliary heads pool
    adaptively to 4x4 (the paper: 5x5 average pooling, stride 3, on the 14x14 map).

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); ``forward_features``: (B, 1024, h, w),
        h about H / 32 (7 at 224). In training mode with ``aux_logits``:
        ``(logits, aux2, aux1)``.
    """

    family = "googlenet"
    grad_checkpoint_units = (r"inception\d[a-e]",)
    min_input_size = 15

    def __init__(self, cfg: GoogLeNetConfig, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (224, 224), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if cfg.transform_input and in_chans != 3:
            raise ValueError(f"transform_input maps ImageNet RGB normalisation; it needs in_chans=3, got {in_chans}")
        if not cfg.aux_logits and cfg.aux_drop_rate != GoogLeNetConfig.aux_drop_rate:
            raise ValueError(f"aux_drop_rate is the auxiliary classifiers' dropout: it needs aux_logits=True, got aux_drop_rate={cfg.aux_drop_rate}")
        self.cfg = cfg
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, 1024
        self.conv1 = conv_bn(in_chans, 64, 7, stride=2, padding=3)
        self.maxpool1 = MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = conv_bn(64, 64, 1)
        self.conv3 = conv_bn(64, 192, 3, padding=1)
        self.maxpool2 = MaxPool2d(3, stride=2, ceil_mode=True)
        self.layer_names = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2"]
        for name, *args in _GOOGLENET_BLOCKS:
            if name.startswith("maxpool"):
                setattr(self, name, MaxPool2d(args[0], stride=args[1], ceil_mode=True))
            else:
                setattr(self, name, InceptionV1Block(*args, b3_kernel=cfg.b3_kernel))
            self.layer_names.append(name)
        self.aux1 = GoogLeNetAux(512, num_classes, cfg.aux_drop_rate) if cfg.aux_logits else None
        self.aux2 = GoogLeNetAux(528, num_classes, cfg.aux_drop_rate) if cfg.aux_logits else None
        self._aux_after = {"inception4a": "aux1", "inception4d": "aux2"}
        self.aux_loss_weights = (0.3, 0.3)  # the paper: "their loss gets added ... with a discount weight (0.3)"
        self.dropout = nn.Dropout(cfg.drop_rate)
        self.fc = classifier(1024, num_classes)
        self.feature_info = [
            FeatureInfo(64, 2, "conv1"),
            FeatureInfo(192, 4, "conv3"),
            FeatureInfo(480, 8, "inception3b"),
            FeatureInfo(832, 16, "inception4e"),
            FeatureInfo(1024, 32, "inception5b"),
        ]
        self._taps = [self.layer_names.index(f.module) for f in self.feature_info]

    def _preprocess(self, x: Tensor) -> Tensor:
        if not self.cfg.transform_input:
            return x
        scale = x.new_tensor(_TRANSFORM_SCALE).view(1, 3, 1, 1)
        shift = x.new_tensor(_TRANSFORM_SHIFT).view(1, 3, 1, 1)
        return x * scale + shift

    def pooled_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.pool(x))
        return x if pre_logits else self.fc(x)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Grouped as timm groups Inception-v3 (timm has no GoogLeNet): the convolutions
        before the first max-pool (conv1) are group 0, those before the second (conv2,
        conv3) group 1, then one group per Inception module (per grid, inception3/4/5, with
        ``coarse=True``); each auxiliary head follows the module it reads (inception4a,
        4d), as timm places Inception-v3's; ``fc`` last."""
        if coarse:
            blocks = [(r"^inception(\d)", None), (r"^aux[12]\.", (4,))]
        else:  # inception3a -> (3, 0), ...; the letter is not a number: one expression each
            blocks = [(rf"^inception(\d){c}\.", (i,)) for i, c in enumerate("abcde")]
            blocks += [(r"^aux1\.", (4, 0, 1)), (r"^aux2\.", (4, 3, 1))]
        return dict(stem=r"^conv1\.", stem_convs=r"^conv[23]\.", blocks=blocks)

    def reset_head(self, num_classes: int) -> None:
        self.fc = classifier(self.pooled_features, num_classes)
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.fc2 = classifier(1024, num_classes)


# --------------------------------------------------------------------------- Inception-v2 / v3


class InceptionA(nn.Module):
    """35x35 module (Mixed_5b-d): 1x1 | 1x1 -> kxk | 1x1 -> 3x3 -> 3x3 | avg-pool -> 1x1.

    Inception-v3 as released has k=5 in the second branch (Figure 4's 5x5 kept beside the
    factorised double 3x3); the paper's Figure 5, used by Inception-v2, has k=3.
    """

    def __init__(self, in_chs: int, pool_chs: int, mid_kernel: int = 5) -> None:
        super().__init__()
        self.branch1x1 = conv_bn(in_chs, 64, 1)
        self.branch5x5_1 = conv_bn(in_chs, 48, 1)
        self.branch5x5_2 = conv_bn(48, 64, mid_kernel, padding=mid_kernel // 2)
        self.branch3x3dbl_1 = conv_bn(in_chs, 64, 1)
        self.branch3x3dbl_2 = conv_bn(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv_bn(96, 96, 3, padding=1)
        self.branch_pool = conv_bn(in_chs, pool_chs, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b2 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        # padding counted in the average (PyTorch's default), as torchvision's and timm's ports;
        # TensorFlow's 'SAME' average pooling, which trained the weights, leaves it out
        b4 = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b2, b3, b4], 1)


class InceptionB(nn.Module):
    """Grid reduction (Figure 10): [1x1 ->] 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | 3x3/2 max-pool.

    Args:
        out_3x3: channels of the single stride-2 3x3 branch.
        reduce_3x3: a 1x1 reduction before it (Figure 10 draws one), or ``None`` (Mixed_6a).
        dbl: channels of the 1x1, the 3x3 and the stride-2 3x3 of the double branch.
    """

    def __init__(self, in_chs: int, out_3x3: int, dbl: tuple[int, int, int], reduce_3x3: int | None = None) -> None:
        super().__init__()
        if reduce_3x3 is None:
            self.branch3x3 = conv_bn(in_chs, out_3x3, 3, stride=2)
        else:
            self.branch3x3 = nn.Sequential(conv_bn(in_chs, reduce_3x3, 1), conv_bn(reduce_3x3, out_3x3, 3, stride=2))
        self.branch3x3dbl_1 = conv_bn(in_chs, dbl[0], 1)
        self.branch3x3dbl_2 = conv_bn(dbl[0], dbl[1], 3, padding=1)
        self.branch3x3dbl_3 = conv_bn(dbl[1], dbl[2], 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch3x3(x)
        b2 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b1, b2, max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 module (Figure 6, n=7): 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> (7x1 -> 1x7) x 2 | pool -> 1x1."""

    def __init__(self, in_chs: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = conv_bn(in_chs, 192, 1)
        self.branch7x7_1 = conv_bn(in_chs, c7, 1)
        self.branch7x7_2 = conv_bn(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = conv_bn(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = conv_bn(in_chs, c7, 1)
        self.branch7x7dbl_2 = conv_bn(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = conv_bn(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = conv_bn(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = conv_bn(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = conv_bn(in_chs, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b2 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b3 = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b3 = conv(b3)
        b4 = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b2, b3, b4], 1)


class InceptionD(nn.Module):
    """Inception-v3's 17x17 -> 8x8 reduction (Mixed_7a): 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max-pool."""

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.branch3x3_1 = conv_bn(in_chs, 192, 1)
        self.branch3x3_2 = conv_bn(192, 320, 3, stride=2)
        self.branch7x7x3_1 = conv_bn(in_chs, 192, 1)
        self.branch7x7x3_2 = conv_bn(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = conv_bn(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = conv_bn(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch3x3_2(self.branch3x3_1(x))
        b2 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b2 = conv(b2)
        return torch.cat([b1, b2, max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 module with expanded filter banks (Figure 7): 3x3s split into parallel 1x3 and 3x1."""

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.branch1x1 = conv_bn(in_chs, 320, 1)
        self.branch3x3_1 = conv_bn(in_chs, 384, 1)
        self.branch3x3_2a = conv_bn(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = conv_bn(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = conv_bn(in_chs, 448, 1)
        self.branch3x3dbl_2 = conv_bn(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = conv_bn(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = conv_bn(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = conv_bn(in_chs, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b2 = self.branch3x3_1(x)
        b2 = torch.cat([self.branch3x3_2a(b2), self.branch3x3_2b(b2)], 1)
        b3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3 = torch.cat([self.branch3x3dbl_3a(b3), self.branch3x3dbl_3b(b3)], 1)
        b4 = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b2, b3, b4], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the last 17x17 map (Figure 8): 5x5/3 avg-pool, 1x1 conv 128,
    5x5 conv 768, linear. BatchNorm on the convolutions, none on the linear layer."""

    def __init__(self, in_chs: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = conv_bn(in_chs, 128, 1)
        self.conv1 = conv_bn(128, 768, 5)
        self.fc = classifier(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, 5, stride=3)))  # B, 768, 1, 1 at 17x17
        return self.fc(x.mean((2, 3)))


@dataclass(frozen=True)
class InceptionV3Config:
    """Inception-v2 / -v3 options.

    Attributes:
        version: "v3" (the released network: timm / torchvision layout) or "v2" (the
            network of Table 1 / Sec. 6 of the paper, see :class:`InceptionV3`).
        aux_logits: build the auxiliary classifier; in training mode ``forward`` then
            returns ``(logits, aux)``. It needs a 17x17 grid at its input: images of at
            least 299x299 while training (v2 and v3).
        drop_rate: dropout before the classifier (torchvision trains v3 with 0.5).
    """

    version: str = "v3"
    aux_logits: bool = False
    drop_rate: float = 0.5


class InceptionV3(SequentialNet):
    """Inception-v3 (and Inception-v2) of "Rethinking the Inception Architecture".

    Inception-v3 follows the released weights (TensorFlow-slim, ported by torchvision and
    timm): stem of five convolutions (3x3/2 32, 3x3 32, 3x3 pad 64, max-pool, 1x1 80,
    3x3 192, max-pool), 3 x 35x35 modules (Mixed_5b-d), a grid reduction (6a), 4 x 17x17
    modules (6b-e), a reduction (7a), 2 x 8x8 modules (7b, 7c). The paper's "BN-auxiliary"
    (BatchNorm on the auxiliary linear layer) is not in those weights and not here.

    Inception-v2 (``version="v2"``) is the network of the paper's Table 1 and Sec. 6, read
    literally. Where the paper gives no widths, v3's are used. What differs from v3:

    * stem as Table 1: after the first max-pool, 3x3 80, 3x3/2 192, 3x3 pad 288 (v3: 1x1 80,
      3x3 192, max-pool), so the 35x35 modules take 288 channels (v3: 192);
    * 35x35 modules as Figure 5, every 5x5 replaced: 1x1 48 -> 3x3 64 (v3 keeps a 5x5);
    * five 17x17 modules (Sec. 6; v3 has four), with 7x1/1x7 widths 128, 160, 160, 160, 192;
    * the 17x17 -> 8x8 reduction as Figure 10 (1x1 192 -> 3x3/2 320 | 1x1 192 -> 3x3 192 ->
      3x3/2 192 | max-pool; v3 factorises its middle branch into 1x7, 7x1, 3x3/2).

    The paper's Table 3 calls "Factorized 7x7" a v3 addition, yet Sec. 6 says Inception-v2
    already factorises the 7x7 stem convolution into three 3x3; we follow Table 1 / Sec. 6.
    The rest of v3's list (RMSProp, label smoothing, BN-auxiliary) is training, not layout.

    Size: Inception-v2 measures 25,769,544 parameters and 6.30 GMACs at 299 (v3:
    23,834,568 and 5.71). The paper gives no parameter count for Inception-v2 (for v3: "less
    than 25 million") and puts its cost at 3.8 G ops against v3's 4.8 (Table 3); its own
    figure for v3 is below the released network's 5.71 GMACs too, so the paper's costs do
    not pin the layout down.

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); ``forward_features``: (B, 2048, h, w),
        h = 8 at H = 299. In training mode with ``aux_logits``: ``(logits, aux)``.
    """

    family = "inception_v3"
    grad_checkpoint_units = (r"Mixed_\w+",)

    def __init__(self, cfg: InceptionV3Config, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (299, 299), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if cfg.version not in ("v2", "v3"):
            raise ValueError(f"version must be 'v2' or 'v3', got {cfg.version!r}")
        self.cfg = cfg
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, 2048
        v2 = cfg.version == "v2"
        layers: dict[str, nn.Module] = {
            "Conv2d_1a_3x3": conv_bn(in_chans, 32, 3, stride=2),
            "Conv2d_2a_3x3": conv_bn(32, 32, 3),
            "Conv2d_2b_3x3": conv_bn(32, 64, 3, padding=1),
            "Pool1": MaxPool2d(3, stride=2),
        }
        if v2:  # Table 1
            layers |= {
                "Conv2d_3a_3x3": conv_bn(64, 80, 3),
                "Conv2d_3b_3x3": conv_bn(80, 192, 3, stride=2),
                "Conv2d_4a_3x3": conv_bn(192, 288, 3, padding=1),
                "Mixed_5b": InceptionA(288, 64, mid_kernel=3),
                "Mixed_5c": InceptionA(288, 64, mid_kernel=3),
                "Mixed_5d": InceptionA(288, 64, mid_kernel=3),
            }
        else:
            layers |= {
                "Conv2d_3b_1x1": conv_bn(64, 80, 1),
                "Conv2d_4a_3x3": conv_bn(80, 192, 3),
                "Pool2": MaxPool2d(3, stride=2),
                "Mixed_5b": InceptionA(192, 32),
                "Mixed_5c": InceptionA(256, 64),
                "Mixed_5d": InceptionA(288, 64),
            }
        layers["Mixed_6a"] = InceptionB(288, 384, (64, 96, 96))
        widths_17 = (128, 160, 160, 160, 192) if v2 else (128, 160, 160, 192)
        for i, c7 in enumerate(widths_17):
            layers[f"Mixed_6{'bcdef'[i]}"] = InceptionC(768, c7)
        layers["Mixed_7a"] = InceptionB(768, 320, (192, 192, 192), reduce_3x3=192) if v2 else InceptionD(768)
        layers["Mixed_7b"] = InceptionE(1280)
        layers["Mixed_7c"] = InceptionE(2048)
        for name, layer in layers.items():
            setattr(self, name, layer)
        self.layer_names = list(layers)
        last_17 = f"Mixed_6{'bcdef'[len(widths_17) - 1]}"
        self.AuxLogits = InceptionAux(768, num_classes) if cfg.aux_logits else None
        self._aux_after = {last_17: "AuxLogits"}
        self.aux_loss_weights = (0.4,)  # torchvision's reference recipe (the paper gives none)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.fc = classifier(2048, num_classes)
        self.feature_info = [
            FeatureInfo(64, 2, "Conv2d_2b_3x3"),
            FeatureInfo(80, 4, "Conv2d_3a_3x3") if v2 else FeatureInfo(192, 4, "Conv2d_4a_3x3"),
            FeatureInfo(288, 8, "Mixed_5d"),
            FeatureInfo(768, 16, last_17),
            FeatureInfo(2048, 32, "Mixed_7c"),
        ]
        self._taps = [self.layer_names.index(f.module) for f in self.feature_info]
        # smallest input that leaves a 1x1 map after Mixed_7a; the auxiliary head (training
        # only) needs a 17x17 map at its input
        self._min_size = 75
        self._min_size_aux = 299

    @property
    def min_input_size(self) -> int:  # type: ignore[override]
        return self._min_size_aux if self.training and self.AuxLogits is not None else self._min_size

    def size_problem(self, H: int, W: int) -> str | None:
        problem = super().size_problem(H, W)
        if problem and min(H, W) >= self._min_size and self.min_input_size > self._min_size:
            # only the auxiliary head keeps this size out: say so, and what it takes without it
            problem += (f" (in training, for its auxiliary classifier, aux_logits=True; "
                        f"without it, or in eval mode, from {self._min_size}x{self._min_size})")
        return problem

    def pooled_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.fc(x)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's grouping, the same fine and coarse: the convolutions before the first
        max-pool (Conv2d_1a-2b) are group 0, those before the 35x35 modules (Conv2d_3*,
        Conv2d_4a) group 1, then one group per ``Mixed_*`` module; ``AuxLogits``, where
        built, is a group between the last 17x17 module and Mixed_7a, as in timm; ``fc`` last."""
        # Mixed_6b -> (6, 1): the grid's digit is captured, the letter is the suffix
        blocks = [(rf"^Mixed_(\d){c}\.", (i,)) for i, c in enumerate("abcdef")]
        blocks.append((r"^AuxLogits\.", (6, len("abcdef"))))
        return dict(stem=r"^Conv2d_[12]", stem_convs=r"^Conv2d_[34]", blocks=blocks)

    def reset_head(self, num_classes: int) -> None:
        self.fc = classifier(self.pooled_features, num_classes)
        if self.AuxLogits is not None:
            self.AuxLogits.fc = classifier(768, num_classes)


# --------------------------------------------------------------------------- checkpoints


# Our layouts equal timm's and torchvision's. Checkpoints with auxiliary heads (torchvision
# builds them by default) load into models without: ``adapt_state_dict`` drops them.
register_converter("googlenet", "torchvision")(identity)
register_converter("inception_v3", "timm")(identity)
register_converter("inception_v3", "torchvision")(identity)


# --------------------------------------------------------------------------- variants

register_family(
    "googlenet",
    GoogLeNet,
    {"googlenet": GoogLeNetConfig()},
    default_cfgs=lambda name, cfg: default_cfg(
        224, mean=INCEPTION_MEAN, std=INCEPTION_STD, interpolation="bilinear", crop_pct=0.875,
        first_conv="conv1.conv", classifier=("fc", "aux1.fc2", "aux2.fc2"),
    ),
    published={
        "googlenet": dict(
            params=6.6, gmacs=1.5, top1=69.8,
            note="figures of torchvision's BatchNorm port; the paper: about 6.8 M params (Table 1), "
            "1.5 G multiply-adds, top-5 error 10.07 % (1 model, 1 crop), no top-1",
        ),
    },
    paper="Szegedy et al., Going Deeper with Convolutions, CVPR 2015",
)

register_family(
    "inception_v3",
    InceptionV3,
    {"inception_v3": InceptionV3Config(), "inception_v2": InceptionV3Config(version="v2")},
    default_cfgs=lambda name, cfg: default_cfg(
        299, mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=0.875,
        first_conv="Conv2d_1a_3x3.conv", classifier=("fc", "AuxLogits.fc"),
    ),
    published={
        "inception_v3": dict(params=23.8, gmacs=5.7, top1=78.8, note="paper: 21.2 % top-1 error, single crop, < 25 M params; torchvision weights 77.3 %"),
        "inception_v2": dict(
            top1=76.6,
            note="Table 1 / Sec. 6 read literally, v3's widths: measured 25.77 M params, 6.30 GMACs at 299; "
            "the paper gives no parameter count for Inception-v2 (v3: 'less than 25 million') and 3.8 G ops "
            "(Table 3; v3: 4.8, but 5.71 GMACs as released), 23.4 % top-1 error",
        ),
    },
    paper="Szegedy et al., Rethinking the Inception Architecture for Computer Vision, CVPR 2016",
)
