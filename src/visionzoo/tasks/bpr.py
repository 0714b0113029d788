"""Boundary Patch Refinement (BPR) of coarse instance masks.

Paper: Tang et al., "Look Closer to Segment Better: Boundary Patch Refinement for Instance
Segmentation", CVPR 2021.

1. Boundary pixels of the coarse mask are the centres of square patches.
2. Overlapping patches are thinned by NMS at a configurable IoU (a patch's score is the
   number of boundary pixels it covers, so patches that see more boundary are kept).
3. Image and mask patches are resized to the refiner's input size; the refiner sees 4
   channels (RGB + mask) and predicts 2 classes (background, foreground).
4. Foreground probabilities are resized back and averaged where patches overlap; pixels
   with a mean above 0.5 are foreground. Pixels no patch covers keep the coarse label.

The paper's refiner, HRNetV2-W18-small, is the default of ``create_refiner``; any network
with 4 input and 2 output channels that returns logits at its input resolution works.

Inputs: an image (3, H, W) of floats in [0, 1] (an integer image is refused: convert it with
``image.float() / 255``) and binary masks (H, W): bool, or integers or floats that are all 0
or 1. Soft or 0/255 masks are refused rather than thresholded, since the threshold is the
caller's choice. ``forward`` returns a boolean mask, through which no gradient can flow, so
it runs without autograd; train with ``training_loss``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from ..layers import check_int

__all__ = ["BoundaryPatchRefiner", "boundary_iou", "boundary_map", "create_refiner", "extract_patches"]


def boundary_map(mask: Tensor, width: int = 1) -> Tensor:
    """Pixels of a (H, W) binary mask within ``width`` pixels of a label change."""
    m = mask.float()[None, None]
    k = 2 * width + 1
    dil = F.max_pool2d(m, k, stride=1, padding=width)
    ero = -F.max_pool2d(-m, k, stride=1, padding=width)
    return (dil != ero)[0, 0]


def boundary_iou(pred: Tensor, target: Tensor, width: int = 2) -> float:
    """IoU restricted to the boundary bands of both masks (Cheng et al., 2021)."""
    pb = boundary_map(pred, width) & pred.bool()
    tb = boundary_map(target, width) & target.bool()
    inter = (pb & tb).sum().item()
    union = (pb | tb).sum().item()
    return inter / union if union else 1.0


def extract_patches(mask: Tensor, patch_size: int, iou_threshold: float, max_patches: int | None = None) -> Tensor:
    """Boxes (K, 4) as (x0, y0, x1, y1), square, centred on boundary pixels, after NMS."""
    ys, xs = torch.nonzero(boundary_map(mask), as_tuple=True)
    if ys.numel() == 0:
        return torch.zeros(0, 4)
    # integer corners, exactly patch_size apart (half-pixel corners rounded to even gave crops
    # of patch_size +- 1 for odd sizes); the boundary pixel sits at the centre, or just past it
    x0, y0 = xs - patch_size // 2, ys - patch_size // 2
    boxes = torch.stack([x0, y0, x0 + patch_size, y0 + patch_size], dim=1).float()
    # score: boundary pixels inside each box (a summed-area table makes this O(1) per box)
    b = boundary_map(mask).float()
    sat = F.pad(b.cumsum(0).cumsum(1), (1, 0, 1, 0))
    H, W = b.shape
    x0 = boxes[:, 0].clamp(0, W).long()
    y0 = boxes[:, 1].clamp(0, H).long()
    x1 = boxes[:, 2].clamp(0, W).long()
    y1 = boxes[:, 3].clamp(0, H).long()
    scores = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    keep = nms(boxes, scores, iou_threshold)
    if max_patches is not None:
        keep = keep[:max_patches]
    return boxes[keep]


def _crop(x: Tensor, box: Tensor) -> Tensor:
    """Crop (C, H, W) at an integer box, zero-padding outside the image."""
    x0, y0, x1, y1 = (int(round(v)) for v in box.tolist())
    C, H, W = x.shape
    out = x.new_zeros(C, y1 - y0, x1 - x0)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if sx1 > sx0 and sy1 > sy0:
        out[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = x[:, sy0:sy1, sx0:sx1]
    return out


def _check_inputs(image: Tensor, masks: dict[str, Tensor]) -> None:
    """One clear error for an image that is not (3, H, W) floats in [0, 1], or a mask that is
    not (H, W) and binary."""
    shapes = ", ".join(f"{name} {tuple(m.shape)}" for name, m in masks.items())
    if image.ndim != 3 or image.shape[0] != 3 or any(m.shape != image.shape[1:] for m in masks.values()):
        raise ValueError(f"expected image (3, H, W) and masks (H, W); got image {tuple(image.shape)}, {shapes}")
    if not image.is_floating_point():
        raise ValueError(f"image must be floats in [0, 1], got dtype {image.dtype} (convert with image.float() / 255)")
    # a margin for resampling overshoot (bicubic); 0-255 or normalised images fall outside it
    if image.numel() and (image.min() < -0.5 or image.max() > 1.5):
        raise ValueError(f"image must be in [0, 1] (normalisation happens inside), got values in [{image.min():.3g}, {image.max():.3g}]")
    for name, m in masks.items():
        if m.dtype != torch.bool and not ((m == 0) | (m == 1)).all():
            values = torch.unique(m)
            shown = ", ".join(f"{v:g}" for v in values[:4].tolist()) + (", ..." if len(values) > 4 else "")
            raise ValueError(f"{name} must be binary (bool, or values 0 and 1), got values {shown}: threshold a soft mask, divide a 0/255 mask by 255")


def create_refiner(name: str = "hrnet_w18_small") -> nn.Module:
    """A refinement network with 4 input channels (RGB + mask) and 2 output classes.

    The default is the paper's HRNetV2-W18-small (HRNetV2 head on all four branches);
    ``name`` may be any visionzoo segmentation network or backbone accepted by
    :func:`visionzoo.tasks.create_segmentation_model` (an FPN head is added to backbones).
    """
    from .segmentation import create_segmentation_model

    head = "hrnetv2" if name.startswith("hrnet") else "fpn"
    if name in ("unext", "unext_s"):
        return create_segmentation_model(name, num_classes=2, in_chans=4)
    return create_segmentation_model(name, num_classes=2, in_chans=4, head=head)


class BoundaryPatchRefiner(nn.Module):
    """Refine a coarse instance mask with a network run on boundary patches.

    Args:
        refiner: network (B, 4, S, S) -> (B, 2, S, S) logits.
        patch_size: side of the square patches in the image.
        input_size: side the patches are resized to for the refiner.
        iou_threshold: NMS threshold between overlapping patches.
        max_patches: keep at most this many patches (highest scores first).
        mean, std: image normalisation applied to the RGB channels of a patch.
    """

    def __init__(
        self,
        refiner: nn.Module,
        *,
        patch_size: int = 64,
        input_size: int = 128,
        iou_threshold: float = 0.25,
        max_patches: int | None = None,
        mean: Iterable[float] = (0.485, 0.456, 0.406),
        std: Iterable[float] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        for name, value in (("patch_size", patch_size), ("input_size", input_size), ("max_patches", 1 if max_patches is None else max_patches)):
            check_int(name, value)
        if not 0 <= iou_threshold <= 1:
            raise ValueError(f"iou_threshold is an IoU between patches, in [0, 1]; got {iou_threshold!r}")
        self.refiner = refiner
        self.patch_size = patch_size
        self.input_size = input_size
        self.iou_threshold = iou_threshold
        self.max_patches = max_patches
        self.register_buffer("mean", torch.tensor(list(mean)).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(3, 1, 1), persistent=False)

    def patches(self, image: Tensor, mask: Tensor, boxes: Tensor) -> Tensor:
        """(K, 4, S, S) refiner inputs: normalised RGB and the coarse mask, resized."""
        x = torch.cat([(image - self.mean) / self.std, mask[None].float()], dim=0)  # 4, H, W
        crops = torch.stack([_crop(x, b) for b in boxes])  # K, 4, P, P
        if self.input_size != self.patch_size:
            rgb = F.interpolate(crops[:, :3], size=self.input_size, mode="bilinear", align_corners=False)
            m = F.interpolate(crops[:, 3:], size=self.input_size, mode="nearest")
            crops = torch.cat([rgb, m], dim=1)
        return crops

    @torch.no_grad()  # the result is boolean: no gradient flows through it (train with training_loss)
    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        """Refined (H, W) boolean mask of one instance: ``image`` (3, H, W) in [0, 1], ``mask`` (H, W) binary."""
        _check_inputs(image, {"mask": mask})
        boxes = extract_patches(mask, self.patch_size, self.iou_threshold, self.max_patches)
        if len(boxes) == 0:
            return mask.bool()
        probs = self.refiner(self.patches(image, mask, boxes)).softmax(dim=1)[:, 1:]  # K, 1, S, S
        if self.input_size != self.patch_size:
            probs = F.interpolate(probs, size=self.patch_size, mode="bilinear", align_corners=False)
        H, W = mask.shape
        P, pad = self.patch_size, self.patch_size
        total = mask.new_zeros(H + 2 * pad, W + 2 * pad, dtype=probs.dtype)
        count = torch.zeros_like(total)
        for box, p in zip(boxes, probs[:, 0]):
            x0, y0 = int(round(box[0].item())) + pad, int(round(box[1].item())) + pad
            total[y0 : y0 + P, x0 : x0 + P] += p
            count[y0 : y0 + P, x0 : x0 + P] += 1
        total, count = total[pad:-pad, pad:-pad], count[pad:-pad, pad:-pad]
        refined = mask.bool().clone()
        covered = count > 0
        refined[covered] = (total[covered] / count[covered]) > 0.5
        return refined

    def training_loss(self, image: Tensor, coarse: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy of the refiner on the boundary patches of (image, coarse, true) masks."""
        _check_inputs(image, {"coarse": coarse, "target": target})
        boxes = extract_patches(coarse, self.patch_size, self.iou_threshold, self.max_patches)
        if len(boxes) == 0:  # no boundary: a zero that still reaches the parameters (backward works)
            return sum(p.sum() for p in self.refiner.parameters()) * 0.0
        x = self.patches(image, coarse, boxes)
        y = torch.stack([_crop(target[None].float(), b) for b in boxes])  # K, 1, P, P
        if self.input_size != self.patch_size:
            y = F.interpolate(y, size=self.input_size, mode="nearest")
        return F.cross_entropy(self.refiner(x), y[:, 0].long())
