"""EVA / EVA-02 against timm (same weights), the authors' checkpoint layout, and RoPE's algebra."""

import re

import pytest
import timm
import torch
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingDinoV3, apply_rot_embed_cat

import visionzoo
from visionzoo.layers import apply_rope, rope_2d
from visionzoo.registry import get_entry
from visionzoo.testing import build_random, max_rel_diff

from family_models import distinct_configs

EVA_NAMES = visionzoo.list_models(family="eva")
# timm's EVA-L is its plain ViT (registered in the vit family here)
TIMM_EVA_NAMES = EVA_NAMES + ["eva_large_patch14_196", "eva_large_patch14_336"]


def test_every_timm_eva_rope_vit_dinov3_and_pe_is_registered():
    """timm's EVA / EVA-02, its RoPE ViTs (axial, mixed, SBB), DINOv3's ViTs and the Perception
    Encoder; its other models built on the EVA class (lingbot, Sapiens2, ...) are not."""
    assert sorted(visionzoo.list_models("eva*")) == sorted(timm.list_models("eva*"))
    assert sorted(visionzoo.list_models("vit_*rope*")) == sorted(timm.list_models("vit_*rope*"))
    assert sorted(visionzoo.list_models("vit_*dinov3*")) == sorted(timm.list_models("vit_*dinov3*"))
    assert sorted(visionzoo.list_models("vit_pe_*")) == sorted(timm.list_models("vit_pe_*"))
    assert len(EVA_NAMES) == 56 and all(timm.is_model(n) for n in EVA_NAMES)


@pytest.mark.parametrize("name", TIMM_EVA_NAMES)
def test_params_keys_and_preprocessing_equal_timm(name):
    with torch.device("meta"):
        ours, ref = visionzoo.create_model(name, num_classes=1000), timm.create_model(name, num_classes=1000)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    assert list(ours.state_dict()) == list(ref.state_dict())  # names and order
    mine, theirs = get_entry(name).default_cfg, ref.pretrained_cfg
    for key in ("input_size", "crop_pct", "interpolation", "mean", "std", "num_classes"):
        a, b = mine[key], theirs[key]
        assert (tuple(a) == tuple(b)) if isinstance(a, tuple) else a == b, key
    assert mine.get("crop_mode", "center") == theirs.get("crop_mode", "center")


@pytest.mark.parametrize("name", distinct_configs(EVA_NAMES))
def test_logits_equal_timm(name):
    """On a 3 x 5 patch grid (the rotary table of another grid, scaled to the reference one), at 2
    blocks (each block is the same code; the parameter test counts the full depth), once a
    configuration (the _224 / _448 pairs differ in default size and weights only)."""
    cfg = get_entry(name).config
    p = cfg.patch_size
    kw = dict(num_classes=10, depth=2) | (dict(embed_dim=512, num_heads=4) if cfg.embed_dim >= 4096 else {})  # DINOv3-7B: 168M a block
    ref = build_random(lambda: timm.create_model(name, img_size=(3 * p, 5 * p), **kw))
    ours = visionzoo.create_model(name, img_size=(3 * p, 5 * p), checkpoint=ref.state_dict(), **kw).eval()
    x = torch.randn(2, 3, 3 * p, 5 * p)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
        assert max_rel_diff(ours.forward_features(x), ref.forward_features(x)) < 1e-4


@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "eva02_base_patch14_448", "eva_giant_patch14_clip_224", "vit_small_patch16_rope_mixed_ape_224",
                                  "vit_small_patch16_rope_224", "vit_medium_patch16_rope_reg1_gap_256", "vit_small_plus_patch16_dinov3_qkvb",
                                  "vit_pe_core_tiny_patch16_384", "vit_pe_spatial_tiny_patch16_512"])
def test_other_input_sizes_equal_timm_dynamic_size(name):
    """Built for its default size, run at another: the position table resampled and the rotary
    table recomputed on the fly, as timm's ``dynamic_img_size=True``."""
    ref = build_random(lambda: timm.create_model(name, num_classes=10, depth=2, dynamic_img_size=True))
    ours = visionzoo.create_model(name, num_classes=10, depth=2, checkpoint=ref.state_dict()).eval()
    p = get_entry(name).config.patch_size
    x = torch.randn(1, 3, 7 * p, 11 * p)  # 7 x 11 patches
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_features_equal_timm_intermediates():
    name = "eva02_small_patch14_224"
    ref = build_random(lambda: timm.create_model(name, img_size=112, depth=3))
    feats = visionzoo.create_model(name, img_size=112, depth=3, features_only=True, checkpoint=ref.state_dict()).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        maps, expect = feats(x), ref.forward_intermediates(x, intermediates_only=True)
    assert [m.shape for m in maps] == [e.shape for e in expect] == [(2, 384, 8, 8)] * 3
    assert all(max_rel_diff(m, e) < 1e-4 for m, e in zip(maps, expect))
    assert feats.feature_info.reduction() == [14, 14, 14]


@pytest.mark.parametrize("name, options", [
    ("eva02_small_patch14_224", {}),  # packed SwiGLU, fused qkv with q / v biases
    ("eva02_base_patch16_clip_224", {}),  # q / k / v projections, both sub-LNs, class token
    ("eva02_enormous_patch14_clip_224", dict(embed_dim=64, num_heads=4)),  # post-norm blocks
    ("eva02_tiny_patch14_224", dict(init_values=0.1, drop_path_rate=0.0)),  # layer scale
    ("vit_small_patch16_rope_mixed_ape_224", {}),  # learned RoPE frequencies, a key bias, DeiT III's position table
    ("vit_betwixt_patch16_rope_reg4_gap_256", {}),  # register tokens outside the rotation, no position table
    ("vit_small_plus_patch16_dinov3_qkvb", {}),  # centred RoPE in the half layout, two-layer SwiGLU, layer scale
    ("vit_pe_core_tiny_patch16_384", {}),  # RoPE on the index plus 1, norm before the blocks, an 8-head attention pool
    ("vit_pe_lang_gigantic_patch14_448", dict(embed_dim=128, num_heads=4)),  # no class token, no final norm, layer scale 0.1
])
def test_training_gradients_equal_timm(name, options):
    """Train mode, float64: every parameter's gradient of the same loss equals timm's."""
    p = get_entry(name).config.patch_size
    kw = dict(num_classes=10, depth=2, img_size=4 * p, **options)
    ref = build_random(lambda: timm.create_model(name, **kw)).double().train()
    ours = visionzoo.create_model(name, checkpoint=ref.state_dict(), **kw).double().train()
    x = torch.randn(2, 3, 4 * p, 4 * p, dtype=torch.float64)
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    theirs = dict(ref.named_parameters())
    for key, param in ours.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, key
        # RoPE-Mixed's angles are float32 in both (timm's get_mixed_freqs), so its frequencies' gradient too;
        # DINOv3's table is float32 here, where timm's turns float32 coordinates into float64 angles once the model is float64
        tolerance = 1e-5 if key == "rope.freqs" else 1e-7 if get_entry(name).config.rope == "centered" else 1e-10
        assert max_rel_diff(param.grad, theirs[key].grad) < tolerance, key


def _official_layout(sd: dict, separate: bool, clip: bool) -> dict:
    """timm's keys -> the authors' (baaivision/EVA): the inverse of the renames timm applies, plus
    what their checkpoints carry beside the weights (the rotary tables, a MIM head)."""
    out = {}
    for k, v in sd.items():
        for ours, theirs in (("mlp.norm.", "mlp.ffn_ln."), ("attn.norm.", "attn.inner_attn_ln."), ("mlp.fc1_g.", "mlp.w1."), ("mlp.fc1_x.", "mlp.w2."), ("mlp.fc2.", "mlp.w3."), ("mlp.fc1.", "mlp.w12.")):
            k = k.replace(ours, theirs)
        if separate:
            k = k.replace("attn.q_proj.bias", "attn.q_bias").replace("attn.v_proj.bias", "attn.v_bias")
        out[("visual." if clip else "") + k] = v
    if clip:
        out["text.token_embedding.weight"] = torch.zeros(10, 4)
        out["logit_scale"] = torch.tensor(1.0)
    out[("visual." if clip else "") + "rope.freqs_cos"] = torch.zeros(4, 8)
    return out


@pytest.mark.parametrize("name", ["eva02_base_patch14_224", "eva02_tiny_patch14_336", "eva02_base_patch16_clip_224"])
def test_official_checkpoint_loads_as_timm_converts_it(name):
    p = get_entry(name).config.patch_size
    kw = dict(num_classes=10, depth=2, img_size=4 * p)
    ref = build_random(lambda: timm.create_model(name, **kw))
    cfg = get_entry(name).config
    sd = _official_layout(ref.state_dict(), separate=not cfg.qkv_fused, clip="clip" in name)
    ours = visionzoo.create_model(name, checkpoint=sd, **kw).eval()
    x = torch.randn(2, 3, 4 * p, 4 * p)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def _dinov3_layout(sd: dict) -> dict:
    """timm's keys -> the DINOv3 authors' (facebookresearch/dinov3), with what their checkpoints
    carry beside the weights: one qkv bias with its key third masked, the mask token, the rotary
    periods (bf16)."""
    out = {}
    for k, v in sd.items():
        for ours, theirs in (("reg_token", "storage_tokens"), ("gamma_1", "ls1.gamma"), ("gamma_2", "ls2.gamma"), ("mlp.fc1_g.", "mlp.w1."), ("mlp.fc1_x.", "mlp.w2."), ("mlp.fc2.", "mlp.w3.")):
            k = k.replace(ours, theirs)
        if k.endswith("attn.q_bias"):
            base = k[: -len("q_bias")]
            out[base + "qkv.bias"] = torch.cat([v, torch.randn_like(v), sd[k.replace("q_bias", "v_bias")]])
            out[base + "qkv.bias_mask"] = torch.cat([torch.ones_like(v), torch.zeros_like(v), torch.ones_like(v)])
            continue
        if k.endswith("attn.v_bias"):
            continue
        out[k] = v
    for k, w in list(out.items()):  # the variants without biases were trained with zero ones
        if k.endswith("attn.qkv.weight") and k.replace("weight", "bias") not in out:
            out[k.replace("weight", "bias")] = w.new_zeros(w.shape[0])
    D = sd["cls_token"].shape[-1]
    return out | {"mask_token": torch.zeros(1, D), "rope_embed.periods": torch.ones(16, dtype=torch.bfloat16)}


@pytest.mark.parametrize("name", ["vit_small_patch16_dinov3_qkvb", "vit_small_plus_patch16_dinov3"])
def test_dinov3_checkpoint_loads_as_timm_converts_it(name):
    """The authors' layout (storage tokens, ls1 / ls2, one masked qkv bias, w1 / w2 / w3) loads
    through the official converter and gives timm's logits; a checkpoint of zero query / value
    biases loads into the variant without them, non-zero ones are refused."""
    kw = dict(num_classes=10, depth=2, img_size=64)
    ref = build_random(lambda: timm.create_model(name, **kw))
    sd = _dinov3_layout(ref.state_dict())
    ours = visionzoo.create_model(name, checkpoint=sd, **kw).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
    if name.endswith("_qkvb"):
        plain = visionzoo.create_model(name.removesuffix("_qkvb"), **kw)
        with pytest.raises(ValueError, match="has query / value biases, which the model has not"):
            visionzoo.load_checkpoint(plain, sd, source="official")
        zero = {k: (torch.zeros_like(v) if k.endswith("qkv.bias") else v) for k, v in sd.items()}
        visionzoo.load_checkpoint(plain, zero, source="official")


def _pe_layout(sd: dict, prefix: str) -> dict:
    """timm's keys -> the Perception Encoder authors' (facebookresearch/perception_models): OpenAI
    CLIP's tower with ls_1 / ls_2 and an attention pool with one in_proj; the core checkpoints hold
    a text tower beside it, under their own prefix."""
    out = {}
    for k, v in sd.items():
        if k.startswith("attn_pool.q.") or k.startswith("attn_pool.kv."):
            kind = k.rsplit(".", 1)[1]
            out[f"attn_pool.attn.in_proj_{kind}"] = torch.cat([sd[f"attn_pool.q.{kind}"], sd[f"attn_pool.kv.{kind}"]])
            continue
        if k == "head.weight":
            out["proj"] = v.t()
            continue
        if k == "head.bias":
            continue  # the projection has none (zero in timm's conversion)
        for pattern, repl in ((r"^patch_embed\.proj\.", "conv1."), (r"^norm_pre\.", "ln_pre."), (r"^norm\.", "ln_post."), (r"^blocks\.(\d+)\.", r"transformer.resblocks.\1."),
                              (r"\.norm1\.", ".ln_1."), (r"\.norm2\.", ".ln_2."), (r"\.attn\.qkv\.", ".attn.in_proj_"), (r"\.attn\.proj\.", ".attn.out_proj."),
                              (r"\.mlp\.fc1\.", ".mlp.c_fc."), (r"\.mlp\.fc2\.", ".mlp.c_proj."), (r"\.gamma_(\d)$", r".ls_\1.gamma"),
                              (r"^attn_pool\.latent$", "attn_pool.probe"), (r"^attn_pool\.norm\.", "attn_pool.layernorm."), (r"^attn_pool\.proj\.", "attn_pool.attn.out_proj."),
                              (r"^attn_pool\.mlp\.fc1\.", "attn_pool.mlp.c_fc."), (r"^attn_pool\.mlp\.fc2\.", "attn_pool.mlp.c_proj.")):
            k = re.sub(pattern, repl, k)
        k = k.replace(".attn.in_proj_.", ".attn.in_proj_")
        if k == "cls_token":
            k, v = "class_embedding", v.flatten()
        elif k == "pos_embed":
            k, v = "positional_embedding", v[0]
        out[k] = v
    out = {prefix + k: v for k, v in out.items()}
    if prefix:
        out["text.token_embedding.weight"] = torch.zeros(10, 4)
    return out


@pytest.mark.parametrize("name, prefix", [("vit_pe_core_tiny_patch16_384", "visual."), ("vit_pe_spatial_gigantic_patch14_448", "")])
def test_perception_encoder_checkpoint_loads_as_timm_converts_it(name, prefix):
    """The authors' layout (CLIP's keys, ls_1 / ls_2, the attention pool's probe and one in_proj,
    ``proj`` as the classifier; under ``visual.`` with a text tower, or bare) gives timm's logits."""
    p = get_entry(name).config.patch_size
    kw = dict(depth=2, img_size=4 * p) | (dict(embed_dim=128, num_heads=4) if "gigantic" in name else {})
    ref = build_random(lambda: timm.create_model(name, **kw))
    if isinstance(ref.head, torch.nn.Linear):
        torch.nn.init.zeros_(ref.head.bias)
    ours = visionzoo.create_model(name, checkpoint=_pe_layout(ref.state_dict(), prefix), **kw).eval()
    x = torch.randn(2, 3, 4 * p, 4 * p)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


@pytest.mark.parametrize("grid", [(16, 16), (3, 5), (7, 11)])
def test_dinov3_rope_table_equals_timm(grid):
    """DINOv3's rotary form: centred coordinates in [-1, 1] per axis, 2 pi / period, pairs (i, i + hd / 2)."""
    theirs = RotaryEmbeddingDinoV3(64, temperature=100.0).get_embed(shape=list(grid))
    ours = rope_2d(grid, 64, temperature=100.0, centered=True, half=True)
    assert ours.shape == (grid[0] * grid[1], 128) and max_rel_diff(ours, theirs) < 1e-6
    x = torch.randn(2, 3, grid[0] * grid[1], 64)
    assert max_rel_diff(apply_rope(x, ours, half=True), apply_rot_embed_cat(x, theirs, half=True)) < 1e-6
    with pytest.raises(ValueError, match="ref_grid must be None with centered=True"):
        rope_2d(grid, 64, centered=True, ref_grid=(16, 16))


@pytest.mark.parametrize("mlp_ratio", [3.3, 5.0])
def test_dinov3_swiglu_width_is_rounded_up_as_timms(mlp_ratio):
    """``mlp_align``: the SwiGLU's hidden width rounded up to a multiple of 8 (timm's swiglu_align_to)."""
    name = "vit_small_plus_patch16_dinov3"
    with torch.device("meta"):
        ours, ref = visionzoo.create_model(name, mlp_ratio=mlp_ratio), timm.create_model(name, mlp_ratio=mlp_ratio)
    width = ours.blocks[0].mlp.fc1_g.out_features
    assert width == ref.blocks[0].mlp.fc1_g.out_features and width % 8 == 0 and width >= 384 * mlp_ratio
    with pytest.raises(ValueError, match="mlp_align rounds up the hidden width of the two-layer SwiGLU"):
        visionzoo.create_model("vit_small_patch16_dinov3", mlp_align=8)


def test_mim_checkpoint_final_norm_becomes_fc_norm():
    """The MIM checkpoints' final norm feeds the mean-pooled head's fc_norm; their mask token
    and prediction head are dropped."""
    ours = visionzoo.create_model("eva02_tiny_patch14_224", depth=2, num_classes=0)
    sd = {k.replace("fc_norm.", "norm."): v.clone() for k, v in ours.state_dict().items()}
    sd["norm.weight"].fill_(3.0)
    sd |= {"mask_token": torch.zeros(1, 1, 192), "lm_head.weight": torch.zeros(1024, 192), "lm_head.bias": torch.zeros(1024)}
    visionzoo.load_checkpoint(ours, sd, source="official")
    assert torch.equal(ours.fc_norm.weight, torch.full((192,), 3.0))


@pytest.mark.parametrize("grid, ref_grid", [((16, 16), (16, 16)), ((32, 32), (16, 16)), ((3, 5), None), ((7, 11), (16, 16))])
def test_rope_table_equals_timm(grid, ref_grid):
    theirs = RotaryEmbeddingCat(64, in_pixels=False, ref_feat_shape=ref_grid).get_embed(shape=list(grid))
    ours = rope_2d(grid, 64, ref_grid=ref_grid)
    assert ours.shape == (grid[0] * grid[1], 128) and max_rel_diff(ours, theirs) < 1e-6
    x = torch.randn(2, 3, grid[0] * grid[1], 64)
    assert max_rel_diff(apply_rope(x, ours), apply_rot_embed_cat(x, theirs)) < 1e-6


def test_rope_logits_depend_only_on_the_offset():
    """RoPE's point: q_i . k_j after rotation is a function of the 2-D offset between patches i and j
    (and the vectors), not of where the pair sits; and the rotation keeps every norm."""
    grid, hd = (6, 6), 32
    rope = rope_2d(grid, hd)
    q, k = torch.randn(hd, dtype=torch.float64), torch.randn(hd, dtype=torch.float64)
    Q = apply_rope(q.expand(36, hd), rope.double())  # the same query at every patch
    K = apply_rope(k.expand(36, hd), rope.double())
    assert torch.allclose(Q.norm(dim=-1), q.norm().expand(36))
    logit = Q @ K.T  # 36 x 36
    idx = lambda r, c: r * grid[1] + c  # noqa: E731
    for dr, dc in ((0, 1), (1, 0), (2, -3)):
        pairs = [(idx(r, c), idx(r + dr, c + dc)) for r in range(6) for c in range(6) if 0 <= r + dr < 6 and 0 <= c + dc < 6]
        values = torch.stack([logit[i, j] for i, j in pairs])
        assert torch.allclose(values, values[0].expand_as(values), atol=1e-9), (dr, dc)
    assert not torch.allclose(logit[idx(0, 0), idx(0, 1)], logit[idx(0, 0), idx(1, 0)])  # rows and columns turn apart


def test_published_params_and_gmacs_of_the_eva02_release():
    for name, params, gmacs in (("eva02_tiny_patch14_336", 5.76, 4.68), ("eva02_base_patch14_448", 87.13, 107.11)):
        info = visionzoo.model_info(name)
        assert abs(info["params"] / 1e6 - params) < 0.02, name
        assert abs(info["gmacs"] - gmacs) / gmacs < 0.01, name


def test_published_params_of_the_dinov3_release():
    """The DINOv3 authors' table gives millions of parameters, approximately (ViT-S's 21.6M reads 21M,
    ViT-L's 303.1M 300M, as timm's models count them too)."""
    for size, params in (("small", 21), ("small_plus", 29), ("base", 86), ("large", 300), ("huge_plus", 840), ("7b", 6716)):
        name = f"vit_{size}_patch16_dinov3"
        assert get_entry(name).published["params"] == params
        with torch.device("meta"):
            ours = sum(p.numel() for p in visionzoo.create_model(name).parameters()) / 1e6
        assert abs(ours - params) / params < 0.03, (name, ours)


def test_invalid_eva_options_are_refused():
    with pytest.raises(ValueError, match="scale_mlp=True norms the hidden layer of the two-layer SwiGLU"):
        visionzoo.create_model("eva02_tiny_patch14_224", scale_mlp=True)
    with pytest.raises(ValueError, match="head width 192 / 32 must divide by 4"):
        visionzoo.create_model("eva02_tiny_patch14_224", num_heads=32)
    with pytest.raises(ValueError, match="EVA takes pos_embed 'learned_1d' or 'none'"):
        visionzoo.create_model("eva02_tiny_patch14_224", pos_embed="relative")
    with pytest.raises(ValueError, match="mlp_layer must be one of 'mlp', 'swiglu_packed', 'swiglu'"):
        visionzoo.create_model("eva02_tiny_patch14_224", mlp_layer="geglu")
    with pytest.raises(ValueError, match="pool_heads / pool_mlp_ratio size the attention pool: they take global_pool='map', got 'avg'"):
        visionzoo.create_model("vit_pe_spatial_tiny_patch16_512", pool_heads=4)
    with pytest.raises(ValueError, match="rope_offset shifts the coordinates of a fixed rotary table"):
        visionzoo.create_model("vit_small_patch16_rope_mixed_224", rope_offset=1.0)
    with pytest.raises(ValueError, match="rope_half=True lays out the pairs of a rotary embedding"):
        visionzoo.create_model("eva_giant_patch14_224", rope_half=True)


def test_inference_joint_projection_follows_weight_changes_and_hooks():
    """CPU inference runs EVA-02-B's q / k / v projections as one product of their weights side
    by side (cached): a weight changed in place is seen on the next call, and a hooked
    projection is called as a layer."""
    name = "eva02_base_patch14_224"
    ref = build_random(lambda: timm.create_model(name, img_size=56, depth=2, num_classes=10))
    ours = visionzoo.create_model(name, img_size=56, depth=2, num_classes=10, checkpoint=ref.state_dict()).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.inference_mode():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
    with torch.no_grad():
        for m in (ours, ref):
            m.blocks[1].attn.k_proj.weight.mul_(2.0)
            m.blocks[1].attn.v_proj.bias.add_(0.5)
    with torch.inference_mode():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
    seen = []
    ours.blocks[0].attn.q_proj.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    with torch.inference_mode():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
    assert seen == [(2, 17, 768)]


def _inference_pair(name: str) -> tuple:
    """timm's model at 64 px and 2 blocks with random weights, ours with the same, an input and
    our logits (checked against timm's) in CPU inference."""
    ref = build_random(lambda: timm.create_model(name, img_size=64, depth=2, num_classes=10))
    ours = visionzoo.create_model(name, img_size=64, depth=2, num_classes=10, checkpoint=ref.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        before = ours(x)
        assert max_rel_diff(before, ref(x)) < 1e-4
    return ours, ref, x, before


@pytest.mark.parametrize("name", ["vit_small_patch16_dinov3", "vit_small_plus_patch16_dinov3_qkvb"])
def test_inference_folded_layer_scales_follow_weight_changes_and_hooks(name):
    """CPU inference multiplies the layer scales into the attention's projection and fc2, and
    re-orders the qkv rows into rotary pairs (cached): a scale or weight changed in place is seen
    on the next call, and a hooked qkv or fc2 is called as a layer."""
    ours, ref, x, before = _inference_pair(name)
    with torch.no_grad():
        for m in (ours, ref):
            m.blocks[1].gamma_1.mul_(3.0)
            m.blocks[0].gamma_2.add_(0.5)
            m.blocks[0].attn.proj.weight.mul_(-1.0)
    with torch.inference_mode():
        after = ours(x)
        assert max_rel_diff(after, ref(x)) < 1e-4 < max_rel_diff(after, before)
    seen = []
    ours.blocks[1].mlp.fc2.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    ours.blocks[0].attn.qkv.register_forward_hook(lambda mod, args, out: seen.append(out.shape))  # its rows in the checkpoint's order
    with torch.inference_mode():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
    assert seen == [(2, 21, 3 * 384), (2, 21, 384)]


def test_rope_mixed_tables_follow_their_learned_frequencies():
    """RoPE-Mixed's tables are cached in CPU inference; loading other frequencies (or a training
    step) changes what the next call uses, as timm's tables computed on every call."""
    name = "vit_small_patch16_rope_mixed_224"
    ours, ref, x, before = _inference_pair(name)
    with torch.no_grad():
        for m in (ours, ref):
            m.rope.freqs.mul_(1.5)
    with torch.inference_mode():
        after = ours(x)
        assert max_rel_diff(after, ref(x)) < 1e-6 < 1e-5 < max_rel_diff(after, before)
    assert "rope.freqs" in ours.no_weight_decay()
