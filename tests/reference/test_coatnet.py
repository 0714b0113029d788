"""CoAtNet against timm's coatnet_*_224, plus the paper's alternative layouts."""

import pytest
import timm
import torch

import visionzoo
from visionzoo.models.coatnet import ConvStage, MBConvBlock, TransformerBlock, TransformerStage, parse_layout
from visionzoo.testing import build_random, max_rel_diff

NAMES = ["coatnet_0_224", "coatnet_1_224", "coatnet_2_224", "coatnet_3_224", "coatnet_4_224"]


def _pair(name="coatnet_0_224", **kw):
    """timm model with random weights at 64x64 (its tables are sized for img_size) and ours loaded from it."""
    kw.setdefault("img_size", 64)
    ref = build_random(lambda: timm.create_model(name, **kw))
    ours = visionzoo.create_model(name, checkpoint=ref.state_dict(), **kw).eval()
    return ours, ref


@pytest.mark.parametrize("name", NAMES)
def test_params_and_keys_equal_timm(name):
    with torch.device("meta"):
        ours, ref = visionzoo.create_model(name), timm.create_model(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd)  # the timm converter is the identity
    assert all(ours_sd[k].shape == ref_sd[k].shape for k in ref_sd)


def test_logits_and_features_equal_timm():
    ours, ref = _pair(num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        ours_maps = ours.forward_intermediates(x, range(5), intermediates_only=True)
        ref_maps = ref.forward_intermediates(x, intermediates_only=True)
    assert [f.num_chs for f in ours.feature_info] == [f["num_chs"] for f in ref.feature_info]
    assert [f.reduction for f in ours.feature_info] == [f["reduction"] for f in ref.feature_info]
    assert len(ours_maps) == len(ref_maps) == 5
    for a, b in zip(ours_maps, ref_maps):
        assert a.shape == b.shape and max_rel_diff(a, b) < 1e-4
    # features_only through create_model gives the same maps
    feats = visionzoo.create_model("coatnet_0_224", img_size=64, features_only=True, checkpoint=ref.state_dict()).eval()
    with torch.no_grad():
        for a, b in zip(feats(x), ref_maps):
            assert max_rel_diff(a, b) < 1e-4


def test_other_classes_channels_and_grad_paths():
    # in_chans=1, 5 classes; eval with autograd on (no in-place GELU), then train mode (batch-stat BN, unfolded)
    ours, ref = _pair("coatnet_1_224", num_classes=5, in_chans=1)
    x = torch.randn(2, 1, 64, 64)
    assert max_rel_diff(ours(x), ref(x)) < 1e-4
    ours.train(), ref.train()
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_relative_bias_goes_to_sdpa_once_per_block(monkeypatch):
    ours, _ = _pair(num_classes=10)
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((tuple(q.shape), tuple(attn_mask.shape)))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        y = ours(torch.randn(2, 3, 64, 64))
    assert seen == [((2, 12, 16, 32), (1, 12, 16, 16))] * 5 + [((2, 24, 4, 32), (1, 24, 4, 4))] * 2
    # the matmul/softmax path of visionzoo.layers.attention gives the same logits
    monkeypatch.undo()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = ours(x)
        for m in ours.modules():
            if hasattr(m, "fused"):
                m.fused = False
        assert max_rel_diff(ours(x), fused) < 1e-5
    assert y.shape == (2, 10)


def test_other_input_sizes_resize_the_table_at_forward_time():
    torch.manual_seed(0)
    m224 = visionzoo.create_model("coatnet_0_224", num_classes=10).eval()
    # a model built for 64x64 from the 224 weights: tables resized once by adapt_state_dict (bicubic)
    m64 = visionzoo.create_model("coatnet_0_224", num_classes=10, img_size=64, checkpoint=m224.state_dict()).eval()
    assert m64.stages[2].blocks[0].attn.rel_pos.relative_position_bias_table.shape == (7 * 7, 12)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        # the 224 model resizes the same way at forward time
        assert max_rel_diff(m224(x), m64(x)) < 1e-5
        for shape in [(1, 3, 50, 70), (1, 3, 33, 33)]:  # odd sides: ceil pooling
            assert m224(torch.randn(*shape)).shape == (1, 10)


@pytest.mark.parametrize("layout", ["C-C-C-C", "C-C-C-T", "C-C-T-T", "C-T-T-T"])
def test_layouts(layout):
    m = visionzoo.create_model("coatnet_0_224", layout=layout, num_classes=3).eval()
    kinds = layout.split("-")
    for stage, kind in zip(m.stages, kinds):
        assert isinstance(stage, ConvStage if kind == "C" else TransformerStage)
        assert all(isinstance(b, MBConvBlock if kind == "C" else TransformerBlock) for b in stage.blocks)
    assert [len(s.blocks) for s in m.stages] == [2, 3, 5, 2]
    assert [f.reduction for f in m.feature_info] == [2, 4, 8, 16, 32]
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_vit_rel_layout():
    m = visionzoo.create_model("coatnet_0_224", layout="ViT_REL", num_classes=3).eval()
    assert len(m.stages) == 1 and isinstance(m.stages[0], TransformerStage)
    assert len(m.stages[0].blocks) == 12 and all(isinstance(b, TransformerBlock) for b in m.stages[0].blocks)
    assert [(f.num_chs, f.reduction) for f in m.feature_info] == [(64, 2), (384, 16)]
    assert m.stages[0].blocks[0].attn.rel_pos.relative_position_bias_table.shape == (27 * 27, 12)
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3)
        maps = m.forward_intermediates(torch.randn(1, 3, 64, 64), [0, 1], intermediates_only=True)
    assert [tuple(f.shape) for f in maps] == [(1, 64, 32, 32), (1, 384, 4, 4)]


def test_vit_patch_size_is_refused_where_the_layout_has_no_vit_patch():
    """It used to be ignored outside layout 'ViT_REL': the network built was the default one."""
    with pytest.raises(ValueError, match="vit_patch_size is the patch of layout 'ViT_REL' only"):
        visionzoo.create_model("coatnet_0_224", vit_patch_size=4, img_size=64)
    m = visionzoo.create_model("coatnet_0_224", layout="ViT_REL", vit_patch_size=4, img_size=64)
    assert [f.reduction for f in m.feature_info] == [2, 8]


def test_layout_validation():
    assert parse_layout("c-c-t-t", 4) == ("C", "C", "T", "T")
    assert parse_layout("vit-rel", 4) == ("ViT_REL",)
    for bad in ["C-C-T", "C-X-T-T", "CCTT", ""]:
        with pytest.raises(ValueError, match="layout"):
            visionzoo.create_model("coatnet_0_224", layout=bad)


def test_published_macs_and_the_stride_placement():
    # the paper strides the first MBConv of S1/S2 before its 1x1 expansion; timm (and we) stride the
    # depthwise conv, so the expansion runs at the higher resolution: that difference explains the gap
    for name, paper in (("coatnet_0_224", 4.2), ("coatnet_1_224", 8.4), ("coatnet_2_224", 15.7), ("coatnet_3_224", 34.7)):
        cfg = visionzoo.registry.get_entry(name).config
        extra = cfg.stem_width * 4 * cfg.embed_dim[0] * (112**2 - 56**2) + cfg.embed_dim[0] * 4 * cfg.embed_dim[1] * (56**2 - 28**2)
        counted = visionzoo.model_info(name)["gmacs"]
        assert abs(counted - extra / 1e9 - paper) / paper < 0.02, (name, counted, extra / 1e9)


def test_inference_batch_chunking_changes_nothing():
    ours, ref = _pair(num_classes=10)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        whole = ours(x)
        for m in ours.modules():
            if isinstance(m, MBConvBlock):
                m.chunk_elements = 1  # every MBConv runs sample by sample
        assert max_rel_diff(ours(x), whole) < 1e-6
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        ours.train(), ref.train()  # batch statistics: never chunked
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_hooks_on_mbconv_parts_see_the_whole_batch_once():
    """A batch chunked for the CPU's memory ran every part of an MBConv block once per chunk,
    so a forward hook on ``stages.0.blocks.0.norm1`` (a feature extractor) fired once per image
    with a batch of one in inference, where timm's fires once with the batch. With a hook on a
    part the batch runs whole."""
    ours, ref = _pair(num_classes=10)
    for m in ours.modules():
        if isinstance(m, MBConvBlock):
            m.chunk_elements = 1  # every unhooked MBConv runs sample by sample
    x = torch.randn(3, 3, 64, 64)
    names = ["stages.0.blocks.0.conv1_1x1", "stages.1.blocks.1.norm1", "stages.1.blocks.0.conv2_kxk"]
    seen = {}
    for model in (ours, ref):
        for n in names:
            model.get_submodule(n).register_forward_hook(lambda m, args, out, n=n, key=model is ours: seen.setdefault((key, n), []).append(out))
    with torch.inference_mode():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
    for n in names:
        got, expect = seen[True, n], seen[False, n]
        assert [o.shape for o in got] == [o.shape for o in expect] and len(expect) == 1, n
        assert max_rel_diff(got[0], expect[0]) < 1e-4, n



def test_cached_relative_bias_follows_the_table():
    """In CPU inference the gathered (1, nH, N, N) bias is cached, one tensor for every call;
    an in-place change of the table (an optimizer step, load_state_dict) is gathered anew, and
    with autograd on the bias is gathered with its graph."""
    from visionzoo.models.coatnet import RelativePositionBias

    torch.manual_seed(0)
    m = RelativePositionBias((4, 5), 3)
    with torch.no_grad():
        m.relative_position_bias_table.normal_()
        first = m.bias((4, 5))
        assert m.bias((4, 5)) is first and first.shape == (1, 3, 20, 20)
        before = first.clone()
        m.relative_position_bias_table.add_(1.0)
        again = m.bias((4, 5))
        torch.testing.assert_close(again, before + 1.0)
        assert m.bias((2, 3)).shape == (1, 3, 6, 6)  # another size: its own gather (resized table)
    fresh = m.bias((4, 5))
    assert fresh.requires_grad and fresh is not again
    torch.testing.assert_close(fresh.detach(), again)
