"""ConvMixer: patches, then depthwise (spatial) and pointwise (channel) mixing.

Paper: Trockman & Kolter, "Patches Are All You Need?", TMLR 2023.

A p x p stride-p convolution embeds patches into h channels (activation, BatchNorm); d
blocks follow, each a residual depthwise k x k convolution (act, BN) mixing space, then a
1x1 convolution (act, BN) mixing channels; global pooling and a linear classifier end it.
The resolution stays at H/p throughout. Keys follow timm's layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from functools import partial

import torch
from torch import Tensor, nn

from ..base import FeatureInfo, VisionModel, tap_outputs
from ..checkpoints import identity, register_converter
from ..layers import POOL_TYPES, Conv2d, apply_conv_bn, bn_affine, bn_tensors, classifier, linear_act, uses_running_stats
from ..layers.activations import GELU
from ..layers.helpers import DerivedCache, channels_last_map, no_hooks, plain_cpu_eager
from ..registry import default_cfg, register_family

__all__ = ["ConvMixer", "ConvMixerConfig"]

# every activation follows a convolution and feeds only the next BatchNorm, so all of them
# overwrite their input (GELU only outside autograd, which needs GELU's input for backward)
ACTIVATIONS = {"gelu": GELU, "relu": partial(nn.ReLU, inplace=True), "silu": partial(nn.SiLU, inplace=True)}


class Residual(nn.Module):
    """x + fn(x) (key ``fn`` as timm's).

    ``fn`` ends in a BatchNorm, whose output is a fresh tensor that its backward does not
    read: the sum is written into it, sparing one map-sized allocation per block.
    """

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        y = self.fn(x)
        y += x
        return y


def _mixer_block(dim: int, kernel_size: int, act: Callable[[], nn.Module]) -> nn.Sequential:
    """Depthwise k x k (residual) then pointwise 1x1, each followed by act and BN."""
    return nn.Sequential(
        Residual(nn.Sequential(Conv2d(dim, dim, kernel_size, groups=dim, padding=kernel_size // 2), act(), nn.BatchNorm2d(dim))),
        nn.Conv2d(dim, dim, 1),
        act(),
        nn.BatchNorm2d(dim),
    )


# --------------------------------------------------------------------------- CPU inference
_FUSED_ACTS = (nn.ReLU, nn.SiLU, GELU)  # activations both oneDNN kernels take as a post-op
_AFFINES = DerivedCache()  # mixer block -> (s1, s2, t2, pointwise bias with BN1's shift folded in)


def _inference_block(block: nn.Module) -> bool:
    """Whether ``block`` is an unmodified, unhooked mixer block with eval-mode BatchNorms."""
    if type(block) is not nn.Sequential or len(block) != 4 or type(block[0]) is not Residual or type(block[0].fn) is not nn.Sequential or len(block[0].fn) != 3:
        return False
    (dw, act1, bn1), (pw, act2, bn2) = block[0].fn, block[1:]
    return (
        type(dw) in (Conv2d, nn.Conv2d) and type(pw) is nn.Conv2d and pw.kernel_size == (1, 1) and pw.stride == (1, 1)
        and pw.padding == (0, 0) and pw.groups == 1 and pw.in_channels == pw.out_channels == dw.out_channels
        and all(type(a) in _FUSED_ACTS for a in (act1, act2))
        and all(type(bn) is nn.BatchNorm2d and uses_running_stats(bn) for bn in (bn1, bn2))
        and no_hooks(*block.modules()) and "parametrizations" not in pw._modules
    )


def _block_affines(block: nn.Sequential) -> tuple[Tensor, ...]:
    """(s1, s2, t2, b): the BatchNorms as scale and shift (``bn(z) = s * z + t``), and the
    pointwise bias with BN1's shift folded in (``pw(y + t1) = W y + (b + W t1)``: the 1x1
    convolution has no padding, so the fold is exact); cached while the weights are unchanged."""
    bn1, pw, bn2 = block[0].fn[2], block[1], block[3]

    def compute() -> tuple[Tensor, ...]:
        (s1, t1), (s2, t2) = bn_affine(bn1), bn_affine(bn2)
        w = pw.weight.flatten(1)  # out, in
        bias = w @ t1 if pw.bias is None else torch.addmv(pw.bias, w, t1)
        return s1, s2, t2, bias

    sources = (pw._parameters["weight"], pw._parameters.get("bias"), *bn_tensors(bn1), *bn_tensors(bn2))
    return _AFFINES.get(block, sources, compute, (bn1.eps, bn2.eps)) or compute()  # (computed per call if untrackable)


def _mixer_inference(block: nn.Sequential, x: Tensor) -> Tensor:
    """``block(x)`` for a channels-last map in CPU inference, in four passes instead of seven.

    The depthwise convolution runs with its activation as a oneDNN post-op on a packed weight
    (:func:`~visionzoo.layers.apply_conv_bn`); BN1's scale and the residual sum are one
    ``addcmul`` into that fresh output, and BN1's shift is folded into the pointwise bias; the
    pointwise convolution is one oneDNN inner product over the pixels with its activation fused,
    on a cached blocked weight (:func:`~visionzoo.layers.linear_act`); BN2 is one ``addcmul`` in
    place. The plain block runs seven: convolution, activation, BatchNorm, sum, convolution,
    activation, BatchNorm."""
    (dw, act1, _), (pw, act2) = block[0].fn, block[1:3]
    s1, s2, t2, bias = _block_affines(block)
    B, C, H, W = x.shape
    y = apply_conv_bn(dw, None, x, act1)  # B, C, H, W (channels-last memory)
    tokens = y.permute(0, 2, 3, 1).reshape(B * H * W, C)  # B*H*W, C (a view of a channels-last map)
    torch.addcmul(x.permute(0, 2, 3, 1).reshape(B * H * W, C), tokens, s1, out=tokens)  # x + s1 * act(dw(x))
    z = linear_act(tokens, pw.weight.flatten(1), bias, act2)  # B*H*W, C
    torch.addcmul(t2, z, s2, out=z)
    return z.view(B, H, W, C).permute(0, 3, 1, 2)  # B, C, H, W (channels-last memory)


def _run_blocks(blocks: nn.Sequential, x: Tensor) -> Tensor:
    """``blocks(x)``; in CPU inference on a channels-last float32 map, block by block through
    :func:`_mixer_inference` (where every block qualifies)."""
    if (
        torch.is_grad_enabled() or not plain_cpu_eager(x) or x.dtype != torch.float32 or not channels_last_map(x)
        or not no_hooks(blocks) or not all(_inference_block(b) for b in blocks)
    ):
        return blocks(x)
    for block in blocks:
        x = _mixer_inference(block, x)
    return x


@dataclass(frozen=True)
class ConvMixerConfig:
    """ConvMixer-h/d with kernel k and patch p; activation 'gelu' (paper default) or 'relu'."""

    dim: int = 768
    depth: int = 32
    kernel_size: int = 7
    patch_size: int = 7
    act: str = "gelu"
    drop_rate: float = 0.0


class ConvMixer(VisionModel):
    """ConvMixer classifier.

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); ``forward_features``: (B, h, H/p, W/p).
    """

    family = "convmixer"
    cpu_channels_last = True  # CPU inference on a channels-last copy: the blocks run as _mixer_inference
    block_features = True
    pool_types = POOL_TYPES
    grad_checkpoint_units = (r"blocks\.\d+",)

    def __init__(self, cfg: ConvMixerConfig, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (224, 224), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if cfg.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {cfg.act!r}")
        if cfg.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (symmetric 'same' padding), got {cfg.kernel_size}")
        act = ACTIVATIONS[cfg.act]
        self.cfg = cfg
        self.num_classes, self.in_chans = num_classes, in_chans
        self.min_input_size = cfg.patch_size
        self.num_features = cfg.dim
        self.stem = nn.Sequential(nn.Conv2d(in_chans, cfg.dim, cfg.patch_size, stride=cfg.patch_size), act(), nn.BatchNorm2d(cfg.dim))
        self.blocks = nn.Sequential(*[_mixer_block(cfg.dim, cfg.kernel_size, act) for _ in range(cfg.depth)])
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = classifier(cfg.dim, num_classes)
        # every block's output is a feature map (all at stride p), as in timm; features_only
        # returns the last three unless told otherwise, dense heads four evenly spaced ones
        self.feature_info = [FeatureInfo(cfg.dim, cfg.patch_size, f"blocks.{i}") for i in range(cfg.depth)]

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return _run_blocks(self.blocks, self.stem(x))

    def pooled_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def reset_head(self, num_classes: int) -> None:
        self.head = classifier(self.pooled_features, num_classes)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's grouping, the same fine and coarse: ``stem`` (patch embedding and its
        norm), then one group per mixer block; ``head`` last."""
        return dict(stem=r"^stem\.", blocks=r"^blocks\.(\d+)\.")

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        self.check_input(x)
        return tap_outputs(self.stem(x), self.blocks, indices, to_end=with_features)

    def prune_for_features(self, indices: Sequence[int]) -> None:
        self.reset_classifier(0)
        self.blocks = self.blocks[: max(indices) + 1]


register_converter("convmixer", "timm")(identity)

VARIANTS = {
    "convmixer_1536_20": ConvMixerConfig(dim=1536, depth=20, kernel_size=9, patch_size=7),
    "convmixer_768_32": ConvMixerConfig(dim=768, depth=32, kernel_size=7, patch_size=7, act="relu"),
    "convmixer_1024_20_ks9_p14": ConvMixerConfig(dim=1024, depth=20, kernel_size=9, patch_size=14),
    # the paper's CIFAR-10 network (Sec. 4 / App.): 32x32 input, k5, p2
    "convmixer_256_8": ConvMixerConfig(dim=256, depth=8, kernel_size=5, patch_size=2),
}

register_family(
    "convmixer",
    ConvMixer,
    VARIANTS,
    default_cfgs=lambda name, cfg: default_cfg(
        32 if name == "convmixer_256_8" else 224,
        crop_pct=1.0 if name == "convmixer_256_8" else 0.96,
        first_conv="stem.0",
        mean=(0.4914, 0.4822, 0.4465) if name == "convmixer_256_8" else (0.485, 0.456, 0.406),
        std=(0.2470, 0.2435, 0.2616) if name == "convmixer_256_8" else (0.229, 0.224, 0.225),
    ),
    # The paper's GFLOPs leave out the depthwise convolutions: e.g. for 1536/20, 20 blocks x
    # 1536^2 x 32^2 (pointwise) + stem = 48.6 G, while the depthwise 9x9 convs add 20 x 1536 x 81
    # x 32^2 = 2.5 G; visionzoo counts every multiply-add (51.1 G), so the paper's figure is a note.
    published={
        "convmixer_1536_20": dict(params=51.6, top1=81.4, note="paper: 48.7 GFLOPs without depthwise convs; all counted: 51.1 GMACs"),
        "convmixer_768_32": dict(params=21.1, top1=80.2, note="paper: 19.5 GFLOPs without depthwise convs; all counted: 20.7 GMACs"),
        "convmixer_1024_20_ks9_p14": dict(params=24.4, top1=76.9, note="paper: 5.6 GFLOPs without depthwise convs; all counted: 5.9 GMACs"),
        "convmixer_256_8": dict(note="CIFAR-10: ~92.5 % in 25 epochs (REFERENCE.md)"),
    },
    paper="Trockman & Kolter, Patches Are All You Need?, TMLR 2023",
)
