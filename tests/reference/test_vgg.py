"""VGG against timm (ConvMlp head) and torchvision (Linear classifier)."""

import pytest
import timm
import torch
import torchvision

import visionzoo
from visionzoo.testing import build_random, max_rel_diff

NAMES = visionzoo.list_models("vgg*")


def test_all_eight_registered():
    assert NAMES == sorted(f"vgg{d}{s}" for d in (11, 13, 16, 19) for s in ("", "_bn"))


@pytest.mark.parametrize("name", NAMES)
def test_params_equal_timm_and_torchvision(name):
    with torch.device("meta"):
        ours = sum(p.numel() for p in visionzoo.create_model(name).parameters())
        t = sum(p.numel() for p in timm.create_model(name).parameters())
        tv = sum(p.numel() for p in getattr(torchvision.models, name)().parameters())
    assert ours == t == tv


def _ours(name, state_dict, **kwargs):
    """visionzoo's model loaded from ``state_dict``, skipping the (slow, 100M-weight) init."""
    with torch.device("meta"):
        model = visionzoo.create_model(name, **kwargs)
    model = model.to_empty(device="cpu")
    info = visionzoo.load_checkpoint(model, state_dict)
    return model.eval(), info["source"][0]


def test_logits_equal_timm_at_small_and_224_inputs():
    ref = build_random(lambda: timm.create_model("vgg11", num_classes=10))
    ours, source = _ours("vgg11", ref.state_dict(), num_classes=10)
    assert source == "timm"
    with torch.no_grad():
        # last map 2x3: timm's ConvMlp pools it up to 7x7, as torchvision's AdaptiveAvgPool does
        x = torch.randn(2, 3, 64, 96)
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        assert max_rel_diff(ours.forward_features(x), ref.forward_features(x)) < 1e-4
        x = torch.randn(1, 3, 224, 224)  # last map 7x7: the 7x7 conv covers it exactly
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_logits_equal_timm_bn_other_classes_channels_and_features():
    ref = build_random(lambda: timm.create_model("vgg11_bn", num_classes=3, in_chans=1))
    ours, source = _ours("vgg11_bn", ref.state_dict(), num_classes=3, in_chans=1)
    assert source == "timm"
    x = torch.randn(1, 1, 32, 48)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        ours.set_features_only()
        feats = ours(x)
        expect = ref.forward_intermediates(x, intermediates_only=True)
    assert len(feats) == len(expect) == 6
    for f, e in zip(feats, expect, strict=True):
        assert max_rel_diff(f, e) < 1e-4


@pytest.mark.parametrize("name", ["vgg11", "vgg13_bn"])
def test_logits_equal_torchvision(name):
    ref = build_random(lambda: getattr(torchvision.models, name)(num_classes=10))
    ours, source = _ours(name, ref.state_dict(), num_classes=10)
    assert source == "torchvision"
    with torch.no_grad():
        x = torch.randn(2, 3, 96, 64)
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        if name == "vgg11":  # above 224 the last map (9x8) is pooled down to 7x7
            x = torch.randn(1, 3, 288, 256)
            assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_create_model_loads_torchvision_checkpoint():
    ref = build_random(lambda: torchvision.models.vgg11(num_classes=4))
    ours = visionzoo.create_model("vgg11", num_classes=4, checkpoint=ref.state_dict()).eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_config_and_smallest_input():
    m = visionzoo.create_model("vgg11", num_classes=4, mlp_dim=256)
    assert m.head_hidden_size == 256 and m.num_features == 512 and m.pre_logits.fc1.in_features == 512 * 49
    with pytest.raises(visionzoo.InputError, match="at least 32x32"):
        m(torch.randn(1, 3, 31, 64))
