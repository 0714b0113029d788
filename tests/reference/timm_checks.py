"""Checks against timm that several reference test files share (not a test module)."""

import timm
import torch

import visionzoo
from visionzoo.testing import build_random, max_rel_diff


def assert_output_stride_equals_timm(name: str, output_stride: int, x: torch.Tensor, **cfg) -> None:
    """Logits, unpooled features and every ``features_only`` map of ``name`` at ``output_stride``
    equal timm's with the same weights; the maps' reductions equal timm's."""
    ref = build_random(lambda: timm.create_model(name, num_classes=10, output_stride=output_stride, **cfg))
    sd = ref.state_dict()
    ours = visionzoo.create_model(name, num_classes=10, output_stride=output_stride, checkpoint=sd, **cfg).eval()
    feats = visionzoo.create_model(name, features_only=True, output_stride=output_stride, checkpoint=sd, **cfg).eval()
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        assert max_rel_diff(ours.forward_features(x), ref.forward_features(x)) < 1e-4
        maps, expect = feats(x), ref.forward_intermediates(x, intermediates_only=True)
    assert [f.reduction for f in feats.feature_info] == [f["reduction"] for f in ref.feature_info]
    assert max(f.reduction for f in feats.feature_info) == output_stride
    assert len(maps) == len(expect)
    for f, e in zip(maps, expect, strict=True):
        assert f.shape == e.shape and max_rel_diff(f, e) < 1e-4
