"""DenseNet against timm and torchvision (including torchvision's old key spelling)."""

import re

import pytest
import timm
import torch
import torchvision

import visionzoo
from visionzoo.testing import build_random, max_rel_diff

NAMES = visionzoo.list_models("densenet*")


def test_registered():
    assert NAMES == ["densenet121", "densenet161", "densenet169", "densenet201"]


@pytest.mark.parametrize("name", NAMES)
def test_params_equal_timm_and_torchvision(name):
    with torch.device("meta"):
        ours = sum(p.numel() for p in visionzoo.create_model(name).parameters())
        t = sum(p.numel() for p in timm.create_model(name).parameters())
        tv = sum(p.numel() for p in getattr(torchvision.models, name)().parameters())
    assert ours == t == tv


@pytest.mark.parametrize("name", ["densenet121", "densenet161"])
def test_logits_equal_timm(name):
    ref = build_random(lambda: timm.create_model(name, num_classes=10))
    ours = visionzoo.create_model(name, num_classes=10).eval()
    visionzoo.load_checkpoint(ours, ref.state_dict(), source="timm")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = ref(x)
        assert y.std() > 0
        assert max_rel_diff(ours(x), y) < 1e-4
        assert max_rel_diff(ours.forward_features(x), ref.forward_features(x)) < 1e-4


def test_logits_equal_torchvision_other_classes_and_channels():
    ref = build_random(lambda: torchvision.models.densenet121(num_classes=3))
    ref.features.conv0 = torch.nn.Conv2d(2, 64, 7, 2, 3, bias=False)  # torchvision has no in_chans argument
    ours = visionzoo.create_model("densenet121", num_classes=3, in_chans=2, checkpoint=ref.state_dict()).eval()
    x = torch.randn(2, 2, 72, 40)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_torchvision_old_key_spelling_loads():
    """torchvision's released files: ``denselayer1.norm.1.weight`` for ``denselayer1.norm1.weight``."""
    ref = build_random(lambda: torchvision.models.densenet121(num_classes=10))
    old = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in ref.state_dict().items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old and "features.denseblock4.denselayer16.conv.2.weight" in old
    ours = visionzoo.create_model("densenet121", num_classes=10).eval()
    assert visionzoo.load_checkpoint(ours, old)["source"] == ["torchvision"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_features_equal_timm_and_smallest_input():
    ref = build_random(lambda: timm.create_model("densenet121", num_classes=10))
    feats_model = visionzoo.create_model("densenet121", features_only=True, checkpoint=ref.state_dict()).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = feats_model(x)
        expect = ref.forward_intermediates(x, intermediates_only=True)
    assert [f.shape[1] for f in feats] == [64, 256, 512, 1024, 1024]
    assert len(feats) == len(expect) == 5
    for f, e in zip(feats, expect, strict=True):
        assert max_rel_diff(f, e) < 1e-4
    m = visionzoo.create_model("densenet121", num_classes=2).eval()
    assert m.min_input_size == 29
    with torch.no_grad():
        assert m(torch.randn(1, 3, 29, 29)).shape == (1, 2)
    with pytest.raises(visionzoo.InputError):
        m(torch.randn(1, 3, 28, 64))


def test_config_overrides():
    m = visionzoo.create_model("densenet121", num_classes=5, growth_rate=12, depths=(2, 2, 2), bn_size=2)
    # stem 2k = 24; each block adds 2 x 12, each of the two transitions halves
    assert m.num_features == ((24 + 24) // 2 + 24) // 2 + 24 == 48
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize("min_elements", [0, 1 << 40])
def test_block_inference_paths_equal_concatenation(monkeypatch, min_elements):
    """CPU inference writes large block outputs into one preallocated map and concatenates
    small ones (DenseBlock.PREALLOC_MIN_ELEMENTS); both give the concatenating forward's output."""
    from visionzoo.models.densenet import DenseBlock

    monkeypatch.setattr(DenseBlock, "PREALLOC_MIN_ELEMENTS", min_elements)
    torch.manual_seed(0)
    block = build_random(lambda: DenseBlock(16, 3, growth_rate=8, bn_size=2))
    x = torch.randn(2, 16, 9, 9)
    want = block(x)  # autograd on: the concatenating path
    with torch.inference_mode(), torch.profiler.profile() as prof:
        got = block(x)
    n_cat = sum(e.name == "aten::cat" for e in prof.events())
    assert n_cat == (0 if min_elements == 0 else 4)
    assert got.shape == (2, 16 + 3 * 8, 9, 9)
    assert max_rel_diff(got, want.detach()) < 1e-6


def test_memory_efficient_is_timms_and_torchvisions_keyword():
    """memory_efficient=True (timm's and torchvision's keyword, refused before) builds the model
    with its dense layers recomputed in the backward pass; gradients are the plain model's."""
    kw = dict(num_classes=3, growth_rate=8, depths=(2, 2), bn_size=2)
    torch.manual_seed(0)
    plain = visionzoo.create_model("densenet121", **kw).train()
    lean = visionzoo.create_model("densenet121", memory_efficient=True, **kw).train()
    assert lean.grad_checkpointing and not plain.grad_checkpointing
    with torch.device("meta"):  # the same spelling in timm
        timm.create_model("densenet121", memory_efficient=True)
    lean.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    for m in (plain, lean):
        m(x).square().sum().backward()
    for (n, p), q in zip(plain.named_parameters(), lean.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=n)
