"""Boundary patch refinement: patch extraction, identity reassembly, learning on shapes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from visionzoo.tasks.bpr import BoundaryPatchRefiner, boundary_iou, boundary_map, create_refiner, extract_patches


class MaskEcho(nn.Module):
    """Refiner that returns the mask channel as its prediction."""

    def forward(self, x):
        m = x[:, 3:4]
        return torch.cat([(1 - m) * 20 - 10, m * 20 - 10], dim=1)


def disk(H, W, cy, cx, r):
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    return ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r


def test_boundary_and_nms():
    mask = disk(64, 64, 32, 32, 15)
    b = boundary_map(mask)
    assert b.any() and not b[32, 32] and not b[0, 0]
    dense = extract_patches(mask, 16, iou_threshold=0.9)
    sparse = extract_patches(mask, 16, iou_threshold=0.1)
    assert 0 < len(sparse) < len(dense)
    assert torch.all(sparse[:, 2] - sparse[:, 0] == 16)


def test_identity_refiner_gives_back_the_coarse_mask():
    mask = disk(80, 96, 40, 50, 22)
    image = torch.rand(3, 80, 96)
    for patch, size in ((16, 16), (16, 32), (32, 64), (15, 15), (33, 66)):  # odd sizes too
        bpr = BoundaryPatchRefiner(MaskEcho(), patch_size=patch, input_size=size, iou_threshold=0.3)
        out = bpr(image, mask)
        assert torch.equal(out, mask)


def test_patches_of_odd_size_are_square_and_centred():
    mask = disk(97, 131, 45, 60, 30)
    for P in (15, 33, 63):
        boxes = extract_patches(mask, P, iou_threshold=0.5)
        assert len(boxes) and torch.all(boxes[:, 2] - boxes[:, 0] == P) and torch.all(boxes[:, 3] - boxes[:, 1] == P)
        assert torch.equal(boxes, boxes.round())  # integer corners: every crop is P x P


def test_training_loss_without_boundary_can_be_backpropagated():
    """An empty or full coarse mask has no boundary patch: the loss is zero and backward runs."""
    bpr = BoundaryPatchRefiner(create_refiner("unext_s"), patch_size=16, input_size=16)
    image, target = torch.rand(3, 40, 48), disk(40, 48, 20, 24, 10)
    for coarse in (torch.zeros(40, 48, dtype=torch.bool), torch.ones(40, 48, dtype=torch.bool)):
        loss = bpr.training_loss(image, coarse, target)
        loss.backward()
        assert float(loss.detach()) == 0.0


def _shape_task(g):
    H = W = 64
    cy, cx = (torch.randint(24, 40, (2,), generator=g)).tolist()
    r = int(torch.randint(10, 18, (1,), generator=g))
    true = disk(H, W, cy, cx, r)
    image = torch.full((3, H, W), 0.2)
    image[:, true] = 0.8
    image = (image + 0.05 * torch.randn(3, H, W, generator=g)).clamp(0, 1)
    blurred = F.avg_pool2d(true.float()[None, None], 9, stride=1, padding=4)[0, 0]
    coarse = F.interpolate(blurred[None, None], scale_factor=0.25, mode="bilinear")
    coarse = F.interpolate(coarse, size=(H, W), mode="nearest")[0, 0] > 0.5  # blocky, blurred outline
    return image, coarse, true


def test_trained_refiner_beats_the_coarse_mask():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    refiner = create_refiner("unext_s")
    bpr = BoundaryPatchRefiner(refiner, patch_size=32, input_size=32, iou_threshold=0.3, max_patches=16)
    opt = torch.optim.AdamW(refiner.parameters(), lr=3e-3)
    refiner.train()
    for _ in range(120):
        image, coarse, true = _shape_task(g)
        loss = bpr.training_loss(image, coarse, true)
        opt.zero_grad()
        loss.backward()
        opt.step()
    refiner.eval()
    before, after = [], []
    with torch.no_grad():
        for _ in range(8):
            image, coarse, true = _shape_task(g)
            before.append(boundary_iou(coarse, true))
            after.append(boundary_iou(bpr(image, coarse), true))
    assert sum(after) / 8 > sum(before) / 8 + 0.05, (before, after)


def test_default_refiner_is_hrnetv2_w18_small():
    refiner = create_refiner()
    assert refiner.backbone.model_name == "hrnet_w18_small" and refiner.backbone.in_chans == 4
    out = refiner(torch.randn(2, 4, 64, 64))
    assert out.shape == (2, 2, 64, 64)


def test_masks_must_be_binary_and_images_floats_in_unit_range():
    """A soft (0.2/0.9) or 0/255 mask used to be taken as is (soft pixels became foreground
    outside the patches); a uint8 image was normalised as if in [0, 1]."""
    bpr = BoundaryPatchRefiner(MaskEcho(), patch_size=16, input_size=16)
    image, mask = torch.rand(3, 40, 48), disk(40, 48, 20, 24, 10)
    for coarse in (mask.float() * 0.7 + 0.2, mask.float() * 255):
        with pytest.raises(ValueError, match="mask must be binary"):
            bpr(image, coarse)
        with pytest.raises(ValueError, match="coarse must be binary"):
            bpr.training_loss(image, coarse, mask)
        with pytest.raises(ValueError, match="target must be binary"):
            bpr.training_loss(image, mask, coarse)
    for binary in (mask, mask.float(), mask.to(torch.uint8)):
        assert torch.equal(bpr(image, binary), mask)
    with pytest.raises(ValueError, match=r"image.float\(\) / 255"):
        bpr((image * 255).byte(), mask)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        bpr.training_loss(image * 255, mask, mask)
    assert torch.equal(bpr(image * 1.01 - 0.005, mask), mask)  # bicubic overshoot is no error


def test_training_loss_refuses_a_target_of_another_size():
    bpr = BoundaryPatchRefiner(MaskEcho(), patch_size=16, input_size=16)
    image, mask = torch.rand(3, 40, 48), disk(40, 48, 20, 24, 10)
    with pytest.raises(ValueError, match=r"target \(30, 48\)"):
        bpr.training_loss(image, mask, mask[:30])


@pytest.mark.parametrize("kwargs, match", [
    ({"patch_size": 0}, "patch_size must be an int >= 1"),
    ({"input_size": -1}, "input_size must be an int >= 1"),
    ({"max_patches": 0}, "max_patches must be an int >= 1"),
    ({"iou_threshold": 1.5}, r"in \[0, 1\]"),
    ({"iou_threshold": -0.1}, r"in \[0, 1\]"),
])
def test_refiner_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BoundaryPatchRefiner(MaskEcho(), **kwargs)


def test_forward_builds_no_autograd_graph():
    """The refined mask is boolean, so no gradient can flow through it: the refiner runs without
    autograd (in training mode too), as inference should."""
    seen = []

    class Probe(MaskEcho):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x):
            seen.append(torch.is_grad_enabled())
            return super().forward(x) * self.w

    bpr = BoundaryPatchRefiner(Probe(), patch_size=16, input_size=16).train()
    bpr(torch.rand(3, 40, 48), disk(40, 48, 20, 24, 10))
    assert seen == [False]
