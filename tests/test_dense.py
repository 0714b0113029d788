"""Segmentation heads and Mask R-CNN on visionzoo backbones."""

import pytest
import torch
import torch.nn.functional as F

import visionzoo
from visionzoo.detection import mask_rcnn
from visionzoo.tasks import FlowAlign, create_segmentation_model


@pytest.mark.parametrize("head, flow", [("fpn", False), ("fpn", True), ("aspp", False)])
def test_segmentation_logits_at_input_resolution(head, flow):
    m = create_segmentation_model("vit_tiny_patch16_224", 5, head=head, flow_align=flow, img_size=64, channels=32)
    out = m(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 5, 64, 96)
    out.mean().backward()
    assert m.backbone.patch_embed.proj.weight.grad is not None


def test_flow_align_starts_as_bilinear_upsampling_and_follows_the_flow():
    fa = FlowAlign(8)
    fine, coarse = torch.randn(1, 8, 16, 16), torch.randn(1, 8, 8, 8)
    expect = F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=True)
    torch.testing.assert_close(fa(fine, coarse), expect, rtol=1e-5, atol=1e-5)
    # a constant flow of +1 fine pixel along x samples the map shifted by one pixel
    with torch.no_grad():
        fa.flow.weight.zero_()
        fa.flow.bias = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
    shifted = fa(fine, coarse)
    torch.testing.assert_close(shifted[..., :-1], expect[..., 1:], rtol=1e-4, atol=1e-4)


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="head must be"):
        create_segmentation_model("vit_tiny_patch16_224", 3, head="unet")


@pytest.mark.parametrize("backbone", ["vit_tiny_patch16_224", "convnext_tiny", "swin_tiny_patch4_window7_224"])
def test_mask_rcnn_trains_and_predicts(backbone):
    torch.manual_seed(0)
    model = mask_rcnn(backbone, num_classes=3, min_size=64, max_size=96)
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = []
    for img in images:
        mask = torch.zeros(1, *img.shape[-2:], dtype=torch.uint8)
        mask[0, 10:40, 12:50] = 1
        targets.append({"boxes": torch.tensor([[12.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([1]), "masks": mask})
    model.train()
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and {"boxes", "labels", "scores", "masks"} <= set(out[0])


def test_unext_size_and_output():
    from visionzoo.factory import count_macs

    m = create_segmentation_model("unext", num_classes=2)
    n = sum(p.numel() for p in m.parameters())
    assert abs(n / 1e6 - 1.47) / 1.47 < 0.03, n
    assert abs(count_macs(m.eval(), (3, 256, 256), device="cpu") / 1e9 - 0.57) / 0.57 < 0.03
    out = m(torch.randn(2, 3, 96, 160))
    assert out.shape == (2, 2, 96, 160)
    small = create_segmentation_model("unext_s", num_classes=3, in_chans=1)
    assert small(torch.randn(1, 1, 64, 64)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="multiples of 32"):
        m(torch.randn(1, 3, 100, 100))


def test_hdc_dilated_resnet_with_aspp_head():
    """Output stride 8, HDC rates (Wang et al. 2018) in stages 3-4, DeepLab-v3 ASPP on top."""
    from visionzoo.analysis import hdc_check

    hdc = (None, None, (1, 2, 5), (1, 2, 5))
    m = create_segmentation_model("resnet50", 4, head="aspp", output_stride=8, dilation_rates=hdc, channels=32)
    x = torch.randn(2, 3, 64, 96)
    out = m(x)
    assert out.shape == (2, 4, 64, 96)
    assert m.backbone(x)[-1].shape[-2:] == (8, 12)  # stride 8
    assert [b[0].dilation for b in m.head.branches[1:]] == [(12, 12), (24, 24), (36, 36)]  # doubled at OS 8
    stage3 = [b.conv2.dilation[0] for b in m.backbone.layer3]
    assert stage3 == [1, 2, 5, 1, 2, 5]
    assert not hdc_check(stage3)["gridding"]
    # the plain dilated network (rate 2 after the first block) grids; HDC does not
    plain = visionzoo.create_model("resnet50", output_stride=8)
    assert hdc_check([b.conv2.dilation[0] for b in plain.layer3][1:])["gridding"]
    out.mean().backward()
    assert m.backbone.conv1.weight.grad is not None
