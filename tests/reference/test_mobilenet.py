"""MobileNet v1 against timm; MobileNet v2 against timm and torchvision."""

import pytest
import timm
import torch
import torchvision

import visionzoo
from visionzoo.testing import build_random, max_rel_diff

from timm_checks import assert_output_stride_equals_timm

V1 = visionzoo.list_models("mobilenetv1*")
V2 = visionzoo.list_models("mobilenetv2*")


def test_registered_names_are_timms_plain_variants():
    assert V1 == ["mobilenetv1_100", "mobilenetv1_125"]  # timm's mobilenetv1_100h adds a head conv: not plain v1
    assert set(V2) == set(timm.list_models("mobilenetv2*"))
    assert visionzoo.registry.get_entry("mobilenet_v2").name == "mobilenetv2_100"


@pytest.mark.parametrize("name", V1 + V2)
def test_params_equal_timm(name):
    with torch.device("meta"):
        ours = sum(p.numel() for p in visionzoo.create_model(name).parameters())
        ref = sum(p.numel() for p in timm.create_model(name).parameters())
    assert ours == ref


def test_params_equal_torchvision_and_width_is_a_config_field():
    with torch.device("meta"):
        for w, name in ((1.0, "mobilenetv2_100"), (0.75, "mobilenetv2_075"), (1.4, "mobilenetv2_140")):
            tv = sum(p.numel() for p in torchvision.models.mobilenet_v2(width_mult=w).parameters())
            ours = sum(p.numel() for p in visionzoo.create_model("mobilenetv2_100", width_mult=w).parameters())
            named = sum(p.numel() for p in visionzoo.create_model(name).parameters())
            assert ours == tv == named
        assert sum(p.numel() for p in visionzoo.create_model("mobilenet_v2").parameters()) == 3_504_872


@pytest.mark.parametrize("name", ["mobilenetv1_100", "mobilenetv2_050", "mobilenetv2_110d"])
def test_logits_equal_timm(name):
    ref = build_random(lambda: timm.create_model(name, num_classes=10))
    ours = visionzoo.create_model(name, num_classes=10).eval()
    visionzoo.load_checkpoint(ours, ref.state_dict(), source="timm")  # timm's layout is ours
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = ref(x)
        assert y.std() > 0
        assert max_rel_diff(ours(x), y) < 5e-4  # live BatchNorm statistics (build_random): fp32 rounding through the network reaches ~2e-4
        assert max_rel_diff(ours.forward_features(x), ref.forward_features(x)) < 5e-4


@pytest.mark.parametrize("name", ["mobilenetv1_125", "mobilenetv2_100"])
def test_other_classes_channels_and_features_equal_timm(name):
    ref = build_random(lambda: timm.create_model(name, num_classes=3, in_chans=1))
    ours = visionzoo.create_model(name, num_classes=3, in_chans=1, checkpoint=ref.state_dict()).eval()
    x = torch.randn(1, 1, 80, 48)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        feats = visionzoo.create_model(name, in_chans=1, features_only=True, checkpoint=ref.state_dict()).eval()(x)
        expect = ref.forward_intermediates(x, intermediates_only=True)
    assert len(feats) == len(expect) == 5
    for f, e in zip(feats, expect, strict=True):
        assert max_rel_diff(f, e) < 1e-4


@pytest.mark.parametrize("name, width", [("mobilenet_v2", 1.0), ("mobilenetv2_050", 0.5)])
def test_logits_equal_torchvision(name, width):
    ref = build_random(lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=width))
    ours = visionzoo.create_model(name, num_classes=10).eval()
    assert visionzoo.load_checkpoint(ours, ref.state_dict())["source"] == ["torchvision"]
    x = torch.randn(2, 3, 64, 72)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_torchvision_into_features_only_and_overrides():
    ref = build_random(lambda: torchvision.models.mobilenet_v2(width_mult=0.75))
    m = visionzoo.create_model("mobilenetv2_100", width_mult=0.75, features_only=True, out_indices=(1, 3), checkpoint=ref.state_dict())
    assert [f.num_chs for f in m.feature_info] == [24, 72] and [f.reduction for f in m.feature_info] == [4, 16]
    with torch.no_grad():
        f4, f16 = m.eval()(torch.randn(1, 3, 64, 64))
    assert f4.shape == (1, 24, 16, 16) and f16.shape == (1, 72, 4, 4)
    v1 = visionzoo.create_model("mobilenetv1_100", width_mult=0.5, act="relu", num_classes=4)
    assert v1.num_features == 512 and isinstance(v1.act1, torch.nn.ReLU)
    assert v1(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", ["mobilenetv2_100", "mobilenetv1_100"])
def test_output_stride_equals_timm(name, output_stride):
    assert_output_stride_equals_timm(name, output_stride, torch.randn(1, 3, 64, 72))


@pytest.mark.parametrize("name", ["mobilenetv1_100", "mobilenetv2_100"])
def test_bad_output_stride_is_refused(name):
    with pytest.raises(ValueError, match="output_stride must be the int 8, 16 or 32, got 12"):
        visionzoo.create_model(name, output_stride=12)


@pytest.mark.parametrize("name", ["mobilenetv1_100", "mobilenetv2_050"])
def test_batchnorm_numerics_are_timms_kwargs(name):
    """timm takes bn_eps / bn_momentum on both MobileNets (its EfficientNet builder's); ours
    refused them. A training step's running statistics and the eval logits equal timm's."""
    kw = dict(bn_eps=1e-3, bn_momentum=0.01, num_classes=10, drop_rate=0.0)
    ref = build_random(lambda: timm.create_model(name, **kw))
    ours = visionzoo.create_model(name, checkpoint=ref.state_dict(), **kw)
    assert {(m.eps, m.momentum) for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {(1e-3, 0.01)}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref.train()(x), ours.train()(x)
        ref_stats = [m.running_var for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        our_stats = [m.running_var for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert max(max_rel_diff(a, b) for a, b in zip(our_stats, ref_stats, strict=True)) < 1e-5
        assert max_rel_diff(ours.eval()(x), ref.eval()(x)) < 1e-4
    with pytest.raises(ValueError, match="bn_eps must be positive"):
        visionzoo.create_model(name, bn_eps=0.0)
