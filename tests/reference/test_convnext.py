"""ConvNeXt against timm, torchvision and the authors' release layout."""

import pytest
import timm
import torch
import torchvision

import visionzoo
from visionzoo.testing import build_random, gradient_rel_diffs, max_rel_diff

from family_models import shallow_options
from timm_checks import assert_output_stride_equals_timm

NAMES = visionzoo.list_models(family="convnext")


@pytest.mark.parametrize("name", NAMES)
def test_params_equal_timm(name):
    with torch.device("meta"):
        ours = visionzoo.create_model(name)
        ref = timm.create_model(name, num_classes=1000)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_timm(name):
    ref = build_random(lambda: timm.create_model(name, num_classes=10, **shallow_options(name)))
    ours = visionzoo.create_model(name, num_classes=10, **shallow_options(name)).eval()
    visionzoo.load_checkpoint(ours, ref.state_dict(), source="timm")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        assert max_rel_diff(ours.forward_features(x), ref.forward_features(x)) < 1e-4


def test_timms_small_networks_load_with_their_convolutional_mlps():
    """timm builds convnext_atto ... convnext_nano with conv_mlp=True: 1x1-convolution MLPs whose
    kernels load into visionzoo's linear layers (the timm layout is detected), to timm's logits."""
    ref = build_random(lambda: timm.create_model("convnext_femto", num_classes=6))
    assert ref.state_dict()["stages.0.blocks.0.mlp.fc1.weight"].shape == (192, 48, 1, 1)
    ours = visionzoo.create_model("convnext_femto", num_classes=6, checkpoint=ref.state_dict()).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
    assert visionzoo.create_model("convnext_nano", device="meta").default_cfg["crop_pct"] == 0.95  # timm's default weights'


@pytest.mark.parametrize("ls_init_value", [None, 0.0, 0.5])
def test_layer_scale_option_as_timms(ls_init_value):
    """timm's ls_init_value: None builds no layer scale, a number (0 too) a gamma starting at
    it, so a block at 0 starts as the identity (0 used to drop gamma, and a timm checkpoint of
    such a model did not load). (timm's create_model drops None arguments: its class is built.)"""
    kw = dict(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), ls_init_value=ls_init_value, num_classes=5)
    ref = timm.models.convnext.ConvNeXt(**kw).eval()
    ours = visionzoo.create_model("convnext_tiny", **kw).eval()
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    if ls_init_value is not None:
        torch.testing.assert_close(ours.stages[0].blocks[0].gamma, torch.full((16,), ls_init_value))
    visionzoo.load_checkpoint(ours, ref.state_dict(), source="timm")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_training_gradients_equal_timm():
    """Training mode, float64: every gradient equals timm's (the depthwise 7x7's weight
    gradient runs visionzoo's own CPU path, layers.conv.depthwise_weight_grad)."""
    ref = build_random(lambda: timm.create_model("convnext_tiny", num_classes=10)).double()
    ours = visionzoo.create_model("convnext_tiny", num_classes=10, checkpoint=ref.state_dict()).double()
    diffs = gradient_rel_diffs(ours, ref, torch.randn(2, 3, 64, 64, dtype=torch.float64))
    assert max(diffs.values()) < 1e-9, max(diffs.items(), key=lambda kv: kv[1])


@pytest.mark.parametrize("shape", [(1, 1, 96, 64), (2, 1, 97, 75)])  # 97 x 75: strided layers drop a remainder, as timm's
def test_other_classes_and_channels_and_features(shape):
    ref = build_random(lambda: timm.create_model("convnext_tiny", num_classes=3, in_chans=1))
    ours = visionzoo.create_model("convnext_tiny", num_classes=3, in_chans=1, checkpoint=ref.state_dict()).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        assert max_rel_diff(ours(x.contiguous(memory_format=torch.channels_last)), ref(x)) < 1e-4
        feats = visionzoo.create_model("convnext_tiny", in_chans=1, features_only=True, checkpoint=ref.state_dict()).eval()(x)
        expect = ref.forward_intermediates(x, intermediates_only=True)
    for f, e in zip(feats, expect, strict=True):
        assert max_rel_diff(f, e) < 1e-4


@pytest.mark.parametrize("name", ["convnext_tiny", "convnext_small", "convnext_base", "convnext_large"])
def test_logits_equal_torchvision(name):
    ref = build_random(lambda: getattr(torchvision.models, name)(num_classes=10))
    ours = visionzoo.create_model(name, num_classes=10).eval()
    info = visionzoo.load_checkpoint(ours, ref.state_dict())
    assert info["source"] == ["torchvision"]
    for shape in ((2, 3, 64, 64), (1, 3, 75, 130)):
        x = torch.randn(shape)
        with torch.no_grad():
            assert max_rel_diff(ours(x), ref(x)) < 1e-4


def _to_official(sd):
    """timm layout -> the authors' release layout (written independently of our converter)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("stem."):
            k = "downsample_layers.0." + k[5:]
        elif ".downsample." in k:
            s, rest = k.split(".downsample.")
            k = f"downsample_layers.{s.split('.')[1]}.{rest}"
        elif ".blocks." in k:
            s, rest = k.split(".blocks.")
            rest = rest.replace("conv_dw", "dwconv").replace("mlp.fc1", "pwconv1").replace("mlp.fc2", "pwconv2")
            if ".mlp.grn." in f".{rest}":  # ConvNeXt V2: gamma / beta of shape (1, 1, 1, C)
                rest, v = rest.replace("mlp.grn.weight", "grn.gamma").replace("mlp.grn.bias", "grn.beta"), v.view(1, 1, 1, -1)
            k = f"{s}.{rest}"
        elif k.startswith("head.norm."):
            k = "norm." + k[len("head.norm."):]
        elif k.startswith("head.fc."):
            k = "head." + k[len("head.fc."):]
        out[k] = v
    return out


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_tiny"])
def test_official_layout_loads(name):
    ref = build_random(lambda: timm.create_model(name, num_classes=10))
    official = _to_official(ref.state_dict())
    assert "downsample_layers.3.1.weight" in official and "stages.2.8.pwconv2.weight" in official
    if "v2" in name:
        assert official["stages.2.8.grn.gamma"].shape == (1, 1, 1, 4 * 384)
    ours = visionzoo.create_model(name, num_classes=10).eval()
    assert visionzoo.load_checkpoint(ours, official)["source"] == ["official"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


@pytest.mark.parametrize("side", [9, 48])  # 2 x 48 x 48 tokens: the MLP runs in blocks
def test_block_inference_path_folds_the_layer_scale_and_follows_it(side):
    """CPU inference folds gamma into fc2 (cached); a changed gamma, a hooked MLP and
    autograd all give the block's plain expression."""
    from visionzoo.models.convnext import _SCALED_FC2, ConvNeXtBlock

    torch.manual_seed(0)
    blk = ConvNeXtBlock(16).eval()
    with torch.no_grad():
        blk.gamma.normal_()
        blk.norm.weight.normal_()
    x = torch.randn(2, 16, side, side)

    def plain():
        y = blk.conv_dw(x).permute(0, 2, 3, 1)
        return x + (blk.mlp(blk.norm(y)) * blk.gamma).permute(0, 3, 1, 2)

    with torch.no_grad():
        torch.testing.assert_close(blk(x), plain(), rtol=1e-5, atol=1e-5)
        assert blk in _SCALED_FC2
        blk.gamma.mul_(-3.0)  # changed in place: the folded copy is recomputed
        torch.testing.assert_close(blk(x), plain(), rtol=1e-5, atol=1e-5)
        seen = []
        blk.mlp.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        torch.testing.assert_close(blk(x), plain(), rtol=1e-5, atol=1e-5)
        assert seen[0] == (2, side, side, 16)
    out = blk(x.requires_grad_())
    assert blk not in _SCALED_FC2
    out.sum().backward()
    assert blk.gamma.grad is not None
    blk.gamma = None  # no layer scale
    with torch.no_grad():
        torch.testing.assert_close(blk(x), x + blk.mlp(blk.norm(blk.conv_dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_equals_timm(output_stride):
    """The dilated stages downsample with a 'SAME'-padded 2x2 stride-1 convolution (odd side: 67).
    convnext_tiny narrowed and made shallower (two blocks in stage 3), to stay fast."""
    small = dict(depths=(1, 1, 2, 1), dims=(32, 48, 64, 96))
    assert_output_stride_equals_timm("convnext_tiny", output_stride, torch.randn(1, 3, 67, 64), **small)


def test_bad_output_stride_is_refused():
    with pytest.raises(ValueError, match="output_stride must be the int 8, 16 or 32, got '8'"):
        visionzoo.create_model("convnext_tiny", output_stride="8")


def test_convnext_v2_global_response_norm_as_the_paper_defines_it():
    """GRN (Woo et al. 2023, Alg. 1): gx = ||x||_2 over the map per channel, nx = gx / (mean_c gx +
    1e-6), out = gamma * (x * nx) + beta + x; at its zero initialisation the identity. Written from
    the paper's formula, against our one-pass form."""
    from visionzoo.models.convnext import GlobalResponseNorm

    torch.manual_seed(0)
    grn = GlobalResponseNorm(12)
    x = torch.randn(2, 5, 7, 12)  # B, H, W, C
    torch.testing.assert_close(grn(x), x)
    with torch.no_grad():
        grn.weight.normal_(), grn.bias.normal_()
    gx = x.pow(2).sum((1, 2), keepdim=True).sqrt()
    nx = gx / (gx.mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(grn(x), grn.weight * (x * nx) + grn.bias + x, rtol=1e-5, atol=1e-6)


def test_convnext_v2_gradients_and_output_stride_equal_timm():
    ref = build_random(lambda: timm.create_model("convnextv2_atto", num_classes=5))
    ours = visionzoo.create_model("convnextv2_atto", num_classes=5, checkpoint=ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    ours.train(), ref.train()
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    grads = dict(ours.named_parameters())
    for k, p in ref.named_parameters():
        g = grads[k].grad
        assert max_rel_diff(g, p.grad.view(g.shape)) < 1e-4, k
    assert_output_stride_equals_timm("convnextv2_atto", 16, torch.randn(2, 3, 64, 96))


def test_convnext_v2_block_inference_path_equals_its_modules():
    """CPU inference runs a V2 block as fc1 + GELU, GRN over the whole map, fc2 into the residual;
    the same as the modules' forward (autograd on) and as with a hook on the GRN, which that path
    then steps aside for (the hook sees the GRN's output)."""
    from visionzoo.models.convnext import ConvNeXtBlock

    torch.manual_seed(0)
    blk = ConvNeXtBlock(16, ls_init_value=None, use_grn=True).eval()
    with torch.no_grad():
        blk.mlp.grn.weight.normal_(), blk.mlp.grn.bias.normal_()
    x = torch.randn(2, 16, 11, 9)
    with torch.enable_grad():
        plain = blk(x).detach()
    with torch.no_grad():
        torch.testing.assert_close(blk(x), plain, rtol=1e-5, atol=1e-5)
        seen = []
        h = blk.mlp.grn.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        torch.testing.assert_close(blk(x), plain, rtol=1e-5, atol=1e-5)
        h.remove()
    assert seen == [(2, 11, 9, 64)]


def test_timms_conv_mlp_keyword_builds_the_same_network():
    """timm's conv_mlp=True (1x1-convolution MLPs) is the same map as linear layers: taken, and the
    checkpoint of a timm model built with it loads, to its logits."""
    ref = build_random(lambda: timm.create_model("convnext_tiny", num_classes=4, conv_mlp=True, depths=(1, 1, 2, 1)))
    ours = visionzoo.create_model("convnext_tiny", num_classes=4, conv_mlp=True, depths=(1, 1, 2, 1), checkpoint=ref.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
    with pytest.raises(ValueError, match="convnext_tiny: conv_mlp takes True or False, got 'yes'"):
        visionzoo.create_model("convnext_tiny", conv_mlp="yes")
