"""ViT / DeiT / R50+ViT hybrid against timm, torchvision and the authors' JAX release."""

import numpy as np
import pytest
import timm
import torch
import torchvision

import visionzoo
from visionzoo.testing import build_random, gradient_rel_diffs, max_rel_diff

from checkpoint_layouts import openai_clip_layout
from family_models import distinct_configs, shallow_options

VIT_NAMES = visionzoo.list_models(family="vit")
TIMM_NAMES = [n for n in VIT_NAMES if timm.is_model(n)]


def _small(name: str) -> int:
    """A small input for an equivalence check: a 2x2 to 4x4 patch grid."""
    entry_patch = visionzoo.registry.get_entry(name).config.patch_size
    return 64 if entry_patch in (1, 14, 16) else 96  # hybrid: 64 -> 4x4 grid


def test_every_timm_vit_is_registered():
    assert len(TIMM_NAMES) >= 25, TIMM_NAMES  # 16 ViT + huge/14 + 8 DeiT + 2 hybrids


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_param_count_equals_timm(name):
    with torch.device("meta"):
        ours = visionzoo.create_model(name, num_classes=1000)
        ref = timm.create_model(name, num_classes=1000)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name", distinct_configs(TIMM_NAMES))
def test_logits_equal_timm(name):
    """At 2 blocks (each block is the same code; the parameter test counts the full depth), once a
    configuration (85 of the 137 names: the others differ in default size and weights only)."""
    size = 28 if "patch14" in name else _small(name)
    small = shallow_options(name, compact=True)
    ref = build_random(lambda: timm.create_model(name, img_size=size, num_classes=10, **small))
    ours = visionzoo.create_model(name, img_size=size, num_classes=10, **small).eval()
    visionzoo.load_checkpoint(ours, ref.state_dict(), source="timm")
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_other_num_classes_and_in_chans_equal_timm():
    ref = build_random(lambda: timm.create_model("deit_small_distilled_patch16_224", img_size=48, num_classes=5, in_chans=1))
    ours = visionzoo.create_model("deit_small_distilled_patch16_224", img_size=48, num_classes=5, in_chans=1).eval()
    visionzoo.load_checkpoint(ours, ref.state_dict())  # layout detected
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_full_size_default_input_equals_timm():
    ref = build_random(lambda: timm.create_model("vit_tiny_patch16_384", num_classes=10))
    ours = visionzoo.create_model("vit_tiny_patch16_384", num_classes=10).eval()
    visionzoo.load_checkpoint(ours, ref.state_dict(), source="timm")
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        assert max_rel_diff(ours.forward_features(x), ref.forward_features(x)) < 1e-4


def test_on_the_fly_resampling_equals_timm_dynamic_size():
    ref = build_random(lambda: timm.create_model("vit_small_patch16_224", num_classes=10, dynamic_img_size=True))
    ours = visionzoo.create_model("vit_small_patch16_224", num_classes=10).eval()
    visionzoo.load_checkpoint(ours, ref.state_dict())
    x = torch.randn(1, 3, 96, 160)  # 6 x 10 grid from a 14 x 14 embedding
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


@pytest.mark.parametrize(
    "tv_name, ours_name", [("vit_b_16", "vit_base_patch16_224"), ("vit_b_32", "vit_base_patch32_224"), ("vit_l_16", "vit_large_patch16_224"), ("vit_l_32", "vit_large_patch32_224"), ("vit_h_14", "vit_huge_patch14_224")]
)
def test_logits_equal_torchvision(tv_name, ours_name):
    size = 28 if tv_name == "vit_h_14" else 64
    if shallow_options(ours_name):  # torchvision's builder fixes num_layers: its class, with the builder's other settings
        with torch.device("meta"):
            full = getattr(torchvision.models, tv_name)(image_size=size)
        build = lambda: torchvision.models.vision_transformer.VisionTransformer(
            image_size=size, patch_size=full.patch_size, num_layers=shallow_options(ours_name)["depth"], num_heads=full.encoder.layers[0].num_heads,
            hidden_dim=full.hidden_dim, mlp_dim=full.mlp_dim, num_classes=10)
    else:
        build = lambda: getattr(torchvision.models, tv_name)(image_size=size, num_classes=10)
    ref = build_random(build)
    ours = visionzoo.create_model(tv_name, img_size=size, num_classes=10, **shallow_options(ours_name)).eval()  # the alias
    assert ours.model_name == ours_name
    visionzoo.load_checkpoint(ours, ref.state_dict(), source="torchvision")
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def _to_jax_layout(model) -> dict[str, np.ndarray]:
    """Write a timm ViT's weights in the layout of the authors' .npz release."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    D = model.embed_dim
    nH = model.blocks[0].attn.num_heads
    out = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "head/kernel": sd["head.weight"].T,
        "head/bias": sd["head.bias"],
    }
    for i in range(len(model.blocks)):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        out[p + "LayerNorm_0/scale"], out[p + "LayerNorm_0/bias"] = sd[b + "norm1.weight"], sd[b + "norm1.bias"]
        out[p + "LayerNorm_2/scale"], out[p + "LayerNorm_2/bias"] = sd[b + "norm2.weight"], sd[b + "norm2.bias"]
        qkv_w, qkv_b = np.split(sd[b + "attn.qkv.weight"], 3), np.split(sd[b + "attn.qkv.bias"], 3)
        for n, w, bias in zip(("query", "key", "value"), qkv_w, qkv_b):
            out[p + f"MultiHeadDotProductAttention_1/{n}/kernel"] = w.T.reshape(D, nH, D // nH)
            out[p + f"MultiHeadDotProductAttention_1/{n}/bias"] = bias.reshape(nH, D // nH)
        out[p + "MultiHeadDotProductAttention_1/out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(nH, D // nH, D)
        out[p + "MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for j in (0, 1):
            out[p + f"MlpBlock_3/Dense_{j}/kernel"] = sd[b + f"mlp.fc{j + 1}.weight"].T
            out[p + f"MlpBlock_3/Dense_{j}/bias"] = sd[b + f"mlp.fc{j + 1}.bias"]
    return out


def test_official_jax_npz_loads(tmp_path):
    from timm.models.vision_transformer import _load_weights

    src = build_random(lambda: timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10))
    path = tmp_path / "ViT-Ti_16.npz"
    np.savez(path, **_to_jax_layout(src))
    ref = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10).eval()
    _load_weights(ref, str(path))  # timm's own reader of the release format
    ours = visionzoo.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10).eval()
    info = visionzoo.load_checkpoint(ours, path)  # layout detected as official
    assert info["source"] == ["official"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ref(x), src(x)) < 1e-5  # the writer above is the release layout
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
    # the same weights inside a Flax training state (opt/target/...), as timm also reads them
    np.savez(tmp_path / "state.npz", **{f"opt/target/{k}": v for k, v in _to_jax_layout(src).items()})
    ours = visionzoo.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10).eval()
    visionzoo.load_checkpoint(ours, tmp_path / "state.npz")
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


# ---------------------------------------------------------------- position-embedding ablation
def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_position_embedding_variants_have_the_papers_parameters():
    kw = dict(img_size=64, num_classes=10, embed_dim=64, depth=3, num_heads=2)
    G, D, L, hd = 4, 64, 3, 32
    with torch.device("meta"):
        none = _count(visionzoo.create_model("vit_base_patch16_224", pos_embed="none", **kw))
        assert _count(visionzoo.create_model("vit_base_patch16_224", **kw)) - none == (1 + G * G) * D
        assert _count(visionzoo.create_model("vit_base_patch16_224", pos_embed_at="every_layer", **kw)) - none == L * (1 + G * G) * D
        assert _count(visionzoo.create_model("vit_base_patch16_224", pos_embed_at="every_layer_shared", **kw)) - none == (1 + G * G) * D
        # 2-D: a row and a column table of width D/2 each, plus the class token's position
        assert _count(visionzoo.create_model("vit_base_patch16_224", pos_embed="learned_2d", **kw)) - none == 2 * G * D // 2 + D
        assert _count(visionzoo.create_model("vit_base_patch16_224", pos_embed="learned_2d", pos_embed_at="every_layer", **kw)) - none == L * (2 * G * D // 2 + D)
        # relative (the paper's 1-D form): one embedding per raster offset per layer, of the head width;
        # relative_2d: one per 2-D offset
        assert _count(visionzoo.create_model("vit_base_patch16_224", pos_embed="relative", **kw)) - none == L * (2 * G * G - 1) * hd
        assert _count(visionzoo.create_model("vit_base_patch16_224", pos_embed="relative_2d", **kw)) - none == L * (2 * G - 1) ** 2 * hd


def test_relative_position_embeddings_are_the_papers_1d_raster_offsets():
    """App. D.4: "1-dimensional Relative Attention", an embedding per offset p_q - p_k of the
    raster positions: (0, 0) -> (0, 1) and (0, 13) -> (1, 0) are both one step apart there and
    share an embedding; the 2-D variant tells them apart. Other grids resample the table."""
    attn = visionzoo.create_model("vit_tiny_patch16_224", pos_embed="relative", depth=1).blocks[0].attn
    attn2d = visionzoo.create_model("vit_tiny_patch16_224", pos_embed="relative_2d", depth=1).blocks[0].attn
    i = lambda r, c: 14 * r + c  # noqa: E731
    with torch.no_grad():
        e, e2 = attn._offset_embeddings((14, 14)), attn2d._offset_embeddings((14, 14))
        assert torch.equal(e[i(0, 0), i(0, 1)], e[i(0, 13), i(1, 0)]) and torch.equal(e[i(0, 0), i(0, 1)], attn.rel_embed[195 - 1])
        assert not torch.equal(e2[i(0, 0), i(0, 1)], e2[i(0, 13), i(1, 0)])
        assert torch.equal(e[i(3, 4), i(3, 4)], attn.rel_embed[195]) and tuple(attn.rel_embed.shape) == (391, 64)
        assert attn._offset_embeddings((5, 7)).shape == (35, 35, 64)


@pytest.mark.parametrize(
    "pos_embed, at, sensitive",
    [
        ("none", "stem", False),
        ("learned_1d", "stem", True),
        ("learned_1d", "every_layer", True),
        ("learned_2d", "every_layer_shared", True),
        ("relative", "stem", True),
        ("relative_2d", "stem", True),
    ],
)
def test_position_information_reaches_the_output(pos_embed, at, sensitive):
    """Without position embeddings, shuffling the patches cannot change a GAP model's output."""
    torch.manual_seed(0)
    m = visionzoo.create_model(
        "vit_tiny_patch16_224", img_size=64, num_classes=4, pos_embed=pos_embed, pos_embed_at=at,
        class_token=False, global_pool="avg", depth=2,
    ).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(1, 3, 64, 64)
    patches = x.unfold(2, 16, 16).unfold(3, 16, 16).reshape(1, 3, 16, 16, 16)  # 1, C, 16 patches, 16, 16
    perm = patches[:, :, torch.randperm(16)].reshape(1, 3, 4, 4, 16, 16).permute(0, 1, 2, 4, 3, 5).reshape(1, 3, 64, 64)
    with torch.no_grad():
        diff = (m(x) - m(perm)).abs().max().item()
    assert (diff > 1e-4) == sensitive, diff


def test_position_embedding_variants_take_other_sizes():
    for pe, at in [("learned_2d", "stem"), ("learned_2d", "every_layer"), ("relative", "stem"), ("relative_2d", "stem"), ("learned_1d", "every_layer")]:
        m = visionzoo.create_model("vit_tiny_patch16_224", img_size=64, num_classes=3, pos_embed=pe, pos_embed_at=at, depth=2).eval()
        with torch.no_grad():
            assert m(torch.randn(1, 3, 96, 48)).shape == (1, 3)


def test_invalid_position_embedding_options_are_refused():
    with pytest.raises(ValueError, match="pos_embed must be one of"):
        visionzoo.create_model("vit_tiny_patch16_224", pos_embed="sinusoid")
    with pytest.raises(ValueError, match="no placement"):
        visionzoo.create_model("vit_tiny_patch16_224", pos_embed="relative", pos_embed_at="every_layer")


def test_distilled_training_returns_both_heads():
    m = visionzoo.create_model("deit_tiny_distilled_patch16_224", img_size=32, num_classes=3)
    m.set_distilled_training(True)
    m.train()
    out = m(torch.randn(2, 3, 32, 32))
    assert isinstance(out, tuple) and out[0].shape == out[1].shape == (2, 3)
    m.eval()
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_features_equal_timm_intermediates():
    ref = build_random(lambda: timm.create_model("vit_small_patch16_224", img_size=64, num_classes=0))
    ours = visionzoo.create_model("vit_small_patch16_224", img_size=64, features_only=True, checkpoint=ref.state_dict()).eval()
    assert ours.out_indices == (9, 10, 11)  # timm's default: the last three blocks
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expect = ref.forward_intermediates(x, indices=3, intermediates_only=True)
        got = ours(x)
    assert len(got) == len(expect) == 3
    for g, e in zip(got, expect):
        assert g.shape == e.shape == (1, 384, 4, 4)
        assert max_rel_diff(g, e) < 1e-4
    # dense-prediction heads read four blocks spread over the depth (ViTDet, DPT)
    assert visionzoo.create_model("vit_small_patch16_224", img_size=64).dense_out_indices() == (2, 5, 8, 11)


def test_gmacs_match_papers():
    for name in ("vit_base_patch16_224", "vit_base_patch16_384", "vit_large_patch16_384", "vit_base_r50_s16_384", "vit_tiny_patch16_224"):
        info = visionzoo.model_info(name)
        assert abs(info["gmacs"] - info["published_gmacs"]) / info["published_gmacs"] < 0.03, (name, info["gmacs"])


def test_deit3_layer_scale_and_patch_only_position_embedding_equal_timm():
    """DeiT III's options on any ViT (timm's init_values and no_embed_class): the patch tokens alone
    take the position embedding, resampled for another input size without prefix rows; each
    branch scaled by its LayerScale (keys ls1.gamma, ls2.gamma). Logits equal timm's at the built
    size and at another, and after set_input_size."""
    kw = dict(init_values=1e-5, no_embed_class=True)
    ref = build_random(lambda: timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=5, **kw))
    ours = visionzoo.create_model("vit_tiny_patch16_224", img_size=64, num_classes=5, checkpoint=ref.state_dict(), **kw).eval()
    assert ours.pos_embed.shape == (1, 16, 192) and ours.blocks[0].ls2.gamma.shape == (192,)
    with torch.no_grad():
        for size in ((64, 64), (96, 128)):
            x = torch.randn(2, 3, *size)
            if size != (64, 64):
                ref.set_input_size(size)  # timm resamples once; ours at the forward
            assert max_rel_diff(ours(x), ref(x)) < 1e-5, size
        ours.set_input_size((96, 128))
        assert max_rel_diff(ours(x), ref(x)) < 1e-5
    assert visionzoo.create_model("deit3_small_patch16_224", device="meta").blocks[0].ls1.gamma.shape == (384,)
    with pytest.raises(ValueError, match="no_embed_class=True takes pos_embed='learned_1d' at the stem"):
        visionzoo.create_model("vit_tiny_patch16_224", no_embed_class=True, pos_embed="learned_2d")


def test_deit3_inference_folds_the_layer_scales_and_a_hook_stands_it_aside():
    """In inference each LayerScale is multiplied into its branch's projection (cached), to the
    logits of the autograd path; a hook on a LayerScale makes that block run its modules, and
    the hook sees what autograd's run sees."""
    from visionzoo.models.vit import _SCALED

    model = build_random(lambda: visionzoo.create_model("deit3_small_patch16_224", num_classes=5, img_size=64)).eval()
    x = torch.randn(2, 3, 64, 64)
    seen = []
    model.blocks[3].ls2.register_forward_hook(lambda m, args, out: seen.append(out.detach().clone()))
    with torch.enable_grad():
        ref = model(x).detach()
    with torch.inference_mode():
        out = model(x)
    assert max_rel_diff(out, ref) < 1e-5
    assert len(seen) == 2 and max_rel_diff(seen[1], seen[0]) < 1e-5
    folded = [i for i, b in enumerate(model.blocks) if b in _SCALED._entries]
    assert folded == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]


def test_deit3_params_and_gmacs_match_the_authors_model_zoo():
    """The DeiT III authors' table (ImageNet-1k models): params to their 0.1 M, GMACs to 1 %.
    The 384 ViT-S is listed with the 224 count, 22.0 M; it has 145 k more in its position table."""
    names = visionzoo.list_models("deit3_*")
    assert len(names) == 8
    for name in names:
        info = visionzoo.model_info(name)
        counted = info["params"] / 1e6
        extra = (24 * 24 - 14 * 14) * 384 / 1e6 if name == "deit3_small_patch16_384" else 0.0
        assert abs(counted - extra - info["published_params_m"]) < 0.06, (name, counted)
        if info["published_gmacs"] is not None:
            assert abs(info["gmacs"] - info["published_gmacs"]) / info["published_gmacs"] < 0.01, (name, info["gmacs"])
            assert 81 < info["published_top1"] < 86


def test_dinov2_backbones_default_to_no_classifier_as_timm():
    """timm builds the DINOv2 backbones at 518 px without a classifier (their weights have none);
    so does create_model, and model_info's published figures stay for that default."""
    for name in ("vit_small_patch14_dinov2", "vit_base_patch14_reg4_dinov2"):
        with torch.device("meta"):
            ours, ref = visionzoo.create_model(name), timm.create_model(name)
        assert ours.num_classes == ref.num_classes == 0 and ref.pretrained_cfg["num_classes"] == 0
        assert ours.default_cfg["input_size"] == ref.pretrained_cfg["input_size"] == (3, 518, 518)
        assert [k for k in ours.state_dict()] == [k for k in ref.state_dict()]
        info = visionzoo.model_info(name)
        assert info["published_top1"] is not None and visionzoo.model_info(name, num_classes=10)["published_top1"] is None
    assert visionzoo.create_model("vit_small_patch14_dinov2", num_classes=3, device="meta").head.out_features == 3
    assert visionzoo.create_model("vit_small_patch16_224", device="meta").num_classes == 1000  # the others as before


@pytest.mark.parametrize("name", ["vit_small_patch14_reg4_dinov2", "vit_small_patch14_dinov2", "vit_giant_patch14_reg4_dinov2"])
def test_dinov2_official_checkpoint_loads_as_timm_converts_it(name):
    """The DINOv2 authors' layout (mask_token; with registers register_tokens, and a position
    table with a class row that timm folds into the class token; ViT-g's SwiGLU layers named
    w12 / w3): loaded into our model, the logits, tokens and maps equal timm's model loaded
    through timm's own converter."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    kw = dict(img_size=70, num_classes=0, depth=3)
    ref = build_random(lambda: timm.create_model(name, **kw))
    g = torch.Generator().manual_seed(3)
    official = {k: v.clone() for k, v in ref.state_dict().items()}
    D = official["cls_token"].shape[-1]
    official["mask_token"] = torch.randn(1, D, generator=g)
    if "reg_token" in official:  # the authors' layout: a class row in the position table, not in the token
        row = torch.randn(1, 1, D, generator=g)
        official["register_tokens"] = official.pop("reg_token")
        official["pos_embed"] = torch.cat([row, official["pos_embed"]], dim=1)
        official["cls_token"] = official["cls_token"] - row
    official = {k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.") if "giant" in name else k: v for k, v in official.items()}
    ref2 = timm.create_model(name, **kw).eval()
    ref2.load_state_dict(checkpoint_filter_fn(dict(official), ref2))
    ours = visionzoo.create_model(name, **kw).eval()
    info = visionzoo.load_checkpoint(ours, official)
    assert info["source"] == ["official"] and not info["missing"] and not info["unexpected"]
    x = torch.randn(2, 3, 70, 70)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref2(x)) < 1e-5
        assert max_rel_diff(ours.forward_features(x), ref2.forward_features(x)) < 1e-5
        for f, e in zip(ours.forward_intermediates(x, intermediates_only=True), ref2.forward_intermediates(x, intermediates_only=True), strict=True):
            assert max_rel_diff(f, e) < 1e-5


def test_register_tokens_on_any_vit_equal_timm():
    """timm's reg_tokens on a class-token-free, average-pooled ViT (its *_reg4_gap_* layout), at
    another size: logits, the prefix tokens forward_intermediates returns, and the pool reading the
    patch tokens only; a checkpoint with another number of registers is refused, naming it."""
    kw = dict(img_size=48, num_classes=6, class_token=False, global_pool="avg", reg_tokens=4, no_embed_class=True, depth=2)
    ref = build_random(lambda: timm.create_model("vit_small_patch16_224", **kw))
    ours = visionzoo.create_model("vit_small_patch16_224", checkpoint=ref.state_dict(), **kw).eval()
    assert ours.num_prefix_tokens == ref.num_prefix_tokens == 4
    x = torch.randn(2, 3, 64, 80)
    ref.set_input_size(img_size=(64, 80))
    ours.set_input_size((64, 80))
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-5
        (m, p), = ours.forward_intermediates(x, indices=[1], return_prefix_tokens=True, intermediates_only=True)
        (em, ep), = ref.forward_intermediates(x, indices=[1], return_prefix_tokens=True, intermediates_only=True)
        assert p.shape == ep.shape == (2, 4, 384) and max_rel_diff(p, ep) < 1e-5 and max_rel_diff(m, em) < 1e-5
    with pytest.raises(ValueError, match=r"the checkpoint has 4 register tokens \(reg_token\), this model 2: build it with reg_tokens=4"):
        visionzoo.create_model("vit_small_patch16_224", checkpoint=ref.state_dict(), **{**kw, "reg_tokens": 2})
    with pytest.raises(ValueError, match="reg_tokens"):
        visionzoo.create_model("vit_small_patch16_224", reg_tokens=-1)


@pytest.mark.parametrize("kw", [dict(fc_norm=False, class_token=False, global_pool="avg"), dict(fc_norm=True), dict(fc_norm=False, global_pool="max")])
def test_fc_norm_places_the_final_norm_as_timm(kw):
    """timm's fc_norm: the final LayerNorm on every token before the pool (False), or on the
    pooled vector (True, also with the class token): same keys, logits and pre-logits."""
    ref = build_random(lambda: timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=4, depth=2, **kw))
    ours = visionzoo.create_model("vit_tiny_patch16_224", img_size=64, num_classes=4, depth=2, checkpoint=ref.state_dict(), **kw).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-5
        assert max_rel_diff(ours.forward_head(ours.forward_features(x), pre_logits=True), ref.forward_head(ref.forward_features(x), pre_logits=True)) < 1e-5


def test_variants_with_their_own_class_count_default_to_it():
    """MIIL's ViT-B/16 (ImageNet-21k, 11221 classes) and the ImageNet-12k ViT-M/16 gap-240 build
    with timm's class counts; num_classes= overrides them."""
    for name, classes in (("vit_base_patch16_224_miil", 11221), ("vit_medium_patch16_gap_240", 11821), ("vit_small_patch8_224", 0)):
        with torch.device("meta"):
            assert visionzoo.create_model(name).num_classes == timm.create_model(name).num_classes == classes
            assert visionzoo.create_model(name, num_classes=10).num_classes == 10


@pytest.mark.parametrize("act", ["quick_gelu", "gelu_tanh"])
def test_clip_tower_options_on_any_vit_equal_timm(act):
    """timm's pre_norm (a LayerNorm before the blocks, a bias-free patch projection), LayerNorm eps
    1e-5 and act_layer on a ViT of another size: keys, logits and the blocks' maps; QuickGELU is
    CLIP's x * sigmoid(1.702 x)."""
    from visionzoo.layers.activations import QuickGELU

    kw = dict(img_size=48, num_classes=3, depth=2, embed_dim=96, num_heads=3)
    ref = build_random(lambda: timm.create_model("vit_tiny_patch16_224", pre_norm=True, norm_layer=torch.nn.LayerNorm, act_layer=act, **kw))
    ours = visionzoo.create_model("vit_tiny_patch16_224", pre_norm=True, norm_eps=1e-5, act_layer=act, checkpoint=ref.state_dict(), **kw).eval()
    assert list(ours.state_dict()) == list(ref.state_dict()) and "patch_embed.proj.bias" not in ours.state_dict()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-5
        for f, e in zip(ours.forward_intermediates(x, intermediates_only=True), ref.forward_intermediates(x, intermediates_only=True), strict=True):
            assert max_rel_diff(f, e) < 1e-5
    t = torch.linspace(-4, 4, 9)
    torch.testing.assert_close(QuickGELU()(t), t / (1 + torch.exp(-1.702 * t)))
    with pytest.raises(ValueError, match="act_layer must be one of 'gelu', 'gelu_tanh', 'quick_gelu', 'silu', got 'relu'"):
        visionzoo.create_model("vit_tiny_patch16_224", act_layer="relu")


def test_openai_clip_checkpoint_loads_as_timm_converts_it():
    """OpenAI CLIP's / OpenCLIP's layout (visual.conv1, visual.transformer.resblocks.N, in_proj,
    c_fc, ln_post, visual.proj (D, E); text-tower keys beside them), written here from timm's
    weights: it loads as the 'official' layout, leaves the text tower out, and gives the logits
    of timm's model loaded through timm's own converter, the projection as the classifier."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    kw = dict(img_size=64, depth=2, num_classes=32)
    ref = build_random(lambda: timm.create_model("vit_base_patch32_clip_quickgelu_224", **kw))
    with torch.no_grad():
        ref.head.bias.zero_()  # CLIP's projection has no bias
    official = openai_clip_layout(ref.state_dict())
    ref2 = timm.create_model("vit_base_patch32_clip_quickgelu_224", **kw).eval()
    ref2.load_state_dict(checkpoint_filter_fn(dict(official), ref2))
    ours = visionzoo.create_model("vit_base_patch32_clip_quickgelu_224", **kw).eval()
    info = visionzoo.load_checkpoint(ours, official)
    assert info["source"] == ["official"] and not info["missing"] and not info["unexpected"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref2(x)) < 1e-5 and max_rel_diff(ours(x), ref.eval()(x)) < 1e-5


SIGLIP_NAMES = visionzoo.list_models("*siglip*")


def test_siglip_towers_are_timms_with_its_keys_and_preprocessing():
    """Every SigLIP tower timm has whose patch divides its input size: the same keys (the
    attention pool's ``attn_pool.*``), parameter count and preprocessing (no classifier, [-1, 1]
    inputs)."""
    expect = {n for n in timm.list_models("*siglip*") if "siglip2" not in n and "naflex" not in n} - {"vit_so400m_patch14_siglip_384", "vit_so400m_patch14_siglip_gap_384"}
    assert set(SIGLIP_NAMES) == expect and len(expect) == 32
    for name in SIGLIP_NAMES:
        with torch.device("meta"):
            ours, ref = visionzoo.create_model(name), timm.create_model(name)
        assert list(ours.state_dict()) == list(ref.state_dict()), name
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()), name
        for key in ("input_size", "crop_pct", "mean", "std", "interpolation", "num_classes"):
            assert ours.default_cfg[key] == ref.pretrained_cfg[key], (name, key)


def test_attention_pool_on_any_vit_equals_timm():
    """global_pool='map' (SigLIP's attention pool with a learned query, after the final norm) on
    a ViT with a class token: logits and float64 training gradients equal timm's with its
    weights; features_only drops the pool; another pool drops it as timm's; 'map' is refused
    on a model built without one."""
    ref = build_random(lambda: timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=5, global_pool="map", drop_rate=0.0))
    ours = visionzoo.create_model("vit_tiny_patch16_224", img_size=64, num_classes=5, global_pool="map", checkpoint=ref.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
    diffs = gradient_rel_diffs(ours.double(), ref.double(), x.double())
    assert "attn_pool.latent" in diffs and max(diffs.values()) < 1e-9, max(diffs.items(), key=lambda kv: kv[1])
    feats = visionzoo.create_model("vit_tiny_patch16_224", img_size=64, global_pool="map", features_only=True)
    assert not any(k.startswith("attn_pool") for k in feats.state_dict())
    with pytest.raises(ValueError, match="global_pool='map' needs the attention pool"):
        visionzoo.create_model("vit_tiny_patch16_224").set_global_pool("map")
    ours.float().reset_classifier(5, "avg")
    ref.float().reset_classifier(5, "avg")
    assert ours.attn_pool is None and ref.attn_pool is None


def test_swiglu_mlp_on_any_vit_equals_timm():
    """mlp_layer='swiglu_packed' (DINOv2 ViT-g's MLP: fc1 gives both halves, SiLU of the first
    times the second goes into fc2; timm's SwiGLUPacked) on a small ViT: keys and logits equal
    timm's with its weights, and float64 training gradients too; an odd hidden width and an
    unknown mlp_layer are refused."""
    from timm.layers import SwiGLUPacked

    kw = dict(img_size=48, num_classes=3, mlp_ratio=3.0)
    ref = build_random(lambda: timm.create_model("vit_tiny_patch16_224", mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU, **kw))
    ours = visionzoo.create_model("vit_tiny_patch16_224", mlp_layer="swiglu_packed", act_layer="silu", checkpoint=ref.state_dict(), **kw).eval()
    assert list(ours.state_dict()) == list(ref.state_dict()) and ours.blocks[0].mlp.fc2.in_features == 288
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-5
    diffs = gradient_rel_diffs(ours.double(), ref.double(), x.double())
    assert max(diffs.values()) < 1e-9, max(diffs.items(), key=lambda kv: kv[1])
    with pytest.raises(ValueError, match="hidden_features must be even, got 577"):
        visionzoo.layers.GluMlp(192, 577)
    with pytest.raises(ValueError, match="mlp_layer must be one of 'mlp', 'swiglu_packed', got 'swiglu'"):
        visionzoo.create_model("vit_tiny_patch16_224", mlp_layer="swiglu")


@pytest.mark.parametrize("num_parallel, init_values", [(2, 1e-5), (3, 0.0)])  # timm drops None options: 0 is its "no layer scale"
def test_parallel_blocks_equal_timms(num_parallel, init_values):
    """num_parallel: timm's ParallelThingsBlock (Touvron et al., ECCV 2022), its keys in its order,
    logits and float64 training gradients of every parameter and of the input; with and without
    layer scale, and a branch count timm's named models do not use."""
    from functools import partial

    from timm.models.vision_transformer import ParallelThingsBlock

    kw = dict(img_size=48, patch_size=16, embed_dim=96, depth=3, num_heads=3, init_values=init_values, num_classes=5)
    ref = build_random(lambda: timm.create_model("vit_small_patch16_18x2_224", **kw, block_fn=partial(ParallelThingsBlock, num_parallel=num_parallel)))
    ours = visionzoo.create_model("vit_small_patch16_18x2_224", **kw, num_parallel=num_parallel).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert len(ours.blocks[0].attns) == len(ours.blocks[0].ffns) == num_parallel
    visionzoo.load_checkpoint(ours, ref.state_dict(), source="timm")
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-5
    diffs = gradient_rel_diffs(ours.double(), ref.double(), x.double())
    assert max(diffs.values()) < 1e-10, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]


def test_parallel_blocks_are_refused_where_they_cannot_be_built():
    with pytest.raises(ValueError, match="num_parallel must be a positive int"):
        visionzoo.create_model("vit_small_patch16_18x2_224", num_parallel=0)
    with pytest.raises(ValueError, match="plain attention"):
        visionzoo.create_model("vit_small_patch16_18x2_224", pos_embed="relative")
    with pytest.raises(ValueError, match="parallel blocks"):
        visionzoo.create_model("eva02_tiny_patch14_224", num_parallel=2)
