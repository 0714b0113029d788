"""Parameters grouped by depth (timm's ``group_matcher``) and layer-wise lr decay, against timm.

The parameter names are timm's for every family timm has, so the groups must be the same:
for each model below, every parameter's group id (fine and coarse) and, with layer decay,
its learning-rate scale and weight decay equal those of timm's own model and code.
"""

import pytest
import timm
import torch
from timm.models._manipulate import group_with_matcher
from timm.optim._param_groups import param_groups_layer_decay as timm_layer_decay

import visionzoo
from visionzoo.param_groups import layer_ids, param_groups_layer_decay

from family_models import smallest_per_family

SHARED = sorted(
    {name for name in smallest_per_family().values() if name in timm.list_models()}
    | {
        "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "vit_base_r50_s16_224", "swin_tiny_patch4_window7_224",
        "convnext_tiny", "coatnet_0_224", "nest_tiny", "convmixer_768_32", "resnet50", "resnext50_32x4d", "seresnet50",
        "densenet121", "efficientnet_b0", "tf_efficientnet_b0", "tf_efficientnetv2_b0", "resnetrs50", "mobilenetv2_100", "regnety_040", "vgg16", "inception_v3",
        "inception_v4", "inception_resnet_v2", "hrnet_w18",
    }
)


def _pair(name: str):
    with torch.device("meta"):
        ours = visionzoo.create_model(name)
        # the same classifier on both (timm's default for some, e.g. vit_base_r50_s16_224, is none)
        return ours, timm.create_model(name, num_classes=ours.num_classes)


@pytest.mark.parametrize("coarse", [False, True], ids=["fine", "coarse"])
@pytest.mark.parametrize("name", SHARED)
def test_layer_groups_equal_timms(name, coarse):
    ours, ref = _pair(name)
    expect = group_with_matcher(ref.named_parameters(), ref.group_matcher(coarse=coarse), reverse=True)
    got = layer_ids(ours, coarse=coarse)
    assert got.keys() == expect.keys()
    wrong = {n: (got[n], expect[n]) for n in got if got[n] != expect[n]}
    assert not wrong, f"{len(wrong)} parameters in another group (ours, timm's): {dict(list(wrong.items())[:6])}"
    # timm's own code reads our specification the same way
    assert group_with_matcher(ours.named_parameters(), ours.group_matcher(coarse=coarse), reverse=True) == expect


@pytest.mark.parametrize("name", SHARED)
def test_layer_decay_groups_equal_timms(name):
    ours, ref = _pair(name)

    def per_param(model, groups):
        names = {id(p): n for n, p in model.named_parameters()}
        return {names[id(p)]: (round(g["lr_scale"], 12), g["weight_decay"]) for g in groups for p in g["params"]}

    expect = per_param(ref, timm_layer_decay(ref, weight_decay=0.05, no_weight_decay_list=getattr(ref, "no_weight_decay", set)(), layer_decay=0.7))
    got = per_param(ours, param_groups_layer_decay(ours, weight_decay=0.05, layer_decay=0.7))
    assert got == expect


@pytest.mark.parametrize("family", sorted(smallest_per_family()))
def test_every_family_groups_its_parameters_by_depth(family):
    """Also the families timm lacks: the first parameter (the stem) is in group 0, the
    classifier in the last, and the fine grouping has more groups than the coarse one or than
    the network has feature maps (stages)."""
    with torch.device("meta"):
        model = visionzoo.create_model(smallest_per_family()[family], num_classes=10)
    fine, coarse = layer_ids(model), layer_ids(model, coarse=True)
    first = next(iter(fine))
    classifier = [n for n, p in model.named_parameters() if p.shape[:1] == (10,)]
    assert fine[first] == 0 and coarse[first] == 0
    assert classifier and all(fine[n] == max(fine.values()) for n in classifier)
    assert max(fine.values()) > max(coarse.values()) or max(fine.values()) + 1 > len(model.feature_info)
