"""Checks against timm that several reference test files share (not a test module)."""

import timm
import torch

import visionzoo
from visionzoo.testing import build_random, max_rel_diff


def assert_outputs_equal_timm(name: str, x: torch.Tensor, **cfg) -> tuple[torch.nn.Module, torch.nn.Module, list[torch.Tensor]]:
    """Logits, unpooled features and every ``features_only`` map of ``name`` (10 classes, ``cfg``)
    equal timm's with the same weights (random, loaded from timm's state dict); the maps'
    reductions equal timm's, the deepest the ``output_stride`` where ``cfg`` sets one. Returns
    ours and timm's model (in eval mode) and our maps, for further checks."""
    ref = build_random(lambda: timm.create_model(name, num_classes=10, **cfg))
    sd = ref.state_dict()
    ours = visionzoo.create_model(name, num_classes=10, checkpoint=sd, **cfg).eval()
    feats = visionzoo.create_model(name, features_only=True, checkpoint=sd, **cfg).eval()
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        assert max_rel_diff(ours.forward_features(x), ref.forward_features(x)) < 1e-4
        maps, expect = feats(x), ref.forward_intermediates(x, intermediates_only=True)
    assert [f.reduction for f in feats.feature_info] == [f["reduction"] for f in ref.feature_info]
    if "output_stride" in cfg:
        assert max(f.reduction for f in feats.feature_info) == cfg["output_stride"]
    assert len(maps) == len(expect)
    for f, e in zip(maps, expect, strict=True):
        assert f.shape == e.shape and max_rel_diff(f, e) < 1e-4
    return ours, ref, maps


def assert_output_stride_equals_timm(name: str, output_stride: int, x: torch.Tensor, **cfg) -> None:
    """:func:`assert_outputs_equal_timm` at ``output_stride``, which the deepest map reaches."""
    assert_outputs_equal_timm(name, x, output_stride=output_stride, **cfg)
