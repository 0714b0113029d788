"""ConvNeXt: a ConvNet modernised toward the design of vision Transformers; ConvNeXt V2.

Papers: Liu et al., "A ConvNet for the 2020s", CVPR 2022. Woo et al., "ConvNeXt V2:
Co-designing and Scaling ConvNets with Masked Autoencoders", CVPR 2023 (``use_grn``: global
response normalisation after the MLP's GELU, and no layer scale).

A 4x4 stride-4 "patchify" stem with LayerNorm, four stages at strides 4/8/16/32 separated by
LayerNorm + 2x2 stride-2 convolutions, and blocks of

    depthwise 7x7 conv -> LayerNorm -> Linear (4x) -> GELU -> Linear -> layer scale -> + x
    (V2:                  ...          -> GELU -> GRN -> Linear ->               + x)

The head pools globally, normalises (LayerNorm) and classifies. State-dict keys follow
timm; torchvision's and the authors' (facebookresearch/ConvNeXt) layouts convert.

``output_stride`` (8 or 16; default 32) keeps the last stage(s) at that stride, for dense
prediction, as timm's: a stage that would pass it downsamples with a 2x2 stride-1 convolution
('SAME'-padded, dilated as its first rate) and dilates its blocks' depthwise convolutions by
2 per removed stride. The first rate is 1 for block rate 2 and 2 beyond, as timm's (not the
previous stage's rate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..base import FeatureInfo, VisionModel, tap_outputs
from ..checkpoints import register_converter, rename_keys
from ..layers import NORM_POOL_TYPES, Conv2d, DropPath, LayerNorm2d, Mlp, check_output_stride, classifier, drop_path_rates, global_pool_2d, linear, linear_add, pad_same, residual_mlp, skippable, to_2tuple, trunc_normal_
from ..layers.helpers import DerivedCache, autograd_off, no_hooks, plain_cpu_eager
from ..registry import default_cfg, register_family

__all__ = ["ConvNeXt", "ConvNeXtConfig"]

_SCALED_FC2 = DerivedCache()  # block -> fc2's (weight, bias) times the layer scale


class GlobalResponseNorm(nn.Module):
    """GRN (ConvNeXt V2): each channel's L2 norm over the map, divided by the mean of those norms
    over the channels, rescales the channel: ``x + bias + weight * x * n``. Weight and bias start
    at zero, so the layer starts as the identity. Keys ``weight`` / ``bias`` (timm's; the
    authors' ``gamma`` / ``beta`` convert).

    Shapes:
        (B, H, W, C) -> (B, H, W, C) (channels last).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        g = x.norm(p=2, dim=(1, 2), keepdim=True)  # B, 1, 1, C
        n = g / (g.mean(dim=-1, keepdim=True) + self.eps)  # B, 1, 1, C: relative to the channels' mean
        return torch.addcmul(self.bias, x, 1 + self.weight * n)  # one pass over the map


class GrnMlp(nn.Module):
    """ConvNeXt V2's MLP: Linear -> GELU -> GRN -> Linear (timm's keys and their order).

    Shapes:
        (..., H, W, C) -> (..., H, W, C) (channels last).
    """

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: Tensor) -> Tensor:
        x = self.grn(linear(self.fc1, x, self.act))  # B, H, W, hidden (one fused call in CPU inference)
        return linear(self.fc2, x)


class ConvNeXtBlock(nn.Module):
    """Depthwise k x k -> LN -> Linear 4C -> GELU [-> GRN] -> Linear C [-> gamma], residual.

    Shapes:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(
        self, dim: int, *, kernel_size: int = 7, dilation: int = 1, mlp_ratio: float = 4.0, ls_init_value: float | None = 1e-6, use_grn: bool = False, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        # (Conv2d for its fast CPU weight gradient)
        self.conv_dw = Conv2d(dim, dim, kernel_size, padding=dilation * (kernel_size - 1) // 2, dilation=dilation, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = (GrnMlp if use_grn else Mlp)(dim, int(mlp_ratio * dim))
        # timm's convention: None, no layer scale; any number (0 too: the block starts as the identity) its initial value
        self.gamma = nn.Parameter(torch.full((dim,), float(ls_init_value))) if ls_init_value is not None else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        if self._inference_path(x):
            return self._forward_inference(x)
        _SCALED_FC2.discard(self)  # training, autograd, another device: no folded copy kept
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)  # B, H, W, C
        x = self.mlp(self.norm(x))
        if self.gamma is not None:
            x = x * self.gamma
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))  # B, C, H, W

    def _inference_path(self, x: Tensor) -> bool:
        """CPU inference with plain modules and nothing hooked: the folded path applies."""
        mlp = self.mlp
        if type(mlp) is GrnMlp:
            plain = (autograd_off() and not mlp.training and type(mlp.fc2) is nn.Linear and skippable(self.drop_path)
                     and no_hooks(mlp, mlp.fc1, mlp.act, mlp.grn, mlp.fc2))
        else:
            plain = isinstance(mlp, Mlp) and mlp.inference_unrolled(self.drop_path)
        return plain and plain_cpu_eager(x) and x.dtype == mlp.fc2.weight.dtype

    def _fc2_folded(self) -> tuple[Tensor, ...]:
        """fc2's (weight, bias) with the layer scale multiplied in (cached; recomputed when
        fc2 or gamma change)."""
        fc2, gamma = self.mlp.fc2, self.gamma
        if gamma is None:
            return fc2.weight, fc2.bias

        def fold() -> tuple[Tensor, Tensor | None]:
            dt = torch.promote_types(fc2.weight.dtype, torch.float32)  # fp32 at least, fp64 in fp64
            g = gamma.to(dt)
            w = (fc2.weight.to(dt) * g[:, None]).to(fc2.weight.dtype)
            return w, None if fc2.bias is None else (fc2.bias.to(dt) * g).to(fc2.weight.dtype)

        return _SCALED_FC2.get(self, (fc2.weight, fc2.bias, gamma), fold) or fold()  # (fold() per call if untrackable)

    def _forward_inference(self, x: Tensor) -> Tensor:
        """The block in CPU inference: the layer scale folded into fc2, and the norm and MLP
        as :func:`~visionzoo.layers.residual_mlp` (GELU in place, fc2 accumulating into the
        residual, many tokens in blocks): no separate passes for gamma and the sum. V2's GRN
        reads the whole map between fc1 and fc2, so there fc2 alone accumulates into the
        residual. (Folding GRN's per-sample scale into per-sample fc2 weights, a batched GEMM,
        measured 6 % slower on ConvNeXt V2-T: 200 against 189 ms at batch 4, 2-core Xeon.)"""
        y = self.conv_dw(x).permute(0, 2, 3, 1)  # B, H, W, C
        mlp = self.mlp
        if type(mlp) is GrnMlp:
            h = mlp.grn(linear(mlp.fc1, self.norm(y), mlp.act))  # B, H, W, hidden
            return linear_add(x.permute(0, 2, 3, 1), h, *self._fc2_folded()).permute(0, 3, 1, 2)  # fc2 into the residual
        out = residual_mlp(x.permute(0, 2, 3, 1), y, mlp.fc1, mlp.act, *self._fc2_folded(), self.norm)
        return out.permute(0, 3, 1, 2)  # B, C, H, W (channels-last memory)


class SamePadConv2d(Conv2d):
    """``Conv2d`` padded as TensorFlow's 'SAME' (the odd pixel right / bottom): the dilated
    stages' 2x2 stride-1 downsampling, which keeps the map's size."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(pad_same(x, to_2tuple(self.kernel_size), to_2tuple(self.stride), to_2tuple(self.dilation)))


class ConvNeXtStage(nn.Module):
    """Optional LN + 2x2 downsampling (stride 2, or stride 1 dilated), then ``depth`` blocks.

    Args:
        downsample: LN + 2x2 convolution first (every stage but the first).
        stride: of that convolution; 1 in a stage that output_stride dilates.
        dilation: (the downsampling's, the blocks') dilation.
    """

    def __init__(self, in_chs: int, out_chs: int, depth: int, *, downsample: bool, drop_paths: Sequence[float], stride: int = 2,
                 dilation: tuple[int, int] = (1, 1), **block_kwargs) -> None:
        super().__init__()
        if not downsample:
            self.downsample = nn.Identity()
        elif stride == 1:  # dilated: the map keeps its size
            self.downsample = nn.Sequential(LayerNorm2d(in_chs, eps=1e-6), SamePadConv2d(in_chs, out_chs, 2, dilation=dilation[0]))
        else:
            self.downsample = nn.Sequential(LayerNorm2d(in_chs, eps=1e-6), Conv2d(in_chs, out_chs, 2, stride=stride))
        self.blocks = nn.Sequential(*[ConvNeXtBlock(out_chs, dilation=dilation[1], drop_path=drop_paths[i], **block_kwargs) for i in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class NormHead(nn.Module):
    """Global pool (average by default) -> LayerNorm -> dropout -> Linear (timm's key names)."""

    def __init__(self, dim: int, num_classes: int, drop: float = 0.0) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.drop = nn.Dropout(drop)
        self.fc = classifier(dim, num_classes)

    def forward(self, x: Tensor, pre_logits: bool = False, pool_type: str = "avg") -> Tensor:
        x = self.norm(global_pool_2d(x, pool_type)[:, :, None, None]).flatten(1)  # B, C
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


@dataclass(frozen=True)
class ConvNeXtConfig:
    """One ConvNeXt: blocks and widths per stage, kernel size, layer-scale init, output
    stride (8, 16 or 32; module docstring)."""

    depths: tuple[int, int, int, int] = (3, 3, 9, 3)
    dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    kernel_size: int = 7
    ls_init_value: float | None = 1e-6  # None: no layer scale (timm's; 0 is a layer scale starting at 0)
    use_grn: bool = False  # ConvNeXt V2's global response norm in the MLP
    drop_rate: float = 0.0
    output_stride: int = 32


class ConvNeXt(VisionModel):
    """ConvNeXt classifier.

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); ``forward_features``: (B, C4, H/s, W/s),
        s = ``output_stride``.
        Any H, W >= 32: as in timm, torchvision and the official code, the stride-4 stem and
        the three 2x2 stride-2 downsamplings do not pad, so rows and columns past the last
        whole patch are dropped (sides that are multiples of 32 lose none).
    """

    family = "convnext"
    pool_types = NORM_POOL_TYPES
    grad_checkpoint_units = (r"stages\.\d+\.blocks\.\d+",)

    def __init__(self, cfg: ConvNeXtConfig, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (224, 224), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        check_output_stride(cfg.output_stride)
        self.cfg = cfg
        self.num_classes, self.in_chans = num_classes, in_chans
        self.min_input_size = 32
        self.stem = nn.Sequential(nn.Conv2d(in_chans, cfg.dims[0], 4, stride=4), LayerNorm2d(cfg.dims[0], eps=1e-6))
        dpr = drop_path_rates(drop_path_rate, sum(cfg.depths))
        stages, start, prev, reduction, dilation = [], 0, cfg.dims[0], 4, 1
        self.feature_info = []
        for i, (d, c) in enumerate(zip(cfg.depths, cfg.dims)):
            stride = 1 if i == 0 else 2
            if reduction >= cfg.output_stride and stride > 1:  # trade the stride for dilation
                stride, dilation = 1, dilation * stride
            reduction *= stride
            first_dilation = 1 if dilation <= 2 else 2  # timm's rule for the downsampling's rate
            stages.append(ConvNeXtStage(prev, c, d, downsample=i > 0, drop_paths=dpr[start : start + d], stride=stride, dilation=(first_dilation, dilation),
                                        kernel_size=cfg.kernel_size, ls_init_value=cfg.ls_init_value, use_grn=cfg.use_grn))
            self.feature_info.append(FeatureInfo(c, reduction, f"stages.{i}"))
            start, prev = start + d, c
        self.stages = nn.Sequential(*stages)
        self.num_features = cfg.dims[-1]
        self.head = NormHead(self.num_features, num_classes, cfg.drop_rate)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                trunc_normal_(m.weight)
                nn.init.zeros_(m.bias)

    @classmethod
    def timm_options(cls, options: dict) -> dict:
        """timm's ``conv_mlp`` (its MLP as 1x1 convolutions, the same map as linear layers) is
        taken and dropped: either layout's checkpoints load (:func:`_from_timm`)."""
        options = dict(options)
        conv_mlp = options.pop("conv_mlp", False)
        if not isinstance(conv_mlp, bool):
            raise ValueError(f"conv_mlp takes True or False, got {conv_mlp!r}")
        return options

    def group_matcher(self, coarse: bool = False) -> dict:
        """Group 0 is the stem; then one group per block, a stage's downsampling (which opens
        the stage) with its first block (``coarse``: one group per stage); the head (its norm
        included) last."""
        if coarse:
            return dict(stem=r"^stem\.", blocks=r"^stages\.(\d+)\.")
        return dict(
            stem=r"^stem\.",
            blocks=[(r"^stages\.(\d+)\.downsample\.", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)\.", None)],
        )

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.stages(self.stem(x))

    def unpooled_head(self, x: Tensor) -> Tensor:
        """timm's ``global_pool=''``: the head's LayerNorm applied to every position of the map."""
        return self.head.norm(x)

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        self.check_input(x)
        return tap_outputs(self.stem(x), self.stages, indices, to_end=with_features)

    def prune_for_features(self, indices: Sequence[int]) -> None:
        self.stages = self.stages[: max(indices) + 1]
        self.head = nn.Identity()  # type: ignore[assignment]
        self.num_classes = 0


# --------------------------------------------------------------------------- checkpoints
@register_converter("convnext", "timm")
def _from_timm(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """timm's keys are ours. Its small networks (``convnext_atto`` ... ``convnext_nano``) are built
    with ``conv_mlp=True``: the block's MLP as 1x1 convolutions, whose (out, in, 1, 1) kernels
    are our linear layers' weights."""
    return {k: v.flatten(1) if v.ndim == 4 and k.endswith((".mlp.fc1.weight", ".mlp.fc2.weight")) else v for k, v in sd.items()}


@register_converter("convnext", "torchvision")
def _from_torchvision(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """torchvision's ``features.N`` layout (stem = features.0, stages at odd N, downsampling at even N)."""
    if "features.0.0.weight" not in sd:
        raise KeyError("features.0.0.weight")
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "features":
            n = int(parts[1])
            if n == 0:
                k = f"stem.{'.'.join(parts[2:])}"
            elif n % 2 == 1:  # stage (n - 1) / 2: features.N.J.block.I / layer_scale
                s, j, rest = (n - 1) // 2, parts[2], parts[3:]
                if rest[0] == "layer_scale":
                    k, v = f"stages.{s}.blocks.{j}.gamma", v.flatten()
                else:
                    name = {"0": "conv_dw", "2": "norm", "3": "mlp.fc1", "5": "mlp.fc2"}[rest[1]]
                    k = f"stages.{s}.blocks.{j}.{name}.{rest[2]}"
            else:  # downsampling before stage n / 2
                k = f"stages.{n // 2}.downsample.{'.'.join(parts[2:])}"
        elif parts[0] == "classifier":
            k = {"0": "head.norm", "2": "head.fc"}[parts[1]] + "." + parts[2]
        out[k] = v
    return out


@register_converter("convnext", "official")
def _from_official(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """The authors' release (``downsample_layers.N``, ``stages.N.M.dwconv``, ``norm``, ``head``);
    ConvNeXt V2's (its GRN's ``gamma`` / ``beta`` of shape (1, 1, 1, C))."""
    if "downsample_layers.0.0.weight" not in sd:
        raise KeyError("downsample_layers.0.0.weight")
    sd = {k: v.flatten() if k.endswith((".grn.gamma", ".grn.beta")) else v for k, v in sd.items()}
    return rename_keys(sd, [
        (r"\.grn\.gamma$", ".mlp.grn.weight"),
        (r"\.grn\.beta$", ".mlp.grn.bias"),
        (r"^downsample_layers\.0\.", "stem."),
        (r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample."),
        (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
        (r"\.dwconv\.", ".conv_dw."),
        (r"\.pwconv1\.", ".mlp.fc1."),
        (r"\.pwconv2\.", ".mlp.fc2."),
        (r"^norm\.", "head.norm."),
        (r"^head\.(weight|bias)$", r"head.fc.\1"),
    ])


# --------------------------------------------------------------------------- variants
VARIANTS = {
    "convnext_tiny": ConvNeXtConfig(),
    "convnext_small": ConvNeXtConfig(depths=(3, 3, 27, 3)),
    "convnext_base": ConvNeXtConfig(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
    "convnext_large": ConvNeXtConfig(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536)),
    "convnext_xlarge": ConvNeXtConfig(depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048)),
    # timm's small networks (not in the paper); timm builds their MLPs as 1x1 convolutions, the same map
    "convnext_atto": ConvNeXtConfig(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320)),
    "convnext_femto": ConvNeXtConfig(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384)),
    "convnext_pico": ConvNeXtConfig(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512)),
    "convnext_nano": ConvNeXtConfig(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640)),
    # ConvNeXt V2: GRN, no layer scale; the same stages (Atto..Nano: timm's small networks)
    **{
        f"convnextv2_{size}": ConvNeXtConfig(depths=depths, dims=dims, ls_init_value=None, use_grn=True)
        for size, depths, dims in (
            ("atto", (2, 2, 6, 2), (40, 80, 160, 320)), ("femto", (2, 2, 6, 2), (48, 96, 192, 384)),
            ("pico", (2, 2, 6, 2), (64, 128, 256, 512)), ("nano", (2, 2, 8, 2), (80, 160, 320, 640)),
            ("tiny", (3, 3, 9, 3), (96, 192, 384, 768)), ("small", (3, 3, 27, 3), (96, 192, 384, 768)),
            ("base", (3, 3, 27, 3), (128, 256, 512, 1024)), ("large", (3, 3, 27, 3), (192, 384, 768, 1536)),
            ("huge", (3, 3, 27, 3), (352, 704, 1408, 2816)),
        )
    },
}
#: timm's evaluation of the default weights of its small networks (bicubic): crop_pct
_TIMM_CROP = {"convnext_atto": 0.875, "convnext_femto": 0.875, "convnext_pico": 0.875, "convnext_nano": 0.95, "convnextv2_huge": 1.0}

register_family(
    "convnext",
    ConvNeXt,
    VARIANTS,
    default_cfgs=lambda name, cfg: default_cfg(
        384 if name == "convnextv2_huge" else 224, crop_pct=_TIMM_CROP.get(name, 0.875), first_conv="stem.0", classifier="head.fc",
        **({"crop_mode": "squash"} if name == "convnextv2_huge" else {}),  # timm's default weights were evaluated so
    ),
    published={  # paper Table 1 (ImageNet-1k, 224); XL only after ImageNet-22k
        "convnext_tiny": dict(params=28.6, gmacs=4.5, top1=82.1),
        "convnext_small": dict(params=50.0, gmacs=8.7, top1=83.1),
        "convnext_base": dict(params=89.0, gmacs=15.4, top1=83.8),
        "convnext_large": dict(params=198.0, gmacs=34.4, top1=84.3),
        "convnext_xlarge": dict(params=350.0, gmacs=60.9, top1=87.0, note="top-1 after ImageNet-22k"),
        # ConvNeXt V2: the authors' table (FCMAE pre-training, ImageNet-1k fine-tuning, 224; their "FLOPs" are GMACs)
        **{
            f"convnextv2_{size}": dict(params=params, gmacs=gmacs, top1=top1)
            for size, params, gmacs, top1 in (
                ("atto", 3.7, 0.55, 76.7), ("femto", 5.2, 0.78, 78.5), ("pico", 9.1, 1.37, 80.3), ("nano", 15.6, 2.45, 81.9),
                ("tiny", 28.6, 4.47, 83.0), ("base", 89.0, 15.4, 84.9), ("large", 198.0, 34.4, 85.8),
            )
        },
        "convnextv2_huge": dict(params=660.0, gmacs=337.9, top1=88.7, note="the authors' ImageNet-22k model fine-tuned at 384 (timm's default input and weights); ImageNet-1k only, at 224: 86.3, 115 GMACs"),
        "convnextv2_small": dict(params=50.3, note="not in the paper (timm's, untrained); params counted (equal to timm's)"),
    },
    paper="Liu et al., A ConvNet for the 2020s, CVPR 2022; V2: Woo et al., CVPR 2023",
)
