"""ConvMixer against timm."""

import pytest
import timm
import torch

import visionzoo
from visionzoo.testing import build_random, gradient_rel_diffs, max_rel_diff

TIMM_NAMES = ["convmixer_1536_20", "convmixer_768_32", "convmixer_1024_20_ks9_p14"]


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_params_and_logits_equal_timm(name):
    with torch.device("meta"):
        n_ours = sum(p.numel() for p in visionzoo.create_model(name).parameters())
        n_ref = sum(p.numel() for p in timm.create_model(name).parameters())
    assert n_ours == n_ref
    ref = build_random(lambda: timm.create_model(name, num_classes=10))
    ours = visionzoo.create_model(name, num_classes=10, checkpoint=ref.state_dict()).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        # live BatchNorm statistics (build_random): fp32 rounding through the 32 blocks of
        # convmixer_768_32 reaches ~2e-4 (timm's own logits are 1.1e-4 from fp64, ours 1.9e-4)
        assert max_rel_diff(ours(x), ref(x)) < 5e-4


def test_other_classes_channels_and_any_configuration():
    ref = build_random(lambda: timm.create_model("convmixer_768_32", num_classes=4, in_chans=2))
    ours = visionzoo.create_model("convmixer_768_32", num_classes=4, in_chans=2, checkpoint=ref.state_dict()).eval()
    x = torch.randn(1, 2, 70, 42)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 5e-4  # live BatchNorm statistics (build_random): fp32 rounding through the network reaches ~2e-4
    # any (h, d, k, p, activation) through create_model overrides
    m = visionzoo.create_model("convmixer_256_8", num_classes=10, dim=64, depth=3, kernel_size=3, patch_size=4, act="silu")
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in m.parameters()) == (3 * 16 * 64 + 64 + 2 * 64) + 3 * (64 * 9 + 64 + 2 * 64 + 64 * 64 + 64 + 2 * 64) + 64 * 10 + 10


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_training_gradients_equal_timm(act):
    """Training mode, float64, a narrow ConvMixer (64 wide, 3 blocks, 7x7, patch 7): every
    gradient equals timm's (the depthwise layers' weight gradients run visionzoo's own CPU path)."""
    ref = build_random(lambda: timm.models.convmixer.ConvMixer(dim=64, depth=3, kernel_size=7, patch_size=7, num_classes=10, act_layer=torch.nn.ReLU if act == "relu" else torch.nn.GELU)).double()
    ours = visionzoo.create_model("convmixer_768_32", num_classes=10, dim=64, depth=3, act=act, checkpoint=ref.state_dict()).double()
    diffs = gradient_rel_diffs(ours, ref, torch.randn(2, 3, 63, 70, dtype=torch.float64))
    assert max(diffs.values()) < 1e-9, max(diffs.items(), key=lambda kv: kv[1])


def test_counted_macs_are_the_papers_plus_the_depthwise_convolutions():
    for name, paper in (("convmixer_1536_20", 48.7), ("convmixer_768_32", 19.5), ("convmixer_1024_20_ks9_p14", 5.6)):
        cfg = visionzoo.registry.get_entry(name).config
        side = 224 // cfg.patch_size
        depthwise = cfg.depth * cfg.dim * cfg.kernel_size**2 * side**2 / 1e9
        counted = visionzoo.model_info(name)["gmacs"]
        assert abs(counted - depthwise - paper) / paper < 0.03, (name, counted, depthwise)


def test_features_only_equal_timm_forward_intermediates():
    ref = build_random(lambda: timm.create_model("convmixer_768_32", num_classes=10)).eval()
    ours = visionzoo.create_model("convmixer_768_32", features_only=True, checkpoint=ref.state_dict()).eval()
    blocks = [int(f.module.split(".")[1]) for f in ours.feature_info]
    assert blocks == [29, 30, 31]  # the last three blocks, timm's default
    assert visionzoo.create_model("convmixer_768_32").dense_out_indices() == (7, 15, 23, 31)  # dense heads
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        expect = ref.forward_intermediates(x, indices=blocks, intermediates_only=True)
        for f, e in zip(ours(x), expect, strict=True):
            assert max_rel_diff(f, e) < 5e-4  # fp32 rounding through 32 blocks, as in the logits test


@pytest.mark.parametrize("act", ["relu", "gelu", "silu"])
def test_cpu_inference_blocks_run_fused_and_equal_timm(act):
    """CPU inference runs each mixer block as a depthwise convolution with its activation fused,
    one addcmul (BN1's scale + the residual), a oneDNN inner product with the activation fused
    and BN1's shift in its bias, and one addcmul (BN2): no BatchNorm, activation or add of its
    own, and the logits of timm's plain blocks. A hooked block, a block in training mode, a
    BatchNorm in training mode (batch statistics) or autograd take the plain blocks."""
    kinds = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU}
    ref = build_random(lambda: timm.models.convmixer.ConvMixer(dim=48, depth=3, kernel_size=5, patch_size=4, num_classes=7, act_layer=kinds[act])).eval()
    ours = visionzoo.create_model("convmixer_768_32", num_classes=7, dim=48, depth=3, kernel_size=5, patch_size=4, act=act, checkpoint=ref.state_dict()).eval()
    x = torch.randn(3, 3, 40, 36)

    def ops(model):
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = model(x)
        names = [e.name for e in prof.events()]
        return out, sum(n == "aten::batch_norm" for n in names), sum(n == "aten::addcmul" for n in names)

    with torch.no_grad():
        expect = ref(x)
    out, norms, addcmuls = ops(ours)
    assert max_rel_diff(out, expect) < 1e-5
    assert (norms, addcmuls) == (1, 2 * 3)  # the stem's BatchNorm only
    seen = []
    handle = ours.blocks[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    out, norms, _ = ops(ours)
    handle.remove()
    assert max_rel_diff(out, expect) < 1e-5 and norms == 1 + 2 * 3 and seen == [(3, 48, 10, 9)]
    ours.blocks[2][3].train()  # batch statistics in one BatchNorm: the plain blocks
    ref.blocks[2][3].train()
    with torch.no_grad():
        out, norms, _ = ops(ours)
        assert max_rel_diff(out, ref(x)) < 1e-4 and norms == 1 + 2 * 3  # (batch statistics of a 10 x 9 map amplify fp32 rounding)
    ours.eval()
    out = ours(x)  # autograd on: the plain blocks, with gradients
    out.sum().backward()
    assert ours.blocks[0][1].weight.grad is not None
