"""GoogLeNet, Inception-v2/v3/v4 and Inception-ResNet-v2 against torchvision and timm."""

import warnings

import pytest
import timm
import torch
import torchvision

import visionzoo
from visionzoo import InputError
from visionzoo.testing import build_random, max_rel_diff

warnings.filterwarnings("ignore", category=FutureWarning)  # torchvision's init_weights notice

TIMM_NAMES = ["inception_v3", "inception_v4", "inception_resnet_v2"]


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _tv_googlenet(**kw):
    return torchvision.models.googlenet(init_weights=False, **kw)


def _tv_inception_v3(**kw):
    return torchvision.models.inception_v3(init_weights=False, **kw)


def _same(ours, ref, x):
    with torch.no_grad():
        r = ref(x)
        assert r.abs().max() > 0
        assert max_rel_diff(ours(x), r) < 1e-4


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_params_and_logits_equal_timm(name):
    with torch.device("meta"):
        assert _count(visionzoo.create_model(name)) == _count(timm.create_model(name))
    ref = build_random(lambda: timm.create_model(name, num_classes=10))
    ours = visionzoo.create_model(name, num_classes=10, checkpoint=ref.state_dict()).eval()
    assert ours.min_input_size == 75  # the smallest input all of them take
    _same(ours, ref, torch.randn(2, 3, 75, 75))


def test_params_equal_torchvision_with_and_without_aux_heads():
    with torch.device("meta"):
        for aux in (False, True):
            assert _count(visionzoo.create_model("googlenet", aux_logits=aux)) == _count(_tv_googlenet(aux_logits=aux))
            assert _count(visionzoo.create_model("inception_v3", aux_logits=aux)) == _count(_tv_inception_v3(aux_logits=aux))
        assert _count(visionzoo.create_model("inception_v3", aux_logits=True)) == _count(timm.create_model("inception_v3", aux_logits=True))
    assert _count(visionzoo.create_model("googlenet")) == 6_624_904  # torchvision's documented figure


def test_googlenet_equals_torchvision():
    # torchvision builds the auxiliary heads by default: they are dropped on loading
    ref = build_random(lambda: _tv_googlenet(num_classes=10))
    ours = visionzoo.create_model("googlenet", num_classes=10, checkpoint=ref.state_dict()).eval()
    assert ours.aux1 is None
    _same(ours, ref, torch.randn(2, 3, 15, 15))  # torchvision's min_size
    _same(ours, ref, torch.randn(1, 3, 57, 40))
    with pytest.raises(InputError, match="at least 15x15"):
        ours(torch.randn(1, 3, 14, 15))


def test_googlenet_transform_input():
    ref = build_random(lambda: _tv_googlenet(num_classes=5, aux_logits=False, transform_input=True))
    ours = visionzoo.create_model("googlenet", num_classes=5, transform_input=True, checkpoint=ref.state_dict()).eval()
    img = torch.rand(2, 3, 32, 32)
    imagenet = (img - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    _same(ours, ref, imagenet)
    # without it, the same weights take the Inception normalisation of the default cfg
    plain = visionzoo.create_model("googlenet", num_classes=5, checkpoint=ref.state_dict()).eval()
    assert plain.default_cfg["mean"] == (0.5, 0.5, 0.5) and plain.default_cfg["std"] == (0.5, 0.5, 0.5)
    with torch.no_grad():
        assert max_rel_diff(plain((img - 0.5) / 0.5), ref(imagenet)) < 1e-4


def test_googlenet_aux_heads_in_training_equal_torchvision():
    ref = build_random(lambda: _tv_googlenet(num_classes=6, dropout=0.0, dropout_aux=0.0))
    ours = visionzoo.create_model("googlenet", num_classes=6, aux_logits=True, drop_rate=0.0, aux_drop_rate=0.0, checkpoint=ref.state_dict())
    x = torch.randn(2, 3, 40, 40)
    ref.train(), ours.train()
    with torch.no_grad():
        r, o = ref(x), ours(x)
    assert isinstance(o, tuple) and len(o) == 3  # (logits, aux2, aux1)
    for a, b in zip(o, (r.logits, r.aux_logits2, r.aux_logits1)):
        assert max_rel_diff(a, b) < 1e-4
    sum(o.sum() for o in ours(x)).backward()  # every parameter, the auxiliary heads' too, trains
    assert all(p.grad is not None for p in ours.parameters())
    ours.eval()
    assert ours(x).shape == (2, 6)


def test_googlenet_refuses_aux_drop_rate_without_aux_heads():
    """aux_drop_rate without aux_logits used to build a network without the heads it acts on."""
    with pytest.raises(ValueError, match="aux_drop_rate .* needs aux_logits=True"):
        visionzoo.create_model("googlenet", aux_drop_rate=0.3)
    assert visionzoo.create_model("googlenet", aux_logits=True, aux_drop_rate=0.3).aux1.dropout.p == 0.3


def test_inception_v3_equals_torchvision_and_aux_head_in_training():
    ref = build_random(lambda: _tv_inception_v3(num_classes=10, dropout=0.0))
    ours = visionzoo.create_model("inception_v3", num_classes=10, checkpoint=ref.state_dict()).eval()
    _same(ours, ref, torch.randn(2, 3, 75, 75))  # torchvision's min_size; its aux head is dropped
    with pytest.raises(InputError, match="at least 75x75"):
        ours(torch.randn(1, 3, 74, 80))
    # with the auxiliary head: plain logits in eval, (logits, aux) in training at 299
    ours = visionzoo.create_model("inception_v3", num_classes=10, aux_logits=True, drop_rate=0.0, checkpoint=ref.state_dict())
    ours.eval()
    _same(ours, ref, torch.randn(1, 3, 80, 80))
    ours.train(), ref.train()
    with pytest.raises(InputError, match="at least 299x299"):
        ours(torch.randn(2, 3, 298, 299))
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        (o, o_aux), r = ours(x), ref(x)
    assert max_rel_diff(o, r.logits) < 1e-4 and max_rel_diff(o_aux, r.aux_logits) < 1e-4


def test_a_size_only_the_aux_head_refuses_names_it():
    """`visionzoo train --model inception_v3 --model-arg aux_logits=True --img-size 139` said
    'needs inputs of at least 299x299', as if the network took nothing smaller: only its auxiliary
    classifier does (torchvision's fails below 299 too); without it 75 works."""
    for name in ("inception_v3", "inception_v2"):
        with pytest.raises(ValueError, match=r"at least 299x299, got 139x139 \(in training, for its auxiliary classifier, "
                                             r"aux_logits=True; without it, or in eval mode, from 75x75\)"):
            visionzoo.create_model(name, num_classes=3, aux_logits=True, img_size=139)
    model = visionzoo.create_model("inception_v3", num_classes=3, aux_logits=True).train()
    with pytest.raises(InputError, match="aux_logits=True"):
        model(torch.randn(1, 3, 298, 298))
    with pytest.raises(InputError, match=r"at least 299x299, got 60x299$"):  # too small without the head too
        model(torch.randn(1, 3, 60, 299))
    ref = _tv_inception_v3(num_classes=3, aux_logits=True).train()
    with pytest.raises(RuntimeError, match="Kernel size can't be greater"):
        ref(torch.randn(1, 3, 298, 298))


def test_other_classes_and_channels():
    for name in ("inception_v3", "inception_resnet_v2"):
        ref = build_random(lambda: timm.create_model(name, num_classes=4, in_chans=1))
        ours = visionzoo.create_model(name, num_classes=4, in_chans=1, checkpoint=ref.state_dict()).eval()
        _same(ours, ref, torch.randn(1, 1, 75, 90))


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_features_equal_timm_forward_intermediates(name):
    ref = build_random(lambda: timm.create_model(name))
    ours = visionzoo.create_model(name, features_only=True, checkpoint=ref.state_dict()).eval()
    assert [(f.num_chs, f.reduction, f.module) for f in ours.feature_info] == [
        (f["num_chs"], f["reduction"], f["module"]) for f in ref.feature_info
    ]
    x = torch.randn(1, 3, 80, 80)
    with torch.no_grad():
        maps, ref_maps = ours(x), ref.forward_intermediates(x, intermediates_only=True)
    assert len(maps) == len(ref_maps) == 5
    for a, b in zip(maps, ref_maps):
        assert a.shape == b.shape and max_rel_diff(a, b) < 1e-4


def test_inception_v2_follows_table_1():
    """Sizes of Table 1 (input of each row) at 299, no 5x5 kernel, five 17x17 modules."""
    with torch.device("meta"):
        model = visionzoo.create_model("inception_v2").eval()
        shapes = {}
        for name in model.layer_names:
            getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
        model(torch.zeros(1, 3, 299, 299))
    assert [shapes[n] for n in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Pool1", "Conv2d_3a_3x3", "Conv2d_3b_3x3")] == [
        (32, 149, 149), (32, 147, 147), (64, 147, 147), (64, 73, 73), (80, 71, 71), (192, 35, 35)
    ]
    assert shapes["Conv2d_4a_3x3"] == shapes["Mixed_5d"] == (288, 35, 35)
    assert shapes["Mixed_6a"] == shapes["Mixed_6f"] == (768, 17, 17)
    assert shapes["Mixed_7a"] == (1280, 8, 8) and shapes["Mixed_7c"] == (2048, 8, 8)
    assert sum(n.startswith("Mixed_6") for n in model.layer_names) == 6  # reduction + 5 modules
    kernels = {m.kernel_size for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert (5, 5) not in kernels and (1, 7) in kernels and (1, 3) in kernels
    assert _count(model) == 25_769_544  # the figure stated in the docstring and published note
    # the auxiliary head sits on the last 17x17 module and trains at 299
    aux = visionzoo.create_model("inception_v2", num_classes=3, aux_logits=True).train()
    logits, aux_logits = aux(torch.randn(2, 3, 299, 299))
    assert logits.shape == aux_logits.shape == (2, 3)
    (logits.sum() + aux_logits.sum()).backward()
    assert all(p.grad is not None for p in aux.parameters())
