"""RegNet against timm, torchvision and pycls's generated stage widths."""

import pytest
import timm
import torch
import torchvision
from torchvision.models.regnet import BlockParams

import visionzoo
from visionzoo.models.regnet import TORCHVISION_ALIASES, RegNetConfig, regnet_block_widths, regnet_stages
from visionzoo.registry import get_entry
from visionzoo.testing import build_random, max_rel_diff

from timm_checks import assert_output_stride_equals_timm

SIZES = ["002", "004", "006", "008", "016", "032", "040", "064", "080", "120", "160", "320"]
TIMM_NAMES = [f"regnet{k}_{s}" for k in "xy" for s in SIZES]
TV_DISTINCT = ["regnet_x_400mf", "regnet_y_800mf", "regnet_y_8gf"]
TV_NAMES = TV_DISTINCT + list(TORCHVISION_ALIASES)


def _n(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def tv_on_meta(monkeypatch):
    """torchvision computes its widths with tensors, which the meta device cannot read back."""
    build = BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return build(cls, *args, **kwargs)

    monkeypatch.setattr(BlockParams, "from_init_params", classmethod(on_cpu))


def test_registered_names():
    assert set(visionzoo.list_models("regnet*")) == set(TIMM_NAMES) | set(TV_DISTINCT)
    assert set(visionzoo.list_models("regnet_*", aliases=True)) == set(TV_NAMES)


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_params_equal_timm(name):
    with torch.device("meta"):
        assert _n(visionzoo.create_model(name)) == _n(timm.create_model(name))


@pytest.mark.parametrize("name", TV_NAMES)
def test_params_equal_torchvision(name, tv_on_meta):
    with torch.device("meta"):
        ours = visionzoo.create_model(name)
        ref = getattr(torchvision.models, name)()
    assert _n(ours) == _n(ref)
    assert [f.num_chs for f in ours.feature_info[1:]] == [s[-1].f.c[0].out_channels for s in ref.trunk_output]


def test_torchvision_distinct_variants_differ_from_timm_only_in_rounding():
    for tv, tm in (("regnet_x_400mf", "regnetx_004"), ("regnet_y_800mf", "regnety_008"), ("regnet_y_8gf", "regnety_080")):
        a, b = get_entry(tv).config, get_entry(tm).config
        assert a.width_rounding == "torchvision" and b.width_rounding == "nearest"
        assert (a.depth, a.w0, a.wa, a.wm, a.group_width, a.se_ratio) == (b.depth, b.w0, b.wa, b.wm, b.group_width, b.se_ratio)
        assert regnet_stages(a)[0] != regnet_stages(b)[0]
    assert regnet_stages(get_entry("regnet_x_400mf").config)[0] == [32, 64, 160, 400]
    assert regnet_stages(get_entry("regnetx_004").config)[0] == [32, 64, 160, 384]


@pytest.mark.parametrize("timm_name, name", [("regnetx_004_tv", "regnet_x_400mf"), ("regnety_008_tv", "regnet_y_800mf"), ("regnety_080_tv", "regnet_y_8gf")])
def test_timms_tv_names_are_the_torchvision_networks(timm_name, name):
    """timm's *_tv RegNets (its group_min_ratio=0.9 widths) are torchvision's: the alias builds
    that network, with timm's keys and params; logits equal timm's for the smallest."""
    assert get_entry(timm_name).name == name
    with torch.device("meta"):
        ours, ref = visionzoo.create_model(timm_name), timm.create_model(timm_name)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    if timm_name == "regnetx_004_tv":
        ref = build_random(lambda: timm.create_model(timm_name, num_classes=5))
        ours = visionzoo.create_model(timm_name, num_classes=5, checkpoint=ref.state_dict()).eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert max_rel_diff(ours(x), ref(x)) < 5e-4


# (widths, depths, group widths) that pycls's generate_regnet + adjust_block_compatibility give
PYCLS_STAGES = {
    "regnetx_002": ([24, 56, 152, 368], [1, 1, 4, 7], [8, 8, 8, 8]),
    "regnetx_004": ([32, 64, 160, 384], [1, 2, 7, 12], [16, 16, 16, 16]),
    "regnety_004": ([48, 104, 208, 440], [1, 3, 6, 6], [8, 8, 8, 8]),
    "regnety_040": ([128, 192, 512, 1088], [2, 6, 12, 2], [64, 64, 64, 64]),
    "regnety_320": ([232, 696, 1392, 3712], [2, 5, 12, 1], [232, 232, 232, 232]),
}


@pytest.mark.parametrize("name", list(PYCLS_STAGES))
def test_generated_stages_equal_pycls(name):
    cfg = get_entry(name).config
    assert regnet_stages(cfg) == PYCLS_STAGES[name]
    with torch.device("meta"):
        model = visionzoo.create_model(name, num_classes=0)
    widths, depths, _ = PYCLS_STAGES[name]
    assert [f.num_chs for f in model.feature_info] == [32, *widths]
    assert [len(getattr(model, f"s{i + 1}")) for i in range(4)] == depths


def test_block_width_rule():
    # RegNetX-200MF: u_j = 24 + 36.44 j; steps of 2.49x quantised to multiples of 8
    assert regnet_block_widths(24, 36.44, 2.49, 13) == [24, 56, 152, 152, 152, 152] + [368] * 7
    with pytest.raises(ValueError):
        regnet_block_widths(20, 36.44, 2.49, 13)  # w0 not a multiple of 8


@pytest.mark.parametrize("name", ["regnetx_002", "regnety_002"])
def test_logits_equal_timm(name):
    ref = build_random(lambda: timm.create_model(name, num_classes=10))
    ours = visionzoo.create_model(name, num_classes=10, checkpoint=ref.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        assert max_rel_diff(ours.forward_features(x), ref.forward_features(x)) < 1e-4


def test_other_classes_and_channels():
    ref = build_random(lambda: timm.create_model("regnety_002", num_classes=4, in_chans=1))
    ours = visionzoo.create_model("regnety_002", num_classes=4, in_chans=1, checkpoint=ref.state_dict()).eval()
    x = torch.randn(1, 1, 80, 48)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_features_equal_timm_intermediates():
    ref = build_random(lambda: timm.create_model("regnety_002", num_classes=10))
    feats = visionzoo.create_model("regnety_002", features_only=True, checkpoint=ref.state_dict()).eval()
    assert [(f.num_chs, f.reduction, f.module) for f in feats.feature_info] == [(f["num_chs"], f["reduction"], f["module"]) for f in ref.feature_info]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, expect = feats(x), ref.forward_intermediates(x, intermediates_only=True)
    assert len(ours) == len(expect) == 5
    for f, e in zip(ours, expect, strict=True):
        assert max_rel_diff(f, e) < 1e-4
    sub = visionzoo.create_model("regnety_002", features_only=True, out_indices=(1, 2), checkpoint=ref.state_dict()).eval()
    assert not hasattr(sub, "s3") and not hasattr(sub, "s4")
    with torch.no_grad():
        for f, e in zip(sub(x), expect[1:3], strict=True):
            assert max_rel_diff(f, e) < 1e-4


@pytest.mark.parametrize("name", ["regnet_y_400mf", "regnet_x_400mf"])
def test_logits_equal_torchvision(name, tv_on_meta):
    ref = build_random(lambda: getattr(torchvision.models, name)(num_classes=10))
    ours = visionzoo.create_model(name, num_classes=10).eval()
    info = visionzoo.load_checkpoint(ours, ref.state_dict())
    assert info["source"] == ["torchvision"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def _to_pycls(sd):
    """timm layout -> pycls's release layout, BGR stem (written independently of our converter)."""
    names = {"conv1.conv": "f.a", "conv1.bn": "f.a_bn", "conv2.conv": "f.b", "conv2.bn": "f.b_bn",
             "conv3.conv": "f.c", "conv3.bn": "f.c_bn", "se.fc1": "f.se.f_ex.0", "se.fc2": "f.se.f_ex.2",
             "downsample.conv": "proj", "downsample.bn": "bn"}
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0].startswith("s") and parts[0][1:].isdigit():
            k = ".".join(parts[:2] + [names[".".join(parts[2:4])]] + parts[4:])
        if k == "stem.conv.weight":
            v = v.flip(1)
        out[k] = v
    return out


def test_pycls_layout_loads():
    ref = build_random(lambda: timm.create_model("regnety_002", num_classes=10))
    pycls = _to_pycls(ref.state_dict())
    assert "s1.b1.f.se.f_ex.0.weight" in pycls and "s2.b1.bn.running_var" in pycls and "s4.b7.f.c_bn.bias" in pycls
    ours = visionzoo.create_model("regnety_002", num_classes=10).eval()
    assert visionzoo.load_checkpoint(ours, {"model_state": pycls})["source"] == ["official"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_design_space_overrides():
    # a Y block is an X block plus SE: RegNetX-200MF with se_ratio=0.25 is RegNetY-200MF
    with torch.device("meta"):
        x_se = visionzoo.create_model("regnetx_002", se_ratio=0.25)
        y = visionzoo.create_model("regnety_002")
        wide = visionzoo.create_model("regnetx_002", bottle_ratio=0.5, group_width=16, depth=10)
    assert _n(x_se) == _n(y)
    assert [f.num_chs for f in wide.feature_info] == [32] + regnet_stages(RegNetConfig(depth=10, bottle_ratio=0.5, group_width=16))[0]
    m = visionzoo.create_model("regnety_002", num_classes=3, drop_path_rate=0.2, bottle_ratio=0.5).train()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="width_rounding"):
        visionzoo.create_model("regnetx_002", width_rounding="up")


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", ["regnetx_002", "regnety_004"])
def test_output_stride_equals_timm(name, output_stride):
    assert_output_stride_equals_timm(name, output_stride, torch.randn(1, 3, 64, 72))


def test_output_stride_refused_clearly():
    with pytest.raises(ValueError, match="output_stride must be the int 8, 16 or 32, got 4"):
        visionzoo.create_model("regnetx_002", output_stride=4)
