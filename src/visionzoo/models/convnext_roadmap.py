"""The ConvNeXt paper's roadmap, "modernizing a ResNet" step by step, as models.

Paper: Liu et al., "A ConvNet for the 2020s", CVPR 2022, Sec. 2 and Fig. 2.

One configurable network spans every step from ResNet-50 (trained with the modern recipe)
to ConvNeXt-T, so the ablation can be rerun; each step is a registered model that changes
one thing of the step before::

    convnext_roadmap_r50            ResNet-50: 7x7 stem + max-pool, (3,4,6,3) bottlenecks, BN, ReLU
    convnext_roadmap_stage_ratio    (3,3,9,3) blocks per stage
    convnext_roadmap_patchify       4x4 stride-4 "patchify" stem
    convnext_roadmap_depthwise      ResNeXt-ify: the 3x3 becomes depthwise (groups = width)
    convnext_roadmap_width          wider: bottleneck width 64 -> 96 (as Swin-T)
    convnext_roadmap_inverted       inverted bottleneck: 1x1 (4x) -> dw 3x3 -> 1x1, dims 96..768
    convnext_roadmap_dw_up          the depthwise conv moved to the top of the block
    convnext_roadmap_k5/k7/k9/k11   its kernel 5, 7, 9, 11 (the paper keeps 7)
    convnext_roadmap_gelu           ReLU -> GELU
    convnext_roadmap_fewer_acts     one activation per block, between the two 1x1 layers
    convnext_roadmap_fewer_norms    one norm per block, after the depthwise conv
    convnext_roadmap_ln             BatchNorm -> LayerNorm
    convnext_roadmap_sep_downsample separate LN + 2x2 stride-2 downsampling between stages,
                                    LN after the stem and after pooling: ConvNeXt-T

Until the last step a stage's first block downsamples (stride 2 in its spatial conv, as
ResNet v1.5) with a 1x1 strided projection + norm on the shortcut, and an activation follows
the residual sum (ResNet) until "fewer activations" removes it. Layer scale (init 1e-6) is in
every step: the paper counts it in the modern training recipe of its starting point.

The last step is ConvNeXt-T: the same parameters and multiply-adds as ``convnext_tiny``, and
``convnext_tiny`` weights (timm layout, 1x1 convolutions stored as Linear) load into it and
give its logits. Blocks name their layers by position (conv1/norm1/..., conv3/norm3).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..base import FeatureInfo, VisionModel, tap_outputs
from ..checkpoints import register_converter
from ..layers import Conv2d, DropPath, LayerNorm2d, MaxPool2d, classifier, drop_path_rates, trunc_normal_
from ..registry import default_cfg, register_family

__all__ = ["RoadmapConfig", "RoadmapNet"]

BLOCKS = ("bottleneck", "inverted", "dw_first")


@dataclass(frozen=True)
class RoadmapConfig:
    """Every design choice the roadmap varies.

    Attributes:
        depths, dims: blocks and output channels per stage.
        stem: "resnet" (7x7/2 conv, norm, act, 3x3/2 max-pool) or "patchify" (4x4/4 conv, norm).
        stem_dim: channels out of the stem.
        block: "bottleneck" (1x1 reduce to dims/4 -> kxk -> 1x1), "inverted" (1x1 expand to
            4 dims -> kxk -> 1x1) or "dw_first" (kxk depthwise -> 1x1 expand -> 1x1: ConvNeXt).
        depthwise: the kxk conv is depthwise (groups = its channels).
        bottleneck_width: width of the bottleneck block's kxk conv as a fraction of dims.
        kernel_size: k of the spatial conv.
        act: "relu" or "gelu".
        fewer_acts: only the activation after the expanding 1x1 conv ("dw_first" only).
        fewer_norms: only the norm after the depthwise conv ("dw_first" only).
        norm: "bn" or "ln" (LayerNorm over channels).
        separate_downsample: LN + 2x2/2 conv between stages (and LN after the pooled head).
        ls_init_value: layer-scale init (0 disables).
    """

    depths: tuple[int, ...] = (3, 4, 6, 3)
    dims: tuple[int, ...] = (256, 512, 1024, 2048)
    stem: str = "resnet"
    stem_dim: int = 64
    block: str = "bottleneck"
    depthwise: bool = False
    bottleneck_width: float = 0.25
    kernel_size: int = 3
    act: str = "relu"
    fewer_acts: bool = False
    fewer_norms: bool = False
    norm: str = "bn"
    separate_downsample: bool = False
    ls_init_value: float = 1e-6
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")
        if self.stem not in ("resnet", "patchify"):
            raise ValueError(f"stem must be 'resnet' or 'patchify', got {self.stem!r}")
        if self.norm not in ("bn", "ln") or self.act not in ("relu", "gelu"):
            raise ValueError(f"norm must be 'bn' or 'ln' and act 'relu' or 'gelu', got {self.norm!r}, {self.act!r}")
        if (self.fewer_acts or self.fewer_norms) and self.block != "dw_first":
            raise ValueError("fewer_acts / fewer_norms follow the paper's order: they need block='dw_first'")
        if len(self.depths) != len(self.dims):
            raise ValueError(f"depths {self.depths} and dims {self.dims} need one entry per stage")


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "bn" else LayerNorm2d(channels, eps=1e-6)


def _act(kind: str) -> nn.Module:
    return nn.ReLU(inplace=True) if kind == "relu" else nn.GELU()


class RoadmapBlock(nn.Module):
    """Three convolutions (order set by ``cfg.block``), norms and activations, layer scale, residual.

    Shapes: (B, in_dim, H, W) -> (B, out_dim, H/stride, W/stride).
    """

    def __init__(self, cfg: RoadmapConfig, in_dim: int, out_dim: int, *, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        k = cfg.kernel_size

        def spatial(c_in: int, c_out: int) -> nn.Conv2d:
            groups = c_in if cfg.depthwise or cfg.block != "bottleneck" else 1
            return Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups)

        if cfg.block == "bottleneck":
            mid = int(out_dim * cfg.bottleneck_width)
            convs = [nn.Conv2d(in_dim, mid, 1), spatial(mid, mid), nn.Conv2d(mid, out_dim, 1)]
        elif cfg.block == "inverted":
            mid = 4 * out_dim
            convs = [nn.Conv2d(in_dim, mid, 1), spatial(mid, mid), nn.Conv2d(mid, out_dim, 1)]
        else:  # dw_first
            convs = [spatial(in_dim, in_dim), nn.Conv2d(in_dim, 4 * out_dim, 1), nn.Conv2d(4 * out_dim, out_dim, 1)]
        self.conv1, self.conv2, self.conv3 = convs
        widths = [c.out_channels for c in convs]
        self.norm1 = _norm(cfg.norm, widths[0])
        self.norm2 = nn.Identity() if cfg.fewer_norms else _norm(cfg.norm, widths[1])
        self.norm3 = nn.Identity() if cfg.fewer_norms else _norm(cfg.norm, widths[2])
        self.act1 = nn.Identity() if cfg.fewer_acts else _act(cfg.act)
        self.act2 = _act(cfg.act)
        self.act_out = nn.Identity() if cfg.fewer_acts else _act(cfg.act)
        self.gamma = nn.Parameter(torch.full((out_dim,), cfg.ls_init_value)) if cfg.ls_init_value > 0 else None
        self.drop_path = DropPath(drop_path)
        self.shortcut = nn.Identity()
        if stride != 1 or in_dim != out_dim:
            self.shortcut = nn.Sequential(nn.Conv2d(in_dim, out_dim, 1, stride=stride), _norm(cfg.norm, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.shortcut(x)
        x = self.act1(self.norm1(self.conv1(x)))
        x = self.act2(self.norm2(self.conv2(x)))
        x = self.norm3(self.conv3(x))
        if self.gamma is not None:
            x = x * self.gamma.view(1, -1, 1, 1)
        return self.act_out(shortcut + self.drop_path(x))


class RoadmapStage(nn.Module):
    """Optional separate downsampling (norm + 2x2/2 conv), then blocks."""

    def __init__(self, cfg: RoadmapConfig, in_dim: int, out_dim: int, depth: int, *, stride: int, drop_paths: Sequence[float]) -> None:
        super().__init__()
        self.downsample: nn.Module = nn.Identity()
        if cfg.separate_downsample and stride > 1:
            self.downsample = nn.Sequential(_norm(cfg.norm, in_dim), nn.Conv2d(in_dim, out_dim, 2, stride=2))
            in_dim, stride = out_dim, 1
        self.blocks = nn.Sequential(*[
            RoadmapBlock(cfg, in_dim if i == 0 else out_dim, out_dim, stride=stride if i == 0 else 1, drop_path=drop_paths[i])
            for i in range(depth)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class _Head(nn.Module):
    """Global average pool -> optional LayerNorm -> dropout -> Linear."""

    def __init__(self, dim: int, num_classes: int, *, norm: bool, drop: float) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=1e-6) if norm else nn.Identity()
        self.drop = nn.Dropout(drop)
        self.fc = classifier(dim, num_classes)

    def forward(self, x: Tensor, pre_logits: bool = False, pool_type: str = "avg") -> Tensor:
        x = self.drop(self.norm(x.mean((2, 3), keepdim=True)).flatten(1))  # (pool_type: "avg", the family's only one)
        return x if pre_logits else self.fc(x)


class RoadmapNet(VisionModel):
    """A network of the roadmap (see module docstring).

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); ``forward_features``: (B, dims[-1], H/32, W/32).
        Any H, W >= 32 (strided layers that do not pad drop the rows past their last window).
    """

    family = "convnext_roadmap"
    grad_checkpoint_units = (r"stages\.\d+\.blocks\.\d+",)

    def __init__(self, cfg: RoadmapConfig, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (224, 224), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes, self.in_chans = num_classes, in_chans
        self.min_input_size = 32
        if cfg.stem == "resnet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, cfg.stem_dim, 7, stride=2, padding=3), _norm(cfg.norm, cfg.stem_dim), _act(cfg.act),
                MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_chans, cfg.stem_dim, 4, stride=4), _norm(cfg.norm, cfg.stem_dim))
        dpr = drop_path_rates(drop_path_rate, sum(cfg.depths))
        stages, start, prev = [], 0, cfg.stem_dim
        for i, (d, c) in enumerate(zip(cfg.depths, cfg.dims)):
            stages.append(RoadmapStage(cfg, prev, c, d, stride=1 if i == 0 else 2, drop_paths=dpr[start : start + d]))
            start, prev = start + d, c
        self.stages = nn.Sequential(*stages)
        self.num_features = cfg.dims[-1]
        self.head = _Head(self.num_features, num_classes, norm=cfg.separate_downsample, drop=cfg.drop_rate)
        self.feature_info = [FeatureInfo(c, 4 * 2**i, f"stages.{i}") for i, c in enumerate(cfg.dims)]
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                trunc_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def group_matcher(self, coarse: bool = False) -> dict:
        """As :meth:`ConvNeXt.group_matcher`: group 0 is the stem; then one group per block, a
        stage's separate downsampling (which opens the stage) with its first block (``coarse``:
        one group per stage); the head (its norm included) last."""
        if coarse:
            return dict(stem=r"^stem\.", blocks=r"^stages\.(\d+)\.")
        return dict(
            stem=r"^stem\.",
            blocks=[(r"^stages\.(\d+)\.downsample\.", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)\.", None)],
        )

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.stages(self.stem(x))

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        self.check_input(x)
        return tap_outputs(self.stem(x), self.stages, indices, to_end=with_features)

    def prune_for_features(self, indices: Sequence[int]) -> None:
        self.stages = self.stages[: max(indices) + 1]
        self.head = nn.Identity()  # type: ignore[assignment]
        self.num_classes = 0


@register_converter("convnext_roadmap", "timm")
def _from_convnext(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """timm's ``convnext_*`` weights into the last roadmap step (1x1 Linear -> 1x1 conv)."""
    if not any(".conv_dw." in k for k in sd):
        return dict(sd)  # already the roadmap's own layout
    names = {"conv_dw": "conv1", "norm": "norm1", "mlp.fc1": "conv2", "mlp.fc2": "conv3"}
    pattern = re.compile(r"^(stages\.\d+\.blocks\.\d+)\.(conv_dw|norm|mlp\.fc1|mlp\.fc2)\.(weight|bias)$")
    out = {}
    for k, v in sd.items():
        m = pattern.match(k)
        if m:
            block, layer, kind = m.groups()
            k = f"{block}.{names[layer]}.{kind}"
            if layer.startswith("mlp.") and kind == "weight":
                v = v[:, :, None, None]  # Linear (out, in) -> 1x1 conv (out, in, 1, 1)
        out[k] = v
    return out

# --------------------------------------------------------------------------- the steps
_R50 = RoadmapConfig()
_STEPS: dict[str, RoadmapConfig] = {}
_step = _R50
for _name, _changes in (
    ("r50", {}),
    ("stage_ratio", dict(depths=(3, 3, 9, 3))),
    ("patchify", dict(stem="patchify")),
    ("depthwise", dict(depthwise=True)),
    ("width", dict(dims=(384, 768, 1536, 3072))),
    ("inverted", dict(block="inverted", dims=(96, 192, 384, 768), stem_dim=96)),
    ("dw_up", dict(block="dw_first")),
    ("k5", dict(kernel_size=5)),
    ("k9", dict(kernel_size=9)),
    ("k11", dict(kernel_size=11)),
    ("k7", dict(kernel_size=7)),
    ("gelu", dict(act="gelu")),
    ("fewer_acts", dict(fewer_acts=True)),
    ("fewer_norms", dict(fewer_norms=True)),
    ("ln", dict(norm="ln")),
    ("sep_downsample", dict(separate_downsample=True)),
):
    base = _STEPS["convnext_roadmap_dw_up"] if _name in ("k5", "k9", "k11", "k7") else _step
    _step = RoadmapConfig(**{**base.__dict__, **_changes})
    _STEPS[f"convnext_roadmap_{_name}"] = _step

# Fig. 2 of the paper: GFLOPs and ImageNet-1k top-1 after each step (modern recipe, 300 epochs)
_FIG2 = {
    "r50": (4.1, 78.8), "stage_ratio": (4.5, 79.4), "patchify": (4.4, 79.5), "depthwise": (2.4, 78.3),
    "width": (5.3, 80.5), "inverted": (4.6, 80.6), "dw_up": (4.1, 79.9), "k5": (4.1, 80.4), "k7": (4.2, 80.6),
    "k9": (4.2, 80.6), "k11": (4.3, 80.6), "gelu": (4.2, 80.6), "fewer_acts": (4.2, 81.3),
    "fewer_norms": (4.2, 81.4), "ln": (4.2, 81.5), "sep_downsample": (4.5, 82.0),
}

register_family(
    "convnext_roadmap",
    RoadmapNet,
    _STEPS,
    default_cfgs=lambda name, cfg: default_cfg(224, crop_pct=0.875, first_conv="stem.0", classifier="head.fc"),
    published={f"convnext_roadmap_{k}": dict(gmacs=g, top1=t) for k, (g, t) in _FIG2.items()},
    paper="Liu et al., A ConvNet for the 2020s, CVPR 2022 (Sec. 2, Fig. 2)",
)
