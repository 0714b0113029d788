"""ResNet / ResNeXt / Wide ResNet / SE-ResNet against timm and torchvision; dilation options."""

import pytest
import timm
import torch
import torchvision

import visionzoo
from visionzoo.models.resnet import stage_dilations
from visionzoo.testing import build_random, max_rel_diff

NAMES = visionzoo.list_models(family="resnet")
TV_NAMES = [n for n in NAMES if hasattr(torchvision.models, n)]


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_names():
    assert NAMES == sorted([
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
        "wide_resnet50_2", "seresnet50", "seresnet101", "seresnext50_32x4d", "seresnext101_32x4d",
        "resnet18d", "resnet26d", "resnet34d", "resnet50d", "resnet101d", "resnet152d",
        "resnext50d_32x4d", "seresnext26d_32x4d", "seresnext26t_32x4d", "resnet10t", "resnet14t", "resnet26t", "resnet50t",
        "resnet26", "resnet200", "resnet200d", "resnet50c", "resnet50s", "resnet101c", "resnet101s", "resnet152c", "resnet152s",
        "resnext101_32x4d", "resnext101_32x16d", "resnext101_32x32d", "resnext101_64x4d", "wide_resnet101_2",
        "seresnet18", "seresnet34", "seresnet50t", "seresnet152", "seresnet152d", "seresnet200d", "seresnet269d",
        "seresnext101_32x8d", "seresnext101_64x4d", "seresnext101d_32x8d",
        "ecaresnet26t", "ecaresnet50d", "ecaresnet50t", "ecaresnet101d", "ecaresnet200d", "ecaresnet269d", "ecaresnetlight",
        "ecaresnext26t_32x4d", "ecaresnext50t_32x4d",
        "resnetaa34d", "resnetaa50", "resnetaa50d", "resnetaa101d", "seresnetaa50d", "seresnextaa101d_32x8d", "seresnextaa201d_32x8d",
        "resnetblur18", "resnetblur50", "resnetblur50d", "resnetblur101d",
        "resnetrs50", "resnetrs101", "resnetrs152", "resnetrs200", "resnetrs270", "resnetrs350", "resnetrs420",
    ])
    assert "seresnet50" not in TV_NAMES and len(TV_NAMES) == 10  # + resnext101_64x4d, wide_resnet101_2


@pytest.mark.parametrize("name", NAMES)
def test_params_equal_timm_and_torchvision(name):
    with torch.device("meta"):
        n = _n_params(visionzoo.create_model(name))
        assert n == _n_params(timm.create_model(name))
        if name in TV_NAMES:
            assert n == _n_params(getattr(torchvision.models, name)())
    published = visionzoo.registry.get_entry(name).published["params"]
    assert abs(n / 1e6 - published) < 0.051, (n, published)


@pytest.mark.parametrize("name", [
    "resnet18", "resnet50", "resnext50_32x4d", "seresnet50", "seresnext50_32x4d", "resnet18d", "resnet50d", "resnet10t", "seresnext26t_32x4d",
    "seresnet18", "resnet50s", "ecaresnet26t", "ecaresnetlight", "ecaresnext26t_32x4d", "resnetaa34d", "seresnetaa50d", "resnetblur18", "resnetblur50d",
    "resnetrs50",
])
def test_logits_equal_timm(name):
    ref = build_random(lambda: timm.create_model(name, num_classes=10))
    ours = visionzoo.create_model(name, num_classes=10, checkpoint=ref.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 5e-4  # live BatchNorm statistics (build_random): fp32 rounding through the network reaches ~2e-4
        assert max_rel_diff(ours.forward_features(x), ref.forward_features(x)) < 5e-4


@pytest.mark.parametrize("name", ["resnet18", "wide_resnet50_2"])
def test_logits_equal_torchvision(name):
    ref = build_random(lambda: getattr(torchvision.models, name)(num_classes=10))
    ours = visionzoo.create_model(name, num_classes=10).eval()
    info = visionzoo.load_checkpoint(ours, ref.state_dict(), source="torchvision")
    assert not info["missing"] and not info["unexpected"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_other_classes_and_channels():
    ref = build_random(lambda: timm.create_model("resnet18", num_classes=4, in_chans=1))
    ours = visionzoo.create_model("resnet18", num_classes=4, in_chans=1, checkpoint=ref.state_dict()).eval()
    x = torch.randn(3, 1, 50, 70)  # any size: nothing needs a multiple of 32
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_features_equal_timm_resnet50():
    ref = build_random(lambda: timm.create_model("resnet50", num_classes=10))
    x = torch.randn(1, 3, 64, 96)
    feats = visionzoo.create_model("resnet50", features_only=True, checkpoint=ref.state_dict()).eval()
    assert [f.reduction for f in feats.feature_info] == [2, 4, 8, 16, 32]
    assert [f.num_chs for f in feats.feature_info] == [64, 256, 512, 1024, 2048]
    with torch.no_grad():
        ours = feats(x)
        expect = ref.forward_intermediates(x, intermediates_only=True)
        # timm's own feature extractor on the same weights, for two later stages asked for
        # out of order (and one twice): both return them in network order, once each
        tf = timm.create_model("resnet50", features_only=True, out_indices=(-1, 2, -3)).eval()
        tf.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
        expect_fo = tf(x)
        part_model = visionzoo.create_model("resnet50", features_only=True, out_indices=(-1, 2, -3), checkpoint=ref.state_dict()).eval()
        part = part_model(x)
    assert part_model.feature_info.channels() == [f.shape[1] for f in part] == [512, 2048]
    assert len(ours) == len(expect) == 5
    for f, e in zip(ours, expect, strict=True):
        assert f.shape == e.shape and max_rel_diff(f, e) < 1e-4
    assert [f.shape for f in part] == [e.shape for e in expect_fo]
    for f, e in zip(part, expect_fo, strict=True):
        assert max_rel_diff(f, e) < 1e-4


def test_resnet_d_as_timm_builds_it_from_its_keywords():
    """timm's structural keywords of ResNet (stem_type, stem_width, avg_down) build the same
    network as timm's (ResNet-S's deep 64-64-128 stem here, and ResNet-D's shortcut): keys,
    logits and features_only maps (the deep stem's channels) with the same weights; the shortcut
    reads every pixel (a 2x2 average pool), not one in four."""
    kw = dict(stem_type="deep", stem_width=64, avg_down=True)
    ref = build_random(lambda: timm.create_model("resnet34", num_classes=5, **kw))
    ours = visionzoo.create_model("resnet34", num_classes=5, checkpoint=ref.state_dict(), **kw).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    feats = visionzoo.create_model("resnet34", features_only=True, checkpoint=ref.state_dict(), **kw).eval()
    assert feats.feature_info.channels() == [128, 64, 128, 256, 512]
    assert isinstance(ours.layer2[0].downsample[0], torch.nn.AvgPool2d)  # stride 2: pooled
    assert isinstance(ours.layer1[0].downsample[0], torch.nn.Identity)  # 128 -> 64 channels at stride 1: projected only
    x = torch.randn(2, 3, 65, 47)  # odd sides: the pool's ceil mode
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 5e-4
        for f, e in zip(feats(x), ref.forward_intermediates(x, intermediates_only=True), strict=True):
            assert f.shape == e.shape and max_rel_diff(f, e) < 5e-4
    with pytest.raises(ValueError, match="stem_type must be one of '', 'deep', 'deep_tiered', got 'tiered'"):
        visionzoo.create_model("resnet50", stem_type="tiered")
    with pytest.raises(ValueError, match=r"stem_type='deep_tiered' needs stem_width >= 4 .*got 2"):
        visionzoo.create_model("resnet26t", stem_width=2)  # (a stem of 0 channels otherwise)


def test_a_hook_on_the_deep_stem_sees_its_output_in_inference():
    """The deep stem's convolutions run with their BatchNorms folded in CPU inference; a hook
    on the stem's Sequential (conv1) makes it run as the module, and sees what autograd sees."""
    model = build_random(lambda: visionzoo.create_model("resnet18d", num_classes=3)).eval()
    seen = []
    model.conv1.register_forward_hook(lambda m, args, out: seen.append(out.detach().clone()))
    x = torch.randn(1, 3, 64, 64)
    with torch.enable_grad():
        ref = model(x).detach()
    with torch.inference_mode():
        out = model(x)
    assert len(seen) == 2 and seen[0].shape == (1, 64, 32, 32)
    assert max_rel_diff(seen[1], seen[0]) < 1e-5 and max_rel_diff(out, ref) < 1e-4


def test_deep_stem_first_convolution_takes_other_channel_counts():
    """A 3-channel checkpoint of a deep-stem network loads into a 1- or 4-channel model: the stem's
    first convolution (conv1.0, default_cfg's first_conv) is adapted, as conv1 is for ResNet."""
    src = build_random(lambda: visionzoo.create_model("resnet26t", num_classes=4)).eval()
    for chans in (1, 4):
        dst = visionzoo.create_model("resnet26t", num_classes=4, in_chans=chans, checkpoint=src.state_dict()).eval()
        assert dst.conv1[0].weight.shape == (24, chans, 3, 3)
        x = torch.randn(1, 3, 64, 64)
        gray = x.mean(1, keepdim=True)
        if chans == 1:  # a gray image in the 1-channel model: the RGB model's logits on its gray copy
            with torch.no_grad():
                assert max_rel_diff(dst(gray), src(gray.expand(-1, 3, -1, -1))) < 1e-4


# --------------------------------------------------------------------------- dilation
def test_output_stride_8_resnet50_equals_timm_and_torchvision():
    ref = build_random(lambda: timm.create_model("resnet50", num_classes=10, output_stride=8))
    sd = ref.state_dict()
    ours = visionzoo.create_model("resnet50", num_classes=10, output_stride=8, checkpoint=sd).eval()
    assert [f.reduction for f in ours.feature_info] == [2, 4, 8, 8, 8]
    tv = torchvision.models.resnet50(num_classes=10, replace_stride_with_dilation=[False, True, True]).eval()
    tv.load_state_dict(sd)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        f = ours.forward_features(x)
        assert f.shape == (1, 2048, 8, 8)  # 8x reduced, not 32x
        assert max_rel_diff(f, ref.forward_features(x)) < 1e-4
        assert max_rel_diff(ours(x), tv(x)) < 1e-4
        maps = ours.forward_intermediates(x, [0, 1, 2, 3, 4], intermediates_only=True)
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 8, 8]
    # the first block of a dilated stage keeps the previous rate, the others use the new one
    assert [b.conv2.dilation[0] for b in ours.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in ours.layer4] == [2, 4, 4]


def test_output_stride_16_basic_block_equals_timm():
    ref = build_random(lambda: timm.create_model("resnet18", num_classes=10, output_stride=16))
    ours = visionzoo.create_model("resnet18", num_classes=10, output_stride=16, checkpoint=ref.state_dict()).eval()
    assert [f.reduction for f in ours.feature_info] == [2, 4, 8, 16, 16]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert ours.forward_features(x).shape[-2:] == (4, 4)
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


@pytest.mark.parametrize("name, output_stride", [("resnet50d", 8), ("resnet18d", 16)])
def test_output_stride_of_resnet_d_equals_timm(name, output_stride):
    """A stage whose stride becomes dilation pools its shortcut 2x2 with stride 1 over a map
    padded at its end (timm's AvgPool2dSame), to the same logits and maps as timm's."""
    from timm_checks import assert_output_stride_equals_timm

    assert_output_stride_equals_timm(name, output_stride, torch.randn(1, 3, 64, 80))


def test_multi_grid_rates_repeat_times_the_stage_dilation_and_hdc_rates_are_absolute():
    with torch.device("meta"):
        m = visionzoo.create_model("resnet101", output_stride=8, multi_grid=(1, 2, 5))
        # DeepLabv3's multi-grid at output stride 16: stage 4 base rate 2 -> 2, 4, 8
        m16 = visionzoo.create_model("resnet50", output_stride=16, multi_grid=(1, 2, 4))
        # HDC on stages 3 and 4: absolute rates cycled over all 23 (3) blocks
        hdc = visionzoo.create_model("resnet101", output_stride=8, dilation_rates=(None, None, (1, 2, 5), (5, 9, 17)))
        basic = visionzoo.create_model("resnet34", output_stride=8, multi_grid=(1, 2))
    assert [b.conv2.dilation[0] for b in m.layer4] == [4, 8, 20]
    assert [b.conv2.padding[0] for b in m.layer4] == [4, 8, 20]  # 'same' padding: sizes kept
    assert [b.conv2.dilation[0] for b in m.layer3] == [1] + [2] * 22  # no rates: previous rule
    assert [b.conv2.dilation[0] for b in m16.layer4] == [2, 4, 8]
    assert [b.conv2.dilation[0] for b in hdc.layer3] == [(1, 2, 5)[j % 3] for j in range(23)]
    assert [b.conv2.dilation[0] for b in hdc.layer4] == [5, 9, 17]
    # basic blocks: both 3x3 convolutions of a block take its rate
    assert [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in basic.layer4] == [(4, 4), (8, 8), (4, 4)]
    assert [f.reduction for f in m.feature_info] == [2, 4, 8, 8, 8]
    # the network still runs and keeps the 8x resolution
    small = visionzoo.create_model("resnet18", num_classes=3, output_stride=8, multi_grid=(1, 2, 5)).eval()
    with torch.no_grad():
        assert small.forward_features(torch.randn(1, 3, 40, 48)).shape == (1, 512, 5, 6)
        assert small(torch.randn(2, 3, 40, 48)).shape == (2, 3)


def test_stage_dilations_and_errors():
    cfg = visionzoo.registry.get_entry("resnet50").config
    assert [(s, r) for s, r, _ in stage_dilations(cfg)] == [(1, 4), (2, 8), (2, 16), (2, 32)]
    with pytest.raises(ValueError, match="output_stride"):
        visionzoo.create_model("resnet18", output_stride=12)
    with pytest.raises(ValueError, match="conflicts"):
        visionzoo.create_model("resnet18", multi_grid=(1, 2), dilation_rates=(None, None, None, (1, 3)))
    with pytest.raises(ValueError, match="one entry per stage"):
        visionzoo.create_model("resnet18", dilation_rates=((1, 2),))
    with pytest.raises(ValueError, match="basic block"):
        visionzoo.create_model("resnet18", groups=32)
    with pytest.raises(TypeError, match="unknown option"):
        visionzoo.create_model("resnet18", dilation=2)


def test_counted_macs_match_published():
    for name in ("resnet50", "resnext50_32x4d", "wide_resnet50_2"):
        counted = visionzoo.model_info(name)["gmacs"]
        assert abs(counted - visionzoo.registry.get_entry(name).published["gmacs"]) < 0.06, name


def test_eca_kernel_sizes_equal_timms_for_every_width():
    """ECA-Net's adaptive kernel (odd, from log2 of the width) as timm's EcaModule picks it, for
    1 to 4096 channels: 3 below 128, 5 from 128 ((7 + 1) / 2 = 4, even, so 5), 7 from 2048."""
    from timm.layers import EcaModule

    from visionzoo.models.resnet import EfficientChannelAttention, eca_kernel_size

    for c in range(1, 4097):
        assert eca_kernel_size(c) == EcaModule(c).conv.kernel_size[0], c
    assert [eca_kernel_size(c) for c in (64, 127, 128, 256, 1024, 2047, 2048)] == [3, 3, 5, 5, 5, 5, 7]
    assert EfficientChannelAttention(256, kernel_size=9).conv.kernel_size == (9,)
    with pytest.raises(ValueError, match="ECA's kernel_size must be a positive odd number .*got 4"):
        EfficientChannelAttention(256, kernel_size=4)


def test_eca_module_gates_each_channel_from_its_neighbours_only():
    """A k-tap convolution across the pooled channels: changing one channel's map moves the gate
    of that channel and its (k - 1) / 2 neighbours each side, no other, as the paper draws it."""
    from visionzoo.models.resnet import EfficientChannelAttention

    torch.manual_seed(0)
    eca = EfficientChannelAttention(256).eval()  # k = 5
    x = torch.randn(2, 256, 5, 7)
    y = x.clone()
    y[:, 30] += 1.0
    gate = lambda t: eca(t) / t  # noqa: E731
    changed = ((gate(x) - gate(y)).abs().amax((0, 2, 3)) > 1e-6).nonzero().flatten().tolist()
    assert changed == [28, 29, 30, 31, 32]


@pytest.mark.parametrize("attn", ["eca", "se"])
def test_channel_attention_on_any_resnet_equals_timms_block_args(attn):
    """timm's block_args=dict(attn_layer=...) is our attn=...: a basic-block ResNet with ECA or SE,
    one input channel and 5 classes, at an odd size, loads timm's weights and gives its logits
    and features_only maps."""
    ref = build_random(lambda: timm.create_model("resnet18", num_classes=5, in_chans=1, block_args=dict(attn_layer=attn)))
    ours = visionzoo.create_model("resnet18", num_classes=5, in_chans=1, attn=attn, checkpoint=ref.state_dict()).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    feats = visionzoo.create_model("resnet18", in_chans=1, attn=attn, features_only=True, checkpoint=ref.state_dict()).eval()
    x = torch.randn(2, 1, 57, 41)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 5e-4
        for f, e in zip(feats(x), ref.forward_intermediates(x, intermediates_only=True), strict=True):
            assert f.shape == e.shape and max_rel_diff(f, e) < 5e-4


def test_channel_attention_options_are_checked():
    with pytest.raises(ValueError, match="attn must be one of '', 'se', 'eca', got 'cbam'"):
        visionzoo.create_model("resnet50", attn="cbam")
    with pytest.raises(ValueError, match=r"se=True asks for squeeze-and-excitation, attn='eca' for another attention: give one of them"):
        visionzoo.create_model("seresnet50", attn="eca")
    assert visionzoo.create_model("seresnet50", attn="se").cfg.se  # the same request twice is no conflict


@pytest.mark.parametrize("aa, name, output_stride, side", [
    ("avg", "resnet50", 32, (96, 64)), ("avg", "resnet18", 8, (96, 64)), ("blur", "resnet50d", 32, (75, 66)), ("blur", "resnet18", 8, (75, 66)),
    ("avg", "resnetrs50", 32, (96, 64)), ("blur", "resnetrs50", 16, (75, 66)),  # the stem's strided convolution at stride 1, the pool after it
])
def test_anti_aliased_downsampling_on_any_resnet_equals_timms_aa_layer(aa, name, output_stride, side):
    """timm's aa_layer is ours: the strided 3x3 at stride 1, then "avg" (its nn.AvgPool2d): a 2x2
    average pool, the stem's 2x2 average pool; "blur" (its BlurPool2d): a 3x3 binomial blur at the
    stride (at stride 1 where a stride became dilation), the stem's max pool at stride 1 before
    one, the filter no state (timm's buffer is not in its state dict). Same keys, logits and maps
    with timm's weights, dilated too. The blur takes odd sides (reflect-padded, it rounds up as the
    shortcut does); with "avg" the sides must divide by the output stride (timm fails on the
    others, where its pools floor an odd side that the shortcut rounds up): refused in one line."""
    from timm.layers import BlurPool2d

    ref = build_random(lambda: timm.create_model(name, num_classes=4, aa_layer={"avg": torch.nn.AvgPool2d, "blur": BlurPool2d}[aa], output_stride=output_stride))
    kw = dict(aa_layer=aa, output_stride=output_stride)
    ours = visionzoo.create_model(name, num_classes=4, checkpoint=ref.state_dict(), **kw).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    feats = visionzoo.create_model(name, features_only=True, checkpoint=ref.state_dict(), **kw).eval()
    x = torch.randn(2, 3, *side)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 5e-4
        for f, e in zip(feats(x), ref.forward_intermediates(x, intermediates_only=True), strict=True):
            assert f.shape == e.shape and max_rel_diff(f, e) < 5e-4
    if aa == "avg":
        with pytest.raises(visionzoo.InputError, match=f"needs height and width divisible by {output_stride}, got 100x100"):
            ours(torch.randn(1, 3, 100, 100))
    with pytest.raises(ValueError, match="aa_layer must be one of '', 'avg', 'blur', got 'blurpc'"):
        visionzoo.create_model(name, aa_layer="blurpc")


def test_timms_resnet_keywords_are_taken_as_timm_spells_them():
    """cardinality (groups), block_args=dict(attn_layer=...) (attn) and aa_layer as timm's classes
    build timm's network: its keys and logits with its weights; a conflicting pair or a block
    argument visionzoo does not build is refused in one line naming it."""
    from timm.layers import BlurPool2d

    kw = dict(cardinality=8, base_width=8, block_args=dict(attn_layer="eca"), aa_layer=BlurPool2d, num_classes=3)
    ref = build_random(lambda: timm.create_model("resnet26", **kw))
    ours = visionzoo.create_model("resnet26", checkpoint=ref.state_dict(), **kw).eval()
    assert (ours.cfg.groups, ours.cfg.attn, ours.cfg.aa_layer) == (8, "eca", "blur")
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 5e-4
    assert visionzoo.create_model("resnet50", aa_layer=torch.nn.AvgPool2d, device="meta").cfg.aa_layer == "avg"
    with pytest.raises(ValueError, match="resnet50: cardinality=8 and groups=4 are timm's and visionzoo's names of one option: give one"):
        visionzoo.create_model("resnet50", cardinality=8, groups=4)
    with pytest.raises(ValueError, match=r"resnet50: block_args takes attn_layer only .*got \['drop_block'\]"):
        visionzoo.create_model("resnet50", block_args=dict(attn_layer="se", drop_block=1))


def test_resnet_rs_stem_convolution_and_se_width_on_any_resnet():
    """ResNet-RS's two changes are options of every ResNet: replace_stem_pool (a 3x3 stride-2
    convolution, BN and ReLU where the max pool was; timm's keys maxpool.0 / maxpool.1) and
    se_ratio (SE a quarter of the block's width: 256 -> 64, where SENet's 1/16 gives 16). On a
    basic-block ResNet they give timm's keys and logits with timm's weights; the stem's
    convolution is in the stem's parameter group."""
    from functools import partial

    from timm.layers import get_attn

    ref = build_random(lambda: timm.create_model("resnet18", num_classes=4, replace_stem_pool=True, block_args=dict(attn_layer=partial(get_attn("se"), rd_ratio=0.25))))
    ours = visionzoo.create_model("resnet18", num_classes=4, replace_stem_pool=True, attn="se", se_ratio=0.25, checkpoint=ref.state_dict()).eval()
    assert list(ours.state_dict()) == list(ref.state_dict()) and "maxpool.0.weight" in ref.state_dict()
    assert ours.layer1[0].se.fc1.out_channels == 16 and visionzoo.create_model("resnet50", attn="se").layer1[0].se.fc1.out_channels == 16
    assert visionzoo.create_model("resnetrs50").layer1[0].se.fc1.out_channels == 64
    x = torch.randn(2, 3, 70, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 5e-4
    from visionzoo.param_groups import layer_ids

    assert layer_ids(ours)["maxpool.0.weight"] == layer_ids(ours)["conv1.weight"] == 0
