"""Boundary patch refinement: patch extraction, identity reassembly, learning on shapes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from visionzoo.tasks import create_segmentation_model
from visionzoo.tasks.bpr import BoundaryPatchRefiner, boundary_iou, boundary_map, create_refiner, extract_patches


class MaskEcho(nn.Module):
    """Refiner that returns the mask channel (-1 background, +1 foreground) as its prediction."""

    def forward(self, x):
        m = x[:, 3:4]
        return torch.cat([-10 * m, 10 * m], dim=1)


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



def test_boundary_iou_is_cheng_et_als_also_at_the_image_edge():
    """Boundary IoU as the authors' mask_to_boundary computes it (a mask's pixels within d of a
    pixel outside it, beyond the image edge included), here by brute force over each pixel's
    window. It used to give masks that reach the image edge no band there: 0 for a full mask
    against one missing its top row, where the authors' code gives 0.75 (97x131 pixels, d = 2)."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    def band(m, d):
        windows = sliding_window_view(np.pad(m, d), (2 * d + 1, 2 * d + 1))  # H, W, 2d+1, 2d+1
        return m & ~windows.all(axis=(-2, -1))

    yy, xx = np.mgrid[:37, :53]
    cases = [(np.ones((37, 53), bool), yy > 0), (xx < 20, xx < 23), ((yy < 15) & (xx < 15), (yy < 17) & (xx < 12)),
             ((yy - 18) ** 2 + (xx - 26) ** 2 < 100, (yy - 19) ** 2 + (xx - 25) ** 2 < 90)]
    for d in (1, 2, 3):
        for truth, pred in cases:
            t, p = band(truth, d), band(pred, d)
            want = (t & p).sum() / (t | p).sum()
            assert boundary_iou(torch.from_numpy(pred), torch.from_numpy(truth), width=d) == pytest.approx(want, abs=1e-12)
    assert boundary_iou(torch.zeros(5, 5), torch.zeros(5, 5)) == 1.0


def test_identity_refiner_gives_back_the_coarse_mask():
    mask = disk(80, 96, 40, 50, 22)
    image = torch.rand(3, 80, 96)
    # odd sizes too, and ratios that are not whole: the mask channel was resized by torch's legacy
    # "nearest", half a pixel off the bilinear RGB and logits (31 pixels of a square changed at 63 -> 96)
    for patch, size in ((16, 16), (16, 32), (32, 64), (15, 15), (33, 66), (63, 96), (48, 72)):
        bpr = BoundaryPatchRefiner(MaskEcho(), patch_size=patch, input_size=size, iou_threshold=0.3)
        out = bpr(image, mask)
        assert torch.equal(out, mask)


def test_images_of_other_float_dtypes_are_refined_as_float32_and_the_result_is_a_new_tensor():
    """A float64 image met the float32 refiner ("expects a float32 tensor"); a mask without
    boundary came back as the caller's own bool tensor."""
    mask = disk(40, 48, 20, 24, 10)
    image = torch.rand(3, 40, 48)
    torch.manual_seed(0)
    bpr = BoundaryPatchRefiner(create_refiner(), patch_size=16, input_size=32).eval()
    ref = bpr(image, mask)
    assert torch.equal(bpr(image.double(), mask), ref)
    assert torch.equal(bpr(image.half(), mask), bpr(image.half().float(), mask))
    empty = torch.zeros(40, 48, dtype=torch.bool)
    out = bpr(image, empty)
    assert torch.equal(out, empty) and out.data_ptr() != empty.data_ptr()


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


def test_default_refiner_is_the_official_hrnetv2_w18_small_v2():
    """The official configs/bpr/hrnet18s_128.py builds HRNetV2-W18-Small-v2: 2 bottlenecks of 64,
    widths 18/36/72/144, an FCN head on the concatenated branches; 3,935,278 parameters (timm's
    hrnet_w18_small_v2 trunk 3,860,720 + the mask conv 1*64*3*3 = 576 + the head 270*270 + 2*270
    + 270*2 + 2 = 73,982). The default used to be v1 (widths 16/32/64/128, 1,537,058)."""
    refiner = create_refiner()
    assert refiner.backbone.model_name == "hrnet_w18_small_v2" and refiner.backbone.in_chans == 4
    assert list(refiner.backbone.branch_channels) == [18, 36, 72, 144]
    assert sum(p.numel() for p in refiner.parameters()) == 3_935_278
    out = refiner(torch.randn(2, 4, 64, 64))
    assert out.shape == (2, 2, 64, 64)


def test_refiner_sees_the_mask_as_minus_one_and_one():
    """Official encoder_decoder_refine.py: the mask channel is (m - 0.5) / 0.5, in inference and in
    training (it used to be 0/1, which an official checkpoint does not expect)."""
    seen = []
    refiner = MaskEcho()
    refiner.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 3].clone()))
    image, mask = torch.rand(3, 40, 48), disk(40, 48, 20, 24, 10)
    for P, S in ((16, 16), (16, 32)):
        bpr = BoundaryPatchRefiner(refiner, patch_size=P, input_size=S)
        assert torch.equal(bpr(image, mask), mask)
        bpr.training_loss(image, mask, mask)
    assert len(seen) == 4
    for m in seen:
        assert set(m.unique().tolist()) == {-1.0, 1.0}
    x0, y0, x1, y1 = extract_patches(mask, 16, 0.25)[0].long().tolist()
    assert torch.equal(seen[0][0], mask[y0:y1, x0:x1].float() * 2 - 1)


def test_patches_at_the_image_edge_are_moved_inside():
    """Official _force_move_back: a patch reaching past the image edge is moved inside the image
    (it used to be zero-padded: a false foreground/background edge in the mask channel), without
    the official off-by-one that never covers the last row and column. Along a side shorter than
    the patch, patches stay centred and padded (the official code skips such images)."""
    H, W = 70, 90
    mask = disk(H, W, 35, 0, 20) | disk(H, W, H - 1, W - 1, 18)  # cut by the left edge; in the corner
    bnd = boundary_map(mask)
    assert bnd[:, 0].any() and bnd[-1].any() and bnd[:, -1].any()
    for P in (16, 31, 32):
        for thr in (0.25, 0.5, 1.0):
            boxes = extract_patches(mask, P, thr).long()
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all(), (P, thr)
            assert torch.all(boxes[:, 2:] - boxes[:, :2] == P)
            covered = torch.zeros(H, W, dtype=torch.bool)
            for x0, y0, x1, y1 in boxes.tolist():
                covered[y0:y1, x0:x1] = True
            assert covered[bnd].all(), (P, thr, int((bnd & ~covered).sum()))
        bpr = BoundaryPatchRefiner(MaskEcho(), patch_size=P, input_size=2 * P)
        assert torch.equal(bpr(torch.rand(3, H, W), mask), mask)
    # a 20-pixel-high image, patches of 32: moved inside along x, centred and padded along y
    mask = disk(20, 90, 10, 0, 8) | disk(20, 90, 10, 89, 8)
    boxes = extract_patches(mask, 32, 0.25).long()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 90).all() and (boxes[:, 1] < 0).all()
    assert torch.equal(BoundaryPatchRefiner(MaskEcho(), patch_size=32, input_size=64)(torch.rand(3, 20, 90), mask), mask)


class Stripes(nn.Module):
    """Refiner whose foreground logits alternate -1, 10 along x (background logit 0)."""

    def forward(self, x):
        fg = torch.tensor([-1.0, 10.0]).repeat(x.shape[-1] // 2).expand(x.shape[0], 1, *x.shape[-2:])
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


def test_logits_are_resized_to_the_patch_before_the_softmax():
    """Official order (encoder_decoder.py): the logits are resized to the patch, then softmax. With
    these logits, upsampled 16 -> 32, resizing the probabilities instead gives another mask."""
    logits = Stripes()(torch.zeros(1, 4, 16, 16))
    official = F.interpolate(logits, size=32, mode="bilinear", align_corners=False).softmax(1)[0, 1] > 0.5
    other = F.interpolate(logits.softmax(1)[:, 1:], size=32, mode="bilinear", align_corners=False)[0, 0] > 0.5
    assert not torch.equal(official, other)
    mask = disk(64, 64, 32, 32, 15)
    bpr = BoundaryPatchRefiner(Stripes(), patch_size=32, input_size=16, max_patches=1)
    x0, y0, x1, y1 = extract_patches(mask, 32, 0.25, max_patches=1)[0].long().tolist()
    assert torch.equal(bpr(torch.rand(3, 64, 64), mask)[y0:y1, x0:x1], official)


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
    # a NaN pixel used to be accepted (the covered pixels around it turned background)
    for bad in (float("nan"), float("inf")):
        broken = image.clone()
        broken[0, 5, 5] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            bpr(broken, mask)
        with pytest.raises(ValueError, match="NaN or Inf"):
            bpr.training_loss(broken, mask, mask)
    # numpy arrays used to raise AttributeError
    with pytest.raises(TypeError, match=r"image must be a torch.Tensor.*torch.from_numpy\(image\)"):
        bpr(image.numpy(), mask)
    with pytest.raises(TypeError, match=r"mask must be a torch.Tensor.*torch.from_numpy\(mask\)"):
        bpr(image, mask.numpy())
    with pytest.raises(TypeError, match=r"target must be a torch.Tensor"):
        bpr.training_loss(image, mask, mask.numpy())
    # an empty image used to raise max_pool2d's RuntimeError
    for shape in ((3, 0, 0), (3, 0, 5), (3, 4, 0)):
        with pytest.raises(ValueError, match=r"image is empty.*H, W >= 1"):
            bpr(torch.rand(shape), torch.zeros(shape[1:], dtype=torch.bool))
    # a refiner for RGB only used to raise torch's convolution error
    rgb_only = [nn.Conv2d(3, 2, 3, padding=1), create_segmentation_model("unext_s", num_classes=2)]
    for refiner in rgb_only:
        wrong = BoundaryPatchRefiner(refiner, patch_size=16, input_size=16)
        with pytest.raises(ValueError, match=r"4 input channels \(RGB \+ mask\)"):
            wrong(image, mask)
        with pytest.raises(ValueError, match=r"4 input channels \(RGB \+ mask\)"):
            wrong.training_loss(image, mask, mask)
    with pytest.raises(ValueError, match=r"must return \(K, 2, S, S\) logits"):
        BoundaryPatchRefiner(nn.Conv2d(4, 1, 1), patch_size=16, input_size=16)(image, mask)


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


def test_no_host_transfer_per_patch_and_boxes_on_the_masks_device():
    """Inference reads the patch corners to the host once, not twice per patch with ``.item()``
    (each a GPU synchronisation); the masks come out equal. An empty set of boxes is made on
    the mask's device: with the default device set to meta (standing in for a GPU run, where
    the mask is not on the default device) it stays on the CPU beside the mask."""

    class ScalarReads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += func is torch.ops.aten._local_scalar_dense.default  # .item(), int(t), bool(t)
            return func(*args, **(kwargs or {}))

    image = torch.rand(3, 80, 96)
    bpr = BoundaryPatchRefiner(MaskEcho(), patch_size=16, input_size=16, iou_threshold=0.3)
    reads = []
    for r in (10, 25):  # 5 and 19 patches
        mask = disk(80, 96, 40, 50, r)
        with ScalarReads() as mode:
            assert torch.equal(bpr(image, mask), mask)
        reads.append(mode.count)
    assert len(extract_patches(disk(80, 96, 40, 50, 25), 16, 0.3)) > len(extract_patches(disk(80, 96, 40, 50, 10), 16, 0.3))
    assert reads[0] == reads[1], reads  # independent of the number of patches
    empty = torch.zeros(8, 8)
    with torch.device("meta"):
        assert extract_patches(empty, 4, 0.3).device == empty.device


def test_the_patch_corners_are_read_to_the_host_once_a_call(monkeypatch):
    """Inference and the training loss each read the boxes' corners from the device once (one
    GPU synchronisation), where cutting the patches and pasting them back (or cutting the
    targets) read them twice."""
    from visionzoo.tasks import bpr as bpr_module

    calls = []
    real = bpr_module._corners
    monkeypatch.setattr(bpr_module, "_corners", lambda boxes: calls.append(len(boxes)) or real(boxes))
    image, mask = torch.rand(3, 80, 96), disk(80, 96, 40, 50, 25)
    bpr = BoundaryPatchRefiner(MaskEcho(), patch_size=16, input_size=16, iou_threshold=0.3)
    assert torch.equal(bpr(image, mask), mask)
    assert len(calls) == 1 and calls[0] > 1, calls
    calls.clear()
    refiner = BoundaryPatchRefiner(create_refiner(), patch_size=16, input_size=16, iou_threshold=0.3)
    assert torch.isfinite(refiner.training_loss(image, disk(80, 96, 40, 50, 20), mask))
    assert len(calls) == 1, calls
