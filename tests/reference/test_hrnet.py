"""HRNet against timm."""

import pytest
import timm
import torch

import visionzoo
from visionzoo.testing import build_random, max_rel_diff

NAMES = visionzoo.list_models("hrnet*")


@pytest.mark.parametrize("name", NAMES)
def test_params_equal_timm(name):
    with torch.device("meta"):
        ours = visionzoo.create_model(name)
        ref = timm.create_model(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_timm(name):
    ref = build_random(lambda: timm.create_model(name, num_classes=10))
    ours = visionzoo.create_model(name, num_classes=10).eval()
    visionzoo.load_checkpoint(ours, ref.state_dict(), source="timm")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        # the high-resolution branches, where the inputs are far apart, agree too
        for a, b in zip(ours.forward_branches(x), ref.stages(ref.act2(ref.bn2(ref.conv2(ref.act1(ref.bn1(ref.conv1(x)))))))):
            assert max_rel_diff(a, b) < 1e-4


def test_other_classes_and_channels_and_features():
    ref = build_random(lambda: timm.create_model("hrnet_w18_small", num_classes=3, in_chans=1))
    ours = visionzoo.create_model("hrnet_w18_small", num_classes=3, in_chans=1, checkpoint=ref.state_dict()).eval()
    x = torch.randn(1, 1, 96, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        feats = visionzoo.create_model("hrnet_w18_small", in_chans=1, features_only=True, checkpoint=ref.state_dict()).eval()(x)
        expect = ref.forward_intermediates(x, intermediates_only=True)
    assert [f.shape for f in feats] == [e.shape for e in expect]
    for f, e in zip(feats, expect):
        assert max_rel_diff(f, e) < 1e-4
    branches = ours.forward_branches(x)
    assert [b.shape[1] for b in branches] == [16, 32, 64, 128]
