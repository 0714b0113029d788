"""Semantic segmentation on any visionzoo backbone: FPN or ASPP heads.

* FPN (Lin et al., 2017) through ``torchvision.ops.FeaturePyramidNetwork``, followed by the
  semantic head of Panoptic FPN (Kirillov et al., 2019): every pyramid level is brought to
  the finest level's resolution and summed, then classified per pixel. By default the
  levels are the backbone's maps at strides 4 to 32, Panoptic FPN's P2-P5 (a stride-2 stem
  map, or VGG's stride-1 map, would quadruple the head's cost); ``out_indices`` chooses
  others.
* SFNet's flow alignment (Li et al., "Semantic Flow for Fast and Accurate Scene Parsing",
  ECCV 2020), an option of the FPN head: a coarse map is not upsampled bilinearly but
  warped by a learned flow field predicted from both maps (``grid_sample``, bilinear).
  Unlike the paper, whose flow alignment modules sit in the FPN's top-down pathway and
  align each level with the next finer one, the top-down pathway here stays torchvision's
  (nearest upsampling) and each coarse level is warped straight onto the finest map in the
  final fusion (up to 8x at strides 4-32).
* ASPP (Chen et al., DeepLab-v3, 2017): parallel atrous convolutions and image pooling on
  the last map. The image-pooling branch has no BatchNorm (DeepLab-v3 and torchvision have
  one): BatchNorm of a 1x1 map in training needs more than one image per batch, and without
  it batch-1 training works. There is no dropout after the projection (DeepLab-v3 has 0.5).

Any input size: an image whose sides the backbone cannot take (ViT and NesT need multiples
of 16, HRNet of 32, Inception at least 75 px) is padded at the bottom and right to the
nearest size it can, and the logits are cropped back (mmsegmentation's ``size_divisor``);
sizes the backbone takes run unpadded. The padding repeats the last row and column, where
mmsegmentation pads zeros: a zero (mean-colour) patch through a zero-initialised patchify
stem is an all-zero vector, which the stem's LayerNorm (ConvNeXt, eps 1e-6) divides by
sqrt(eps); from scratch, ConvNeXt's stem-bias gradient was 1e7 on a 20x28 input padded
with zeros and 0.4 with the edge repeated. UNeXt pads the same way inside.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork

from ..base import check_image_batch
from ..checkpoints import load_checkpoint
from ..factory import create_model
from ..layers import check_int, pad_to_fit
from .unext import unext, unext_s

__all__ = ["ASPPHead", "FPNSegHead", "FlowAlign", "HRNetV2Seg", "SegmentationModel", "create_segmentation_model", "fpn_levels"]


def _conv_bn_relu(in_chs: int, out_chs: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, k, padding=dilation * (k - 1) // 2, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


class FlowAlign(nn.Module):
    """SFNet's flow alignment module: warp a coarse map onto a fine map's grid.

    Both maps are reduced to half their channels (at least one) by 1x1 convolutions; a 3x3
    convolution on [fine, upsampled coarse] predicts a 2-channel flow (in pixels of the fine
    grid); the coarse map is sampled at (grid + flow), bilinearly.

    Shapes:
        fine (B, C, H, W), coarse (B, C, h, w) -> (B, C, H, W).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = max(channels // 2, 1)  # the flow convolution sees 2 * half channels, C odd or 1 included
        self.down_fine = nn.Conv2d(channels, half, 1, bias=False)
        self.down_coarse = nn.Conv2d(channels, half, 1, bias=False)
        self.flow = nn.Conv2d(2 * half, 2, 3, padding=1, bias=False)
        nn.init.zeros_(self.flow.weight)  # starts as bilinear upsampling

    def forward(self, fine: Tensor, coarse: Tensor) -> Tensor:
        B, _, H, W = fine.shape
        up = F.interpolate(self.down_coarse(coarse), size=(H, W), mode="bilinear", align_corners=False)
        flow = self.flow(torch.cat([self.down_fine(fine), up], dim=1))  # B, 2, H, W (dx, dy in pixels)
        # the fine pixels' centres in grid_sample's align_corners=False coordinates: with zero flow the
        # warp is F.interpolate's bilinear upsampling (align_corners=False), as the rest of the head's
        ys = (torch.arange(H, device=fine.device, dtype=fine.dtype) * 2 + 1) / H - 1
        xs = (torch.arange(W, device=fine.device, dtype=fine.dtype) * 2 + 1) / W - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # H, W, 2 as (x, y)
        scale = torch.tensor([2.0 / W, 2.0 / H], device=fine.device, dtype=fine.dtype)  # a fine pixel in grid units
        grid = grid[None] + flow.permute(0, 2, 3, 1) * scale  # B, H, W, 2
        return F.grid_sample(coarse, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FPNSegHead(nn.Module):
    """FPN + Panoptic-FPN semantic head (optionally with SFNet flow alignment).

    Args:
        in_channels: channels of the backbone maps, finest first.
        num_classes: output classes.
        channels: FPN width; the per-level convolutions and the classifier are half as wide.
        flow_align: warp each coarse level onto the finest with a learned flow instead of
            bilinear upsampling (in the final fusion, not in the top-down pathway as SFNet;
            module docstring).

    Shapes:
        list of (B, C_i, H_i, W_i), finest first -> (B, num_classes, H_0, W_0).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, *, channels: int = 256, flow_align: bool = False) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels), channels)
        self.convs = nn.ModuleList(_conv_bn_relu(channels, channels // 2) for _ in in_channels)
        self.align = nn.ModuleList(FlowAlign(channels // 2) for _ in in_channels[1:]) if flow_align else None
        self.classifier = nn.Conv2d(channels // 2, num_classes, 1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        pyramid = list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats))).values())
        maps = [conv(p) for conv, p in zip(self.convs, pyramid)]
        out = maps[0]
        size = out.shape[-2:]
        for i, m in enumerate(maps[1:]):
            if self.align is not None:
                out = out + self.align[i](maps[0], m)
            else:
                out = out + F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        return self.classifier(out)


class ASPPHead(nn.Module):
    """DeepLab-v3 atrous spatial pyramid pooling on the last backbone map.

    Two departures from DeepLab-v3 (module docstring): no BatchNorm in the image-pooling
    branch, so that batch-1 training works, and no dropout after the projection.

    Args:
        in_channels: channels of the last map.
        num_classes: output classes.
        rates: atrous rates of the three 3x3 branches (6, 12, 18 at output stride 16;
            double them at output stride 8).
        channels: branch width.
    """

    def __init__(self, in_channels: int, num_classes: int, *, rates: Sequence[int] = (6, 12, 18), channels: int = 256) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, channels, 1)] + [_conv_bn_relu(in_channels, channels, 3, r) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1, bias=False), nn.ReLU(inplace=True))
        self.project = _conv_bn_relu(channels * (len(rates) + 2), channels, 1)
        self.refine = _conv_bn_relu(channels, channels, 3)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x = feats[-1]
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])  # B, C, h, w
        x = torch.cat([b(x) for b in self.branches] + [pooled], dim=1)
        return self.classifier(self.refine(self.project(x)))


def logits_at_input_size(x: Tensor, backbone: nn.Module, logits_of: Callable[[Tensor], Tensor]) -> Tensor:
    """``logits_of`` on ``x`` padded by edge replication to a size ``backbone`` takes (module
    docstring), upsampled bilinearly to the padded size and cropped back to ``x``'s. An input
    ``backbone`` refuses for anything but its size (an empty side included) is refused first,
    with its message."""
    check_image_batch(x, backbone._name(), backbone.in_chans, next(backbone.parameters(), None))
    H, W = x.shape[-2:]
    x = pad_to_fit(x, backbone.input_multiple, backbone.min_input_size, mode="replicate")
    return F.interpolate(logits_of(x), size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :H, :W]


class HRNetV2Seg(nn.Module):
    """HRNetV2 segmentation (Wang et al., TPAMI 2020): all four branches upsampled to 1/4,
    concatenated, mixed by a 1x1 conv-BN-ReLU and classified per pixel.

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes, H, W) (padded to multiples of 32 inside).
    """

    def __init__(self, hrnet: nn.Module, num_classes: int) -> None:
        super().__init__()
        hrnet.reset_classifier(0)
        hrnet.incre_modules = hrnet.downsamp_modules = hrnet.final_layer = None  # the classification head is unused
        self.backbone = hrnet
        self.in_chans = hrnet.in_chans  # for the example inputs of export_onnx and export_program
        width = sum(hrnet.branch_channels)
        self.mix = _conv_bn_relu(width, width, 1)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return logits_at_input_size(x, self.backbone, self._logits)

    def _logits(self, x: Tensor) -> Tensor:
        xs = self.backbone.forward_branches(x)
        size = xs[0].shape[-2:]
        feats = torch.cat([xs[0]] + [F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in xs[1:]], dim=1)
        return self.classifier(self.mix(feats))


class SegmentationModel(nn.Module):
    """A features_only backbone, a head, and bilinear upsampling to the input size.

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes, H, W) logits.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.in_chans = backbone.in_chans  # for the example inputs of export_onnx and export_program

    def forward(self, x: Tensor) -> Tensor:
        return logits_at_input_size(x, self.backbone, lambda padded: self.head(self.backbone(padded)))


DEDICATED = {"unext": unext, "unext_s": unext_s}
FPN_STRIDES = (4, 32)  # Panoptic FPN's P2-P5


def fpn_levels(net: nn.Module) -> list[int]:
    """The FPN head's default maps: those of the family's default dense-prediction maps
    (``dense_out_indices``) whose stride is 4 to 32 (Panoptic FPN's P2-P5), chosen by each
    map's ``feature_info`` reduction; all of them for a backbone with none there
    (ConvMixer-256/8, stride 2 only)."""
    lo, hi = FPN_STRIDES
    default = list(net.dense_out_indices())
    return [i for i in default if lo <= net.feature_info[i].reduction <= hi] or default


def _refuse_unused(what: str, given: dict[str, bool]) -> None:
    """Refuse the arguments that ``what`` would silently ignore."""
    names = [name for name, is_given in given.items() if is_given]
    if names:
        raise ValueError(f"{', '.join(names)} do{'es' if len(names) == 1 else ''} not apply to {what}")


def create_segmentation_model(
    backbone: str,
    num_classes: int,
    *,
    head: str = "fpn",
    flow_align: bool = False,
    channels: int | None = None,
    in_chans: int = 3,
    img_size: int | Sequence[int] | None = None,
    out_indices: Sequence[int] | None = None,
    aspp_rates: Sequence[int] | None = None,
    checkpoint: str | None = None,
    **backbone_overrides,
) -> nn.Module:
    """Semantic segmentation on any registered backbone.

    Args:
        backbone: a model name, e.g. ``"swin_tiny_patch4_window7_224"``, or a complete
            segmentation network: ``"unext"``, ``"unext_s"``.
        num_classes: classes of the label maps.
        head: ``"fpn"`` (FPN + Panoptic-FPN semantic head), ``"aspp"`` (DeepLab-v3) or, for
            HRNet backbones, ``"hrnetv2"`` (all branches concatenated at 1/4).
        flow_align: SFNet flow alignment in the FPN head.
        channels: head width (default 256); at least 2 for the FPN head, whose per-level
            convolutions are ``channels // 2`` wide.
        out_indices: backbone maps to use. Default: for the FPN head, the maps at strides 4
            to 32 (:func:`fpn_levels`); for the ASPP head, which reads only the last map, that
            map alone (an explicit ``out_indices`` must then name one map).
        aspp_rates: atrous rates of the ASPP head; default DeepLab-v3's (6, 12, 18) at output
            stride 16, scaled to the backbone's last map (doubled at output stride 8).
        checkpoint: backbone weights (classification checkpoint; the head stays initialised);
            for ``unext`` / ``unext_s`` the whole network's, in visionzoo's layout or the
            released UNeXt-pytorch code's.
        **backbone_overrides: configuration overrides of the backbone.

    Arguments that the chosen network would ignore (``img_size`` of UNeXt or HRNetV2, which
    take any size; ``channels`` and ``aspp_rates`` of a head without them) are refused.
    """
    check_int("num_classes", num_classes)
    if aspp_rates is not None:
        if isinstance(aspp_rates, (str, bytes)) or not isinstance(aspp_rates, Sequence) or not aspp_rates:
            raise ValueError(f"aspp_rates must be a non-empty sequence of ints >= 1, got {aspp_rates!r}")
        for r in aspp_rates:
            check_int("each of aspp_rates", r)
    if backbone in DEDICATED:
        _refuse_unused(f"{backbone}, a complete segmentation network that takes only num_classes, in_chans and checkpoint", {
            "head": head != "fpn", "flow_align": bool(flow_align), "channels": channels is not None,
            "img_size": img_size is not None, "out_indices": out_indices is not None,
            "aspp_rates": aspp_rates is not None, **{name: True for name in backbone_overrides},
        })
        return DEDICATED[backbone](num_classes=num_classes, in_chans=in_chans, checkpoint=checkpoint)
    if head == "hrnetv2":
        if not backbone.startswith("hrnet"):
            raise ValueError(f"head='hrnetv2' takes an HRNet backbone (hrnet_*), got {backbone!r}")
        _refuse_unused("head='hrnetv2' (its width is the HRNet branches'; it takes any size)", {
            "flow_align": bool(flow_align), "channels": channels is not None, "img_size": img_size is not None,
            "out_indices": out_indices is not None, "aspp_rates": aspp_rates is not None,
        })
        return HRNetV2Seg(create_model(backbone, in_chans=in_chans, checkpoint=checkpoint, **backbone_overrides), num_classes)
    if head not in ("fpn", "aspp"):
        raise ValueError(f"head must be 'fpn', 'aspp' or 'hrnetv2', got {head!r}")
    if head == "aspp" and flow_align:
        raise ValueError("flow_align is an option of the FPN head")
    if head == "fpn" and aspp_rates is not None:
        raise ValueError("aspp_rates does not apply to head='fpn'; it sets the ASPP head's rates (head='aspp')")
    channels = 256 if channels is None else channels
    if head == "fpn":
        check_int("channels", channels, 2, " (the FPN head's convolutions are channels // 2 wide)")
    else:
        check_int("channels", channels)
    if head == "fpn" and out_indices is None:
        # built as a classifier first: the levels are chosen by the stride of each map
        net = create_model(backbone, in_chans=in_chans, img_size=img_size, **backbone_overrides)
        net.set_features_only(fpn_levels(net))
        if checkpoint is not None:
            load_checkpoint(net, checkpoint)  # a features_only model ignores the head's keys
    else:
        net = create_model(
            backbone, features_only=True, out_indices=(-1,) if out_indices is None else out_indices,  # ASPP: last map only
            in_chans=in_chans, img_size=img_size, checkpoint=checkpoint, **backbone_overrides,
        )
    net.contiguous_maps = False  # the head's convolutions read the maps in the layout they come in
    chans = [fi.num_chs for fi in net.feature_info]
    if head == "fpn":
        return SegmentationModel(net, FPNSegHead(chans, num_classes, channels=channels, flow_align=flow_align))
    if len(chans) > 1:
        raise ValueError(
            f"out_indices {out_indices!r} names {len(chans)} maps, but the ASPP head reads only the last one: "
            f"the others do not apply (name one map, e.g. out_indices=({net.out_indices[-1]},))"
        )
    if aspp_rates is None:
        scale = 16 / net.feature_info[-1].reduction
        aspp_rates = tuple(max(1, round(r * scale)) for r in (6, 12, 18))
    return SegmentationModel(net, ASPPHead(chans[-1], num_classes, rates=aspp_rates, channels=channels))
