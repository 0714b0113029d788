"""EfficientNet B0-B7, Lite0-4 and V2 against timm, torchvision and efficientnet_pytorch's layout."""

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
V2_NAMES = visionzoo.list_models("*efficientnetv2*")


def _count(fn):
    with torch.device("meta"):
        return sum(p.numel() for p in fn().parameters())


def test_names():
    v2 = [f"efficientnetv2_{v}" for v in ("s", "m", "l", "xl", "rw_t", "rw_s", "rw_m")]
    assert NAMES == sorted(B_NAMES + [f"efficientnet_lite{i}" for i in range(5)] + v2)
    assert V2_NAMES == sorted(v2 + [f"tf_efficientnetv2_{v}" for v in ("s", "m", "l", "xl", "b0", "b1", "b2", "b3")])
    assert set(V2_NAMES) <= set(timm.list_models())


def test_evaluation_resize_is_the_official_res_plus_32():
    """The eval transform resizes to floor(res / crop_pct): res + 32 for every variant (B6's
    crop_pct rounded to 0.943 gave 559)."""
    import math

    for name in set(NAMES) - set(V2_NAMES):
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


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_lite0", "efficientnetv2_rw_t", "efficientnetv2_rw_s", "tf_efficientnetv2_b3"])
def test_logits_equal_timm(name):
    """Random timm weights (BN statistics randomised) in, an odd-sized input (tf_: 'SAME' padding)."""
    ref = build_random(lambda: timm.create_model(name, num_classes=10))
    ours = visionzoo.create_model(name, num_classes=10, checkpoint=ref.state_dict()).eval()
    x = torch.randn(2, 3, 65, 72)
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


# --------------------------------------------------------------------------- EfficientNetV2
@pytest.mark.parametrize("name", V2_NAMES)
def test_v2_params_keys_features_and_preprocessing_equal_timm(name):
    with torch.device("meta"):
        ours, ref = visionzoo.create_model(name), timm.create_model(name)
    assert _count(lambda: ours) == _count(lambda: ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [(f.num_chs, f.reduction) for f in ours.feature_info] == [(f["num_chs"], f["reduction"]) for f in ref.feature_info]
    tcfg = ref.pretrained_cfg
    for key in ("input_size", "test_input_size", "crop_pct", "mean", "std", "interpolation"):
        assert ours.default_cfg[key] == tcfg[key], key
    assert ours.default_cfg.get("crop_mode", "center") == tcfg.get("crop_mode", "center")


@pytest.mark.parametrize("name,size", [("efficientnet_v2_s", 21_458_488), ("efficientnet_v2_m", 54_139_356), ("efficientnet_v2_l", 118_515_272)])
def test_v2_torchvision_names_are_the_same_networks(name, size):
    """torchvision's names resolve to the V2 networks; parameter counts equal torchvision's
    builders and the counts its weights' metadata state."""
    assert visionzoo.registry.get_entry(name).name == name.replace("efficientnet_v2", "efficientnetv2")
    assert _count(lambda: visionzoo.create_model(name)) == _count(lambda: getattr(torchvision.models, name)()) == size


def test_v2_widths_depths_and_blocks():
    """tf_efficientnetv2_b3 (w 1.2, d 1.4 on the base table): the widths round to the nearest
    multiple of 8 without the 10 % rule (16 * 1.2 = 19.2 -> 16, where V1's rule gives 24), the
    repeats ceil(r * 1.4); stage 1 is conv-BN-SiLU with a residual, stages 2-3 Fused-MBConv
    without SE, the rest MBConv with SE."""
    from visionzoo.models.efficientnet import ConvBnAct, FusedMBConv, MBConv

    specs = stage_specs(visionzoo.registry.get_entry("tf_efficientnetv2_b3").config)
    assert [s.out_chs for s in specs] == [16, 40, 56, 112, 136, 232]
    assert [s.repeats for s in specs] == [2, 3, 3, 5, 7, 12]
    with torch.device("meta"):
        b3 = visionzoo.create_model("tf_efficientnetv2_b3")
    assert [type(s[0]) for s in b3.blocks] == [ConvBnAct, FusedMBConv, FusedMBConv, MBConv, MBConv, MBConv]
    assert b3.blocks[0][1].has_skip and isinstance(b3.blocks[1][0].se, torch.nn.Identity) and not isinstance(b3.blocks[3][0].se, torch.nn.Identity)
    assert b3.conv_stem.out_channels == 40 and b3.num_features == 1536  # 32 * 1.2 = 38.4 -> 40; 1280 * 1.2
    # timm's rw_m: one depth coefficient per stage (1.2 for the first four, 1.6 for the last two)
    rw_m = stage_specs(visionzoo.registry.get_entry("efficientnetv2_rw_m").config)
    assert [s.repeats for s in rw_m] == [3, 5, 5, 8, 15, 24]
    with pytest.raises(ValueError, match="depth_coefficient gives 2 values for 6 stages"):
        visionzoo.create_model("efficientnetv2_s", depth_coefficient=(1.0, 2.0))


def test_v2_features_equal_timm_intermediates():
    """The features_only maps of a V2 (the cn stage at stride 2, 'SAME' padding) equal timm's
    forward_intermediates."""
    ref = build_random(lambda: timm.create_model("tf_efficientnetv2_b3", num_classes=10))
    feats = visionzoo.create_model("tf_efficientnetv2_b3", features_only=True, checkpoint=ref.state_dict()).eval()
    x = torch.randn(2, 3, 65, 72)
    with torch.no_grad():
        maps, expect = feats(x), ref.forward_intermediates(x, intermediates_only=True)
    assert len(maps) == len(expect) == 5
    for f, e in zip(maps, expect, strict=True):
        assert max_rel_diff(f, e) < 1e-4


def test_v2_training_gradients_equal_timm():
    """Training mode, float64, no dropout: every gradient of a V2 (conv-BN-act, Fused-MBConv
    and MBConv blocks) equals timm's."""
    ref = build_random(lambda: timm.create_model("tf_efficientnetv2_b0", num_classes=10, drop_rate=0.0)).double()
    ours = visionzoo.create_model("tf_efficientnetv2_b0", num_classes=10, drop_rate=0.0, checkpoint=ref.state_dict()).double()
    diffs = gradient_rel_diffs(ours, ref, torch.randn(2, 3, 64, 72, dtype=torch.float64))
    assert max(diffs.values()) < 1e-9, max(diffs.items(), key=lambda kv: kv[1])


def test_v2_logits_equal_torchvision():
    """torchvision's efficientnet_v2_s layout converts (its Fused-MBConv of expansion 1 is our
    conv-BN-act block) and sets its BatchNorm eps 1e-3 on loading."""
    ref = build_random(lambda: torchvision.models.efficientnet_v2_s(num_classes=10))
    ours = visionzoo.create_model("efficientnet_v2_s", num_classes=10).eval()
    assert visionzoo.load_checkpoint(ours, ref.state_dict())["source"] == ["torchvision"]
    assert ours.cfg.bn_eps == 1e-3 and not ours.cfg.tf_padding
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_v2_output_stride_equals_timm():
    assert_output_stride_equals_timm("tf_efficientnetv2_b0", 8, torch.randn(1, 3, 64, 72))
