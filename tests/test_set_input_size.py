"""set_input_size, timm's method: a model resized in place equals the model create_model builds
for the new size loaded with the old one's weights; its windows follow timm's rule; its other
parameters stay the same objects; refused sizes and options change nothing."""

import pytest
import torch

import visionzoo
from visionzoo.testing import max_rel_diff

# (name, options of create_model, size built for, new size, set_input_size options)
CASES = [
    ("vit_tiny_patch16_224", {}, 64, (96, 128), {}),
    ("vit_tiny_patch16_224", {"pos_embed": "learned_2d"}, 64, (128, 80), {}),
    ("vit_tiny_patch16_224", {"pos_embed": "relative"}, 64, (96, 96), {}),
    ("vit_tiny_patch16_224", {"pos_embed": "relative_2d"}, (48, 64), (80, 64), {}),
    ("vit_tiny_patch16_224", {"pos_embed_at": "every_layer"}, 64, (112, 96), {}),
    ("deit_tiny_distilled_patch16_224", {}, 64, (96, 64), {}),
    ("deit3_small_patch16_224", {}, 64, (80, 96), {}),
    ("swin_tiny_patch4_window7_224", {}, 112, (160, 224), {}),
    ("swin_tiny_patch4_window7_224", {}, 112, (96, 96), {"window_size": (6, 5)}),
    ("swin_tiny_patch4_window7_224", {}, 112, (128, 128), {"window_ratio": 4}),
    ("swin_t", {}, 112, (160, 128), {}),
    ("swin_mlp_tiny_c24_patch4_window8_256", {}, 64, (96, 128), {}),
    ("coatnet_0_224", {}, 64, (96, 64), {}),
    ("nest_tiny", {}, 64, (96, 96), {}),
]


def _ids(case):
    name, options, _, size, kw = case
    return f"{name}-{'-'.join(f'{k}={v}' for k, v in {**options, **kw}.items())}-{size[0]}x{size[1]}"


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_equals_the_model_built_for_the_size_with_its_weights(case):
    """State and outputs of the resized model equal those of create_model(img_size=new) loading
    the old model's state dict (the checkpoint path resamples the same tables the same way)."""
    name, options, built, size, kw = case
    torch.manual_seed(0)
    model = visionzoo.create_model(name, num_classes=7, img_size=built, **options).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_input_size(size, **kw)
    assert model.default_cfg["input_size"] == (3, *size)
    cfg = model.cfg
    built_for = visionzoo.create_model(
        name, num_classes=7, img_size=size, checkpoint=weights, **options,
        **({"window_size": cfg.window_size} if hasattr(cfg, "window_size") else {}),
    ).eval()
    ours, theirs = model.state_dict(), built_for.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert max_rel_diff(model(x), built_for(x)) < 1e-6
        changed = {k for k in weights if weights[k].shape != ours[k].shape or not torch.equal(weights[k], ours[k])}
    sized = ("pos_embed", "rel_embed", "relative_position_bias_table")  # what may change (swin_t and Swin-MLP keep their windows: nothing)
    assert all(any(s in k for s in sized) for k in changed), sorted(changed)[:5]


FORWARD_RESAMPLED = [
    ("vit_tiny_patch16_224", {}, 64, (96, 128), {}),
    ("vit_tiny_patch16_224", {"pos_embed": "learned_2d"}, 64, (96, 128), {}),
    ("vit_tiny_patch16_224", {"pos_embed": "relative"}, 64, (96, 128), {}),
    ("vit_tiny_patch16_224", {"pos_embed": "relative_2d"}, 64, (96, 128), {}),
    ("nest_tiny", {}, 64, (96, 128), {}),
    ("coatnet_0_224", {}, 64, (96, 128), {}),
    ("swin_tiny_patch4_window7_224", {}, 224, (96, 288), {"window_size": 7}),
]


@pytest.mark.parametrize("case", FORWARD_RESAMPLED, ids=[_ids(c) for c in FORWARD_RESAMPLED])
def test_outputs_at_the_new_size_unchanged_where_the_forward_resampled_the_same_way(case):
    """A model's forward at another size resamples its tables on the fly; set_input_size resamples
    them once, the same way: the outputs at the new size do not change (bit for bit)."""
    name, options, built, size, kw = case
    torch.manual_seed(0)
    model = visionzoo.create_model(name, num_classes=5, img_size=built, **options).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        before = model(x)
        model.set_input_size(size, **kw)
        assert torch.equal(model(x), before)


def test_a_transposed_grid_is_resampled():
    """The same number of tokens on another grid (4x3 -> 3x4): the position embedding keeps its
    shape but is resampled from the old grid (a checkpoint, whose grid is unknown, cannot be)."""
    from visionzoo.layers import resample_abs_pos_embed

    model = visionzoo.create_model("deit_tiny_distilled_patch16_224", img_size=(64, 48))
    old = model.pos_embed.detach().clone()
    model.set_input_size((48, 64))
    assert model.grid_size == (3, 4)
    assert torch.equal(model.pos_embed, resample_abs_pos_embed(old, (3, 4), (4, 3), num_prefix_tokens=2))
    assert not torch.equal(model.pos_embed, old)


@pytest.mark.parametrize("new", [8, 32, 14, (16, 12)])
def test_patch_kernel_pi_resize_equals_timms(new):
    """FlexiViT's PI-resize of a 16x16 kernel, against timm's resample_patch_embed (which works in
    float32: 1e-6), and its defining property: where the resize loses nothing (upsampling), the
    resized patch embedded with the new kernel equals the patch embedded with the old one."""
    timm_layers = pytest.importorskip("timm.layers")
    from visionzoo.layers import resample_patch_kernel

    torch.manual_seed(0)
    w = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    ours = resample_patch_kernel(w, new)
    size = [new, new] if isinstance(new, int) else list(new)
    assert ours.shape == (6, 3, *size) and ours.dtype == torch.float64
    assert max_rel_diff(ours, timm_layers.resample_patch_embed(w.float(), size)) < 1e-5
    if min(size) >= 16:
        x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
        resized = torch.nn.functional.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        assert max_rel_diff(torch.einsum("bchw,dchw->bd", resized, ours), torch.einsum("bchw,dchw->bd", x, w)) < 1e-10


def test_vit_patch_size_changes_as_timms_and_as_a_checkpoint_of_another_patch_size_loads():
    """set_input_size(patch_size=8) on a /16 model: its kernel PI-resized, its position embedding
    resampled to the 28x28 grid, its strides 8 (feature_info too); timm's logits (1e-5). A /16
    state dict loaded into a model built with patch_size=8 is resampled the same way."""
    timm = pytest.importorskip("timm")
    ours = visionzoo.create_model("vit_small_patch16_224").eval()
    ref = timm.create_model("vit_small_patch16_224").eval()
    weights = {k: v.clone() for k, v in ours.state_dict().items()}
    ref.load_state_dict(weights)
    ours.set_input_size(224, patch_size=8)
    ref.set_input_size(224, patch_size=8)
    assert ours.patch_embed.proj.weight.shape == (384, 3, 8, 8) and ours.pos_embed.shape == (1, 1 + 28 * 28, 384)
    assert ours.feature_info.reduction() == [8] * 12 and ours.grid_size == (28, 28)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-5
    loaded = visionzoo.create_model("vit_small_patch16_224", patch_size=8, checkpoint=weights).eval()
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(ValueError, match="the hybrid's patches are its ResNet's 16 px"):
        visionzoo.create_model("vit_base_r50_s16_224", device="meta").set_input_size(224, patch_size=8)


@pytest.mark.parametrize("name,in_chans", [("vit_tiny_patch16_224", 1), ("eva02_tiny_patch14_224", 4)])
def test_a_checkpoint_of_another_patch_size_and_channel_count_loads_as_timms(name, in_chans, tmp_path):
    """A 3-channel checkpoint of the default patch loaded into a model of another patch size
    and channel count: the kernel is PI-resized and its channels adapted, as timm's loading
    does both (the shapes were refused as not fitting); timm's logits (1e-5)."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()}, str(path))
    kw = dict(patch_size=8, img_size=64, in_chans=in_chans)
    ref = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kw).eval()
    ours = visionzoo.create_model(name, checkpoint=path, **kw).eval()
    assert ours.patch_embed.proj.weight.shape[1:] == (in_chans, 8, 8)
    x = torch.randn(2, in_chans, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-5


def test_swin_windows_follow_timms_rule_and_its_logits():
    """Without a window, Swin's scales with the patch grid as timm's does (7 at 224 -> 12 at 384;
    rectangular for a rectangular image); the rule keeps the size the model was built for as its
    reference, so resizing back gives the window back; a window or ratio given becomes the new
    reference. With the same tables (timm resamples them with its own interpolation; ours is
    bicubic, as the official code's), the logits are timm's at every step: shifts and masks too."""
    timm = pytest.importorskip("timm")
    name = "swin_tiny_patch4_window7_224"
    ours = visionzoo.create_model(name).eval()
    ref = timm.create_model(name).eval()
    ref.load_state_dict(ours.state_dict())
    steps = [  # (size, options, stage 1's window)
        ((384, 384), {}, (12, 12)),  # 7 x 96 // 56
        ((256, 320), {}, (8, 10)),  # 7 x 64 // 56, 7 x 80 // 56
        ((224, 224), {}, (7, 7)),  # back to the size it was built for
        ((300, 300), {}, (9, 9)),  # 7 x 75 // 56
        ((224, 224), {}, (7, 7)),  # from the reference, 7 at 56, not from the last window (9 x 56 // 75 = 6)
        ((288, 288), {"window_size": 9}, (9, 9)),  # the new reference: 9 at a 72-patch grid
        ((224, 224), {}, (7, 7)),  # 9 x 56 // 72
        ((256, 256), {"window_ratio": 8}, (8, 8)),  # 64 // 8
    ]
    for size, kw, first in steps:
        ours.set_input_size(size, **kw)
        ref.set_input_size(size, **kw)
        windows = [blk.attn.window for stage in ours.layers for blk in stage.blocks]
        assert windows == [tuple(blk.window_size) for stage in ref.layers for blk in stage.blocks], (size, kw)
        assert windows[0] == first, (size, kw)
        if size == (300, 300):  # maps of 75 and 38 patches pad to the window, where timm's logits differ (its issue #2438)
            continue
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            assert max_rel_diff(ours(x), ref(x)) < 1e-5, (size, kw)


def test_vit_and_coatnet_equal_timm_after_resizing():
    timm = pytest.importorskip("timm")
    for name, size in (("vit_small_patch16_224", (160, 256)), ("coatnet_0_224", (160, 192))):
        ours = visionzoo.create_model(name).eval()
        ref = timm.create_model(name).eval()
        ref.load_state_dict(ours.state_dict())
        ours.set_input_size(size)
        ref.set_input_size(size)
        assert ours.state_dict().keys() == ref.state_dict().keys()
        ref.load_state_dict(ours.state_dict())  # CoAtNet: the same tables (timm's interpolation differs from the official bicubic)
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            assert max_rel_diff(ours(x), ref(x)) < 1e-5, name


def test_other_parameters_kept_and_resized_ones_keep_their_flags():
    """An optimizer built before still holds the model's unresized parameters; a frozen table stays
    frozen; dtype is kept; a features_only model resizes what it kept; the caller's random stream
    is untouched (the twin built for the new size initialises in a forked stream)."""
    model = visionzoo.create_model("vit_tiny_patch16_224", img_size=64)
    before = dict(model.named_parameters())
    model.pos_embed.requires_grad_(False)
    torch.manual_seed(1)
    model.set_input_size(96)
    after_stream = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(after_stream, torch.rand(3))
    after = dict(model.named_parameters())
    assert [k for k in after if after[k] is not before[k]] == ["pos_embed"]
    assert model.pos_embed.shape == (1, 1 + 36, 192) and not model.pos_embed.requires_grad
    assert model.grid_size == (6, 6)

    half = visionzoo.create_model("swin_tiny_patch4_window7_224", img_size=112, dtype=torch.bfloat16)
    half.set_input_size(224)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.layers[0].blocks[0].attn.window == (14, 14)  # 7 x 56 // 28

    feats = visionzoo.create_model("coatnet_0_224", img_size=64, features_only=True, out_indices=(1, 2)).eval()
    feats.set_input_size(96)
    maps = feats(torch.randn(1, 3, 96, 96))
    assert [m.shape[-1] for m in maps] == [24, 12]


def test_families_without_size_dependent_parts_only_update_default_cfg():
    model = visionzoo.create_model("resnet18", num_classes=3).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_input_size((160, 192))
    assert model.default_cfg["input_size"] == (3, 160, 192)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_refusals_change_nothing():
    model = visionzoo.create_model("vit_tiny_patch16_224", img_size=64)
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    def unchanged():
        assert model.default_cfg["input_size"] == (3, 64, 64) and model.grid_size == (4, 4)
        assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())

    with pytest.raises(ValueError, match=r"vit_tiny_patch16_224 cannot take img_size 100x96: it needs height and width divisible by 16"):
        model.set_input_size((100, 96))
    unchanged()
    with pytest.raises(ValueError, match=r"patch_size takes a positive int \(square patches\), got \(8, 4\)"):
        model.set_input_size(96, patch_size=(8, 4))
    unchanged()
    with pytest.raises(ValueError, match=r"vit_tiny_patch16_224 cannot take img_size 68x64: it needs height and width divisible by 8"):
        model.set_input_size((68, 64), patch_size=8)  # checked for the new patch size
    unchanged()
    model.set_input_size(64, patch_size=16)  # the current patch size is accepted, as timm's
    unchanged()
    with pytest.raises(TypeError, match=r"vit_tiny_patch16_224: set_input_size takes img_size, patch_size; got \['window_size'\]"):
        model.set_input_size(96, window_size=7)
    with pytest.raises(ValueError, match="img_size takes an int or a pair of ints, got 96.5"):
        model.set_input_size(96.5)
    unchanged()

    mlp = visionzoo.create_model("swin_mlp_tiny_c24_patch4_window8_256", img_size=64)
    with pytest.raises(ValueError, match=r"cannot be resampled to .* for 96x96"):
        mlp.set_input_size(96, window_size=6)  # its spatial MLPs are N x N matrices over the window
    assert mlp.cfg.window_size == 8 and mlp.default_cfg["input_size"] == (3, 64, 64)
    with pytest.raises(TypeError, match=r"resnet18: set_input_size takes img_size; got \['window_size'\]"):
        visionzoo.create_model("resnet18").set_input_size(224, window_size=7)
    with pytest.raises(ValueError, match="window_ratio takes a positive int, got 0"):
        visionzoo.create_model("swin_tiny_patch4_window7_224").set_input_size(224, window_ratio=0)
