"""EfficientNet B0-B7 and Lite0-4 against timm, torchvision and efficientnet_pytorch's layout."""

import pytest
import timm
import torch
import torchvision

import visionzoo
from visionzoo.models.efficientnet import official_key_map, stage_specs
from visionzoo.testing import build_random, gradient_rel_diffs, max_rel_diff

from timm_checks import assert_output_stride_equals_timm

NAMES = visionzoo.list_models("efficientnet*")
B_NAMES = [f"efficientnet_b{i}" for i in range(8)]


def _count(fn):
    with torch.device("meta"):
        return sum(p.numel() for p in fn().parameters())


def test_names():
    assert NAMES == sorted(B_NAMES + [f"efficientnet_lite{i}" for i in range(5)])


def test_evaluation_resize_is_the_official_res_plus_32():
    """The eval transform resizes to floor(res / crop_pct): res + 32 for every variant (B6's
    crop_pct rounded to 0.943 gave 559)."""
    import math

    for name in NAMES:
        cfg = visionzoo.registry.get_entry(name).default_cfg
        res = cfg["input_size"][-1]
        assert math.floor(res / cfg["crop_pct"] + 1e-6) == res + 32, name


def test_a_resolution_override_sets_the_default_input_size_and_evaluation_crop():
    """B0 rescaled by B3's coefficients (w 1.2, d 1.4, r 300, the paper's Table / official
    builder) is B3: input 300, evaluated as resize 332 and crop 300. ``resolution`` used to
    change nothing: the model kept B0's 224 and crop 0.875."""
    import math

    model = visionzoo.create_model("efficientnet_b0", width_coefficient=1.2, depth_coefficient=1.4, resolution=300)
    assert model.default_cfg["input_size"] == (3, 300, 300)
    assert math.floor(300 / model.default_cfg["crop_pct"] + 1e-6) == 332
    assert visionzoo.create_model("efficientnet_b0", resolution=300, img_size=256).default_cfg["input_size"] == (3, 256, 256)


@pytest.mark.parametrize("name", NAMES)
def test_params_equal_timm_and_torchvision(name):
    ours = _count(lambda: visionzoo.create_model(name))
    assert ours == _count(lambda: timm.create_model(name))
    if name in B_NAMES:
        assert ours == _count(lambda: getattr(torchvision.models, name)())
    if name == "efficientnet_b0":
        assert ours == 5_288_548


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_lite0"])
def test_logits_equal_timm(name):
    ref = build_random(lambda: timm.create_model(name, num_classes=10))
    ours = visionzoo.create_model(name, num_classes=10, checkpoint=ref.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        assert max_rel_diff(ours.forward_features(x), ref.forward_features(x)) < 1e-4


def test_training_gradients_equal_timm():
    """Training mode, float64, no dropout: every gradient equals timm's (the 5x5 depthwise
    layers' weight gradients run visionzoo's own CPU path)."""
    ref = build_random(lambda: timm.create_model("efficientnet_b0", num_classes=10, drop_rate=0.0)).double()
    ours = visionzoo.create_model("efficientnet_b0", num_classes=10, drop_rate=0.0, checkpoint=ref.state_dict()).double()
    diffs = gradient_rel_diffs(ours, ref, torch.randn(2, 3, 64, 72, dtype=torch.float64))
    assert max(diffs.values()) < 1e-9, max(diffs.items(), key=lambda kv: kv[1])


def test_other_classes_and_channels():
    ref = build_random(lambda: timm.create_model("efficientnet_b0", num_classes=4, in_chans=1))
    ours = visionzoo.create_model("efficientnet_b0", num_classes=4, in_chans=1, checkpoint=ref.state_dict()).eval()
    x = torch.randn(1, 1, 72, 56)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_features_equal_timm_intermediates():
    ref = build_random(lambda: timm.create_model("efficientnet_b0", num_classes=10))
    feats = visionzoo.create_model("efficientnet_b0", features_only=True, checkpoint=ref.state_dict()).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = feats(x)
        expect = ref.forward_intermediates(x, intermediates_only=True)
    assert [f.reduction for f in feats.feature_info] == [2, 4, 8, 16, 32]
    assert [f.num_chs for f in feats.feature_info] == [16, 24, 40, 112, 320]
    assert len(maps) == len(expect) == 5
    for f, e in zip(maps, expect, strict=True):
        assert max_rel_diff(f, e) < 1e-4


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b5"])
def test_logits_equal_torchvision(name):
    # torchvision builds B5-B7 with BatchNorm eps 1e-3 (B0-B4: 1e-5); loading sets it
    ref = build_random(lambda: getattr(torchvision.models, name)(num_classes=10))
    ours = visionzoo.create_model(name, num_classes=10).eval()
    info = visionzoo.load_checkpoint(ours, ref.state_dict())
    assert info["source"] == ["torchvision"]
    assert ours.cfg.bn_eps == (1e-3 if name == "efficientnet_b5" else 1e-5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_b_variant_widths_and_depths_follow_the_coefficients():
    # B4: w = 1.4, d = 1.8. Widths round(c * 1.4) to a multiple of 8 (never 10 % below):
    # 16 -> 24 (22.4), 24 -> 32 (33.6), 40 -> 56, 80 -> 112, 112 -> 160 (156.8), 192 -> 272
    # (268.8), 320 -> 448; repeats ceil(r * 1.8) for r = 1, 2, 2, 3, 3, 4, 1.
    specs = stage_specs(visionzoo.registry.get_entry("efficientnet_b4").config)
    assert [s.out_chs for s in specs] == [24, 32, 56, 112, 160, 272, 448]
    assert [s.repeats for s in specs] == [2, 4, 4, 6, 6, 8, 2]
    with torch.device("meta"):
        b4 = visionzoo.create_model("efficientnet_b4")
        ref = timm.create_model("efficientnet_b4")
    assert [len(s) for s in b4.blocks] == [len(s) for s in ref.blocks] == [2, 4, 4, 6, 6, 8, 2]
    assert b4.conv_stem.out_channels == 48 and b4.num_features == 1792  # 32 * 1.4 = 44.8 -> 48; 1280 * 1.4
    # B7 (d = 3.1): ceil(3.1), ceil(6.2), ceil(6.2), ceil(9.3), ceil(9.3), ceil(12.4), ceil(3.1)
    b7 = stage_specs(visionzoo.registry.get_entry("efficientnet_b7").config)
    assert [s.repeats for s in b7] == [4, 7, 7, 10, 10, 13, 4]
    # Lite4 (w = 1.4, d = 1.8): first and last stages, stem and head not scaled
    with torch.device("meta"):
        lite4 = visionzoo.create_model("efficientnet_lite4")
    assert [len(s) for s in lite4.blocks] == [1, 4, 4, 6, 6, 8, 1]
    assert lite4.conv_stem.out_channels == 32 and lite4.num_features == 1280
    assert [lite4.blocks[i][-1].bn2.num_features if i == 0 else lite4.blocks[i][-1].bn3.num_features for i in range(7)] == [24, 32, 56, 112, 160, 272, 448]


def _to_official(sd, key_map):
    """Our (= timm's) keys -> efficientnet_pytorch's by the documented prefix map."""
    out = {}
    for k, v in sd.items():
        prefix, leaf = k.rsplit(".", 1)
        out[f"{key_map[prefix]}.{leaf}"] = v
    return out


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_lite0"])
def test_efficientnet_pytorch_layout_round_trip(name):
    # our own model, with the numerics efficientnet_pytorch's weights need, written in its layout
    src = build_random(lambda: visionzoo.create_model(name, num_classes=10, bn_eps=1e-3, bn_momentum=0.01, tf_padding=True))
    official = _to_official(src.state_dict(), official_key_map(src.cfg))
    assert "_blocks.0._depthwise_conv.weight" in official and "_blocks.1._expand_conv.weight" in official
    assert "_blocks.0._expand_conv.weight" not in official and "_bn0.running_var" in official and "_fc.bias" in official
    assert ("_blocks.15._se_reduce.weight" in official) == (name == "efficientnet_b0")
    ours = visionzoo.create_model(name, num_classes=10).eval()
    assert visionzoo.load_checkpoint(ours, official)["source"] == ["official"]
    assert ours.cfg.tf_padding and ours.cfg.bn_eps == 1e-3
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), src(x)) < 1e-4
    # and the layout holds TF-trained weights: equal to timm's tf_ port of the same network
    ref = build_random(lambda: timm.create_model(f"tf_{name}", num_classes=10))
    ours = visionzoo.create_model(name, num_classes=10, checkpoint=_to_official(ref.state_dict(), official_key_map(src.cfg))).eval()
    x = torch.randn(2, 3, 65, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_timm_tf_port_with_tf_numerics():
    # timm's tf_efficientnet_* share our keys; their numerics are config overrides
    ref = build_random(lambda: timm.create_model("tf_efficientnet_lite0", num_classes=10))
    ours = visionzoo.create_model("efficientnet_lite0", num_classes=10, bn_eps=1e-3, tf_padding=True, checkpoint=ref.state_dict()).eval()
    x = torch.randn(1, 3, 64, 66)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", ["efficientnet_b0", "tf_efficientnet_b0"])  # tf_: 'SAME' padding with dilation
def test_output_stride_equals_timm(name, output_stride):
    assert_output_stride_equals_timm(name, output_stride, torch.randn(1, 3, 64, 72))


@pytest.mark.parametrize("bad", [12, "8", 8.0, 4])
def test_bad_output_stride_is_refused(bad):
    with pytest.raises(ValueError, match=r"output_stride must be the int 8, 16 or 32, got"):
        visionzoo.create_model("efficientnet_b0", output_stride=bad)
