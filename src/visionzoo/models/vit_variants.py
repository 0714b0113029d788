"""The Vision Transformer family's registered variants: ViT, DeiT, DeiT III, DINOv2, timm's other
plain ViTs, CLIP's and SigLIP's image towers, EVA-L and the R50+ViT hybrid.

The model is :class:`.vit.VisionTransformer`; this module holds only the tables (configuration,
default cfg, published figures) and registers them as the ``vit`` family.
"""

from __future__ import annotations

from ..registry import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, default_cfg, register_alias, register_family
from .vit import ViTConfig, VisionTransformer

_SIZES = {  # name: (embed_dim, depth, num_heads), ViT paper Table 1 and DeiT Table 1 (Ti, S)
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}

VARIANTS: dict[str, ViTConfig] = {}
_DEFAULT_CFGS: dict[str, dict] = {}
for _size, (_d, _l, _h) in _SIZES.items():
    for _p in (16, 32):
        for _res in (224, 384):
            _n = f"vit_{_size}_patch{_p}_{_res}"
            VARIANTS[_n] = ViTConfig(patch_size=_p, embed_dim=_d, depth=_l, num_heads=_h)
            _DEFAULT_CFGS[_n] = default_cfg(_res, mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=0.9 if _res == 224 else 1.0, first_conv="patch_embed.proj")
VARIANTS["vit_huge_patch14_224"] = ViTConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16)
_DEFAULT_CFGS["vit_huge_patch14_224"] = default_cfg(224, mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=0.9, first_conv="patch_embed.proj")
for _n in ("vit_huge_patch14_224", "vit_large_patch32_224"):  # timm's weights: the ImageNet-21k backbones, without classifier
    _DEFAULT_CFGS[_n]["num_classes"] = 0

for _size in ("tiny", "small", "base"):
    _d, _l, _h = _SIZES[_size]
    for _dist in (False, True):
        _n = f"deit_{_size}_{'distilled_' if _dist else ''}patch16_224"
        VARIANTS[_n] = ViTConfig(embed_dim=_d, depth=_l, num_heads=_h, distilled=_dist)
        _DEFAULT_CFGS[_n] = default_cfg(224, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875, first_conv="patch_embed.proj", classifier=("head", "head_dist") if _dist else "head")
for _dist in (False, True):
    _n = f"deit_base_{'distilled_' if _dist else ''}patch16_384"
    VARIANTS[_n] = ViTConfig(distilled=_dist)
    _DEFAULT_CFGS[_n] = default_cfg(384, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=1.0, first_conv="patch_embed.proj", classifier=("head", "head_dist") if _dist else "head")

# DeiT III (Touvron et al., ECCV 2022): LayerScale and a position embedding for the patch tokens only,
# as timm builds them (ViT-M: 512 wide, 8 heads)
for _size, (_d, _l, _h), _p, _sides in (
    ("small", _SIZES["small"], 16, (224, 384)), ("medium", (512, 12, 8), 16, (224,)), ("base", _SIZES["base"], 16, (224, 384)),
    ("large", _SIZES["large"], 16, (224, 384)), ("huge", _SIZES["huge"], 14, (224,)),
):
    for _res in _sides:
        _n = f"deit3_{_size}_patch{_p}_{_res}"
        VARIANTS[_n] = ViTConfig(patch_size=_p, embed_dim=_d, depth=_l, num_heads=_h, init_values=1e-6, no_embed_class=True)
        _DEFAULT_CFGS[_n] = default_cfg(_res, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.9 if _res == 224 else 1.0, first_conv="patch_embed.proj")

# DINOv2 (Oquab et al., TMLR 2024): self-supervised backbones released without a classifier (their
# default is num_classes=0, as timm's), LayerScale 1e-5, patch 14 at 518 px; with registers (Darcet
# et al., ICLR 2024): four register tokens, the class row of the position table in the class token
# (:func:`.vit_convert._from_dinov2`). ViT-g (1536 wide, 40 blocks of 24 heads): a SwiGLU MLP packed
# into one fc1 of 2 x 4096 outputs (the authors' hidden width (int(4 * 1536 * 2 / 3) + 7) // 8 * 8).
for _size in ("small", "base", "large", "giant"):
    _d, _l, _h = _SIZES[_size] if _size != "giant" else (1536, 40, 24)
    _mlp = dict(mlp_ratio=8192 / 1536, mlp_layer="swiglu_packed", act_layer="silu") if _size == "giant" else {}
    for _reg in (0, 4):
        _n = f"vit_{_size}_patch14_{'reg4_' if _reg else ''}dinov2"
        VARIANTS[_n] = ViTConfig(patch_size=14, embed_dim=_d, depth=_l, num_heads=_h, init_values=1e-5, reg_tokens=_reg, no_embed_class=bool(_reg), **_mlp)
        _DEFAULT_CFGS[_n] = default_cfg(518, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=1.0, first_conv="patch_embed.proj", num_classes=0)

# timm's other plain ViTs: patch 8 (AugReg; DINO's ViT-S/8, released without a classifier),
# MIIL's ImageNet-21k ViT-B (no qkv bias; 11221 classes), LayerScale "plus" widths, average-pooled
# ones (the final norm before the pool: fc_norm=False; I-JEPA's ViT-H without a classifier) and
# Ross Wightman's register-token ViTs ("sbb" weights). name: (config, side, crop_pct, mean/std, num_classes)
_IMAGENET, _INCEPTION = (IMAGENET_MEAN, IMAGENET_STD), (INCEPTION_MEAN, INCEPTION_STD)
_GAP = dict(class_token=False, global_pool="avg")
_REG = dict(class_token=False, no_embed_class=True, global_pool="avg", init_values=1e-5)
_TIMM_VITS = {
    "vit_small_patch8_224": (ViTConfig(patch_size=8, embed_dim=384, num_heads=6), 224, 0.9, _IMAGENET, 0),
    "vit_base_patch8_224": (ViTConfig(patch_size=8), 224, 0.9, _INCEPTION, 1000),
    "vit_large_patch14_224": (ViTConfig(patch_size=14, embed_dim=1024, depth=24, num_heads=16), 224, 0.9, _INCEPTION, 1000),
    # ViT-g/14 and ViT-G/14 of "Scaling Vision Transformers" (Zhai et al., CVPR 2022) as plain classifiers
    "vit_giant_patch14_224": (ViTConfig(patch_size=14, embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11), 224, 0.9, _INCEPTION, 1000),
    "vit_gigantic_patch14_224": (ViTConfig(patch_size=14, embed_dim=1664, depth=48, num_heads=16, mlp_ratio=64 / 13), 224, 0.9, _INCEPTION, 1000),
    # "Three things everyone should know about Vision Transformers" (Touvron et al., ECCV 2022): ViT-S 36 blocks deep
    "vit_small_patch16_36x1_224": (ViTConfig(embed_dim=384, depth=36, num_heads=6, init_values=1e-5), 224, 0.9, _INCEPTION, 1000),
    # ... and the same layers as 18 blocks of two parallel branches (ViT-B alike)
    "vit_small_patch16_18x2_224": (ViTConfig(embed_dim=384, depth=18, num_heads=6, init_values=1e-5, num_parallel=2), 224, 0.9, _INCEPTION, 1000),
    "vit_base_patch16_18x2_224": (ViTConfig(depth=18, init_values=1e-5, num_parallel=2), 224, 0.9, _INCEPTION, 1000),
    "vit_base_patch16_224_miil": (ViTConfig(qkv_bias=False), 224, 0.875, ((0.0,) * 3, (1.0,) * 3), 11221),
    "vit_base_patch16_plus_240": (ViTConfig(embed_dim=896, num_heads=14, init_values=1e-5), 240, 0.95, _INCEPTION, 1000),
    "vit_base_patch32_plus_256": (ViTConfig(patch_size=32, embed_dim=896, num_heads=14, init_values=1e-5), 256, 0.95, _INCEPTION, 1000),
    "vit_base_patch16_gap_224": (ViTConfig(num_heads=16, fc_norm=False, **_GAP), 224, 0.9, _INCEPTION, 1000),
    "vit_medium_patch16_gap_240": (ViTConfig(embed_dim=512, num_heads=8, qkv_bias=False, init_values=1e-6, fc_norm=False, **_GAP), 240, 0.95, _INCEPTION, 11821),
    **{
        f"vit_medium_patch16_gap_{_r}": (ViTConfig(embed_dim=512, num_heads=8, qkv_bias=False, init_values=1e-6, fc_norm=False, **_GAP), _r, 0.95, _INCEPTION, 1000)
        for _r in (256, 384)
    },
    "vit_betwixt_patch16_gap_256": (ViTConfig(embed_dim=640, num_heads=10, qkv_bias=False, init_values=1e-6, fc_norm=False, **_GAP), 256, 0.95, _INCEPTION, 1000),
    "vit_huge_patch14_gap_224": (ViTConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16, fc_norm=False, **_GAP), 224, 0.9, _IMAGENET, 0),
    "vit_huge_patch16_gap_448": (ViTConfig(embed_dim=1280, depth=32, num_heads=16, fc_norm=False, **_GAP), 448, 1.0, _IMAGENET, 0),
    "vit_giant_patch16_gap_224": (ViTConfig(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11, fc_norm=False, **_GAP), 224, 0.9, _IMAGENET, 0),
    "vit_base_patch16_reg4_gap_256": (ViTConfig(reg_tokens=4, **{**_REG, "init_values": None}), 256, 0.9, _INCEPTION, 1000),
    "vit_medium_patch16_reg1_gap_256": (ViTConfig(embed_dim=512, num_heads=8, reg_tokens=1, **_REG), 256, 0.95, _INCEPTION, 1000),
    "vit_medium_patch16_reg4_gap_256": (ViTConfig(embed_dim=512, num_heads=8, reg_tokens=4, **_REG), 256, 0.95, _INCEPTION, 1000),
    "vit_mediumd_patch16_reg4_gap_256": (ViTConfig(embed_dim=512, depth=20, num_heads=8, reg_tokens=4, **_REG), 256, 0.95, _INCEPTION, 1000),
    "vit_mediumd_patch16_reg4_gap_384": (ViTConfig(embed_dim=512, depth=20, num_heads=8, reg_tokens=4, **_REG), 384, 1.0, _INCEPTION, 1000),
    "vit_betwixt_patch16_reg1_gap_256": (ViTConfig(embed_dim=640, num_heads=10, reg_tokens=1, **_REG), 256, 0.95, _INCEPTION, 1000),
    "vit_betwixt_patch16_reg4_gap_256": (ViTConfig(embed_dim=640, num_heads=10, reg_tokens=4, **_REG), 256, 0.95, _INCEPTION, 1000),
    "vit_betwixt_patch16_reg4_gap_384": (ViTConfig(embed_dim=640, num_heads=10, reg_tokens=4, **_REG), 384, 1.0, _INCEPTION, 1000),
    "vit_little_patch16_reg1_gap_256": (ViTConfig(embed_dim=320, depth=14, num_heads=5, mlp_ratio=5.6, reg_tokens=1, **_REG), 256, 0.95, _INCEPTION, 1000),
    "vit_little_patch16_reg4_gap_256": (ViTConfig(embed_dim=320, depth=14, num_heads=5, mlp_ratio=5.6, reg_tokens=4, **_REG), 256, 0.95, _INCEPTION, 1000),
    "vit_wee_patch16_reg1_gap_256": (ViTConfig(embed_dim=256, depth=14, num_heads=4, mlp_ratio=5, reg_tokens=1, **_REG), 256, 0.95, _INCEPTION, 1000),
    # "shape-optimised" widths (Alabdulmohsin et al. 2023); the 150M's position table has rows for its registers
    **{
        f"vit_so150m_patch16_reg4_gap_{_r}": (ViTConfig(embed_dim=896, depth=18, num_heads=14, mlp_ratio=2.572, class_token=False, reg_tokens=4, global_pool="avg", fc_norm=False), _r, _c, _INCEPTION, 1000)
        for _r, _c in ((256, 0.95), (384, 1.0))
    },
    "vit_so150m_patch16_reg4_map_256": (ViTConfig(embed_dim=896, depth=18, num_heads=14, mlp_ratio=2.572, class_token=False, reg_tokens=4, global_pool="map"), 256, 0.9, _INCEPTION, 1000),
    **{
        f"vit_so150m2_patch16_reg1_gap_{_r}": (ViTConfig(embed_dim=832, depth=21, num_heads=13, mlp_ratio=34 / 13, init_values=1e-5, qkv_bias=False, class_token=False, reg_tokens=1, global_pool="avg"), _r, 1.0, _INCEPTION, 1000)
        for _r in (256, 384, 448)
    },
}

# CLIP's image towers as timm builds them (Radford et al., ICML 2021; OpenCLIP, MetaCLIP, DFN, TinyCLIP
# weights): a LayerNorm before the blocks and a bias-free patch projection, LayerNorm eps 1e-5, and
# QuickGELU for the towers trained with it. Where timm's default weights are the bare tower, the
# "classifier" is its projection into the joint embedding (512 ... 1024 wide).
_CLIP = dict(pre_norm=True, norm_eps=1e-5)
_OPENAI_CLIP = (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
_TIMM_VITS |= {
    "vit_xsmall_patch16_clip_224": (ViTConfig(embed_dim=256, depth=10, num_heads=4, **_CLIP), 224, 0.9, _OPENAI_CLIP, 512),
    "vit_medium_patch16_clip_224": (ViTConfig(embed_dim=512, num_heads=8, **_CLIP), 224, 0.9, _OPENAI_CLIP, 512),
    "vit_medium_patch32_clip_224": (ViTConfig(patch_size=32, embed_dim=512, num_heads=8, **_CLIP), 224, 0.9, _OPENAI_CLIP, 512),
    "vit_betwixt_patch32_clip_224": (ViTConfig(patch_size=32, embed_dim=640, num_heads=10, **_CLIP), 224, 0.9, _OPENAI_CLIP, 512),
    "vit_base_patch16_clip_224": (ViTConfig(**_CLIP), 224, 0.95, _OPENAI_CLIP, 1000),
    "vit_base_patch16_clip_384": (ViTConfig(**_CLIP), 384, 1.0, _OPENAI_CLIP, 1000),
    "vit_base_patch16_clip_quickgelu_224": (ViTConfig(act_layer="quick_gelu", **_CLIP), 224, 1.0, _OPENAI_CLIP, 512),
    "vit_base_patch16_plus_clip_240": (ViTConfig(embed_dim=896, num_heads=14, **_CLIP), 240, 1.0, _OPENAI_CLIP, 640),
    "vit_base_patch32_clip_224": (ViTConfig(patch_size=32, **_CLIP), 224, 0.9, _OPENAI_CLIP, 1000),
    "vit_base_patch32_clip_256": (ViTConfig(patch_size=32, **_CLIP), 256, 1.0, _OPENAI_CLIP, 512),
    "vit_base_patch32_clip_384": (ViTConfig(patch_size=32, **_CLIP), 384, 1.0, _OPENAI_CLIP, 1000),
    "vit_base_patch32_clip_448": (ViTConfig(patch_size=32, **_CLIP), 448, 1.0, _OPENAI_CLIP, 1000),
    "vit_base_patch32_clip_quickgelu_224": (ViTConfig(patch_size=32, act_layer="quick_gelu", **_CLIP), 224, 0.9, _OPENAI_CLIP, 512),
    "vit_large_patch14_clip_224": (ViTConfig(patch_size=14, embed_dim=1024, depth=24, num_heads=16, **_CLIP), 224, 1.0, _INCEPTION, 1000),
    "vit_large_patch14_clip_336": (ViTConfig(patch_size=14, embed_dim=1024, depth=24, num_heads=16, **_CLIP), 336, 1.0, _INCEPTION, 1000),
    **{
        f"vit_large_patch14_clip_quickgelu_{_r}": (ViTConfig(patch_size=14, embed_dim=1024, depth=24, num_heads=16, act_layer="quick_gelu", **_CLIP), _r, 1.0, _OPENAI_CLIP, 768)
        for _r in (224, 336)
    },
    **{
        f"vit_huge_patch14_clip_{_r}": (ViTConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16, **_CLIP), _r, 1.0, _OPENAI_CLIP, 1024 if _r == 378 else 1000)
        for _r in (224, 336, 378)
    },
    **{
        f"vit_huge_patch14_clip_quickgelu_{_r}": (ViTConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16, act_layer="quick_gelu", **_CLIP), _r, 1.0, _OPENAI_CLIP, 1024)
        for _r in (224, 378)
    },
    # ViT-g/14 and ViT-G/14 ("bigG"; Zhai et al., "Scaling Vision Transformers", CVPR 2022) as OpenCLIP's
    # and MetaCLIP's towers
    "vit_giant_patch14_clip_224": (ViTConfig(patch_size=14, embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11, **_CLIP), 224, 1.0, _OPENAI_CLIP, 1024),
    **{
        f"vit_gigantic_patch14_clip{_q}_{_r}": (ViTConfig(patch_size=14, embed_dim=1664, depth=48, num_heads=16, mlp_ratio=64 / 13, act_layer="quick_gelu" if _q else "gelu", **_CLIP), _r, 1.0, _OPENAI_CLIP, 1280)
        for _q, _r in (("", 224), ("", 378), ("_quickgelu", 224))
    },
}

# SigLIP's image towers (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023;
# SigLIP 2 weights alike): no class token, the attention-pool head ("map") or, in the _gap_ ones,
# the mean of the tokens after the final norm; timm's default weights are the bare towers. The
# shape-optimised so400m (Alabdulmohsin et al., NeurIPS 2023) and giantopt widths. timm's
# so400m_patch14 at 384 is left out: 14 does not divide 384 (timm truncates, 378 is its corrected size).
_SIGLIP_SIZES = {"base": (768, 12, 12, 4.0), "large": (1024, 24, 16, 4.0), "so400m": (1152, 27, 16, 3.7362), "giantopt": (1536, 40, 16, 4.0)}
for _size, _patch, _sides, _act in (
    ("base", 16, (224, 256, 384, 512), "gelu"), ("base", 32, (256,), "gelu_tanh"), ("large", 16, (256, 384), "gelu"), ("large", 16, (512,), "gelu_tanh"),
    ("so400m", 14, (224, 378, 448, 896), "gelu"), ("so400m", 16, (256, 384, 512), "gelu_tanh"), ("giantopt", 16, (256, 384), "gelu_tanh"),
):
    _d, _l, _h, _m = _SIGLIP_SIZES[_size]
    for _r in _sides:
        _pali = _patch == 14 and _r >= 448  # PaliGemma's so400m towers: the mean pool only, crop_pct 1
        for _pool, _kw in (("", dict(global_pool="map")), ("_gap", dict(global_pool="avg", fc_norm=False))):
            if _pool or not _pali:
                _TIMM_VITS[f"vit_{_size}_patch{_patch}_siglip{_pool}_{_r}"] = (
                    ViTConfig(patch_size=_patch, embed_dim=_d, depth=_l, num_heads=_h, mlp_ratio=_m, class_token=False, act_layer=_act, **_kw),
                    _r, 1.0 if _pali else 0.9, _INCEPTION, 0,
                )
# EVA-L (Fang et al., CVPR 2023): a ViT-L/14 pre-trained by MIM towards EVA-CLIP's features, mean-pooled
_TIMM_VITS |= {
    f"eva_large_patch14_{_r}": (ViTConfig(patch_size=14, embed_dim=1024, depth=24, num_heads=16, global_pool="avg"), _r, 1.0, _OPENAI_CLIP, 1000)
    for _r in (196, 336)
}
for _n, (_cfg, _res, _crop, (_mean, _std), _classes) in _TIMM_VITS.items():
    VARIANTS[_n] = _cfg
    _DEFAULT_CFGS[_n] = default_cfg(_res, mean=_mean, std=_std, crop_pct=_crop, first_conv="patch_embed.proj", num_classes=_classes)
    if _n == "vit_base_patch16_224_miil":
        _DEFAULT_CFGS[_n]["interpolation"] = "bilinear"
# timm's default weights of these were evaluated with the whole image resized to the input (no crop)
for _n in ("eva_large_patch14_336", "vit_medium_patch16_gap_384", "vit_so150m2_patch16_reg1_gap_448", "vit_base_patch16_clip_384", "vit_large_patch14_clip_336", "vit_huge_patch14_clip_336", "vit_gigantic_patch14_clip_378"):
    _DEFAULT_CFGS[_n]["crop_mode"] = "squash"

for _res in (224, 384):
    _n = f"vit_base_r50_s16_{_res}"
    VARIANTS[_n] = ViTConfig(patch_size=1, hybrid_layers=(3, 4, 9))
    _DEFAULT_CFGS[_n] = default_cfg(_res, mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=0.9 if _res == 224 else 1.0, first_conv="patch_embed.backbone.stem.conv",
                                    num_classes=0 if _res == 224 else 1000)  # (timm's 224 px weights: the 21k backbone, no classifier)

PUBLISHED = {  # ../shared/REFERENCE.md: params (M), GMACs, ImageNet top-1 (%)
    "vit_tiny_patch16_224": dict(params=5.7, gmacs=1.26, top1=75.5, note="top-1 after ImageNet-21k (AugReg)"),
    "vit_small_patch16_224": dict(params=22.1, gmacs=4.6, top1=81.4, note="top-1 after ImageNet-21k (AugReg); 78.8 from 1k"),
    "vit_base_patch16_224": dict(params=86.6, gmacs=17.6),
    "vit_base_patch16_384": dict(params=86.9, gmacs=55.5, top1=84.0, note="top-1 after ImageNet-21k; 77.9 from 1k"),
    "vit_large_patch16_224": dict(params=304.0, gmacs=61.6),
    "vit_large_patch16_384": dict(params=304.0, gmacs=191.2, top1=85.2, note="top-1 after ImageNet-21k; 76.5 from 1k"),
    "vit_base_r50_s16_384": dict(params=98.9, gmacs=67.4, top1=85.0, note="top-1 after ImageNet-21k"),
    # DeiT paper Table 1 / Table 5 (ImageNet-1k only, 300 epochs); distilled: with a RegNetY-16GF teacher
    "deit_tiny_patch16_224": dict(params=5.0, top1=72.2, note="paper Table 1 gives 5M; 5.72M counted, as in timm and the official model"),
    "deit_small_patch16_224": dict(params=22.0, top1=79.8),
    "deit_base_patch16_224": dict(params=86.0, top1=81.8),
    "deit_base_patch16_384": dict(params=86.0, top1=83.1),
    "deit_tiny_distilled_patch16_224": dict(params=6.0, top1=74.5),
    "deit_small_distilled_patch16_224": dict(params=22.0, top1=81.2),
    "deit_base_distilled_patch16_224": dict(params=87.0, top1=83.4),
    "deit_base_distilled_patch16_384": dict(params=87.0, top1=85.2),
    # DeiT III: the authors' model zoo (facebookresearch/deit, README_revenge.md), ImageNet-1k training
    # (their "GFLOPs" are multiply-adds, as timm's GMACs); ImageNet-21k pre-training gives the second top-1
    **{
        f"deit3_{size}": dict(params=params, gmacs=gmacs, top1=top1, note=f"DeiT III authors' ImageNet-1k model; {top1_21k} after ImageNet-21k")
        for size, params, gmacs, top1, top1_21k in (
            ("small_patch16_224", 22.0, 4.6, 81.4, 83.1), ("small_patch16_384", 22.0, 15.5, 83.4, 84.8),
            ("base_patch16_224", 86.6, 17.5, 83.8, 85.7), ("base_patch16_384", 86.9, 55.5, 85.0, 86.7),
            ("large_patch16_224", 304.4, 61.6, 84.9, 87.0), ("large_patch16_384", 304.8, 191.2, 85.8, 87.7),
            ("huge_patch14_224", 632.1, 167.4, 85.2, 87.2),
        )
    },
    "deit3_small_patch16_384": dict(
        params=22.0, gmacs=15.5, top1=83.4,
        note="DeiT III authors' ImageNet-1k model; 84.8 after ImageNet-21k; their 22.0 M is the 224 count (22.2 counted: the 384 position table)",
    ),
    "deit3_medium_patch16_224": dict(params=38.8, note="not in the DeiT III authors' tables; params counted (equal to timm's)"),
    # DINOv2: the authors' model zoo (facebookresearch/dinov2 README): ImageNet top-1 of a linear
    # classifier on the frozen features (their k-NN top-1 in the note); params counted without a head
    **{
        f"vit_{size}_patch14_{reg}dinov2": dict(params=params, top1=top1, note=f"linear probe on the frozen backbone (DINOv2 authors' table; k-NN: {knn}); the backbone has no classifier")
        for size, reg, params, top1, knn in (
            ("small", "", 22.1, 81.1, 79.0), ("small", "reg4_", 22.1, 80.9, 79.1), ("base", "", 86.6, 84.5, 82.1),
            ("base", "reg4_", 86.6, 84.6, 82.0), ("large", "", 304.4, 86.3, 83.5), ("large", "reg4_", 304.4, 86.7, 83.8),
            ("giant", "", 1136.5, 86.5, 83.5), ("giant", "reg4_", 1136.5, 87.1, 83.7),
        )
    },
}

_TORCHVISION_NAMES = {  # torchvision's builders of the same architectures
    "vit_b_16": "vit_base_patch16_224",
    "vit_b_32": "vit_base_patch32_224",
    "vit_l_16": "vit_large_patch16_224",
    "vit_l_32": "vit_large_patch32_224",
    "vit_h_14": "vit_huge_patch14_224",
}

register_family(
    "vit",
    VisionTransformer,
    VARIANTS,
    default_cfgs=_DEFAULT_CFGS,
    published=PUBLISHED,
    paper=(
        "Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021 (DeiT: Touvron et al., ICML 2021; DeiT III: Touvron et al., ECCV 2022; "
        "parallel blocks: Touvron et al., Three things everyone should know about Vision Transformers, ECCV 2022; "
        "DINOv2: Oquab et al., TMLR 2024; registers: Darcet et al., ICLR 2024; CLIP: Radford et al., ICML 2021; "
        "SigLIP: Zhai et al., ICCV 2023)"
    ),
)
for _alias, _target in _TORCHVISION_NAMES.items():
    register_alias(_alias, _target)
