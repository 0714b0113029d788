"""Swin Transformer V2 against timm, the release layout and the paper's definitions."""

import math

import pytest
import timm
import torch

import visionzoo
from visionzoo.models.swinv2 import CosineWindowAttention, log_spaced_offsets
from visionzoo.testing import build_random, max_rel_diff

from test_swin import _to_official
from timm_checks import assert_outputs_equal_timm

SWINV2 = visionzoo.list_models(family="swinv2")


def _params(model_fn):
    with torch.device("meta"):
        return sum(p.numel() for p in model_fn().parameters())


def test_every_timm_swinv2_is_registered():
    """timm's SwinV2 names (its separate ``swinv2_cr_*`` implementation aside)."""
    assert sorted(SWINV2) == sorted(n for n in timm.list_models("swinv2_*") if not n.startswith("swinv2_cr_"))


@pytest.mark.parametrize("name", SWINV2)
def test_params_keys_and_preprocessing_equal_timm(name):
    """Parameter counts; state-dict keys in timm's order (each block's attention before its
    norm, patch merging's reduction before its norm); eval preprocessing and class count."""
    assert _params(lambda: visionzoo.create_model(name)) == _params(lambda: timm.create_model(name))
    with torch.device("meta"):
        assert list(visionzoo.create_model(name).state_dict()) == list(timm.create_model(name).state_dict())
        ref = timm.create_model(name).pretrained_cfg
    ours = visionzoo.registry.get_entry(name).default_cfg
    for key in ("input_size", "crop_pct", "interpolation", "mean", "std", "num_classes"):
        assert tuple(ours.get(key, 1000)) == tuple(ref[key]) if isinstance(ref[key], tuple) else ours.get(key, 1000) == ref[key], key


def _pair(name, **kw):
    ref = build_random(lambda: timm.create_model(name, num_classes=10, **kw))
    ours = visionzoo.create_model(name, num_classes=10, **kw).eval()
    visionzoo.load_checkpoint(ours, ref.state_dict(), source="timm")
    return ours, ref


def test_logits_features_and_maps_equal_timm_tiny_window8():
    x = torch.randn(2, 3, 256, 256)
    ours, ref, maps = assert_outputs_equal_timm("swinv2_tiny_window8_256", x)
    assert [f.shape[1] for f in maps] == [96, 192, 384, 768]
    y = ours(x)  # autograd on: the per-block path (rolls and partitions), not the windowed one
    assert max_rel_diff(y.detach(), ref(x).detach()) < 1e-4


@pytest.mark.parametrize("name, size", [("swinv2_base_window12to16_192to256", 256), ("swinv2_small_window16_256", 256),
                                        ("swinv2_large_window12_192", 192), ("swinv2_tiny_window8_256", 128)])
def test_other_variants_and_sizes_equal_timm_with_fewer_blocks(name, size):
    """Pre-training windows (12, 12, 12, 6) normalising the offsets of windows of 16; wider
    heads; a 128-px model whose last stage's window shrinks to its 4x4 map."""
    ours, ref = _pair(name, img_size=size, depths=(1, 1, 2, 1))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_other_classes_and_channels_and_set_input_size_equal_timm():
    ref = build_random(lambda: timm.create_model("swinv2_tiny_window8_256", num_classes=3, in_chans=1))
    ours = visionzoo.create_model("swinv2_tiny_window8_256", num_classes=3, in_chans=1, checkpoint=ref.state_dict()).eval()
    for size, kw in ((256, {}), (384, {}), (192, {}), (256, {"window_size": 16}), (320, {"window_ratio": 8})):
        ref.set_input_size(img_size=(size, size), **kw)
        ours.set_input_size(size, **kw)
        x = torch.randn(2, 1, size, size)
        with torch.no_grad():
            assert max_rel_diff(ours(x), ref(x)) < 1e-4, (size, kw)
        assert [s.blocks[0].attn.window for s in ours.layers] == [s.blocks[0].window_size for s in ref.layers]


def test_official_layout_loads():
    ours, ref = _pair("swinv2_tiny_window8_256")
    official = _to_official(ref.state_dict())
    assert "layers.2.downsample.reduction.weight" in official and "head.weight" in official
    model = visionzoo.create_model("swinv2_tiny_window8_256", num_classes=10).eval()
    assert visionzoo.load_checkpoint(model, official, source="official")["source"] == ["official"]
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert max_rel_diff(model(x), ref(x)) < 1e-4


def test_log_spaced_offsets_follow_the_paper():
    """Eq. 4: d -> sign(d) log(1 + |d|) on offsets scaled to [-8, 8]; log base 8 puts the
    window's largest offset at log8(9) ~ 1.057, and a pre-training window of 12 read by a window of
    16 reaches further (15 / 11 * 8)."""
    t = log_spaced_offsets((8, 8), (8, 8)).view(15, 15, 2)
    assert torch.equal(t[7, 7], torch.zeros(2))  # the zero offset
    assert math.isclose(float(t[14, 7, 0]), math.log(9, 8), rel_tol=1e-6) and float(t[14, 7, 1]) == 0.0
    assert math.isclose(float(t[0, 0, 1]), -math.log(9, 8), rel_tol=1e-6)
    far = log_spaced_offsets((16, 16), (12, 12)).view(31, 31, 2)
    assert math.isclose(float(far[30, 15, 0]), math.log2(1 + 15 / 11 * 8) / 3, rel_tol=1e-6)


def test_cosine_logits_and_bias_equal_a_direct_computation():
    """One window: softmax(cos(q_i, k_j) * min(exp(logit_scale), 100) + 16 sigmoid(cpb(d_ij))) v,
    written out per pair; the logit scale is clamped at 100."""
    torch.manual_seed(0)
    attn = build_random(lambda: CosineWindowAttention(8, 2, (3, 2))).eval()
    with torch.no_grad():
        attn.logit_scale[1] = 7.0  # exp(7) > 100: clamped
        x = torch.randn(1, 1, 6, 8)
        got = attn.attend(x, (3, 2))
        qkv = x[0, 0] @ attn.qkv.weight.T + torch.cat([attn.q_bias, torch.zeros(8), attn.v_bias])
        q, k, v = qkv.view(6, 3, 2, 4).unbind(1)  # tokens, heads, hd
        pos = [(i, j) for i in range(3) for j in range(2)]
        out = torch.zeros(6, 2, 4)
        for h in range(2):
            scale = min(math.exp(float(attn.logit_scale[h])), 100.0)
            logits = torch.zeros(6, 6)
            for a in range(6):
                for b in range(6):
                    d = torch.tensor([(pos[a][0] - pos[b][0]) / 2 * 8, (pos[a][1] - pos[b][1]) / 1 * 8])
                    d = torch.sign(d) * torch.log2(d.abs() + 1) / 3
                    bias = 16 * torch.sigmoid(attn.cpb_mlp(d)[h])
                    logits[a, b] = torch.cosine_similarity(q[a, h], k[b, h], dim=0) * scale + bias
            out[:, h] = logits.softmax(-1) @ v[:, h]
    assert max_rel_diff(got[0, 0], out.reshape(6, 8)) < 1e-5


def test_cached_bias_follows_weight_changes_and_smaller_windows_read_their_offsets():
    """In inference the position bias is kept per weights: a change to the bias MLP reaches the
    logits (the same as timm's after the same change). A map smaller than a stage's window reads
    the offsets it has, normalised as the built window's: the built bias's sub-table."""
    ours, ref = _pair("swinv2_tiny_window8_256", depths=(1, 1, 1, 1))
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        ours(x)
        for model in (ours, ref):
            model.layers[0].blocks[0].attn.cpb_mlp[2].weight.mul_(3.0)
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        attn = ours.layers[0].blocks[0].attn
        full = attn.relative_bias((8, 8)).view(3, 8, 8, 8, 8)
        assert torch.allclose(attn.relative_bias((4, 5)).view(3, 4, 5, 4, 5), full[:, :4, :5, :4, :5], atol=1e-6)


def test_res_post_norm_starts_every_block_as_the_identity():
    """The release's initialisation: the blocks' output norms are zero, so a fresh network is the
    patch embedding and the merging layers; weight decay spares the bias MLPs and logit scales."""
    model = visionzoo.create_model("swinv2_tiny_window8_256", num_classes=4, depths=(1, 1, 1, 1)).eval()
    blk = model.layers[1].blocks[0]
    x = torch.randn(1, 16, 16, 192)
    plan = model.layers[1].plans(16, 16, x.device)[0]
    with torch.no_grad():
        assert torch.equal(blk(x, plan), x)
    skip = model.no_weight_decay()
    assert "layers.0.blocks.0.attn.logit_scale" in skip and "layers.3.blocks.0.attn.cpb_mlp.0.weight" in skip
    assert not any("qkv" in n or "norm" in n for n in skip)


@pytest.mark.parametrize("sizes, message", [((12, 12), r"one window per stage \(4\), got \(12, 12\)"),
                                            ((-1, 0, 0, 0), r"pretrained_window_sizes\[0\] must be 0 \(the stage's own window\) or a positive int, got -1"),
                                            ((12, 12, 12.5, 6), r"pretrained_window_sizes\[2\] must be 0"), (12, "one window per stage")])
def test_pretrained_windows_are_checked_and_zero_means_the_stages_own(sizes, message):
    with pytest.raises(ValueError, match=message):
        visionzoo.create_model("swinv2_tiny_window8_256", pretrained_window_sizes=sizes)
    model = visionzoo.create_model("swinv2_tiny_window8_256", pretrained_window_sizes=[0, 0, 0, 6])
    assert model.cfg.pretrained_window_sizes == (0, 0, 0, 6)
    assert [s.blocks[0].attn.offset_reference for s in model.layers] == [(8, 8)] * 3 + [(6, 6)]
