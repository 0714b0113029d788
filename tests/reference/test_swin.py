"""Swin and Swin-MLP against timm, torchvision, the release layout and the paper's construction."""

import pytest
import timm
import torch
import torchvision

import visionzoo
from visionzoo.layers import window_partition
from visionzoo.models.swin import SwinBlock, plan_windows
from visionzoo.testing import build_random, max_rel_diff

from timm_checks import assert_outputs_equal_timm

TORCHVISION = {"swin_t": "swin_tiny_patch4_window7_224", "swin_s": "swin_small_patch4_window7_224", "swin_b": "swin_base_patch4_window7_224"}
SWIN = [n for n in visionzoo.list_models("swin_*", family="swin") if n not in TORCHVISION]


def _params(model_fn):
    with torch.device("meta"):
        return sum(p.numel() for p in model_fn().parameters())


@pytest.mark.parametrize("name", SWIN)
def test_params_equal_timm(name):
    assert _params(lambda: visionzoo.create_model(name)) == _params(lambda: timm.create_model(name))


@pytest.mark.parametrize("tv_name", sorted(TORCHVISION))
def test_torchvision_builds_equal_torchvision_and_timm_names_in_params(tv_name):
    n = _params(lambda: visionzoo.create_model(tv_name))
    assert n == _params(lambda: getattr(torchvision.models, tv_name)()) == _params(lambda: visionzoo.create_model(TORCHVISION[tv_name]))
    assert visionzoo.create_model(tv_name).cfg.size_rule == "torchvision"


def test_logits_equal_timm_tiny_224():
    _, _, maps = assert_outputs_equal_timm("swin_tiny_patch4_window7_224", torch.randn(2, 3, 224, 224))
    assert [f.shape[1] for f in maps] == [96, 192, 384, 768]


def test_hooks_on_a_stages_blocks_fire_as_timms():
    """timm's ``layers.N.blocks`` is an nn.Sequential that a forward hook can watch (the stage's
    tokens, B, H, W, C); ours was a ModuleList the stage iterated, so a hook registered under
    timm's name silently never fired. It fires once per call with timm's tensors, in inference
    (where the stage keeps tokens in window order) and with autograd."""
    kw = dict(num_classes=4, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
    ref = build_random(lambda: timm.create_model("swin_tiny_patch4_window7_224", **kw))
    ours = visionzoo.create_model("swin_tiny_patch4_window7_224", checkpoint=ref.state_dict(), **kw).eval()
    names = [f"layers.{i}.blocks" for i in range(4)]
    seen = {}
    for model in (ours, ref):
        for n in names:
            model.get_submodule(n).register_forward_hook(lambda m, args, out, n=n, key=model is ours: seen.setdefault((key, n), []).append(out.detach()))
    x = torch.randn(1, 3, 224, 224)
    for grad in (False, True):
        seen.clear()
        with torch.set_grad_enabled(grad):
            assert max_rel_diff(ours(x), ref(x)) < 1e-4
        for n in names:
            got, expect = seen.get((True, n), []), seen[False, n]
            assert len(got) == len(expect) == 1, n
            assert got[0].shape == expect[0].shape and max_rel_diff(got[0], expect[0]) < 1e-4, n


@pytest.mark.parametrize("name", ["swin_base_patch4_window7_224", "swin_large_patch4_window7_224"])
def test_wider_variants_equal_timm_with_fewer_blocks(name):
    """B and L at their widths, heads and window, two blocks per stage (tiny runs at full depth above)."""
    ref = build_random(lambda: timm.create_model(name, num_classes=10, depths=(2, 2, 2, 2)))
    ours = visionzoo.create_model(name, num_classes=10, depths=(2, 2, 2, 2), checkpoint=ref.state_dict()).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_window12_other_classes_and_channels_equal_timm():
    """The window-12 / 384 configuration (shrunk in width and depth), 1 channel, 4 classes."""
    small = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
    ref = build_random(lambda: timm.create_model("swin_base_patch4_window12_384", num_classes=4, in_chans=1, **small))
    ours = visionzoo.create_model("swin_base_patch4_window12_384", num_classes=4, in_chans=1, checkpoint=ref.state_dict(), **small).eval()
    x = torch.randn(1, 1, 384, 384)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_logits_equal_torchvision_at_sizes_that_do_not_fit_the_windows():
    ref = build_random(lambda: torchvision.models.swin_t(num_classes=10))
    ours = visionzoo.create_model("swin_t", num_classes=10).eval()
    assert visionzoo.load_checkpoint(ours, ref.state_dict())["source"] == ["torchvision"]
    # 200x300: maps padded to multiples of the window before the shift; 64x302: stage maps
    # shorter than the window along H (padded up to it) and an image side that is not a
    # multiple of the patch (its remainder dropped); 90 px: both axes of the last stages
    for shape in ((2, 3, 224, 224), (1, 3, 200, 300), (1, 3, 64, 302), (1, 3, 90, 90)):
        x = torch.randn(shape)
        with torch.no_grad():
            assert max_rel_diff(ours(x), ref(x)) < 1e-4, shape
    for m in ref.modules():  # training mode, without torchvision's default stochastic depth
        if isinstance(m, torchvision.ops.StochasticDepth):
            m.p = 0.0
    ref.train(), ours.train()
    x = torch.randn(2, 3, 64, 302)
    assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_small_img_size_shrinks_the_windows_and_tables_as_timm():
    """At 112 px the last stage's map is 4x4: timm (like the official code) builds that stage
    with a 4x4 window and 7x7 bias tables; the same state dict loads and gives the same
    logits. At 160 px timm pads maps after the cyclic shift (timm issue #2438), where the
    official code and torchvision pad before it, as we do; there the two differ."""
    ref = build_random(lambda: timm.create_model("swin_tiny_patch4_window7_224", img_size=112, num_classes=5, in_chans=2))
    ours = visionzoo.create_model("swin_tiny_patch4_window7_224", img_size=112, num_classes=5, in_chans=2, checkpoint=ref.state_dict()).eval()
    assert ours.layers[3].blocks[0].attn.relative_position_bias_table.shape == (49, 24)
    assert _params(lambda: ours) == _params(lambda: ref)
    x = torch.randn(2, 2, 112, 112)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
    # a 224 model's 13x13 tables loaded into the 112 model are cut to the 4x4 window's
    # offsets: the same logits as the 224 model, whose last stage reads that sub-table at 112 px
    full = build_random(lambda: visionzoo.create_model("swin_tiny_patch4_window7_224", num_classes=5, in_chans=2))
    small = visionzoo.create_model("swin_tiny_patch4_window7_224", img_size=112, num_classes=5, in_chans=2, checkpoint=full.state_dict()).eval()
    assert small.layers[3].blocks[1].attn.relative_position_bias_table.shape == (49, 24)
    with torch.no_grad():
        assert max_rel_diff(small(x), full(x)) < 1e-5


def _to_official(sd):
    """timm layout -> microsoft/Swin-Transformer's (written independently of our converter)."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) - 1)  # the release closes stage N with its downsampling
        if parts[:2] == ["head", "fc"]:
            parts = ["head", parts[2]]
        out[".".join(parts)] = v
        if k.endswith("attn.relative_position_bias_table"):  # the release saves its buffers too
            out[k.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(49, 49, dtype=torch.long)
    return out


def test_official_layout_loads():
    ref = build_random(lambda: timm.create_model("swin_tiny_patch4_window7_224", num_classes=10))
    official = _to_official(ref.state_dict())
    assert "layers.2.downsample.reduction.weight" in official and "head.weight" in official
    ours = visionzoo.create_model("swin_tiny_patch4_window7_224", num_classes=10).eval()
    assert visionzoo.load_checkpoint(ours, official, source="official")["source"] == ["official"]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def _paper_mask(side, window, shift):
    """The SW-MSA mask from its definition: after rolling by -shift, two tokens of a window may
    attend to each other only if they were neighbours in the image, i.e. both or neither wrapped
    around on each axis. (nW, N, N) with -100 for forbidden pairs."""
    H = W = side
    wrap_h = (torch.arange(H) + shift) >= H  # rolled row i holds image row (i + shift) mod H
    wrap_w = (torch.arange(W) + shift) >= W
    label = wrap_h[:, None].long() * 2 + wrap_w[None, :].long()  # H, W
    nW, N = (H // window) * (W // window), window * window
    win = label.view(H // window, window, W // window, window).permute(0, 2, 1, 3).reshape(nW, N)
    return torch.where(win[:, :, None] == win[:, None, :], 0.0, -100.0)


@pytest.mark.parametrize("side", [56, 28, 14])
def test_shift_masks_at_224_equal_the_papers_construction_and_timm(side):
    plan = plan_windows(side, side, (7, 7), True, torch.device("cpu"))
    assert plan.window == (7, 7) and plan.shift == (3, 3) and plan.padded == (side, side)
    ours = plan.mask.squeeze(1)
    assert torch.equal(ours, _paper_mask(side, 7, 3))
    stage = {56: 0, 28: 1, 14: 2}[side]
    ref = timm.create_model("swin_tiny_patch4_window7_224")
    assert torch.equal(ours, ref.layers[stage].blocks[1].attn_mask)
    assert ours.ne(0).any()  # the shifted stages really are masked


def test_no_shift_where_the_map_fits_one_window():
    plan = plan_windows(7, 7, (7, 7), True, torch.device("cpu"))  # stage 4 at 224
    assert plan.shift == (0, 0) and plan.mask is None


def test_any_input_size_runs_and_pads_to_window_multiples():
    m = visionzoo.create_model("swin_tiny_patch4_window7_224", num_classes=5).eval()
    x = torch.randn(1, 3, 200, 300)  # not a multiple of 32 x 7
    with torch.no_grad():
        assert m(x).shape == (1, 5)
        feats = visionzoo.create_model("swin_tiny_patch4_window7_224", features_only=True).eval()(x)
    assert [tuple(f.shape[-2:]) for f in feats] == [(50, 75), (25, 38), (13, 19), (7, 10)]
    plan = plan_windows(7, 10, (7, 7), True, torch.device("cpu"))  # stage 4 at 200 x 300
    assert plan.window == (7, 7) and plan.shift == (0, 3) and plan.padded == (7, 14)
    assert plan.mask.shape == (2, 1, 49, 49)
    plan = plan_windows(13, 19, (7, 7), True, torch.device("cpu"))
    assert plan.padded == (14, 21) and plan.mask.shape == (6, 1, 49, 49)


def test_window_shrinks_to_small_maps_reading_the_sub_table():
    m = visionzoo.create_model("swin_tiny_patch4_window7_224").eval()
    attn = m.layers[0].blocks[0].attn
    full = attn.relative_bias((7, 7))  # nH, 49, 49
    sub = attn.relative_bias((3, 2))  # a 3 x 2 window: same offsets, same table rows
    rows = torch.tensor([r * 7 + c for r in range(3) for c in range(2)])
    assert torch.equal(sub, full[:, rows][:, :, rows])
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 96)).shape == (1, 1000)


@pytest.mark.parametrize("size, shifted", [((14, 21), True), ((14, 21), False), ((7, 14), True), ((3, 5), True)])
def test_window_order_lists_the_rolled_partition(size, shifted):
    H, W = size
    plan = plan_windows(H, W, (7, 7), shifted, torch.device("cpu"))
    x = torch.randn(2, H, W, 3)
    want = window_partition(torch.roll(x, (-plan.shift[0], -plan.shift[1]), (1, 2)), plan.window).reshape(2, H * W, 3)
    got = x.reshape(2, H * W, 3) if plan.order is None else x.reshape(2, H * W, 3)[:, plan.order]
    assert torch.equal(got, want)
    assert (plan.order is None) == (plan.window[1] == W and plan.shift == (0, 0))
    if plan.order is not None:
        assert torch.equal(plan.order[plan.inverse], torch.arange(H * W))


@pytest.mark.parametrize("size", [(224, 224), (112, 252), (64, 96), (200, 300)])
def test_windowed_inference_equals_the_per_block_path(size, monkeypatch):
    """In inference a stage whose map needs no padding keeps its tokens in window order; forward
    hooks on the blocks force the per-block path (pad, roll, partition, reverse) for comparison."""
    torch.manual_seed(0)
    m = build_random(lambda: visionzoo.create_model("swin_tiny_patch4_window7_224", num_classes=7)).eval()
    x = torch.randn(2, 3, *size)
    calls = []
    windowed = SwinBlock.forward_windowed
    monkeypatch.setattr(SwinBlock, "forward_windowed", lambda self, *a: calls.append(1) or windowed(self, *a))
    with torch.no_grad():
        got = m(x)
        n_windowed = len(calls)
        handles = [b.register_forward_hook(lambda *a: None) for s in m.layers for b in s.blocks]
        want = m(x)
    for h in handles:
        h.remove()
    assert len(calls) == n_windowed  # the hooked run took the per-block path
    maps, (h, w) = [], (-(-size[0] // 4), -(-size[1] // 4))  # the patch embedding and merging pad odd sides
    for _ in range(4):
        maps.append((h, w))
        h, w = -(-h // 2), -(-w // 2)
    expected = sum(d for d, (h, w) in zip((2, 2, 6, 2), maps) if (h <= 7 or h % 7 == 0) and (w <= 7 or w % 7 == 0))
    assert n_windowed == expected and (size != (224, 224) or n_windowed == 12)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    m.train()  # with autograd the stages run block by block
    m(x).sum().backward()
    assert len(calls) == n_windowed


# --------------------------------------------------------------------------- Swin-MLP
SWIN_MLP_HUB = {  # official model hub, millions
    "swin_mlp_tiny_c24_patch4_window8_256": 20,
    "swin_mlp_tiny_c12_patch4_window8_256": 21,
    "swin_mlp_tiny_c6_patch4_window8_256": 23,
    "swin_mlp_base_patch4_window7_224": 61,
}


@pytest.mark.parametrize("name", sorted(SWIN_MLP_HUB))
def test_swin_mlp_params_within_3_percent_of_the_model_hub(name):
    n = _params(lambda: visionzoo.create_model(name)) / 1e6
    assert abs(n - SWIN_MLP_HUB[name]) / SWIN_MLP_HUB[name] < 0.03, n


def _naive_spatial_mlp(x, weight, bias, M, shifted):
    """Per output pixel: its (offset) window, its head, W_h[pos, pos'] summed over the window.
    The release's rule: a block shifts (both axes) only where min(H, W) > M."""
    B, H, W, C = x.shape
    nH = weight.shape[0]
    hd = C // nH
    s = M - M // 2 if shifted and min(H, W) > M else 0
    out = torch.zeros_like(x)
    for i in range(H):
        for j in range(W):
            wi, wj = (i + s) // M, (j + s) // M
            pi, pj = (i + s) % M, (j + s) % M
            for h in range(nH):
                acc = bias[h, pi * M + pj].expand(B, hd).clone()
                for i2 in range(H):
                    for j2 in range(W):
                        if ((i2 + s) // M, (j2 + s) // M) != (wi, wj):
                            continue
                        q = ((i2 + s) % M) * M + (j2 + s) % M
                        acc = acc + weight[h, pi * M + pj, q] * x[:, i2, j2, h * hd : (h + 1) * hd]
                out[:, i, j, h * hd : (h + 1) * hd] = acc
    return out


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("size", [(7, 5), (3, 7), (8, 2)])  # not multiples of the window; one side <= M: no shift at all
def test_swin_mlp_spatial_mixing_equals_a_naive_per_window_sum(shifted, size):
    from visionzoo.models.swin_mlp import SwinMLPBlock

    torch.manual_seed(0)
    M, nH, C = 3, 2, 4
    blk = SwinMLPBlock(C, nH, (M, M), shifted=shifted)
    torch.nn.init.normal_(blk.spatial_mlp.weight)
    torch.nn.init.normal_(blk.spatial_mlp.bias)
    x = torch.randn(2, *size, C)
    weight = blk.spatial_mlp.weight.view(nH, M * M, M * M)
    bias = blk.spatial_mlp.bias.view(nH, M * M)
    with torch.no_grad():
        assert max_rel_diff(blk.spatial_mixing(x), _naive_spatial_mlp(x, weight, bias, M, shifted)) < 1e-5


def test_swin_mlp_official_layout_loads_and_any_size_runs():
    ours = visionzoo.create_model("swin_mlp_tiny_c24_patch4_window8_256", num_classes=10).eval()
    sd = visionzoo.testing.random_weights(visionzoo.create_model("swin_mlp_tiny_c24_patch4_window8_256", num_classes=10)).state_dict()
    official = _to_official({k: v for k, v in sd.items()})
    assert official["layers.0.blocks.1.spatial_mlp.weight"].shape == (4 * 64, 64, 1)
    assert visionzoo.load_checkpoint(ours, official, source="official")["source"] == ["official"]
    ref = visionzoo.create_model("swin_mlp_tiny_c24_patch4_window8_256", num_classes=10, checkpoint=sd).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
        assert ours(torch.randn(1, 3, 200, 300)).shape == (1, 10)


@pytest.mark.parametrize("option", [dict(qkv_bias=False), dict(attn_drop_rate=0.1)])
def test_swin_mlp_refuses_the_attention_options_it_has_nothing_to_apply_to(option):
    """SwinConfig's qkv_bias and attn_drop_rate used to build a Swin-MLP that ignored them
    (no qkv projection, no attention weights): a user asking for them is told so."""
    with pytest.raises(ValueError, match=f"Swin-MLP has no attention: {next(iter(option))}"):
        visionzoo.create_model("swin_mlp_tiny_c24_patch4_window8_256", img_size=64, **option)


def _swin_mlp_block_inputs(model, x):
    """{(stage, block): the block's input} of one forward."""
    inputs, hooks = {}, []
    for i, stage in enumerate(model.layers):
        for j, blk in enumerate(stage.blocks):
            hooks.append(blk.register_forward_pre_hook(lambda m, args, key=(i, j): inputs.__setitem__(key, args[0])))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return inputs


def test_swin_mlp_shifts_only_where_both_sides_of_the_map_exceed_the_window():
    """The release's rule (swin_mlp.py, SwinMLPBlock.__init__): ``min(H, W) <= M`` turns the
    shift off on both axes. At 256x512 the last stage's map is 8x16 (M = 8): its shifted
    block runs unshifted; the third stage's 16x32 and, at 256x256, 16x16 still shift."""
    import copy

    name = "swin_mlp_tiny_c24_patch4_window8_256"
    model = visionzoo.testing.random_weights(visionzoo.create_model(name, img_size=(256, 512)), std=0.1).eval()
    for size, shifting, still in (((256, 512), [(2, 1), (2, 3), (2, 5)], [(3, 1)]), ((256, 256), [(2, 1), (2, 5)], [(3, 1)])):
        inputs = _swin_mlp_block_inputs(model, torch.randn(1, 3, *size))
        for key in shifting + still:
            blk = model.layers[key[0]].blocks[key[1]]
            assert blk.shifted
            plain = copy.deepcopy(blk)
            plain.shifted = False
            with torch.no_grad():
                out, ref = blk(inputs[key]), plain(inputs[key])
            if key in still:
                assert torch.equal(out, ref), (size, key, inputs[key].shape)
            else:
                assert max_rel_diff(out, ref) > 1e-3, (size, key, inputs[key].shape)
    x = torch.randn(1, 3, 256, 512)  # and so the whole model: as with that block unshifted
    with torch.no_grad():
        out = model(x)
        model.layers[3].blocks[1].shifted = False
        assert torch.equal(out, model(x))


def test_swin_mlp_spatial_mlp_initialised_as_the_linear_layers():
    """The release initialises its grouped Conv1d as its Linear layers: truncated normal
    (std 0.02), bias zero; not PyTorch's default uniform(+-1/8) with a non-zero bias."""
    torch.manual_seed(0)
    model = visionzoo.create_model("swin_mlp_tiny_c24_patch4_window8_256")
    spatial = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    assert len(spatial) == 12
    w = torch.cat([m.weight.detach().flatten() for m in spatial])
    lin = torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)])
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in spatial)
    assert abs(w.mean()) < 1e-3 and abs(w.std() / lin.std() - 1) < 0.02, (w.std(), lin.std())
    assert w.abs().max() <= lin.abs().max() + 1e-7 and w.abs().max() <= 0.04 + 1e-7


@pytest.mark.parametrize("name", sorted(SWIN_MLP_HUB))
def test_swin_mlp_eval_crop_is_the_releases(name):
    """The release evaluates with Resize(int(256 / 224 * S)) then CenterCrop(S): 292 -> 256, 256 -> 224."""
    from visionzoo.train.data import eval_transform

    cfg = visionzoo.registry.get_entry(name).default_cfg
    S = cfg["input_size"][-1]
    assert cfg["crop_pct"] == 0.875
    tf = eval_transform(S, cfg["mean"], cfg["std"], crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"])
    resize = next(t for t in tf.transforms if type(t).__name__ == "Resize")
    crop = next(t for t in tf.transforms if type(t).__name__ == "CenterCrop")
    assert list(resize.size) == [int(256 / 224 * S)] == [{256: 292, 224: 256}[S]]
    assert list(crop.size) == [S, S]


def test_a_new_window_at_a_size_already_run_takes_the_new_windows():
    """set_input_size(window_size=...) at the size a model has already run at: the stages'
    cached window plans (masks, token order) were kept per size only, so the model ran the new
    tables with the old windows (1.5e-2 from timm's logits; 6e-5 with the fix, timm's bicubic
    resampling of the tables being the rest)."""
    ref = build_random(lambda: timm.create_model("swin_tiny_patch4_window7_224", num_classes=3, depths=(1, 1, 2, 1)))
    ours = visionzoo.create_model("swin_tiny_patch4_window7_224", num_classes=3, depths=(1, 1, 2, 1), checkpoint=ref.state_dict()).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours(x)
        ref.set_input_size(img_size=(224, 224), window_size=14)
        ours.set_input_size(224, window_size=14)
        assert max_rel_diff(ours(x), ref(x)) < 5e-4
