"""Segmentation heads and Mask R-CNN on visionzoo backbones."""

import re

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


@pytest.mark.parametrize("fine_size, coarse_size", [((16, 16), (8, 8)), ((32, 40), (4, 5)), ((17, 23), (5, 6))])
def test_flow_align_starts_as_bilinear_upsampling_and_follows_the_flow(fine_size, coarse_size):
    """With zero flow the warp is the head's own upsampling, F.interpolate's bilinear with
    align_corners=False (it was align_corners=True's: up to 14 image pixels off at the borders of
    a stride-32 level warped onto the stride-4 map)."""
    fa = FlowAlign(8)
    fine, coarse = torch.randn(1, 8, *fine_size), torch.randn(1, 8, *coarse_size)
    expect = F.interpolate(coarse, size=fine_size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(fa(fine, coarse), expect, rtol=1e-5, atol=1e-5)
    # a constant flow of +1 fine pixel along x samples the map shifted by one pixel
    with torch.no_grad():
        fa.flow.weight.zero_()
        fa.flow.bias = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
    shifted = fa(fine, coarse)
    torch.testing.assert_close(shifted[..., :-1], expect[..., 1:], rtol=1e-4, atol=1e-4)


def test_fpn_reads_the_maps_at_strides_4_to_32_by_default():
    """Panoptic FPN's P2-P5: a stride-2 stem map (ResNet, HRNet) or VGG's stride-1 map would
    quadruple the head's cost; levels are chosen by stride, and explicit out_indices stay."""
    with torch.device("meta"):
        strides = {n: create_segmentation_model(n, 3).backbone.feature_info.reduction()
                   for n in ("resnet18", "vgg11", "hrnet_w18_small", "convnext_tiny", "vit_tiny_patch16_224")}
        explicit = create_segmentation_model("resnet18", 3, out_indices=(0, 2, 4)).backbone.feature_info.reduction()
        dilated = create_segmentation_model("resnet18", 3, output_stride=8).backbone.feature_info.reduction()
    assert strides == {"resnet18": [4, 8, 16, 32], "vgg11": [4, 8, 16, 32], "hrnet_w18_small": [4, 8, 16, 32],
                       "convnext_tiny": [4, 8, 16, 32], "vit_tiny_patch16_224": [16, 16, 16, 16]}
    assert explicit == [2, 8, 32] and dilated == [4, 8, 8, 8]


@pytest.mark.parametrize("backbone, kwargs, match", [
    ("resnet18", {"num_classes": 0}, "num_classes must be an int >= 1, got 0"),
    ("resnet18", {"num_classes": -1}, "num_classes must be an int >= 1"),
    ("resnet18", {"num_classes": 2.5}, "num_classes must be an int >= 1"),
    ("resnet18", {"num_classes": "7"}, "num_classes must be an int >= 1, got '7'"),
    ("unext", {"num_classes": 0}, "num_classes must be an int >= 1"),
    ("unext", {"in_chans": 0}, "in_chans must be an int >= 1"),
    ("resnet18", {"head": "aspp", "aspp_rates": (0,)}, "aspp_rates must be an int >= 1"),
    ("resnet18", {"head": "aspp", "aspp_rates": (-2,)}, "aspp_rates must be an int >= 1"),
    ("resnet18", {"head": "aspp", "aspp_rates": 6}, "non-empty sequence"),
    ("resnet18", {"channels": 1}, "channels must be an int >= 2"),
    ("resnet18", {"head": "aspp", "channels": 0}, "channels must be an int >= 1"),
    ("unext", {"img_size": 64}, "img_size does not apply to unext"),
    ("unext_s", {"channels": 8}, "channels does not apply to unext_s"),
    ("hrnet_w18_small", {"head": "hrnetv2", "img_size": 64}, "img_size does not apply to head='hrnetv2'"),
    ("hrnet_w18_small", {"head": "hrnetv2", "channels": 64, "aspp_rates": (1,)}, "channels, aspp_rates do not apply"),
    ("resnet18", {"aspp_rates": (1, 2)}, "aspp_rates does not apply to head='fpn'"),
    ("resnet18", {"head": "aspp", "out_indices": (1, 2)}, "ASPP head reads only the last one"),
])
def test_segmentation_arguments_are_checked(backbone, kwargs, match):
    """One clear message at construction, for a bad value or for one the network would ignore."""
    kwargs = {"num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=re.escape(match)):
        create_segmentation_model(backbone, **kwargs)


@pytest.mark.parametrize("channels", [1, 3, 6])
def test_flow_align_takes_any_width(channels):
    """The flow convolution sees both halved maps: an odd width (the FPN head's channels // 2
    with channels=6) or a width of 1 used to give it the wrong number of input channels."""
    fa = FlowAlign(channels)
    assert fa(torch.randn(1, channels, 8, 8), torch.randn(1, channels, 4, 4)).shape == (1, channels, 8, 8)
    m = create_segmentation_model("resnet18", 3, flow_align=True, channels=2 * channels)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_convnext_on_padded_input_keeps_gradients_bounded():
    """A zero-padded patch reaches ConvNeXt's stem LayerNorm as an all-zero vector (the stem's
    bias starts at zero), which it divides by sqrt(1e-6): the stem-bias gradient was 1e7 on a
    20x28 input padded to 32x32. Repeating the edge instead keeps it near 1."""
    torch.manual_seed(0)
    m = create_segmentation_model("convnext_tiny", 3, channels=16)
    x, y = torch.randn(2, 3, 20, 28), torch.randint(0, 3, (2, 20, 28))
    F.cross_entropy(m(x), y).backward()
    assert m.backbone.stem[0].bias.grad.norm() < 100


def test_output_stride_passes_through_to_efficientnet_mobilenet_and_convnext():
    """As for ResNet: the maps stop at stride 8, and the ASPP head's rates double (12, 24, 36)."""
    names = ("efficientnet_b0", "tf_efficientnet_b0", "mobilenetv2_100", "mobilenetv1_100", "convnext_tiny")
    with torch.device("meta"):
        strides = {n: create_segmentation_model(n, 3, output_stride=8).backbone.feature_info.reduction() for n in names}
    assert strides == {n: [4, 8, 8, 8] for n in names}
    m = create_segmentation_model("mobilenetv2_100", 3, head="aspp", output_stride=8, channels=16).eval()
    assert [b[0].dilation for b in m.head.branches[1:]] == [(12, 12), (24, 24), (36, 36)]
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 72)).shape == (1, 3, 64, 72)
@pytest.mark.parametrize("kwargs, match", [
    ({"dilation_rates": 5}, r"one entry per stage \(4\)"),
    ({"dilation_rates": (None, None, 5, None)}, r"dilation_rates\[2\] must be None or a tuple of rates"),
    ({"dilation_rates": (None, None, (1, 2, 5), None)}, "gives 3 rates, but stage 3 has 2 blocks"),
    ({"dilation_rates": (None, None, (), None)}, r"dilation_rates\[2\] is empty"),
    ({"dilation_rates": (None, None, (True, 2), None)}, "positive ints"),
    ({"multi_grid": 2}, "option multi_grid takes None or a sequence of ints, got 2"),
    ({"multi_grid": ()}, "multi_grid must be None or a non-empty tuple"),
    ({"output_stride": "8"}, "output_stride must be the int 4, 8, 16 or 32, got '8'"),
    ({"output_stride": 8.0}, "got 8.0"),
])
def test_dilation_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        visionzoo.create_model("resnet18", **kwargs)


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="head must be"):
        create_segmentation_model("vit_tiny_patch16_224", 3, head="unet")


def _mrcnn_batch():
    images = [torch.rand(3, 120, 150), torch.rand(3, 140, 128)]
    targets = []
    for img in images:
        mask = torch.zeros(1, *img.shape[-2:], dtype=torch.uint8)
        mask[0, 10:60, 20:90] = 1
        targets.append({"boxes": torch.tensor([[20.0, 10.0, 90.0, 60.0]]), "labels": torch.tensor([1]), "masks": mask})
    return images, targets


@pytest.mark.parametrize("backbone", ["vit_tiny_patch16_224", "convnext_tiny", "swin_tiny_patch4_window7_224"])
def test_mask_rcnn_trains_and_predicts(backbone):
    torch.manual_seed(0)
    model = mask_rcnn(backbone, num_classes=3, min_size=64, max_size=96)
    images, targets = _mrcnn_batch()
    model.train()
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and {"boxes", "labels", "scores", "masks"} <= set(out[0])


def test_plain_backbones_get_vitdets_simple_pyramid():
    """ViT's levels share stride 16: the neck is ViTDet's simple pyramid from the last block,
    at strides 4, 8, 16, 32 and 64; hierarchical backbones keep the FPN."""
    from visionzoo.detection import SimpleFeaturePyramid

    m = mask_rcnn("vit_tiny_patch16_224", 3, min_size=128, max_size=160)
    assert m.backbone.neck == "simple" and isinstance(m.backbone.fpn, SimpleFeaturePyramid)
    assert [fi.module for fi in m.backbone.body.feature_info] == ["blocks.11"]
    x = torch.randn(1, 3, 128, 192)
    maps = m.backbone(x)
    assert list(maps) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[-2:]) for v in maps.values()] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    # stride 16 is the last block's map through a 1x1 and a 3x3 convolution, each with a LayerNorm
    stage = m.backbone.fpn.stages[2]
    tokens = m.backbone.body(x)[-1]
    torch.testing.assert_close(maps["2"], stage(tokens))
    assert len(stage) == 4 and isinstance(stage[0], torch.nn.Conv2d) and stage[0].kernel_size == (1, 1)
    # its LayerNorms are detectron2's (get_norm("LN"): eps 1e-6), not nn.LayerNorm's default 1e-5
    norms = [mod for mod in m.backbone.fpn.modules() if isinstance(mod, torch.nn.LayerNorm)]
    assert len(norms) == 9 and all(n.eps == 1e-6 for n in norms)
    assert mask_rcnn("convnext_tiny", 3).backbone.neck == "fpn"
    fpn = mask_rcnn("vit_tiny_patch16_224", 3, neck="fpn").backbone
    assert fpn.neck == "fpn" and [fi.module for fi in fpn.body.feature_info] == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]
    with pytest.raises(ValueError, match="neck must be"):
        mask_rcnn("resnet18", 3, neck="bifpn")
    for bad in (0, 1, -1, 2.5, True):  # built without complaint, then failed inside torch in training
        with pytest.raises(ValueError, match=r"num_classes counts the background too, so it must be an int >= 2"):
            mask_rcnn("resnet18", bad)


def test_mask_rcnn_resnet50_fine_tunes_as_torchvisions():
    """From a pretrained ResNet-50, torchvision freezes the BatchNorms (FrozenBatchNorm2d) and
    the stem and layer1 (trainable_backbone_layers=3). Ours, given the same backbone checkpoint
    (torchvision's detection layout, without BN step counters), must freeze the same parameters,
    keep the BN statistics and give torchvision's losses and gradients."""
    import torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    r = torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d)
    for m in r.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2), m.weight.normal_(1, 0.1), m.bias.normal_(0, 0.1)
    backbone_sd = {k: v.clone() for k, v in r.state_dict().items()}
    assert not any(k.endswith("num_batches_tracked") for k in backbone_sd)
    tv = MaskRCNN(_resnet_fpn_extractor(r, 3), 91, min_size=128, max_size=160)
    ours = mask_rcnn("resnet50", 91, checkpoint=backbone_sd, min_size=128, max_size=160)
    assert set(ours.state_dict()) - set(tv.state_dict()) == {k for k in ours.state_dict() if k.endswith("num_batches_tracked")}
    ours.load_state_dict(tv.state_dict(), strict=False)  # the FPN and heads: the backbone came from the checkpoint
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in tv.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("backbone.body.conv1", "backbone.body.layer1.")) for n in trainable)
    stats = ours.backbone.body.layer2[0].bn1.running_mean.clone()
    images, targets = _mrcnn_batch()
    # in float64: float32 rounding, amplified by the detection pipeline, moved torchvision's own
    # gradients by up to 2.2 % between 1 and 2 threads and ours from its by 1.8 % on one host
    images = [im.double() for im in images]
    targets = [{k: v.double() if v.is_floating_point() else v for k, v in t.items()} for t in targets]
    results = []
    for m in (tv, ours):
        m.double().train()
        torch.manual_seed(3)  # the same proposal sampling
        losses = m(images, targets)
        sum(losses.values()).backward()
        results.append((losses, {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    (lt, gt), (lo, go) = results
    for k in lt:
        torch.testing.assert_close(lo[k], lt[k], rtol=1e-9, atol=1e-12)
    assert set(go) == set(gt)
    for k in gt:
        assert (go[k] - gt[k]).abs().max() <= 1e-9 * gt[k].abs().max(), k
    assert torch.equal(ours.backbone.body.layer2[0].bn1.running_mean, stats)
    assert not ours.backbone.body.layer2[0].bn1.training and ours.backbone.fpn.training
    for m in (tv, ours):  # every detection, not only those above 0.05
        m.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        dt, do = (m.eval()(images[:1])[0] for m in (tv, ours))
    assert len(dt["boxes"]) > 10
    for k in dt:
        torch.testing.assert_close(do[k], dt[k], rtol=1e-9, atol=1e-9)


def test_mask_rcnn_freezing_rules():
    swin = "swin_tiny_patch4_window7_224"
    ckpt = visionzoo.create_model(swin).state_dict()
    m = mask_rcnn(swin, 3, checkpoint=ckpt)  # stride-4 level (patch embedding + stage 1) frozen
    frozen = {n for n, p in m.backbone.body.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in m.backbone.body.named_parameters() if n.startswith(("patch_embed.", "layers.0."))}
    assert all(p.requires_grad for p in mask_rcnn(swin, 3).parameters())  # from scratch: nothing frozen
    vit = mask_rcnn("vit_tiny_patch16_224", 3, checkpoint=visionzoo.create_model("vit_tiny_patch16_224").state_dict())
    assert all(p.requires_grad for p in vit.parameters())  # every level is at stride 16
    m = mask_rcnn("resnet18", 3, trainable_backbone_layers=1, frozen_bn=True)
    trainable = {n.split(".")[0] for n, p in m.backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer4"}
    m.train()
    assert not any(b.training for b in m.backbone.body.modules() if isinstance(b, torch.nn.BatchNorm2d))
    with pytest.raises(ValueError, match="between 0 and 5"):
        mask_rcnn("resnet18", 3, trainable_backbone_layers=6)
    # HRNet taps its maps from modules defined after the trunk: still only the stem and the
    # stride-4 stage 1 are frozen (everything but the incre modules used to be)
    hr = mask_rcnn("hrnet_w18_small", 3, checkpoint=visionzoo.create_model("hrnet_w18_small").state_dict())
    body = hr.backbone.body
    convs = {n for n, m in body.named_modules() if isinstance(m, torch.nn.Conv2d)}  # BatchNorms are frozen everywhere
    frozen = {n.split(".")[0] for n, p in body.named_parameters() if not p.requires_grad and n.rpartition(".")[0] in convs}
    trainable = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert frozen == {"conv1", "conv2", "layer1"}
    assert trainable == {"transition1", "stage2", "transition2", "stage3", "transition3", "stage4", "incre_modules"}


@pytest.mark.parametrize("backbone, kwargs", [("nest_tiny", {}), ("resnet18", {"out_indices": (3, 4)})])
def test_mask_rcnn_with_fewer_than_four_maps(backbone, kwargs):
    """Anchors and RoI pooling follow the maps the neck gives (NesT has three levels); torchvision's
    defaults assume four and failed in the first forward."""
    torch.manual_seed(0)
    model = mask_rcnn(backbone, num_classes=3, min_size=64, max_size=96, **kwargs)
    images, targets = _mrcnn_batch()
    losses = model.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        assert len(model.eval()(images)) == 2


def test_mask_rcnn_anchors_and_roialign_follow_the_maps_true_grid():
    """Inception's valid convolutions leave maps of fewer than side / stride cells:
    torchvision's anchor generator inferred strides 4, 9, 21, 64 (for 4, 8, 16, 32) on a
    128-px image and its RoIAlign a scale of 1/64 for the stride-32 map. Anchors and RoIAlign
    now use the strides, and the centre of each map's cell 0, where the maps' sizes put it."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from visionzoo.detection import GridRoIAlign

    model = mask_rcnn("inception_v3", num_classes=3, min_size=128, max_size=192).eval()
    strides, offsets = [4, 8, 16, 32, 64], model.rpn.anchor_generator.offsets
    assert model.rpn.anchor_generator.strides == strides
    # a map whose cell 0 is centred at o has side floor((S - 2o - 1) / stride) + 1 for an image
    # side S (valid convolutions, symmetric paddings): one cell more from S = 2o + 1 + stride * k
    probe = visionzoo.create_model("inception_v3", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    for level, ((oy, ox), J) in enumerate(zip(offsets[:4], strides)):
        assert oy == ox and oy > J / 2, (level, oy)
        first = int(2 * oy + 1 + J * -(-(76 - 2 * oy - 1) // J))  # the smallest such S with S - 1 >= 75, which the network takes
        with torch.no_grad():
            sides = [probe(torch.zeros(1, 3, S, S))[level].shape[-1] for S in (first - 1, first)]
        assert sides[1] == sides[0] + 1 == (first - 2 * oy - 1) // J + 1, (level, first, sides)
    assert offsets[4] == offsets[3]  # the pool level subsamples the stride-32 map
    with torch.no_grad():
        for H, W in ((128, 128), (96, 192)):
            images, _ = model.transform([torch.rand(3, H, W)])
            maps = list(model.backbone(images.tensors).values())
            th = images.tensors.shape[-2]
            if (H, W) == (128, 128):  # torchvision's anchors: spaced side // map side, from 0
                tv = AnchorGenerator(model.rpn.anchor_generator.sizes, model.rpn.anchor_generator.aspect_ratios)(images, maps)[0]
                assert [th // m.shape[-2] for m in maps] == [4, 9, 21, 64, 128] and tv[:, :2].min() < -200
            anchors = model.rpn.anchor_generator(images, maps)[0]
            for m, J, (oy, ox) in zip(maps, strides, offsets):
                h, w = m.shape[-2:]
                level, anchors = anchors[: h * w * 3].view(h, w, 3, 4), anchors[h * w * 3 :]
                centres = (level[..., :2] + level[..., 2:]) / 2  # h, w, 3, (x, y)
                assert torch.equal(centres[..., 0], (ox + J * torch.arange(w)).view(1, w, 1).expand(h, w, 3))
                assert torch.equal(centres[..., 1], (oy + J * torch.arange(h)).view(h, 1, 1).expand(h, w, 3))
            assert len(anchors) == 0
        model.roi_heads.box_roi_pool(dict(zip("0123", maps)), [torch.tensor([[10.0, 10.0, 60.0, 50.0]])], images.image_sizes)
        assert model.roi_heads.box_roi_pool.scales == model.roi_heads.mask_roi_pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    # RoIAlign reads image point (x, y) at map position ((x - ox) / stride, (y - oy) / stride):
    # a map whose cells hold their own column index, read at a box centred on cell 3's centre
    pool = GridRoIAlign(["0"], 1, 1, strides=[32], offsets=[(37.0, 37.0)])
    cells = torch.arange(6.0).expand(1, 1, 6, 6)
    x = 37 + 32 * 3
    got = pool({"0": cells}, [torch.tensor([[x - 20.0, 37 - 20.0, x + 20.0, 37 + 20.0]])], [(256, 256)])
    assert got.flatten().tolist() == [3.0]
    # full maps (ResNet) keep torchvision's own classes, on whose grids its detectors were trained
    resnet = mask_rcnn("resnet18", 3, min_size=128, max_size=160)
    assert type(resnet.rpn.anchor_generator) is AnchorGenerator and type(resnet.roi_heads.box_roi_pool).__name__ == "MultiScaleRoIAlign"


def test_mask_rcnn_trains_on_an_inception_backbone():
    """A training step through the offset anchors and RoIAlign (few proposals, to stay quick)."""
    torch.manual_seed(0)
    model = mask_rcnn("inception_v3", num_classes=3, min_size=96, max_size=128, rpn_post_nms_top_n_train=64, box_batch_size_per_image=32)
    images, targets = _mrcnn_batch()
    losses = model.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()) and float(losses["loss_mask"]) > 0
    sum(losses.values()).backward()
    assert model.roi_heads.box_roi_pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.backbone.body.named_parameters() if n.startswith("Conv2d_1a"))


def test_mask_rcnn_takes_other_channel_counts_and_refuses_unknown_arguments():
    """in_chans reached torchvision's MaskRCNN, which ignores keyword arguments it does not
    know (as drop_path_rate or a misspelt min_sizes): the backbone stayed 3-channel and a
    4-channel image was refused with 'the backbone takes 3 (in_chans)'. in_chans now builds the
    backbone (a 3-channel checkpoint adapted as create_model adapts it), with the
    normalisation's per-channel values required; other unknown arguments are a TypeError."""
    ckpt = visionzoo.create_model("resnet18").state_dict()
    torch.manual_seed(0)
    model = mask_rcnn("resnet18", 3, in_chans=4, checkpoint=ckpt, image_mean=[0.5] * 4, image_std=[0.25] * 4, min_size=64, max_size=96)
    reference = visionzoo.create_model("resnet18", in_chans=4, checkpoint=ckpt)
    torch.testing.assert_close(model.backbone.body.conv1.weight, reference.conv1.weight)
    images = [torch.rand(4, 70, 90), torch.rand(4, 64, 81)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([2]), "masks": torch.ones(1, *im.shape[-2:], dtype=torch.uint8)} for im in images]
    assert all(torch.isfinite(v) for v in model.train()(images, targets).values())
    with torch.no_grad():
        out = model.eval()(images)
    assert [tuple(o["masks"].shape[-2:]) for o in out] == [(70, 90), (64, 81)]
    for kwargs in ({"drop_path_rate": 0.1}, {"min_sizes": 64}):
        with pytest.raises(TypeError, match=f"mask_rcnn got unexpected keyword argument.* {next(iter(kwargs))}:"):
            mask_rcnn("resnet18", 3, **kwargs)
    with pytest.raises(ValueError, match=r"in_chans=1 needs image_mean, one value per channel"):
        mask_rcnn("resnet18", 3, in_chans=1)
    with pytest.raises(ValueError, match=r"image_std has 3 values, but in_chans=4"):
        mask_rcnn("resnet18", 3, in_chans=4, image_mean=[0.5] * 4, image_std=[0.2] * 3)


def test_mask_rcnn_names_a_whole_detectors_checkpoint(tmp_path):
    """checkpoint= takes backbone weights; a whole detector's state dict (as torchvision's
    maskrcnn_resnet50_fpn's) was refused with its backbone.body.* keys listed as unexpected,
    which did not say that load_state_dict on the built model takes it."""
    det = mask_rcnn("resnet18", 3, min_size=64, max_size=96)
    visionzoo.save_state_dict(det.state_dict(), tmp_path / "det.safetensors")
    for ckpt, name in ((tmp_path / "det.safetensors", re.escape(str(tmp_path / "det.safetensors"))), (det.state_dict(), "the state dict")):
        with pytest.raises(visionzoo.CheckpointError, match=rf"^{name} holds a whole detector \(rpn\.\*, roi_heads\.\*\): checkpoint= takes backbone weights"):
            mask_rcnn("resnet18", 3, checkpoint=ckpt)
    mask_rcnn("resnet18", 3, min_size=64, max_size=96).load_state_dict(det.state_dict())  # the way it loads


def test_mask_rcnn_reads_a_refused_checkpoint_file_once(tmp_path, monkeypatch):
    """The whole-detector check looks at the keys of the file the load read: it used to read
    the file a second time (a detector's checkpoint is some 170 MB)."""
    import safetensors.torch

    det = mask_rcnn("resnet18", 3, min_size=64, max_size=96)
    visionzoo.save_state_dict(det.state_dict(), tmp_path / "det.safetensors")
    reads, load_file = [], safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: reads.append(a) or load_file(*a, **k))
    with pytest.raises(visionzoo.CheckpointError, match="holds a whole detector"):
        mask_rcnn("resnet18", 3, checkpoint=tmp_path / "det.safetensors")
    assert len(reads) == 1


def test_mask_rcnn_traces_the_map_grid_only_where_it_is_read(monkeypatch):
    """map_grid (a meta forward of the body) sizes the default anchors, RoI pools and the simple
    pyramid's size_divisible; with all of them given it went unused, and is now skipped."""
    import visionzoo.detection as det
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    calls, map_grid = [], det.map_grid
    monkeypatch.setattr(det, "map_grid", lambda backbone: calls.append(backbone) or map_grid(backbone))
    mask_rcnn("resnet18", 3)
    assert len(calls) == 1
    names = ["0", "1", "2", "3"]
    given = dict(rpn_anchor_generator=AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5),
                 box_roi_pool=MultiScaleRoIAlign(names, 7, 2), mask_roi_pool=MultiScaleRoIAlign(names, 14, 2))
    model = mask_rcnn("resnet18", 3, **given)
    assert len(calls) == 1  # (not traced again)
    assert model.rpn.anchor_generator is given["rpn_anchor_generator"] and model.roi_heads.mask_roi_pool is given["mask_roi_pool"]
    mask_rcnn("vit_tiny_patch16_224", 3, **given)  # the simple pyramid also reads it for size_divisible
    assert len(calls) == 2
    mask_rcnn("vit_tiny_patch16_224", 3, size_divisible=32, **given)
    assert len(calls) == 2

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
    assert small(torch.randn(0, 1, 64, 64)).shape == (0, 3, 64, 64)  # (its token maps inferred no size from 0 images)
    with pytest.raises(visionzoo.InputError, match=r"UNeXt expects 3 input channels, got 1 .*in_chans=1"):
        m(torch.randn(1, 1, 64, 64))


def test_unext_drop_path_rates_are_the_released_codes():
    """archs.py: dpr = linspace(0, r, 3); block1 and dblock1 take dpr[0], block2 and dblock2 dpr[1]."""
    from visionzoo.tasks.unext import unext

    m = unext(drop_path_rate=0.2)
    rates = [getattr(m, n).drop_path.drop_prob for n in ("block1", "block2", "dblock1", "dblock2")]
    assert rates == pytest.approx([0.0, 0.1, 0.0, 0.1])


def test_unext_initialised_as_the_released_code():
    """The release initialises its tokenised stages' convolutions (patch embeddings and the
    depthwise convolutions of the shifted MLPs) He-normal over the fan-out with zero bias."""
    import math

    from visionzoo.tasks.unext import unext

    torch.manual_seed(0)
    m = unext()
    for conv in (m.patch_embed3.proj, m.patch_embed4.proj, m.block1.mlp.dwconv, m.dblock2.mlp.dwconv):
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
        assert abs(conv.weight.std().item() / math.sqrt(2 / fan_out) - 1) < 0.1, conv
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))


def _unext_to_official(sd):
    """visionzoo's UNeXt keys -> UNeXt-pytorch's archs.py (written independently of the converter)."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] in ("encoder", "ebn", "decoder", "dbn"):  # encoder.0 -> encoder1
            parts = [parts[0] + str(int(parts[1]) + 1)] + parts[2:]
        elif parts[0] in ("block1", "block2", "dblock1", "dblock2"):  # an nn.ModuleList of one block there
            rest = {"norm": ["norm2"], "mlp": ["mlp"] + (["dwconv"] if parts[2] == "dwconv" else [])}[parts[1]]
            parts = [parts[0], "0"] + rest + parts[2:]
        out[".".join(parts)] = v
    return out


@pytest.mark.parametrize("name", ["unext", "unext_s"])
def test_unext_loads_the_released_codes_checkpoints(name, tmp_path):
    """A plain state dict of UNeXt-pytorch's UNext / UNext_S (keys encoder1.weight, ebn1.*,
    block1.0.mlp.dwconv.dwconv.*, ...) loads by renaming, with the usual checks."""
    from visionzoo.checkpoints import CheckpointError
    from visionzoo.tasks import unext as U
    from visionzoo.testing import random_weights, randomize_norms

    build = getattr(U, name)
    src = randomize_norms(random_weights(build(), std=0.2)).eval()
    official = _unext_to_official(src.state_dict())
    assert len(official) == 101 and {"encoder1.weight", "ebn3.running_var", "block1.0.norm2.weight", "dblock2.0.mlp.dwconv.dwconv.weight",
                                     "block2.0.mlp.fc1.weight", "decoder5.bias", "dbn4.num_batches_tracked", "final.weight"} <= set(official)
    path = tmp_path / "model.pth"
    torch.save(official, path)
    model = build(checkpoint=path).eval()
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
        assert torch.equal(create_segmentation_model(name, num_classes=1, checkpoint=str(path)).eval()(x), src(x))  # the factory too
    # another width, a missing key: refused whole, the model unchanged
    other = U.unext_s() if name == "unext" else U.unext()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match="shapes do not fit"):
        visionzoo.load_checkpoint(other, path)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in official.items() if k != "block2.0.mlp.fc2.weight"}, partial)
    with pytest.raises(CheckpointError, match=r"missing 1 key.*block2\.mlp\.fc2\.weight"):
        build(checkpoint=partial)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    # fine-tuning on more classes: the one-class classifier is left initialised, with a warning
    with pytest.warns(UserWarning, match="classifier final"):
        three = build(num_classes=3, checkpoint=path)
    assert torch.equal(three.encoder[0].weight, src.encoder[0].weight) and three.final.weight.shape[0] == 3


@pytest.mark.parametrize("backbone, head, padded", [
    ("vit_tiny_patch16_224", "fpn", (80, 112)),  # multiples of 16
    ("nest_tiny", "aspp", (80, 112)),
    ("hrnet_w18_small", "hrnetv2", (96, 128)),  # multiples of 32
    ("unext_s", "fpn", (96, 128)),
    ("inception_v3", "fpn", (75, 100)),  # at least 75 px
    ("resnet18", "aspp", (70, 100)),  # any size: nothing padded
])
def test_segmentation_at_any_size_pads_and_crops(backbone, head, padded):
    """Sides the backbone cannot take are padded at the bottom and right, repeating the last
    row and column, and the logits cropped: the result is the top-left of the padded input's
    logits."""
    torch.manual_seed(0)
    m = create_segmentation_model(backbone, 3, head=head, in_chans=1).eval()
    x = torch.randn(1, 1, 70, 100)
    with torch.no_grad():
        out = m(x)
        assert out.shape == (1, 3, 70, 100)
        full = m(F.pad(x, (0, padded[1] - 100, 0, padded[0] - 70), mode="replicate"))
        assert full.shape[-2:] == padded
        torch.testing.assert_close(out, full[..., :70, :100], rtol=1e-5, atol=1e-5)
    m.train()  # gradients reach the input through the padding (batch 2: Inception's last map is 1x1 here)
    xg = torch.randn(2, 1, 70, 100, requires_grad=True)
    m(xg).mean().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


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


@pytest.mark.parametrize("head", ["fpn", "aspp"])
def test_every_segmentation_parameter_is_trained(head):
    """One training step of each family's smallest backbone with each head reaches every
    parameter: DDP stops on unused ones (find_unused_parameters), and they are wasted work.
    ASPP reads the last map only, so the backbone is pruned to it (HRNet's other incre
    branches and the stage-4 outputs feeding them had no gradient)."""
    from family_models import small_side, smallest_per_family

    for family, name in smallest_per_family().items():
        torch.manual_seed(0)
        m = create_segmentation_model(name, 3, head=head).train()
        S = max(small_side(m.backbone), 64)
        m(torch.randn(2, 3, S, S)).square().mean().backward()
        unused = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, (family, unused[:4])


def test_hrnet_features_of_some_levels_equal_the_full_networks():
    """features_only HRNet with out_indices keeps only what those maps need (stage 4's other
    outputs and incre branches go) and gives the maps of the whole network."""
    torch.manual_seed(0)
    full = visionzoo.create_model("hrnet_w18_small").eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = full.forward_intermediates(x, intermediates_only=True)
    for indices in [(-1,), (1, 3), (0, 2)]:
        m = visionzoo.create_model("hrnet_w18_small", features_only=True, out_indices=indices).eval()
        m.load_state_dict({k: v for k, v in full.state_dict().items() if k in m.state_dict()})
        assert sum(p.numel() for p in m.parameters()) < sum(p.numel() for p in full.parameters())
        with torch.no_grad():
            maps = m(x)
        for fmap, i in zip(maps, indices):
            r = ref[i % 5]
            torch.testing.assert_close(fmap, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))


@pytest.mark.parametrize("backbone", ["convmixer_1024_20_ks9_p14", "convmixer_768_32", "convmixer_256_8", "vit_tiny_patch16_224"])
def test_simple_pyramid_levels_match_anchors_and_roialign_at_any_backbone_stride(backbone):
    """Backbone strides 14, 7 and 2 are resampled to 16, 8 and 2, and every stride gives maps at
    4-32 (+64): anchors cover the whole padded image at every level and each map's size over the
    image's is the scale RoIAlign infers (14 used to give maps at 0.2831.. read at 0.25, 2 a level
    at twice the input's resolution with anchors of size 0)."""
    torch.manual_seed(0)
    model = mask_rcnn(backbone, num_classes=3, min_size=128, max_size=192)
    assert model.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    model.eval()
    with torch.no_grad():
        images, _ = model.transform([torch.rand(3, 128, 192)])
        H, W = images.tensors.shape[-2:]
        maps = model.backbone(images.tensors)
        strides = (4, 8, 16, 32, 64)
        assert [tuple(m.shape[-2:]) for m in maps.values()] == [(H // s, W // s) for s in strides] and H % 64 == W % 64 == 0
        anchors = model.rpn.anchor_generator(images, list(maps.values()))[0]
        for level, (m, s) in enumerate(zip(maps.values(), strides)):
            level_anchors = anchors[: m.shape[-2] * m.shape[-1] * 3]
            anchors = anchors[len(level_anchors):]
            centres = (level_anchors[:, :2] + level_anchors[:, 2:]) / 2
            assert W - s <= centres[:, 0].max() < W and H - s <= centres[:, 1].max() < H, (level, centres.max(0))
            assert (level_anchors[:, 2] - level_anchors[:, 0]).max() > 8 * s  # 8 x stride, three aspect ratios
        pool = model.roi_heads.box_roi_pool
        pool(maps, [torch.tensor([[10.0, 10.0, 90.0, 60.0]])], images.image_sizes)  # infers its scales
        assert pool.scales == [m.shape[-2] / H for m in list(maps.values())[:-1]] == [m.shape[-1] / W for m in list(maps.values())[:-1]]
    model.train()
    images, targets = _mrcnn_batch()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_simple_pyramid_resampling_keeps_each_cell_on_its_image_point():
    """A stride-14 map resampled to stride 16: output cell j holds the input at image position
    16 j + 8 (the input cell i is centred at 14 i + 7), so the maps stay aligned with the boxes."""
    from visionzoo.detection import SimpleFeaturePyramid

    sfp = SimpleFeaturePyramid(8, 4, in_stride=14)
    assert (sfp.stride, sfp.strides) == (16, (4, 8, 16, 32))
    seen = {}
    sfp.stages[2][0].register_forward_hook(lambda mod, args, out: seen.update(x=args[0]))
    n = 10  # an image of 128 px padded to 140 for the backbone: 10 cells, resampled to 128 / 16 = 8
    centres = (14 * torch.arange(n) + 7.0).expand(1, 8, n, n)  # each cell holds its x centre in pixels
    sfp(centres, (128, 128))
    assert seen["x"].shape[-2:] == (8, 8)
    torch.testing.assert_close(seen["x"][0, 0, 0], 16 * torch.arange(8) + 8.0)


def _bad(images=None, **target):
    """_mrcnn_batch's images and targets with the first target's entries replaced."""
    good_images, targets = _mrcnn_batch()
    targets[0].update(target)
    return (good_images if images is None else images), targets


def _checked_mrcnn():
    torch.manual_seed(0)
    return mask_rcnn("resnet18", num_classes=3, min_size=64, max_size=96)


@pytest.mark.parametrize("make, match", [
    (lambda: _bad(masks=torch.zeros(1, 50, 50, dtype=torch.uint8)), r"targets\[0\]\['masks'\] is \(1, 50, 50\); one mask per box at the image's size: \(1, 120, 150\)"),
    (lambda: _bad(masks=torch.zeros(2, 120, 150, dtype=torch.uint8)), r"targets\[0\]\['masks'\] is \(2, 120, 150\)"),
    (lambda: _bad(labels=torch.tensor([1, 2])), r"targets\[0\]\['labels'\] has shape \(2,\); one label per box: \(1,\)"),
    (lambda: _bad(labels=torch.tensor([0])), r"targets\[0\]\['labels'\] holds 0: object labels are 1 to 2 \(0 is the background class\)"),
    (lambda: _bad(labels=torch.tensor([-1])), r"targets\[0\]\['labels'\] holds -1: .* \(negative\)"),
    (lambda: _bad(labels=torch.tensor([7])), r"targets\[0\]\['labels'\] holds 7: object labels are 1 to 2 \(num_classes=3 counts the background\)"),
    (lambda: _bad(labels=torch.tensor([1.0])), r"targets\[0\]\['labels'\] has dtype torch.float32"),
    (lambda: _bad(boxes=torch.tensor([[20.0, float("nan"), 90.0, 60.0]])), r"targets\[0\]\['boxes'\] has a NaN or infinite coordinate"),
    (lambda: _bad(boxes=torch.tensor([20.0, 10.0, 90.0, 60.0])), r"targets\[0\]\['boxes'\] has shape \(4,\)"),
    (lambda: _bad(boxes=torch.tensor([[90.0, 10.0, 20.0, 60.0]])), r"targets\[0\]\['boxes'\]\[0\] = \[90.0, 10.0, 20.0, 60.0\] has no width or height"),
    (lambda: _bad(masks=None), r"targets\[0\]\['masks'\] is missing"),
    (lambda: _bad([torch.rand(1, 120, 150), torch.rand(3, 140, 128)]), r"images\[0\] has 1 channels .* the backbone takes 3"),
    (lambda: _bad([torch.rand(3, 120, 150), torch.rand(140, 128, 3)]), r"images\[1\] has shape \(140, 128, 3\), which looks like \(H, W, C\)"),
    (lambda: _bad([torch.rand(3, 120, 150), (255 * torch.rand(3, 140, 128)).byte()]), r"images\[1\] has dtype torch.uint8"),
    (lambda: _bad(torch.rand(2, 3, 120, 150)), r"got a tensor of shape \(2, 3, 120, 150\): pass list\(images\)"),
    (lambda: (_mrcnn_batch()[0], _mrcnn_batch()[1][:1]), r"one target dict per image: got 1 targets for 2 images"),
    (lambda: (_mrcnn_batch()[0], None), r"in training mode the model takes targets"),
    (lambda: ([], []), r"got an empty list: pass at least one image"),
    (lambda: _bad(boxes=torch.tensor([[160.0, 10.0, 200.0, 60.0]])), r"targets\[0\]\['boxes'\]\[0\] = \[160.0, 10.0, 200.0, 60.0\] lies outside the 150x120 image"),
    (lambda: _bad(boxes=torch.tensor([[-40.0, 10.0, -5.0, 60.0]])), r"targets\[0\]\['boxes'\]\[0\] = \[-40.0, 10.0, -5.0, 60.0\] lies outside"),
    (lambda: _bad(masks=torch.full((1, 120, 150), 255, dtype=torch.uint8)), r"targets\[0\]\['masks'\] holds values in \[255, 255\]; .* divide a 0 / 255 mask by 255"),
    (lambda: _bad(masks=torch.full((1, 120, 150), float("nan"))), r"targets\[0\]\['masks'\] has a NaN"),
    (lambda: _bad([torch.rand(3, 120, 150), torch.rand(3, 140, 128).index_fill(1, torch.tensor([5]), float("nan"))]), r"images\[1\] has 384 NaN or infinite values"),
    (lambda: _bad([torch.rand(3, 120, 150), torch.full((3, 140, 128), 255.0)]), r"images\[1\] has values up to 255; the model takes floats in \[0, 1\] .* divide 0-255 images by 255"),
    (lambda: _bad([torch.rand(3, 120, 150), torch.rand(3, 1, 200)]), r"images\[1\] is 1x200: resized .* \(the long side to at most max_size=96\) its short side would be 0.48 pixels"),
    (lambda: _bad([torch.rand(3, 120, 150), torch.rand(3, 140, 128).double()]), r"images\[1\] has dtype torch.float64, images\[0\] torch.float32: give every image one dtype"),
], ids=["mask size", "mask count", "label count", "label 0", "negative label", "label >= num_classes", "float labels", "NaN box",
        "box shape", "flat box", "no masks", "1 channel", "HWC image", "uint8 image", "4-D batch", "fewer targets", "no targets", "no images",
        "box right of the image", "box left of the image", "0-255 masks", "NaN mask", "NaN image", "0-255 image", "1-pixel side", "mixed dtypes"])
def test_mask_rcnn_refuses_bad_images_and_targets(make, match):
    """torchvision's MaskRCNN trained on most of these silently (NaN losses for a NaN box or
    image, a 1-channel image broadcast to 3, a mask loss of 899 for 0 / 255 masks, a box
    wholly outside the image pooled from the padding, a float64 image after a float32 one
    batched as float32) or failed deep inside (IndexError: Target 7 is out of bounds, and for no
    images at all: list index out of range; an AssertionError for a box with x2 <= x1; a side
    resized to 0 pixels: "Input and output sizes should be greater than 0"); each is now one
    InputError naming the image, the key and the problem."""
    model = _checked_mrcnn().train()
    images, targets = make()
    with pytest.raises(visionzoo.InputError, match=match):
        model(images, targets)


def test_mask_rcnn_takes_torchvisions_own_predictors():
    """torchvision's idiom, num_classes=None with box_predictor and mask_predictor, was refused
    both ways (num_classes must be an int; torchvision: None with a predictor); the predictors'
    classes are the ones the labels are checked against."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    torch.manual_seed(0)
    model = mask_rcnn("resnet18", None, box_predictor=FastRCNNPredictor(1024, 5), mask_predictor=MaskRCNNPredictor(256, 256, 5),
                      min_size=64, max_size=96).train()
    assert model.roi_heads.box_predictor.cls_score.out_features == 5 and model.num_classes == 5
    images, targets = _mrcnn_batch()
    targets[0]["labels"] = torch.full_like(targets[0]["labels"], 4)
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    targets[0]["labels"] = torch.full_like(targets[0]["labels"], 5)
    with pytest.raises(visionzoo.InputError, match=r"holds 5: object labels are 1 to 4"):
        model(images, targets)
    for kwargs in (dict(num_classes=5, box_predictor=FastRCNNPredictor(1024, 5), mask_predictor=MaskRCNNPredictor(256, 256, 5)),
                   dict(num_classes=None, box_predictor=FastRCNNPredictor(1024, 5))):
        with pytest.raises(ValueError, match=r"pass num_classes=None and both box_predictor and mask_predictor"):
            mask_rcnn("resnet18", **kwargs)


def test_simple_pyramid_is_refused_on_maps_that_lose_cells():
    """neck='simple' on Inception v3 put anchors and RoIAlign at stride * i from 0 on a stride-32
    map whose cell 0 is centred at 37 px (the FPN follows the true grid): refused, naming the neck
    that works; a backbone whose convolutions pad keeps it."""
    with pytest.raises(ValueError, match=r"neck='simple' needs .* inception_v3's valid convolutions .* centred at 37 px\): use neck='fpn'"):
        mask_rcnn("inception_v3", 3, neck="simple")
    assert mask_rcnn("googlenet", 3, neck="simple").backbone.neck == "simple"


def test_mask_rcnn_takes_empty_images_and_boxes_outside_them():
    """What augmentation produces passes the checks: an image without boxes, a box partly
    outside the image, soft masks; the checks add no module, so the state dict is torchvision's."""
    from torchvision.models.detection import MaskRCNN

    model = _checked_mrcnn()
    assert isinstance(model, MaskRCNN) and not any("check" in k for k in model.state_dict())
    images, targets = _mrcnn_batch()
    targets[0]["boxes"] = torch.tensor([[-30.0, -10.0, 200.0, 60.0]])
    targets[0]["masks"] = targets[0]["masks"] * 0.75  # soft masks
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 140, 128, dtype=torch.uint8)}
    losses = model.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        assert len(model.eval()(images)) == 2


def test_mask_rcnn_takes_0_255_images_with_its_own_normalisation():
    """The [0, 1] check applies with torchvision's default normalisation only: with image_mean /
    image_std in 0-255 units (detectron2's, 123.675 ...) a 0-255 image is the right input, and
    normalises to the same values as the [0, 1] image under the default."""
    torch.manual_seed(0)
    image = torch.rand(3, 64, 80)
    ours = mask_rcnn("resnet18", 3, min_size=64, max_size=96, image_mean=[123.675, 116.28, 103.53], image_std=[58.395, 57.12, 57.375]).eval()
    ours.check_inputs([255 * image])  # passes
    default = _checked_mrcnn().eval()
    torch.testing.assert_close(ours.transform.normalize(255 * image), default.transform.normalize(image), rtol=1e-4, atol=1e-4)
    default.check_inputs([image * 1.4])  # (an overshoot of augmentation passes)

@pytest.mark.parametrize("backbone, kwargs", [("unext_s", {}), ("resnet18", {}), ("hrnet_w18_small", {"head": "hrnetv2"})])
def test_segmentation_models_refuse_inputs_as_the_backbones_do(backbone, kwargs):
    """UNeXt on uint8 raised PyTorch's 'Input type (unsigned char) and bias type (float) should
    be the same', and an empty side a pooling error in UNeXt and the padding segmentation
    wrappers; they give the backbones' InputError now (any non-empty size is still padded)."""
    model = create_segmentation_model(backbone, 2, **kwargs).eval()
    name = "UNeXt" if backbone == "unext_s" else backbone
    with pytest.raises(visionzoo.InputError, match=f"^{name} expects a floating-point tensor, got dtype torch.uint8"):
        model((255 * torch.rand(1, 3, 32, 32)).byte())
    for shape in ((1, 3, 0, 64), (1, 3, 64, 0)):
        with pytest.raises(visionzoo.InputError, match=rf"^{name} needs inputs of at least 1x1, got {shape[2]}x{shape[3]}"):
            model(torch.rand(shape))
    with pytest.raises(visionzoo.InputError, match=r"which looks like \(B, H, W, C\)"):
        model(torch.rand(1, 20, 20, 3))
    with torch.no_grad():
        assert model(torch.rand(1, 3, 1, 33)).shape == (1, 2, 1, 33)
