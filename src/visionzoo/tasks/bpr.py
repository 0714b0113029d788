"""Boundary Patch Refinement (BPR) of coarse instance masks.

Paper: Tang et al., "Look Closer to Segment Better: Boundary Patch Refinement for Instance
Segmentation", CVPR 2021; official code: github.com/chenhang98/BPR.

1. Boundary pixels of the coarse mask are the centres of square patches; a patch that would
   reach past the image edge is moved inside the image, as the official code does.
2. Overlapping patches are thinned by NMS at a configurable IoU (a patch's score is the
   number of boundary pixels it covers, so patches that see more boundary are kept).
3. Image and mask patches are resized to the refiner's input size; the refiner sees 4
   channels, the normalised RGB and the mask as -1 (background) / +1 (foreground), as in the
   official code, and predicts 2 classes (background, foreground).
4. The logits are resized back to the patch size and turned into probabilities (softmax), in
   the official order; foreground probabilities are averaged where patches overlap and pixels
   with a mean above 0.5 are foreground. Pixels no patch covers keep the coarse label.

The paper's refiner, HRNetV2-W18-Small-v2 (the official ``configs/bpr/hrnet18s_128.py``), is
the default of ``create_refiner``; any network with 4 input and 2 output channels that returns
logits (at any resolution: they are resized) works.

Where visionzoo departs from the official code, on purpose:

- The image edge is not a boundary (the official 3x3 box filter zero-pads, so a mask touching
  the image edge gets boundary pixels, and patches, all along it; a full mask gets patches).
  An object cut by the image edge has no boundary there to refine.
- The NMS score of a patch is the number of boundary pixels inside it, not the official
  strength of the centre pixel's boundary, ``min(n, 9 - n) / 4.5`` over its 3x3 window. The
  official score takes only 4 values, so its ties are broken by the sort order and its box set
  is not reproducible; both cover the boundary equally well.
- A patch moved inside the image ends at the last column / row (the official code moves a box
  past the right / bottom edge to end at W - 1 / H - 1, so the last column and row are never
  refined), and a patch that two boundary pixels' boxes both move to is refined once.
- Images smaller than the patch are refined (the official code leaves an instance unrefined
  when its image has H <= patch_size or W <= patch_size): along a side shorter than the patch,
  patches stay centred on their boundary pixel and are zero-padded outside the image (mean
  colour, background mask).
- Patches are ``patch_size`` wide for odd sizes too (the official boxes are 2 * (P // 2)).

Inputs: an image (3, H, W) torch tensor of floats in [0, 1] (an integer image is refused:
convert it with ``image.float() / 255``) and binary masks (H, W): bool, or integers or floats
that are all 0 or 1. Soft or 0/255 masks are refused rather than thresholded, since the
threshold is the caller's choice. ``forward`` returns a boolean mask, through which no
gradient can flow, so it runs without autograd; train with ``training_loss``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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


def _inner_band(mask: Tensor, width: int) -> Tensor:
    """Pixels of a (H, W) binary mask within ``width`` pixels (chessboard distance) of a pixel
    outside it, the image's surroundings counting as outside."""
    m = F.pad(mask.float()[None, None], (width,) * 4)  # zeros beyond the image edge
    eroded = -F.max_pool2d(-m, 2 * width + 1, stride=1)  # 1, 1, H, W
    return mask.bool() & (eroded[0, 0] == 0)


def boundary_iou(pred: Tensor, target: Tensor, width: int = 2) -> float:
    """IoU restricted to the boundary bands of both masks (Cheng et al., 2021): each mask's
    pixels within ``width`` of its contour. As in the authors' code (``mask_to_boundary``), the
    image edge is a contour: a mask that reaches it has a band along it (unlike
    :func:`boundary_map`, which places the refinement patches). 1.0 where both bands are empty."""
    pb, tb = _inner_band(pred, width), _inner_band(target, width)
    inter = (pb & tb).sum().item()
    union = (pb | tb).sum().item()
    return inter / union if union else 1.0


def _move_inside(start: Tensor, size: int, patch_size: int) -> Tensor:
    """Patch starts moved so that [start, start + patch_size) lies in [0, size); along a side
    shorter than the patch they are left centred (the patch is zero-padded there)."""
    return start.clamp(0, size - patch_size) if size >= patch_size else start


def extract_patches(mask: Tensor, patch_size: int, iou_threshold: float, max_patches: int | None = None) -> Tensor:
    """Boxes (K, 4) as (x0, y0, x1, y1), square, centred on boundary pixels, after NMS.

    After the NMS, a box that reaches past the image edge is moved inside the image, as the
    official ``_force_move_back`` does (the moved box holds all of the image the centred box
    held, so no boundary pixel loses its cover; moving before the NMS would pack boxes at the
    edge closer together and let the NMS drop some of them); boxes made identical by the move
    are kept once. Along a side shorter than ``patch_size`` the boxes stay centred and reach
    outside the image. The NMS score is the number of boundary pixels in a box (the official
    code scores the centre pixel's boundary strength instead; see the module docstring).
    """
    b = boundary_map(mask)
    ys, xs = torch.nonzero(b, as_tuple=True)
    if ys.numel() == 0:
        return torch.zeros(0, 4, device=mask.device)
    H, W = b.shape
    P = patch_size
    # integer corners, exactly patch_size apart (half-pixel corners rounded to even gave crops
    # of patch_size +- 1 for odd sizes); the boundary pixel sits at the centre, or just past it
    x0, y0 = xs - P // 2, ys - P // 2
    boxes = torch.stack([x0, y0, x0 + P, y0 + P], dim=1).float()
    # score: boundary pixels inside each box (a summed-area table makes this O(1) per box)
    sat = F.pad(b.float().cumsum(0).cumsum(1), (1, 0, 1, 0))
    x0, x1 = x0.clamp(0, W), (x0 + P).clamp(0, W)
    y0, y1 = y0.clamp(0, H), (y0 + P).clamp(0, H)
    scores = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    kept = boxes[nms(boxes, scores, iou_threshold)].long()  # highest score first
    starts = zip(_move_inside(kept[:, 0], W, P).tolist(), _move_inside(kept[:, 1], H, P).tolist())
    x0, y0 = torch.tensor(list(dict.fromkeys(starts)), device=kept.device).view(-1, 2).unbind(1)  # each distinct box once, in score order
    moved = torch.stack([x0, y0, x0 + P, y0 + P], dim=1)
    if max_patches is not None:
        moved = moved[:max_patches]
    return moved.float()


def _corners(boxes: Tensor) -> list[list[int]]:
    """The (K, 4) boxes as integer corners, read to the host in one transfer (one GPU
    synchronisation for all of them, not one per box)."""
    return boxes.round().long().tolist()


def _crop(x: Tensor, box: Sequence[int]) -> Tensor:
    """Crop (C, H, W) at integer corners (x0, y0, x1, y1), zero-padding outside the image."""
    x0, y0, x1, y1 = box
    C, H, W = x.shape
    out = x.new_zeros(C, y1 - y0, x1 - x0)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if sx1 > sx0 and sy1 > sy0:
        out[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = x[:, sy0:sy1, sx0:sx1]
    return out


def _check_inputs(image: Tensor, masks: dict[str, Tensor]) -> None:
    """One clear error for an image that is not a (3, H, W) tensor of finite floats in [0, 1]
    with H, W >= 1, or a mask that is not an (H, W) binary tensor."""
    for name, x in {"image": image, **masks}.items():
        if not isinstance(x, Tensor):
            hint = f" (convert with torch.from_numpy({name}))" if type(x).__module__ == "numpy" else ""
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__module__}.{type(x).__qualname__}{hint}")
    shapes = ", ".join(f"{name} {tuple(m.shape)}" for name, m in masks.items())
    if image.ndim != 3 or image.shape[0] != 3 or any(m.shape != image.shape[1:] for m in masks.values()):
        raise ValueError(f"expected image (3, H, W) and masks (H, W); got image {tuple(image.shape)}, {shapes}")
    if image.numel() == 0:
        raise ValueError(f"image is empty: expected (3, H, W) with H, W >= 1, got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be floats in [0, 1], got dtype {image.dtype} (convert with image.float() / 255)")
    if not torch.isfinite(image).all():
        raise ValueError(f"image has {int((~torch.isfinite(image)).sum())} NaN or Inf values; it must be finite floats in [0, 1]")
    # a margin for resampling overshoot (bicubic); 0-255 or normalised images fall outside it
    if image.min() < -0.5 or image.max() > 1.5:
        raise ValueError(f"image must be in [0, 1] (normalisation happens inside), got values in [{image.min():.3g}, {image.max():.3g}]")
    for name, m in masks.items():
        if m.dtype != torch.bool and not ((m == 0) | (m == 1)).all():
            values = torch.unique(m)
            shown = ", ".join(f"{v:g}" for v in values[:4].tolist()) + (", ..." if len(values) > 4 else "")
            raise ValueError(f"{name} must be binary (bool, or values 0 and 1), got values {shown}: threshold a soft mask, divide a 0/255 mask by 255")


def _input_channels(model: nn.Module) -> int | None:
    """The input channels a network declares: the first ``in_chans`` attribute (visionzoo and
    timm models) or the first convolution's ``in_channels`` met in module order; None if neither."""
    for m in model.modules():
        if isinstance(getattr(m, "in_chans", None), int):
            return m.in_chans
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m.in_channels
    return None


def create_refiner(name: str = "hrnet_w18_small_v2") -> nn.Module:
    """A refinement network with 4 input channels (RGB + mask) and 2 output classes.

    The default is the paper's refiner as the official code builds it
    (``configs/bpr/hrnet18s_128.py``): HRNetV2-W18-Small-v2, i.e. a stem, 2 bottlenecks of 64
    channels, branch widths 18/36/72/144 with 1/1/3/2 modules, and the HRNetV2 head (all four
    branches upsampled to 1/4 and concatenated, a 1x1 conv-BN-ReLU 270 -> 270 and a 1x1
    classifier 270 -> 2): 3,935,278 parameters, as the official model. The official
    ``conv1(rgb) + conv_mask(mask)`` is here one 4-channel ``conv1``, the same function and the
    same number of parameters. No pretrained weights are loaded (the official training starts
    from ImageNet weights). ``"hrnet_w18_small"`` is the smaller v1 (widths 16/32/64/128,
    1.54 M parameters). ``name`` may be any visionzoo segmentation network or backbone
    accepted by :func:`visionzoo.tasks.create_segmentation_model` (an FPN head is added to
    backbones other than HRNet).
    """
    from .segmentation import create_segmentation_model

    head = "hrnetv2" if name.startswith("hrnet") else "fpn"
    if name in ("unext", "unext_s"):
        return create_segmentation_model(name, num_classes=2, in_chans=4)
    return create_segmentation_model(name, num_classes=2, in_chans=4, head=head)


class BoundaryPatchRefiner(nn.Module):
    """Refine a coarse instance mask with a network run on boundary patches.

    Follows the official BPR inference (patches, then refiner input: normalised RGB and the
    mask as -1/+1, then logits resized to the patch, then softmax, then averaging), except
    where the module docstring says otherwise: the image edge is not a boundary, the NMS
    scores patches by the boundary pixels they cover, and images smaller than a patch are
    refined (with zero-padded patches) rather than skipped.

    Args:
        refiner: network (B, 4, S, S) -> (B, 2, S', S') logits; the input channels are
            R, G, B (normalised with ``mean``, ``std``) and the coarse mask as -1/+1.
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
        """(K, 4, S, S) refiner inputs: normalised RGB, and the coarse mask as -1 (background)
        and +1 (foreground) as in the official code (``(m - 0.5) / 0.5``), resized to S."""
        return self._patches(image, mask, _corners(boxes))

    def _patches(self, image: Tensor, mask: Tensor, corners: list[list[int]]) -> Tensor:
        """:meth:`patches` at corners already read to the host (by a caller that uses them again)."""
        # in the refiner's dtype: a float64 (or float16) image is refined as a float32 one
        dtype = next((p.dtype for p in self.refiner.parameters() if p.is_floating_point()), torch.float32)
        x = torch.cat([((image - self.mean) / self.std).to(dtype), mask[None].to(dtype)], dim=0)  # 4, H, W
        crops = torch.stack([_crop(x, b) for b in corners])  # K, 4, P, P; zero padding: mean colour, background
        rgb, m = crops[:, :3], crops[:, 3:] * 2 - 1
        if self.input_size != self.patch_size:
            rgb = F.interpolate(rgb, size=self.input_size, mode="bilinear", align_corners=False)
            m = F.interpolate(m, size=self.input_size, mode="nearest-exact")  # centred as the bilinear RGB
        return torch.cat([rgb, m], dim=1)

    def _logits(self, x: Tensor) -> Tensor:
        """The refiner's (K, 2, S', S') logits, with one clear error for a refiner that does not
        take the 4 channels (RGB + mask) or does not return 2 classes."""
        try:
            logits = self.refiner(x)
        except (RuntimeError, ValueError) as e:  # diagnosed only on failure: a working refiner is never refused
            c = _input_channels(self.refiner)
            if c == 4 or (c is None and "got 4 channels" not in str(e)):  # torch: "... to have 3 channels, but got 4 channels"
                raise
            takes = f"its first layer takes {c}" if c is not None else "it does not"
            raise ValueError(
                f"the refiner must take 4 input channels (RGB + mask), but {takes}: build it with in_chans=4, e.g. "
                f"create_refiner(); on the (K, 4, S, S) patches it raised: {e}"
            ) from e
        if not isinstance(logits, Tensor) or logits.ndim != 4 or logits.shape[:2] != (len(x), 2):
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"the refiner must return (K, 2, S, S) logits (background, foreground) for K = {len(x)} patches, got {shape}")
        return logits

    @torch.no_grad()  # the result is boolean: no gradient flows through it (train with training_loss)
    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        """Refined (H, W) boolean mask of one instance: ``image`` (3, H, W) in [0, 1], ``mask`` (H, W) binary."""
        _check_inputs(image, {"mask": mask})
        boxes = extract_patches(mask, self.patch_size, self.iou_threshold, self.max_patches)
        if len(boxes) == 0:
            return mask.bool().clone()  # (a bool mask's .bool() is the caller's own tensor)
        P = self.patch_size
        corners = _corners(boxes)  # (read once: the patches are cut and pasted back at them)
        logits = self._logits(self._patches(image, mask, corners))
        if logits.shape[-2:] != (P, P):  # official order: resize the logits to the patch, then softmax
            logits = F.interpolate(logits, size=P, mode="bilinear", align_corners=False)
        probs = logits.softmax(dim=1)[:, 1]  # K, P, P
        H, W = mask.shape
        pad = P  # boxes reach outside the image only along a side shorter than the patch
        total = mask.new_zeros(H + 2 * pad, W + 2 * pad, dtype=probs.dtype)
        count = torch.zeros_like(total)
        for (x0, y0, _, _), p in zip(corners, probs):
            x0, y0 = x0 + pad, y0 + pad
            total[y0 : y0 + P, x0 : x0 + P] += p
            count[y0 : y0 + P, x0 : x0 + P] += 1
        total, count = total[pad:-pad, pad:-pad], count[pad:-pad, pad:-pad]
        refined = mask.bool().clone()
        covered = count > 0
        refined[covered] = (total[covered] / count[covered]) > 0.5
        return refined

    def training_loss(self, image: Tensor, coarse: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy of the refiner on the boundary patches of (image, coarse, true) masks,
        at the refiner's input size (the target patch resized by nearest neighbour, pixel centres aligned
        as the bilinear resizes align them; logits of another
        size are resized to it, as mmseg does)."""
        _check_inputs(image, {"coarse": coarse, "target": target})
        boxes = extract_patches(coarse, self.patch_size, self.iou_threshold, self.max_patches)
        if len(boxes) == 0:  # no boundary: a zero that still reaches the parameters (backward works)
            return sum(p.sum() for p in self.refiner.parameters()) * 0.0
        corners = _corners(boxes)  # (read once: the inputs and the targets are cut at them)
        x = self._patches(image, coarse, corners)
        y = torch.stack([_crop(target[None].float(), b) for b in corners])  # K, 1, P, P
        if self.input_size != self.patch_size:
            y = F.interpolate(y, size=self.input_size, mode="nearest-exact")
        logits = self._logits(x)
        if logits.shape[-2:] != y.shape[-2:]:
            logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, y[:, 0].long())
