"""UNeXt: a convolutional and tokenised-MLP U-Net for medical image segmentation.

Paper: Valanarasu & Patel, "UNeXt: MLP-based Rapid Medical Image Segmentation Network",
MICCAI 2022.

Encoder: three convolutional stages (3x3 conv -> BN -> 2x2 max-pool -> ReLU), then two
tokenised MLP stages (overlapping 3x3/2 patch embedding -> shifted-MLP block -> LayerNorm).
Decoder: the mirror image, each stage upsampling 2x bilinearly and adding the encoder map
of the same resolution (skip connections by addition, as the paper's code).

A shifted-MLP block shifts channel groups of the token map along the height before its
first linear layer and along the width before its second, with a depthwise 3x3 convolution
between them, so that each token mixes information from its neighbours ("tokenised MLP").

Widths: the paper's text names channels 32/64/128/160/256; its released network, whose
size the paper reports (1.47 M parameters, 0.57 GFLOPs at 256x256), uses 16/32/128/160/256
for the same five levels. ``unext`` follows the released network so that the reported size
holds (measured here: 1,471,921 parameters, 0.562 GMACs at 256x256). ``unext_s`` halves
every width (8/16/32/64/128): 253,561 parameters and 0.099 GMACs measured; the paper's
UNeXt-S row is not reproduced by these widths and is not claimed.

Initialisation as the released code: the linear layers truncated normal (std 0.02), the
convolutions of the tokenised stages (patch embeddings, depthwise) normal with std
sqrt(2 / fan-out) and zero bias, the encoder and decoder convolutions PyTorch's default.
(visionzoo's truncated normal is cut at 2 std, as the original ViT's; the release's timm
call cuts at +-2 absolute, which leaves std 0.02 untruncated.)

Stochastic depth as the released code: rates linspace(0, r, 3)[:2] = 0 and r/2, the first
of each pair of tokenised blocks (encoder ``block1``, decoder ``dblock1``) at 0, the second
(``block2``, ``dblock2``) at r/2.

Checkpoints of the released code (jeya-maria-jose/UNeXt-pytorch's ``UNext`` / ``UNext_S``,
a plain state dict: ``encoder1.weight``, ``ebn1.*``, ``block1.0.*``, ``final.*``) load by
renaming their keys (``unext(checkpoint=path)`` or :func:`visionzoo.load_checkpoint`), with
the checks of every other checkpoint: nothing is executed from the file and a checkpoint
that does not fit is refused whole (:class:`~visionzoo.checkpoints.CheckpointError`). As
for classifiers, the first convolution is adapted to another ``in_chans`` and a ``final``
layer of another ``num_classes`` is left initialised, with a warning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import check_image_batch
from ..checkpoints import load_checkpoint, register_converter, rename_keys
from ..layers import DropPath, check_int, he_normal_fan_out_, pad_to_fit, trunc_normal_

__all__ = ["UNeXt", "UNeXtConfig", "unext", "unext_s"]


def _shift(x: Tensor, H: int, W: int, dim: int, groups: int = 5) -> Tensor:
    """Shift channel group g of a (B, N, C) token map by g - groups//2 pixels along ``dim``.

    ``dim`` is 2 for height and 3 for width of the (B, C, H, W) view. The map is zero-padded
    so that pixels shifted out are dropped rather than wrapped around.
    """
    B, N, C = x.shape
    pad = groups // 2
    xm = x.transpose(1, 2).reshape(B, C, H, W)  # B, C, H, W
    xm = F.pad(xm, (pad, pad, pad, pad))
    chunks = torch.chunk(xm, groups, dim=1)
    xm = torch.cat([torch.roll(c, s, dims=dim) for c, s in zip(chunks, range(-pad, pad + 1))], dim=1)
    xm = xm[:, :, pad : pad + H, pad : pad + W]  # B, C, H, W
    return xm.reshape(B, C, N).transpose(1, 2)  # B, N, C


class ShiftedMLP(nn.Module):
    """Shift along H -> Linear -> depthwise 3x3 -> GELU -> shift along W -> Linear.

    Shapes:
        (B, N, C) with N = H * W -> (B, N, C).
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        x = self.fc1(_shift(x, H, W, dim=2))  # B, N, hidden
        B, N, C = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)  # B, N, hidden
        x = self.drop(self.act(x))
        return self.drop(self.fc2(_shift(x, H, W, dim=3)))


class ShiftedBlock(nn.Module):
    """x + DropPath(ShiftedMLP(LN(x))). Shapes: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, mlp_ratio: float = 1.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = ShiftedMLP(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        return x + self.drop_path(self.mlp(self.norm(x), H, W))


class OverlapPatchEmbed(nn.Module):
    """3x3 stride-2 convolution to tokens, then LayerNorm. (B, C, H, W) -> (B, HW/4, D)."""

    def __init__(self, in_chs: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)  # B, D, H/2, W/2
        H, W = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


@dataclass(frozen=True)
class UNeXtConfig:
    """Channels of the five levels: three convolutional, two tokenised-MLP."""

    dims: tuple[int, int, int, int, int] = (16, 32, 128, 160, 256)
    mlp_ratio: float = 1.0


class UNeXt(nn.Module):
    """UNeXt segmentation network.

    Args:
        cfg: widths.
        num_classes: output classes (logits per pixel).
        in_chans: image channels.
        drop_path_rate: stochastic depth of the tokenised blocks: 0 for ``block1`` and
            ``dblock1``, half of it for ``block2`` and ``dblock2`` (the released code's).

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes, H, W); sides that are not multiples of 32 are
        padded at the bottom and right inside, repeating the last row and column, and the
        logits cropped back.
    """

    family = "unext"  # its checkpoint converters

    def __init__(self, cfg: UNeXtConfig = UNeXtConfig(), *, num_classes: int = 1, in_chans: int = 3, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        # for load_checkpoint: the first convolution adapts to in_chans, a classifier of another size is dropped
        self.default_cfg = {"first_conv": "encoder.0", "classifier": "final"}
        for name, value in (("num_classes", num_classes), ("in_chans", in_chans)):
            check_int(f"UNeXt: {name}", value)
        c1, c2, c3, c4, c5 = cfg.dims
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.encoder = nn.ModuleList([nn.Conv2d(in_chans, c1, 3, padding=1), nn.Conv2d(c1, c2, 3, padding=1), nn.Conv2d(c2, c3, 3, padding=1)])
        self.ebn = nn.ModuleList([nn.BatchNorm2d(c) for c in (c1, c2, c3)])
        self.patch_embed3, self.patch_embed4 = OverlapPatchEmbed(c3, c4), OverlapPatchEmbed(c4, c5)
        dpr = [0.0, drop_path_rate / 2]  # the released code's linspace(0, r, 3)[:2]
        self.block1, self.block2 = ShiftedBlock(c4, cfg.mlp_ratio, dpr[0]), ShiftedBlock(c5, cfg.mlp_ratio, dpr[1])
        self.norm3, self.norm4 = nn.LayerNorm(c4), nn.LayerNorm(c5)
        self.decoder = nn.ModuleList(
            [nn.Conv2d(a, b, 3, padding=1) for a, b in ((c5, c4), (c4, c3), (c3, c2), (c2, c1), (c1, c1))]
        )
        self.dbn = nn.ModuleList([nn.BatchNorm2d(c) for c in (c4, c3, c2, c1)])
        self.dblock1, self.dblock2 = ShiftedBlock(c4, cfg.mlp_ratio, dpr[0]), ShiftedBlock(c3, cfg.mlp_ratio, dpr[1])
        self.dnorm3, self.dnorm4 = nn.LayerNorm(c4), nn.LayerNorm(c3)
        self.final = nn.Conv2d(c1, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight)
                nn.init.zeros_(m.bias)
        for part in (self.patch_embed3, self.patch_embed4, self.block1, self.block2, self.dblock1, self.dblock2):
            for m in part.modules():  # as the release: its tokenised stages' convolutions He-normal over the fan-out, biases 0
                if isinstance(m, nn.Conv2d):
                    he_normal_fan_out_(m)

    @staticmethod
    def _to_map(x: Tensor, H: int, W: int) -> Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], H, W)  # B, C, H, W (no -1: an empty batch has no size to infer)

    @staticmethod
    def _up(x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        check_image_batch(x, "UNeXt", self.in_chans, self.final.weight)  # any size but an empty one is padded
        H0, W0 = x.shape[-2:]
        x = pad_to_fit(x, 32, mode="replicate")  # five halvings: other sides are padded (the edge repeated), the logits cropped back
        skips = []
        out = x
        for conv, bn in zip(self.encoder, self.ebn):  # three convolutional stages
            out = F.relu(F.max_pool2d(bn(conv(out)), 2))
            skips.append(out)  # /2, /4, /8
        t, H, W = self.patch_embed3(out)
        out = self._to_map(self.norm3(self.block1(t, H, W)), H, W)  # B, c4, H/16, W/16
        skips.append(out)
        t, H, W = self.patch_embed4(out)
        out = self._to_map(self.norm4(self.block2(t, H, W)), H, W)  # B, c5, H/32, W/32

        out = F.relu(self._up(self.dbn[0](self.decoder[0](out)))) + skips[3]  # B, c4, H/16
        H, W = out.shape[-2:]
        t = self.dnorm3(self.dblock1(out.flatten(2).transpose(1, 2), H, W))
        out = self._to_map(t, H, W)
        out = F.relu(self._up(self.dbn[1](self.decoder[1](out)))) + skips[2]  # B, c3, H/8
        H, W = out.shape[-2:]
        t = self.dnorm4(self.dblock2(out.flatten(2).transpose(1, 2), H, W))
        out = self._to_map(t, H, W)
        out = F.relu(self._up(self.dbn[2](self.decoder[2](out)))) + skips[1]  # B, c2, H/4
        out = F.relu(self._up(self.dbn[3](self.decoder[3](out)))) + skips[0]  # B, c1, H/2
        out = F.relu(self._up(self.decoder[4](out)))  # B, c1, H
        return self.final(out)[..., :H0, :W0]


_OFFICIAL_RULES = (  # the released code's key -> visionzoo's, applied in order
    (r"^(encoder|ebn|decoder|dbn)(\d)\.", lambda m: f"{m.group(1)}.{int(m.group(2)) - 1}."),  # encoder1 -> encoder.0
    (r"^(d?block\d)\.0\.norm2\.", r"\1.norm."),  # its blocks sit in an nn.ModuleList of one
    (r"^(d?block\d)\.0\.mlp\.dwconv\.dwconv\.", r"\1.mlp.dwconv."),
    (r"^(d?block\d)\.0\.mlp\.", r"\1.mlp."),
)


@register_converter("unext", "official")
def _from_official(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """jeya-maria-jose/UNeXt-pytorch's ``UNext`` / ``UNext_S`` (``archs.py``): a renaming."""
    if "encoder1.weight" not in sd:
        raise KeyError("encoder1.weight")
    return rename_keys(sd, _OFFICIAL_RULES)


def _build(cfg: UNeXtConfig, checkpoint: str | os.PathLike | Mapping[str, Tensor] | None, **kwargs) -> UNeXt:
    model = UNeXt(cfg, **kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def unext(num_classes: int = 1, in_chans: int = 3, *, checkpoint: str | os.PathLike | Mapping[str, Tensor] | None = None, **kwargs) -> UNeXt:
    """UNeXt as released (1.47 M parameters).

    ``checkpoint``: a file or state dict, visionzoo's or the released code's layout (module
    docstring), loaded with :func:`visionzoo.load_checkpoint`.
    """
    return _build(UNeXtConfig(), checkpoint, num_classes=num_classes, in_chans=in_chans, **kwargs)


def unext_s(num_classes: int = 1, in_chans: int = 3, *, checkpoint: str | os.PathLike | Mapping[str, Tensor] | None = None, **kwargs) -> UNeXt:
    """UNeXt-S: every width halved (see the module docstring); ``checkpoint`` as :func:`unext`."""
    return _build(UNeXtConfig(dims=(8, 16, 32, 64, 128)), checkpoint, num_classes=num_classes, in_chans=in_chans, **kwargs)
