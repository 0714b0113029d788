"""Instance segmentation: torchvision's Mask R-CNN on any visionzoo backbone, with an FPN or
ViTDet's simple feature pyramid.

Fine-tuning from a pretrained backbone follows torchvision's recipe for its own
``maskrcnn_resnet50_fpn`` (``weights_backbone=...``), generalised to any backbone:

* BatchNorm is frozen: the backbone's BatchNorms keep their running statistics and affine
  parameters, as torchvision's ``FrozenBatchNorm2d`` does (detection batches of one or two
  images per device give useless batch statistics). The modules stay ``nn.BatchNorm2d`` held
  in eval mode, so state-dict keys and the CPU inference paths are unchanged.
* The shallow levels are frozen: the backbone's levels (``feature_info``, shallowest first,
  each level owning the modules defined before it) train only from the
  ``trainable_backbone_layers`` deepest. torchvision's default, three of ResNet-50's five
  (stem, layer1 .. layer4), freezes the stem and the stride-4 stage; ours by default freezes
  every level of stride 4 or less, which is the same for ResNet and the stem plus the first
  stage for the other families.

Without a checkpoint (training from scratch) nothing is frozen, as in torchvision.

Necks. A hierarchical backbone (ResNet, Swin, ConvNeXt, ...) feeds its four deepest levels to
torchvision's FPN. A plain, single-scale backbone (ViT, DeiT, ConvMixer: every level at one
stride) gets ViTDet's *simple feature pyramid* instead (Li, Mao, Girshick & He, "Exploring
Plain Vision Transformer Backbones for Object Detection", ECCV 2022, Sec. 3 and Fig. 2):
from the last level's map alone, two stride-2 deconvolutions (LayerNorm and GELU between) give
1/4 of its stride, one gives 1/2, the map itself 1, a 2x2 max-pool 2; each then passes a 1x1
and a 3x3 convolution, each followed by a LayerNorm (eps 1e-6, detectron2's), to
``out_channels``; a stride-2 subsampling of the coarsest adds the fifth level, as in the FPN.
Those are strides 4-64 for ViT's 16. A backbone stride that is not a power of two (ConvMixer's
14 and 7, ViT-H/14's) is first resampled bilinearly to the nearest one, and a finer map
(ConvMixer-256/8's stride 2) reaches 4-32 by max-pools, so that every map sits at a
power-of-two stride that the anchors and RoIAlign's scales match exactly
(:class:`SimpleFeaturePyramid`).
Only the neck is ViTDet's (checked layer by layer against detectron2's SimpleFeaturePyramid):
the backbone stays the plain ViT (no window attention or relative positions, the class token
kept in its sequence, no stochastic depth), and the rest is torchvision's Mask R-CNN (its
default heads, resize to 800/1333 and padding to a multiple of 32; ViTDet pads to a 1024
square and uses heads with LayerNorm and 4 convolutions).
"""

from __future__ import annotations

import inspect
import math
import os
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import initLevelMapper

from .base import InputError
from .checkpoints import CheckpointError, load_read_checkpoint, read_checkpoint
from .factory import create_model
from .layers import LayerNorm2d, check_int, pad_to_fit, to_2tuple
from .registry import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BackboneWithFPN", "CheckedMaskRCNN", "GridAnchorGenerator", "GridRoIAlign", "SimpleFeaturePyramid", "backbone_levels", "map_grid", "mask_rcnn"]

_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


def _maskrcnn_options() -> set[str]:
    """The keyword arguments torchvision's MaskRCNN uses: its own, FasterRCNN's and its
    transform's (each passes unknown ones on, and the transform ignores them)."""
    names = {"_skip_resize"}  # read from the transform's **kwargs
    for f in (MaskRCNN.__init__, FasterRCNN.__init__, GeneralizedRCNNTransform.__init__):
        names |= {p.name for p in inspect.signature(f).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD}
    return names - {"self", "backbone", "num_classes"}


def backbone_levels(body: nn.Module, taps: Sequence[str]) -> dict[str, int]:
    """The level (index into ``taps``) of each parameter of the features_only model ``body``.

    ``taps`` are the module names of every level the family has (its full ``feature_info``,
    shallowest first); the levels pruned from ``body`` own no parameters. A level owns its tap
    module and every module defined before it and after the previous level's (ResNet:
    ``conv1``/``bn1`` belong to the stem level ``act1``; ViT: the patch embedding and the
    blocks up to the first tapped block to level 0). Modules defined after the last tap
    present belong to the deepest level.
    """
    names = [name for name, _ in body.named_modules()]
    ends: list[tuple[int, int]] = []  # (level, position in named_modules order of the tap's last descendant)
    for level, tap in enumerate(taps):
        inside = [i for i, n in enumerate(names) if n == tap or n.startswith(tap + ".")]
        if inside:
            ends.append((level, max(inside)))
    if not ends:
        raise ValueError(f"the backbone has none of the modules its feature levels name: {list(taps)}")
    position = {n: i for i, n in enumerate(names)}
    levels = {}
    for pname, _ in body.named_parameters():
        owner = position[pname.rpartition(".")[0]]
        levels[pname] = next((level for level, end in ends if owner <= end), len(taps) - 1)
    return levels


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (module docstring) from one map of ``dim`` channels.

    The four maps are at power-of-two strides, the finest 4 (8 for a backbone stride of 32
    or more), each twice the last, so that anchors and RoIAlign (which rounds each level's
    scale to a power of two) match them exactly. A map at stride ``in_stride`` 16 gives
    strides 4-32 as ViTDet: two stride-2 deconvolutions, one, none, a 2x2 max-pool. Any
    other stride is first resampled bilinearly to the nearest power of two ``stride`` (in
    log scale: 14 -> 16, 7 -> 8; 2 stays), and each level then takes one deconvolution per
    halving of the stride (LayerNorm and GELU between two) or a max-pool of the factor
    (stride 2: max-pools of 2, 4, 8 and 16).

    Shapes:
        (B, dim, H, W) at stride 16 -> OrderedDict "0": (B, out, 4H, 4W), "1": 2H, "2": H,
        "3": H/2, "pool": H/4 (floors), each ``out_channels`` wide; an image of side S
        padded to a multiple of 2 * ``strides[-1]`` gives every map but "pool" at S / stride.
    """

    def __init__(self, dim: int, out_channels: int = 256, *, in_stride: int = 16) -> None:
        super().__init__()
        self.in_stride = in_stride
        self.stride = 2 ** round(math.log2(in_stride))  # the map's stride once resampled
        finest = max(4, self.stride // 4)
        self.strides = tuple(finest * 2**i for i in range(4))
        ups = [round(math.log2(self.stride // s)) if s < self.stride else 0 for s in self.strides]  # deconvolutions per level
        if dim % 2 ** max(ups):
            raise ValueError(
                f"the simple feature pyramid halves the width {max(ups)} time(s): {dim} channels do not divide by {2 ** max(ups)} (use neck='fpn')"
            )
        resamples = []
        for s, n in zip(self.strides, ups):
            if n:  # ConvTranspose2d (LayerNorm, GELU, ConvTranspose2d)*, each halving the width
                layers: list[nn.Module] = []
                for i in range(n):
                    if i:
                        layers += [LayerNorm2d(dim >> i, eps=1e-6), nn.GELU()]
                    layers.append(nn.ConvTranspose2d(dim >> i, dim >> (i + 1), 2, stride=2))
                resamples.append(layers)
            else:
                resamples.append([nn.MaxPool2d(s // self.stride, stride=s // self.stride)] if s > self.stride else [])
        self.stages = nn.ModuleList(
            nn.Sequential(
                *resample,
                nn.Conv2d(dim >> n, out_channels, 1, bias=False),
                LayerNorm2d(out_channels, eps=1e-6),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                LayerNorm2d(out_channels, eps=1e-6),
            )
            for resample, n in zip(resamples, ups)
        )
        self.top = LastLevelMaxPool()

    def forward(self, x: Tensor, image_size: tuple[int, int] | None = None) -> "OrderedDict[str, Tensor]":
        """``x``: the backbone's map of the image padded to a multiple of ``in_stride``;
        ``image_size``: the image's (H, W) before that padding, to which a resampled map is
        cropped (H / stride, W / stride)."""
        if self.stride != self.in_stride:
            # the scale factor, not an output size, sets the sampling grid: output cell j reads
            # input position (j + 0.5) * stride / in_stride - 0.5, the same image point
            x = F.interpolate(x, scale_factor=self.in_stride / self.stride, mode="bilinear", align_corners=False, recompute_scale_factor=False)
            if image_size is not None:
                x = x[..., : image_size[0] // self.stride, : image_size[1] // self.stride]  # B, dim, H/stride, W/stride
        maps = [stage(x) for stage in self.stages]
        names = [str(i) for i in range(len(maps))]
        maps, names = self.top(maps, maps, names)
        return OrderedDict(zip(names, maps))


class BackboneWithFPN(nn.Module):
    """A features_only visionzoo backbone + a neck, in the interface detectors expect.

    ``forward`` returns an OrderedDict of maps ("0", "1", ..., "pool"), each ``out_channels``
    wide; the extra "pool" level is a stride-2 max-pool of the coarsest map, as torchvision's
    own ResNet-FPN detectors have.

    Args:
        body: a features_only model.
        out_channels: neck width.
        neck: ``"fpn"`` (torchvision's FeaturePyramidNetwork over every map of ``body``) or
            ``"simple"`` (:class:`SimpleFeaturePyramid` from its last map).
        trainable_layers: how many of the backbone's levels, from the deepest, train; the
            parameters of the others get ``requires_grad=False``. None: all.
        taps: the module names of all the family's levels (:func:`backbone_levels`); default
            the body's own ``feature_info``.
        frozen_bn: keep the body's BatchNorms in eval mode with frozen affine parameters
            (torchvision's ``FrozenBatchNorm2d``), whatever ``train()`` is called with.
    """

    def __init__(
        self, body: nn.Module, out_channels: int = 256, *, neck: str = "fpn", trainable_layers: int | None = None, taps: Sequence[str] | None = None, frozen_bn: bool = False
    ) -> None:
        super().__init__()
        self.body = body
        if neck == "fpn":
            self.fpn: nn.Module = FeaturePyramidNetwork([fi.num_chs for fi in body.feature_info], out_channels, extra_blocks=LastLevelMaxPool())
        elif neck == "simple":
            check_full_maps(body)
            self.fpn = SimpleFeaturePyramid(body.feature_info[-1].num_chs, out_channels, in_stride=body.feature_info[-1].reduction)
        else:
            raise ValueError(f"neck must be 'fpn' or 'simple', got {neck!r}")
        self.neck = neck
        self.out_channels = out_channels
        self.frozen_bn = frozen_bn
        taps = [fi.module for fi in body.feature_info] if taps is None else list(taps)
        n = len(taps)
        if trainable_layers is not None:
            if not 0 <= trainable_layers <= n:
                raise ValueError(f"trainable_backbone_layers must be between 0 and {n} (the backbone's levels), got {trainable_layers}")
            for name, level in backbone_levels(body, taps).items():
                if level < n - trainable_layers:
                    body.get_parameter(name).requires_grad_(False)
        if frozen_bn:
            for m in self._frozen_norms():
                m.requires_grad_(False)
            self.train(self.training)

    def _frozen_norms(self) -> list[nn.Module]:
        return [m for m in self.body.modules() if isinstance(m, _NORMS)] if self.frozen_bn else []

    def train(self, mode: bool = True) -> BackboneWithFPN:
        super().train(mode)
        for m in self._frozen_norms():
            m.eval()
        return self

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        if self.neck == "simple":  # the image padded (zeros, as the detector's own padding) to a multiple of the backbone's stride
            return self.fpn(self.body(pad_to_fit(x, self.fpn.in_stride))[-1], tuple(x.shape[-2:]))
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class _CellCentres(TorchFunctionMode):
    """Follows, through one forward, where cell 0 of each (B, C, H, W) map is centred in the
    image and how many pixels apart its cells are: per axis (offset, step), cell i at
    offset + step * i, a pixel's index being its centre (ResNet's cell i sits on pixel
    stride * i, where torchvision puts its anchors).

    A convolution or pool of kernel k, stride s, padding p and dilation d moves the offset by
    step * (d * (k - 1) / 2 - p) and multiplies the step by s; ``F.pad`` moves it back by step
    times the top / left padding; any other op whose output keeps a followed input's height
    and width (norms, activations, sums, cat) keeps its place. What it cannot follow (tokens
    reshaped into a map, interpolation) has no entry.
    """

    def __init__(self, x: Tensor) -> None:
        super().__init__()
        self.cells: dict[int, tuple[tuple[float, int], ...]] = {id(x): ((0.0, 1), (0.0, 1))}
        self._alive = [x]  # ids stay unique while the tensors live

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not (isinstance(out, Tensor) and out.dim() == 4):
            return out
        name = getattr(func, "__name__", "")
        src = args[0] if args else kwargs.get("input")
        cells = self.cells.get(id(src)) if isinstance(src, Tensor) else None
        if cells is not None and name in ("conv2d", "max_pool2d", "avg_pool2d"):
            keys = ("stride", "padding", "dilation") if name == "conv2d" else ("kernel_size", "stride", "padding", "dilation")[: 4 if name == "max_pool2d" else 3]
            given = dict(zip(keys, args[3:] if name == "conv2d" else args[1:])) | kwargs
            k = to_2tuple(given.get("weight", args[1] if len(args) > 1 else None).shape[-2:] if name == "conv2d" else given["kernel_size"])
            s, d = to_2tuple(given.get("stride") or (1 if name == "conv2d" else k)), to_2tuple(given.get("dilation", 1))
            p = given.get("padding", 0)
            p = to_2tuple(0 if p == "valid" else [di * (ki - 1) // 2 for di, ki in zip(d, k)] if p == "same" else p)
            cells = tuple((o + step * (di * (ki - 1) / 2 - pi), step * si) for (o, step), ki, si, pi, di in zip(cells, k, s, p, d))
        elif cells is not None and name in ("pad", "_pad"):
            pad = list(args[1] if len(args) > 1 else kwargs["pad"]) + [0, 0, 0]
            (oy, sy), (ox, sx) = cells
            cells = ((oy - sy * pad[2], sy), (ox - sx * pad[0], sx))
        else:
            followed = [t for a in (*args, *kwargs.values()) for t in (a if isinstance(a, (list, tuple)) else (a,)) if isinstance(t, Tensor) and id(t) in self.cells]
            cells = next((self.cells[id(t)] for t in followed if t.dim() == 4 and t.shape[-2:] == out.shape[-2:]), None)
        if cells is not None:
            self.cells[id(out)] = cells
            self._alive.append(out)
        return out


def map_grid(backbone: BackboneWithFPN) -> tuple[list[int], list[tuple[float, float]]]:
    """The stride and the (y, x) offset in pixels of each map ``backbone`` gives ("0", "1", ...,
    "pool"): cell (i, j) is centred at (oy + stride * i, ox + stride * j).

    The strides are the backbone's ``feature_info`` reductions (the simple pyramid's own), and
    twice the coarsest for the pool level (a stride-2 subsampling, which keeps the offset).
    A map of side / stride cells for a side its stride divides (every family whose
    convolutions pad: ResNet, ConvNeXt, Swin, ViT, GoogLeNet, ...) has offset 0, torchvision's
    convention: ResNet's cells are centred there, patchified ones (ConvNeXt, Swin) half a cell
    further, as in torchvision's, detectron2's and mmdetection's detectors, whose results stay
    the same. A map with fewer cells, from valid convolutions (Inception v2-v4,
    Inception-ResNet-v2), has lost cells at both edges: its offset is where the network
    centres its cell 0 (37 px for Inception-v3's stride-32 map), traced through one forward of
    the body on the meta device (:class:`_CellCentres`). Anchors there (torchvision's at
    stride * i) would sit that far above and left of their cells, leaving the bottom and right
    edges without any, and RoIAlign would read each box's features that far from it.
    """
    if backbone.neck == "simple":  # power-of-two strides, each map cropped to the image's side / stride (checked on building)
        strides, offsets = list(backbone.fpn.strides), [(0.0, 0.0)] * len(backbone.fpn.strides)
    else:
        strides, offsets = body_grid(backbone.body)
    return [*strides, 2 * strides[-1]], [*offsets, offsets[-1]]


def body_grid(body: nn.Module) -> tuple[list[int], list[tuple[float, float]]]:
    """The stride and (y, x) offset of each map of the features_only ``body`` (:func:`map_grid`),
    traced through one forward on the meta device."""
    strides = list(body.feature_info.reduction())
    step = math.lcm(32, *strides, body.input_multiple)  # a side every map's stride divides
    S = step * -(-body.min_input_size // step)
    while body.size_problem(S, S):
        S += step
    x = torch.empty(2, body.in_chans, S, S, device="meta")  # two images: training-mode BatchNorm takes 1x1 maps
    meta = {k: torch.empty_like(v, device="meta") for k, v in (*body.named_parameters(), *body.named_buffers())}
    trace = _CellCentres(x)
    with torch.no_grad(), trace:
        maps = functional_call(body, meta, (x,))
    offsets = []
    for m, s in zip(maps, strides):
        cells = trace.cells.get(id(m), (None, None))
        # a full map: torchvision's convention; a smaller one: its traced cell 0, or where
        # untraced, its cells centred on the image
        offsets.append(tuple(0.0 if n == S // s else c[0] if c and c[1] == s else (S - s * n) / 2 for n, c in zip(m.shape[-2:], cells)))
    return strides, offsets


def check_full_maps(body: nn.Module) -> None:
    """ValueError unless the last map of ``body`` has side / stride cells, as the simple feature
    pyramid takes it (its levels' grids follow from the stride alone). Valid convolutions
    (Inception v2-v4, Inception-ResNet-v2) lose cells at the edges: their anchors and RoIAlign
    would sit up to a cell and more away from the features (37 px at Inception-v3's stride 32)."""
    strides, offsets = body_grid(body)
    if offsets[-1] != (0.0, 0.0):
        raise ValueError(
            f"neck='simple' needs a backbone whose last map has one cell per {strides[-1]} pixels of the image, but "
            f"{getattr(body, 'model_name', '') or type(body).__name__}'s valid convolutions leave fewer (its cell 0 is centred at {offsets[-1][0]:g} px): use neck='fpn', "
            "which places anchors and RoIAlign on each map's own grid"
        )


class GridAnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator on the maps' known grids (:func:`map_grid`): map l's
    anchors are centred at (oy + stride * i, ox + stride * j).

    torchvision's infers each map's stride as image side // map side, which holds only for a
    map of side / stride cells: Inception-v3's maps of a 128-px image gave strides 4, 9, 21, 64
    for 4, 8, 16, 32 (4, 8, 16, 34 at 800 px). (Its pool level of a 5-cell map, 3 cells, is
    53 px apart for 64 on any backbone; :func:`mask_rcnn` keeps torchvision's classes where the
    maps are full, as its detectors were trained on them.)

    Args:
        sizes, aspect_ratios: as torchvision's, one tuple per map.
        strides: each map's stride in pixels.
        offsets: each map's (y, x) centre of cell 0 in pixels.
    """

    def __init__(self, sizes: tuple[tuple[int, ...], ...], aspect_ratios: tuple[tuple[float, ...], ...], strides: Sequence[int], offsets: Sequence[tuple[float, float]]) -> None:
        super().__init__(sizes, aspect_ratios)
        if not len(strides) == len(offsets) == len(self.sizes):
            raise ValueError(f"GridAnchorGenerator takes one stride and offset per map: {len(self.sizes)} sizes, {len(strides)} strides, {len(offsets)} offsets")
        self.strides = [int(s) for s in strides]
        self.offsets = [(float(oy), float(ox)) for oy, ox in offsets]

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        steps = [[torch.tensor(s, device=device)] * 2 for s in self.strides]  # int64, as torchvision's
        self.set_cell_anchors(dtype, device)
        grids = self.grid_anchors([list(f.shape[-2:]) for f in feature_maps], steps)  # per map: (h * w * A, 4), x1 y1 x2 y2
        grids = [g + g.new_tensor([ox, oy, ox, oy]) if oy or ox else g for g, (oy, ox) in zip(grids, self.offsets)]
        return [torch.cat(grids) for _ in image_list.image_sizes]


class GridRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign at the maps' known strides and offsets (:func:`map_grid`):
    an image point (x, y) is read at map position ((x - ox) / stride, (y - oy) / stride).

    torchvision's infers each scale from the first batch's map and image sizes, rounded to a
    power of two, and keeps it: exact for maps of side / stride cells at power-of-two strides,
    as its ResNet's (where this gives its results); 1/64 for Inception-v3's stride-32 map of
    a 128-px image, 1/16 for a stride-14 map. Boxes go to levels as in torchvision (FPN
    paper's eq. 1) by the strides' nearest powers of two.

    Args:
        featmap_names, output_size, sampling_ratio, canonical_scale, canonical_level: as
            torchvision's.
        strides: each named map's stride in pixels.
        offsets: each named map's (y, x) centre of cell 0 in pixels.
    """

    def __init__(
        self, featmap_names: list[str], output_size: int | tuple[int, int], sampling_ratio: int, *, strides: Sequence[int], offsets: Sequence[tuple[float, float]],
        canonical_scale: int = 224, canonical_level: int = 4,
    ) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio, canonical_scale=canonical_scale, canonical_level=canonical_level)
        if not len(strides) == len(offsets) == len(featmap_names):
            raise ValueError(f"GridRoIAlign takes one stride and offset per map: {len(featmap_names)} names, {len(strides)} strides, {len(offsets)} offsets")
        self.strides = [int(s) for s in strides]
        self.offsets = [(float(oy), float(ox)) for oy, ox in offsets]
        self.scales = [1 / s for s in self.strides]  # set, so torchvision's forward infers nothing
        levels = [round(math.log2(s)) for s in self.strides]
        self.map_levels = initLevelMapper(levels[0], levels[-1], canonical_scale=canonical_scale, canonical_level=canonical_level)

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        if not any(oy or ox for oy, ox in self.offsets):
            return super().forward(x, boxes, image_shapes)
        maps = [x[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], 1) for i, b in enumerate(boxes)])  # K, 5: image index, x1 y1 x2 y2
        levels = self.map_levels(boxes) if len(maps) > 1 else torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
        out = maps[0].new_zeros((len(rois), maps[0].shape[1], *self.output_size))
        for level, (m, scale, (oy, ox)) in enumerate(zip(maps, self.scales, self.offsets)):
            idx = torch.where(levels == level)[0]
            shifted = rois[idx] - rois.new_tensor([0.0, ox, oy, ox, oy])  # the map's cell 0 at the origin
            out[idx] = roi_align(m, shifted, self.output_size, spatial_scale=scale, sampling_ratio=self.sampling_ratio).to(out.dtype)
        return out


class CheckedMaskRCNN(MaskRCNN):
    """torchvision's MaskRCNN whose ``forward`` checks the images and targets first.

    torchvision's takes many mistakes silently (masks of another size or count, labels of
    another count, label 0 or negative, a NaN box, a 1-channel image on a 3-channel backbone,
    a 4-D batch tensor, a NaN in an image, a box wholly outside its image, 0 / 255 masks) or
    fails deep inside (a label >= num_classes, fewer targets than images, an HWC image, no image
    at all, a box with x2 <= x1 or y2 <= y1). Here each is one :class:`~visionzoo.InputError`
    naming the image index, the key and the problem. Boxes partly outside the image, images
    without boxes (both from augmentation) and soft masks (values in [0, 1]) pass. With the
    default ``image_mean`` / ``image_std`` (ImageNet's, for images in [0, 1]), an image with
    values above 1.5 (0-255, or normalised already) is refused: torchvision would normalise
    it again, 255 to (255 - 0.485) / 0.229 = 1111, far from anything a backbone saw. The checks cost a few reductions per image; the modules,
    state dict and outputs are torchvision's.
    """

    def __init__(self, backbone: BackboneWithFPN, num_classes: int | None, **kwargs) -> None:
        super().__init__(backbone, num_classes=num_classes, **kwargs)
        if num_classes is None:  # the caller's box predictor: its class scores' width where it has one
            num_classes = getattr(getattr(self.roi_heads.box_predictor, "cls_score", None), "out_features", None)
        self.num_classes = num_classes  # (None: labels checked only for >= 1)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        self.check_inputs(images, targets)
        return super().forward(images, targets)

    def check_inputs(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> None:
        """Raise :class:`~visionzoo.InputError` for images or targets the model cannot use."""
        C = self.backbone.body.in_chans
        # torchvision's default normalisation is for images in [0, 1] (its documented input); with
        # the caller's own image_mean / image_std the image's units are theirs (0-255 with means
        # such as 123.7 is right there), so the range is checked only with the default
        unit_range = (tuple(self.transform.image_mean), tuple(self.transform.image_std)) == (IMAGENET_MEAN, IMAGENET_STD)
        if isinstance(images, Tensor):
            fix = "list(images)" if images.ndim == 4 else "[image]"
            raise InputError(f"Mask R-CNN takes a list of (C, H, W) image tensors, got a tensor of shape {tuple(images.shape)}: pass {fix}")
        if not isinstance(images, (list, tuple)):
            raise InputError(f"Mask R-CNN takes a list of (C, H, W) image tensors, got {type(images).__name__}")
        if not images:  # torchvision's transform fails on it with an IndexError
            raise InputError("Mask R-CNN takes a list of (C, H, W) image tensors, got an empty list: pass at least one image")
        for i, img in enumerate(images):
            if not isinstance(img, Tensor):
                raise InputError(f"images[{i}] is a {type(img).__name__}, not a (C, H, W) tensor")
            if img.ndim != 3:
                raise InputError(f"images[{i}] has shape {tuple(img.shape)}; each image is one (C, H, W) tensor")
            if not img.is_floating_point():
                raise InputError(f"images[{i}] has dtype {img.dtype}; the model takes floats in [0, 1] (img.float() / 255)")
            if img.shape[0] != C:
                if img.shape[-1] == C:
                    raise InputError(f"images[{i}] has shape {tuple(img.shape)}, which looks like (H, W, C): permute it with img.permute(2, 0, 1)")
                raise InputError(f"images[{i}] has {img.shape[0]} channels (shape {tuple(img.shape)}); the backbone takes {C} (in_chans)")
            if 0 in img.shape[-2:]:
                raise InputError(f"images[{i}] is empty: {img.shape[-2]}x{img.shape[-1]}")
            if img.dtype != images[0].dtype:  # torchvision batches them in the first image's dtype
                raise InputError(f"images[{i}] has dtype {img.dtype}, images[0] {images[0].dtype}: give every image one dtype")
            # the transform scales each image by min(min_size / short side, max_size / long side)
            # (min_size: a random one of them in training) and floors the sides
            short, long = sorted(img.shape[-2:])
            scale = min(min(self.transform.min_size) / short, self.transform.max_size / long)
            if self.transform.fixed_size is None and math.floor(short * scale) < 1:
                raise InputError(
                    f"images[{i}] is {img.shape[-2]}x{img.shape[-1]}: resized as the detector resizes (the long side to at most "
                    f"max_size={self.transform.max_size}) its short side would be {short * scale:.2g} pixels, less than one"
                )
            if not bool(torch.isfinite(img).all()):
                raise InputError(f"images[{i}] has {int((~torch.isfinite(img)).sum())} NaN or infinite values")
            if unit_range and float(img.amax()) > 1.5:  # (well above 1: not augmentation's overshoot)
                raise InputError(f"images[{i}] has values up to {float(img.amax()):g}; the model takes floats in [0, 1] and normalises them "
                                 "itself: divide 0-255 images by 255 (and do not normalise them first)")
        if targets is None:
            if self.training:
                raise InputError("in training mode the model takes targets, one dict of boxes, labels and masks per image (model.eval() to predict)")
            return
        if not isinstance(targets, (list, tuple)) or len(targets) != len(images):
            got = f"{len(targets)} targets" if isinstance(targets, (list, tuple)) else f"a {type(targets).__name__}"
            raise InputError(f"Mask R-CNN takes one target dict per image: got {got} for {len(images)} images")
        for i, (img, t) in enumerate(zip(images, targets)):
            if not isinstance(t, dict):
                raise InputError(f"targets[{i}] is a {type(t).__name__}, not a dict of boxes, labels and masks")
            for key in ("boxes", "labels", "masks") if self.training else ("boxes", "labels"):
                if not isinstance(t.get(key), Tensor):
                    raise InputError(f"targets[{i}]['{key}'] is missing or not a tensor (got {type(t.get(key)).__name__})")
            boxes, labels = t["boxes"], t["labels"]
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise InputError(f"targets[{i}]['boxes'] has shape {tuple(boxes.shape)}; boxes are (N, 4), x1 y1 x2 y2")
            n = len(boxes)
            if not bool(torch.isfinite(boxes).all()):
                raise InputError(f"targets[{i}]['boxes'] has a NaN or infinite coordinate")
            flat = (boxes[:, 2:] <= boxes[:, :2]).any(1).nonzero().flatten()
            if len(flat):  # (torchvision's own check is an AssertionError)
                j = int(flat[0])
                raise InputError(f"targets[{i}]['boxes'][{j}] = {boxes[j].tolist()} has no width or height: boxes are x1 y1 x2 y2 with x2 > x1, y2 > y1")
            H, W = img.shape[-2:]
            outside = ((boxes[:, 0] >= W) | (boxes[:, 1] >= H) | (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)).nonzero().flatten()
            if len(outside):  # (part of a box may lie outside)
                j = int(outside[0])
                raise InputError(f"targets[{i}]['boxes'][{j}] = {boxes[j].tolist()} lies outside the {W}x{H} image (x1 y1 x2 y2 in pixels): drop it with its label and mask")
            if labels.shape != (n,):
                raise InputError(f"targets[{i}]['labels'] has shape {tuple(labels.shape)}; one label per box: ({n},)")
            if labels.dtype != torch.int64:
                raise InputError(f"targets[{i}]['labels'] has dtype {labels.dtype}; class indices are int64 (labels.long())")
            if n:
                lo, hi = (int(v) for v in labels.aminmax())
                if lo < 1 or (self.num_classes is not None and hi >= self.num_classes):
                    bad = lo if lo < 1 else hi
                    why = {0: "0 is the background class"}.get(bad, "negative" if bad < 0 else f"num_classes={self.num_classes} counts the background")
                    raise InputError(f"targets[{i}]['labels'] holds {bad}: object labels are 1 to {self.num_classes - 1} ({why})")
            masks = t.get("masks")
            if masks is not None and (not isinstance(masks, Tensor) or tuple(masks.shape) != (n, *img.shape[-2:])):
                got = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
                raise InputError(
                    f"targets[{i}]['masks'] is {got}; one mask per box at the image's size: ({n}, {img.shape[-2]}, {img.shape[-1]})"
                )
            if masks is not None and masks.dtype != torch.bool and masks.numel():
                if masks.is_floating_point() and not bool(torch.isfinite(masks).all()):
                    raise InputError(f"targets[{i}]['masks'] has a NaN or infinite value; masks are 0 / 1 (or soft, in [0, 1])")
                lo, hi = (float(v) for v in masks.aminmax())
                if lo < 0 or hi > 1:  # the mask loss reads them as probabilities
                    raise InputError(f"targets[{i}]['masks'] holds values in [{lo:g}, {hi:g}]; masks are 0 / 1 (or soft, in [0, 1]): divide a 0 / 255 mask by 255")


def mask_rcnn(
    backbone_name: str,
    num_classes: int,
    *,
    out_indices: Sequence[int] | None = None,
    out_channels: int = 256,
    neck: str | None = None,
    checkpoint: str | None = None,
    trainable_backbone_layers: int | None = None,
    frozen_bn: bool | None = None,
    in_chans: int = 3,
    **maskrcnn_kwargs,
) -> CheckedMaskRCNN:
    """torchvision's MaskRCNN on a visionzoo backbone (``num_classes`` includes background),
    checking its inputs (:class:`CheckedMaskRCNN`).

    It trains and predicts as torchvision's own: ``model(images, targets)`` returns the loss
    dict in training, ``model(images)`` a list of {boxes, labels, scores, masks} in eval. With
    ``resnet50`` its state dict is torchvision's ``maskrcnn_resnet50_fpn``'s, key for key.

    Args:
        backbone_name: any registered model name.
        num_classes: object classes plus background; None where ``box_predictor`` and
            ``mask_predictor`` are given (torchvision's way), whose classes they set.
        out_indices: the backbone levels fed to the neck; default the four deepest (FPN) or
            the last (simple pyramid).
        out_channels: neck width.
        neck: ``"fpn"`` or ``"simple"`` (ViTDet's simple feature pyramid); default the simple
            pyramid for a backbone whose levels all have one stride (ViT, DeiT, ConvMixer),
            the FPN otherwise.
        checkpoint: backbone weights (``create_model``'s ``checkpoint``).
        trainable_backbone_layers: how many of the backbone's levels (``feature_info``, the
            stem counting as one where it is tapped), from the deepest, train. Default: with a
            checkpoint, every level deeper than stride 4 (ResNet: 3 of 5, torchvision's
            default); without one, all.
        frozen_bn: freeze the backbone's BatchNorms (statistics and affine). Default: with a
            checkpoint, as torchvision does.
        in_chans: image channels; other than 3, ``image_mean`` and ``image_std`` (one value
            per channel, or one for all, which the model normalises images with) must be
            given too.
        maskrcnn_kwargs: to ``MaskRCNN`` (``min_size``, ``max_size``, ``image_mean``, ...).
            One it does not take is refused (torchvision's ignores it).

    Raises:
        TypeError: for a keyword argument that neither this function nor ``MaskRCNN`` takes.
        ValueError: for ``num_classes`` < 2, or ``image_mean`` / ``image_std`` missing for
            ``in_chans`` != 3 or of another length.
    """
    predictors = [k for k in ("box_predictor", "mask_predictor") if maskrcnn_kwargs.get(k) is not None]
    if predictors:  # torchvision's way: the caller's own predictors set the classes, num_classes None
        if num_classes is not None or len(predictors) == 1:
            raise ValueError(
                f"mask_rcnn: with {' and '.join(predictors)} given, pass num_classes=None and both box_predictor and mask_predictor "
                f"(the predictors set the classes, as in torchvision's MaskRCNN), got num_classes={num_classes!r}"
            )
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"mask_rcnn: num_classes counts the background too, so it must be an int >= 2 (background and one object class), got {num_classes!r}")
    unknown = sorted(set(maskrcnn_kwargs) - _maskrcnn_options())
    if unknown:  # torchvision's MaskRCNN would ignore them
        raise TypeError(
            f"mask_rcnn got unexpected keyword argument(s) {', '.join(unknown)}: it takes backbone_name, num_classes, out_indices, "
            "out_channels, neck, checkpoint, trainable_backbone_layers, frozen_bn, in_chans and torchvision MaskRCNN's arguments"
        )
    check_int("in_chans", in_chans)
    for key in ("image_mean", "image_std"):
        values = maskrcnn_kwargs.get(key)
        if values is None and in_chans != 3:  # torchvision's default is ImageNet's 3 channels
            raise ValueError(f"mask_rcnn: in_chans={in_chans} needs {key}, one value per channel (the default is ImageNet's, for 3 channels)")
        if values is not None and len(values) not in (1, in_chans):  # one value: every channel
            raise ValueError(f"mask_rcnn: {key} has {len(values)} values, but in_chans={in_chans}: give one per channel")
    body = create_model(backbone_name, in_chans=in_chans)
    default, every_end = body.dense_out_indices(), body.level_ends()
    levels = [body.feature_info[i] for i in default]  # the maps dense heads read by default
    ends = [every_end[i] for i in default]
    if neck is None:
        neck = "simple" if len({fi.reduction for fi in levels}) == 1 else "fpn"
    if out_indices is None:  # the four deepest maps, as ResNet-FPN; the last for the simple pyramid
        # (negative: ViT reads out_indices as block indices, as timm does; its default is four blocks)
        out_indices = (-1,) if neck == "simple" else ((-4, -3, -2, -1) if len(levels) > 4 else default)
    body.set_features_only(out_indices)  # then the checkpoint, as create_model(features_only=True, ...) does
    body.contiguous_maps = False  # the neck's convolutions read the maps in the layout they come in
    if checkpoint is not None:
        name, sd = read_checkpoint(checkpoint)  # (once: its keys are looked at below where the load fails)
        try:
            load_read_checkpoint(body, name, sd)
        except CheckpointError:
            if any(k.startswith(("roi_heads.", "rpn.")) for k in sd):  # a whole detector's: its key errors say nothing of that
                is_file = isinstance(checkpoint, (str, os.PathLike))
                raise CheckpointError(
                    f"{checkpoint if is_file else 'the state dict'} holds a whole detector (rpn.*, roi_heads.*): checkpoint= takes backbone weights; "
                    "load a detector's into the built model: mask_rcnn(...).load_state_dict(state_dict)"
                ) from None
            raise
    pretrained = checkpoint is not None
    if trainable_backbone_layers is None and pretrained:
        trainable_backbone_layers = sum(fi.reduction > 4 for fi in levels)
    backbone = BackboneWithFPN(
        body, out_channels, neck=neck, trainable_layers=trainable_backbone_layers, taps=ends, frozen_bn=pretrained if frozen_bn is None else frozen_bn
    )
    # anchors and RoI pooling (torchvision's defaults assume four maps at strides 4..32 plus the
    # pool level): anchors of 8x each map's stride, three aspect ratios; RoIs pooled from every
    # map but the pool level. Where every map has side / stride cells, torchvision's own classes,
    # which infer each grid from map and image sizes: its released detectors were trained on
    # those grids, its pool level's included (53 px apart for 3 cells of a 160-px image, 61 at
    # 800 px). Where valid convolutions leave fewer cells (Inception), the maps' true grids
    # (map_grid): torchvision's inference is wrong on every level there.
    # (map_grid traces a forward: not where the caller gave everything it is read for)
    needs_grid = ["rpn_anchor_generator", "box_roi_pool", "mask_roi_pool"] + (["size_divisible"] if neck == "simple" else [])
    if all(key in maskrcnn_kwargs for key in needs_grid):
        return CheckedMaskRCNN(backbone, num_classes=num_classes, **maskrcnn_kwargs)
    strides, offsets = map_grid(backbone)
    if neck == "simple":  # every map RoIAlign reads an exact fraction of the padded image (32 for strides 4-32, torchvision's default)
        maskrcnn_kwargs.setdefault("size_divisible", max(32, strides[-2]))
    names = [str(i) for i in range(len(strides) - 1)]
    sizes, ratios = tuple((8 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides)
    if any(oy or ox for oy, ox in offsets):
        maskrcnn_kwargs.setdefault("rpn_anchor_generator", GridAnchorGenerator(sizes, ratios, strides, offsets))
        for key, size in (("box_roi_pool", 7), ("mask_roi_pool", 14)):
            maskrcnn_kwargs.setdefault(key, GridRoIAlign(names, size, 2, strides=strides[:-1], offsets=offsets[:-1]))
    else:
        maskrcnn_kwargs.setdefault("rpn_anchor_generator", AnchorGenerator(sizes, ratios))
        for key, size in (("box_roi_pool", 7), ("mask_roi_pool", 14)):
            maskrcnn_kwargs.setdefault(key, MultiScaleRoIAlign(names, output_size=size, sampling_ratio=2))
    return CheckedMaskRCNN(backbone, num_classes=num_classes, **maskrcnn_kwargs)
