"""NesT: local transformers nested in a hierarchy of image blocks.

Paper: Zhang et al., "Nested Hierarchical Transformer: Towards Accurate, Data-Efficient and
Interpretable Visual Understanding", AAAI 2022 (arXiv 2105.12723).

An image is cut into p x p patches, embedded linearly, and the patch grid is cut into a
fixed g x g grid of non-overlapping blocks (g = 2^(L-1) for L hierarchies). Each
hierarchy (``levels.i``) adds a position embedding of its own to every token of every
block -- the table is (1, T, N, C): T blocks of N tokens, each block with its own
positions, as in the official code -- and runs a stack of pre-norm transformer layers
inside each block. All T blocks go through one batched attention call: the blocks fold
into the batch dimension, so ``scaled_dot_product_attention`` gets 4-D (B*T, nH, N, hd)
tensors and can pick its fused kernel (a 5-D call, as timm's, falls back to the
matmul/softmax path on CPU). Between hierarchies, block aggregation works on the image
plane: unblock, 3x3 convolution, LayerNorm, 3x3 max-pool with stride 2, re-block; every
2 x 2 neighbouring blocks thus merge into one, and the top hierarchy is a single block.
LayerNorm, global average pooling and a linear classifier end the network.

Variants:

* ``nest_tiny`` / ``nest_small`` / ``nest_base`` (ImageNet, 224, patch 4, blocks of 14 x 14
  tokens, 3 hierarchies, width and heads doubling per hierarchy). State-dict keys equal
  timm's ``nest_*`` (the timm converter is the identity). Like timm's port, the output
  projection of attention reads its input features in (head_dim, heads) order -- the
  transposed order of the JAX ``proj_kernel`` as timm converted it; we keep that layout so
  the weights load unchanged, and reorder the small weight, not the activations.
  ``nest_{tiny,small,base}_jx`` are timm's names of the same networks with the official JAX
  weights' aggregation pool, padded as TensorFlow's 'SAME' (``same_pool``; timm's
  ``pad_type='same'``): timm's default weights are theirs.
* ``nest_tiny_cifar`` / ``nest_small_cifar`` / ``nest_base_cifar``: the paper's CIFAR
  networks (official ``nest_{tiny,small,base}_s16_32``): 32 x 32 input, patch 1, blocks of
  4 x 4 tokens, 4 hierarchies of 3 layers each, constant width 192 / 384 / 768 with 3 / 6
  / 12 heads, and *multi-query* attention (one key/value head shared by all query heads,
  Shazeer 2019) as in the official code -- the paper's text speaks of multi-head attention,
  but only multi-query reproduces the paper's parameter counts (multi-head would give
  6.79 / 26.19 / 102.80 M against the paper's 6.2 / 23.4 / 90.1 M). Counted here with the
  default 1000-class head: 6.20 / 23.23 / 89.81 M (within 1 % of the paper's, which seem to
  be counted that way); with a 10-class head 6.01 / 22.85 / 89.05 M. As the official code,
  they pool with TensorFlow's 'SAME' padding and use the tanh approximation of GELU
  (``NestConfig.same_pool``, ``gelu_tanh``); the ImageNet networks follow timm's port.

Other input sizes: the block grid stays g x g (so the top hierarchy stays one block) and
the blocks grow or shrink with the image; sides must be multiples of p * 2^(L-1). The
position tables are resampled on the fly (bicubic, on the unblocked image plane, with
:func:`visionzoo.layers.resample_abs_pos_embed`), and ``load_checkpoint`` resamples a
checkpoint's tables to the model's ``img_size`` the same way (no antialiasing, as timm's
checkpoint filter). Non-square inputs work (blocks are then rectangles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import Tensor, nn

from ..base import FeatureInfo, VisionModel, tap_outputs
from ..checkpoints import identity, register_converter
from ..layers import POOL_TYPES, Conv2d, DropPath, MaxPool2d, Mlp, attention, classifier, drop_path_rates, linear, linear_act, resample_abs_pos_embed, trunc_normal_
from ..layers.helpers import DerivedCache, no_hooks, pad_same, plain_cpu_eager
from ..param_groups import MATCH_PREV_GROUP
from ..registry import default_cfg, register_family

__all__ = ["Nest", "NestConfig", "blockify", "deblockify"]

_PROJ_WEIGHT = DerivedCache()  # attention -> (proj.weight with inputs in (heads, hd) order,)


# --------------------------------------------------------------------------- blocks
def blockify(x: Tensor, grid: int) -> Tensor:
    """Cut a (B, H, W, C) map into a grid x grid of blocks: (B, T, N, C), T = grid^2, row-major."""
    B, H, W, C = x.shape
    bh, bw = H // grid, W // grid
    x = x.view(B, grid, bh, grid, bw, C).transpose(2, 3)  # B, g, g, bh, bw, C
    return x.reshape(B, grid * grid, bh * bw, C)


def deblockify(x: Tensor, grid: int, block: tuple[int, int]) -> Tensor:
    """Inverse of :func:`blockify`: (B, T, N, C) blocks of ``block`` = (bh, bw) -> (B, H, W, C)."""
    B, _, _, C = x.shape
    bh, bw = block
    x = x.view(B, grid, grid, bh, bw, C).transpose(2, 3)  # B, g, bh, g, bw, C
    return x.reshape(B, grid * bh, grid * bw, C)


class BlockAttention(nn.Module):
    """Self-attention inside each block, all blocks of all images in one call.

    Multi-head (``multi_query=False``, key ``attn.qkv``) or multi-query: the query has
    ``num_heads`` heads, key and value one head shared by all (keys ``attn.q``,
    ``attn.kv``), as the official CIFAR networks.

    The output projection reads its input in (head_dim, heads) order (timm's layout of the
    converted JAX weights); see the module docstring.

    Shapes:
        (B, T, N, C) -> (B, T, N, C).
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, multi_query: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.multi_query = num_heads, dim // num_heads, multi_query
        if multi_query:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, 2 * self.head_dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused = True  # False: the matmul/softmax path of layers.attention

    def proj_weight(self, cached: bool = False) -> Tensor:
        """``proj.weight`` with its input features reordered from (hd, nH) to (nH, hd); with
        ``cached`` (inference) the copy is kept while the weight is unchanged."""
        w = self.proj.weight  # C_out, hd * nH

        def reorder() -> tuple[Tensor]:
            return (w.view(-1, self.head_dim, self.num_heads).transpose(1, 2).reshape(w.shape),)

        return ((_PROJ_WEIGHT.get(self, (w,), reorder) if cached else None) or reorder())[0]

    def forward(self, x: Tensor) -> Tensor:
        B, T, N, C = x.shape
        nH, hd = self.num_heads, self.head_dim
        x = x.reshape(B * T, N, C)  # blocks fold into the batch
        drop = self.attn_drop if self.training else 0.0
        if self.multi_query:
            # heads fold into the query length: every query head attends to the same keys
            q = linear(self.q, x).view(B * T, 1, N * nH, hd)  # B*T, 1, N*nH, hd
            k, v = linear(self.kv, x).unsqueeze(1).chunk(2, dim=-1)  # 2 x (B*T, 1, N, hd)
            x = attention(q, k, v, dropout_p=drop, fused=self.fused)  # B*T, 1, N*nH, hd
        else:
            qkv = linear(self.qkv, x).view(B * T, N, 3, nH, hd).permute(2, 0, 3, 1, 4)  # 3, B*T, nH, N, hd
            x = attention(qkv[0], qkv[1], qkv[2], dropout_p=drop, fused=self.fused)  # B*T, nH, N, hd
            x = x.transpose(1, 2)  # B*T, N, nH, hd
        if type(self.proj) is not nn.Linear or not no_hooks(self.proj):  # the module (a hooked or quantised one), on its (hd, nH) input order (timm's)
            return self.proj_drop(self.proj(x.reshape(B, T, N, nH, hd).transpose(-1, -2).reshape(B, T, N, C)))
        cached = not torch.is_grad_enabled() and plain_cpu_eager(x)
        x = linear_act(x.reshape(B, T, N, C), self.proj_weight(cached), self.proj.bias)
        return self.proj_drop(x)


class TransformerLayer(nn.Module):
    """LN -> block attention -> + x; LN -> MLP -> + x. Shapes: (B, T, N, C) -> (B, T, N, C)."""

    def __init__(
        self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True, multi_query: bool = False, gelu_tanh: bool = False,
        drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = BlockAttention(dim, num_heads, qkv_bias=qkv_bias, multi_query=multi_query, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        act = partial(nn.GELU, approximate="tanh") if gelu_tanh else nn.GELU
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act, drop=drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return self.mlp.add_to(x, x, self.drop_path2, self.norm2)


class ConvPool(nn.Module):
    """Block aggregation on the image plane: 3x3 conv, LayerNorm over channels, 3x3/2 max-pool.

    The pool pads 1 on each side (timm's port), or as TensorFlow's 'SAME' with ``same_pool``
    (the official JAX code: on an even map 0 before and 1 after, so output i covers inputs
    2i..2i+2 rather than 2i-1..2i+1).

    Shapes: (B, C_in, H, W) -> (B, C_out, H/2, W/2) for even H, W.
    """

    def __init__(self, in_dim: int, out_dim: int, *, same_pool: bool = False) -> None:
        super().__init__()
        self.conv = Conv2d(in_dim, out_dim, 3, padding=1)  # channels-last input: a prepacked weight in CPU inference
        self.norm = nn.LayerNorm(out_dim, eps=1e-6)
        self.same_pool = same_pool
        self.pool = MaxPool2d(3, stride=2, padding=0 if same_pool else 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)  # B, H, W, C
        x = self.norm(x).permute(0, 3, 1, 2)  # B, C, H, W
        if self.same_pool:
            x = pad_same(x, (3, 3), (2, 2), value=float("-inf"))
        return self.pool(x)


class NestLevel(nn.Module):
    """One hierarchy: optional block aggregation, position embedding, transformer layers.

    Args:
        grid: blocks per side g (the hierarchy has g x g blocks).
        block: block size (bh, bw) in tokens at the size the model is built for.
        in_dim: width of the previous hierarchy (``None`` for the first: no aggregation).

    Shapes:
        (B, C_in, H, W) -> (B, C, H', W'), H' = H/2 after aggregation, else H.
    """

    def __init__(
        self, grid: int, block: tuple[int, int], dim: int, depth: int, num_heads: int, *, in_dim: int | None, drop_paths: Sequence[float],
        same_pool: bool = False, **layer_kwargs,
    ) -> None:
        super().__init__()
        self.grid, self.block = grid, block
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, block[0] * block[1], dim))
        self.pool = ConvPool(in_dim, dim, same_pool=same_pool) if in_dim is not None else nn.Identity()
        self.transformer_encoder = nn.Sequential(
            *[TransformerLayer(dim, num_heads, drop_path=drop_paths[i], **layer_kwargs) for i in range(depth)]
        )

    def position_table(self, block: tuple[int, int]) -> Tensor:
        """(1, T, N, C) position embedding for blocks of ``block`` tokens (resampled if needed)."""
        if block == self.block:
            return self.pos_embed
        return resize_block_pos_embed(self.pos_embed, self.grid, self.block, block)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(x).permute(0, 2, 3, 1)  # B, H, W, C
        g = self.grid
        block = (x.shape[1] // g, x.shape[2] // g)
        x = blockify(x, g) + self.position_table(block)  # B, T, N, C
        x = self.transformer_encoder(x)
        return deblockify(x, g, block).permute(0, 3, 1, 2)  # B, C, H, W


def resize_block_pos_embed(table: Tensor, grid: int, old_block: tuple[int, int], new_block: tuple[int, int], *, antialias: bool = False) -> Tensor:
    """Resample a (1, T, N, C) per-block table on the image plane to blocks of ``new_block``."""
    C = table.shape[-1]
    old = (grid * old_block[0], grid * old_block[1])
    new = (grid * new_block[0], grid * new_block[1])
    plane = deblockify(table, grid, old_block).reshape(1, old[0] * old[1], C)  # 1, H*W, C
    plane = resample_abs_pos_embed(plane, new, old, antialias=antialias)  # 1, H'*W', C
    return blockify(plane.view(1, new[0], new[1], C), grid)


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class NestConfig:
    """One NesT: per-hierarchy widths, heads and depths (first = finest), patch p, block side."""

    embed_dims: tuple[int, ...] = (96, 192, 384)
    num_heads: tuple[int, ...] = (3, 6, 12)
    depths: tuple[int, ...] = (2, 2, 8)
    patch_size: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    multi_query: bool = False
    #: the official JAX code's forms (the CIFAR networks): the aggregation's max-pool padded as
    #: TensorFlow's 'SAME', and the tanh approximation of GELU (``jax.nn.gelu``'s default);
    #: timm's port of the ImageNet networks pads 1 on each side and uses the exact GELU
    same_pool: bool = False
    gelu_tanh: bool = False
    #: dropout before the classifier (timm's meaning); after the attention projection and
    #: MLP layers; on the attention weights
    drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0


class Nest(VisionModel):
    """NesT classifier.

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); H, W multiples of p * 2^(L-1).
        ``forward_features``: (B, C_L, H/(p 2^(L-1)), W/(p 2^(L-1))) after the final LayerNorm.
        ``forward_intermediates``: NCHW outputs of the hierarchies (no final norm), as timm's.
    """

    family = "nest"
    size_dependent = True
    pool_types = POOL_TYPES
    grad_checkpoint_units = (r"levels\.\d+\.transformer_encoder\.\d+",)

    def __init__(self, cfg: NestConfig, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (224, 224), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        L = len(cfg.depths)
        if not len(cfg.embed_dims) == len(cfg.num_heads) == L:
            raise ValueError(f"embed_dims {cfg.embed_dims}, num_heads {cfg.num_heads} and depths {cfg.depths} need one entry per hierarchy")
        self.cfg = cfg
        self.num_classes, self.in_chans = num_classes, in_chans
        self.input_multiple = self.min_input_size = cfg.patch_size * 2 ** (L - 1)
        H, W = img_size
        problem = self.size_problem(H, W)  # the position tables are built for the size: refused here, not in the factory
        if problem:  # in the factory's words, with the family's name (the variant's is not known here)
            raise ValueError(f"NesT cannot take img_size {H}x{W}: it {problem}")
        block = (H // self.input_multiple, W // self.input_multiple)  # tokens per block side
        self.patch_embed = _PatchEmbed(in_chans, cfg.embed_dims[0], cfg.patch_size)
        dpr = drop_path_rates(drop_path_rate, sum(cfg.depths))
        levels, start = [], 0
        for i in range(L):
            levels.append(NestLevel(
                2 ** (L - 1 - i), block, cfg.embed_dims[i], cfg.depths[i], cfg.num_heads[i],
                in_dim=cfg.embed_dims[i - 1] if i else None, drop_paths=dpr[start : start + cfg.depths[i]],
                mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, multi_query=cfg.multi_query, gelu_tanh=cfg.gelu_tanh,
                same_pool=cfg.same_pool, drop=cfg.proj_drop_rate, attn_drop=cfg.attn_drop_rate,
            ))
            start += cfg.depths[i]
        self.levels = nn.Sequential(*levels)
        self.num_features = cfg.embed_dims[-1]
        self.norm = nn.LayerNorm(self.num_features, eps=1e-6)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = classifier(self.num_features, num_classes)
        self.feature_info = [FeatureInfo(d, cfg.patch_size * 2**i, f"levels.{i}") for i, d in enumerate(cfg.embed_dims)]
        self._init_weights()

    def _init_weights(self) -> None:
        for level in self.levels:
            trunc_normal_(level.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.final_norm(self.levels(self.patch_embed(x)))  # B, C, H, W

    def pooled_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def reset_head(self, num_classes: int) -> None:
        self.head = classifier(self.pooled_features, num_classes)

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        self.check_input(x)
        return tap_outputs(self.patch_embed(x), self.levels, indices, to_end=with_features, tail=self.final_norm)

    def final_norm(self, feature_map: Tensor) -> Tensor:
        return self.norm(feature_map.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # over channels

    def prune_for_features(self, indices: Sequence[int]) -> None:
        self.levels = self.levels[: max(indices) + 1]
        self.norm = nn.Identity()  # type: ignore[assignment]
        self.reset_classifier(0)

    def group_matcher(self, coarse: bool = False) -> dict:
        """Group 0 is the patch embedding; then one group per transformer block, a level's
        position table and the pooling that opens it with the level's first block
        (``coarse``: one group per level); the final norm with the last block; the head last."""
        level = r"^levels\.(\d+)\." if coarse else r"^levels\.(\d+)\.transformer_encoder\.(\d+)\."
        return dict(
            stem=r"^patch_embed\.",
            blocks=[
                (level, None),
                (r"^levels\.(\d+)\.(?:pos_embed|pool\.)", (0,)),
                (r"^norm\.", MATCH_PREV_GROUP),
            ],
        )

    def no_weight_decay(self) -> set[str]:
        return {f"levels.{i}.pos_embed" for i in range(len(self.levels))}

    def adapt_state_dict(self, state_dict: dict[str, Tensor], source: VisionModel | None = None) -> dict[str, Tensor]:
        """Resample position tables trained at another image size to this model's blocks (the
        ``source`` model's blocks where given; else square ones, as checkpoints come from square images)."""
        out = dict(state_dict)
        for i, level in enumerate(self.levels):
            key = f"levels.{i}.pos_embed"
            v = state_dict.get(key)
            if v is None or v.shape[1] != level.pos_embed.shape[1]:
                continue
            if source is not None:
                block = source.levels[i].block
            else:
                side = round(v.shape[2] ** 0.5)
                block = (side, side)
            if block != level.block and block[0] * block[1] == v.shape[2]:
                out[key] = resize_block_pos_embed(v, level.grid, block, level.block)
        return out


class _PatchEmbed(nn.Module):
    """p x p stride-p convolution (key ``patch_embed.proj``). (B, C, H, W) -> (B, D, H/p, W/p)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


register_converter("nest", "timm")(identity)

_CIFAR = dict(patch_size=1, depths=(3, 3, 3, 3), multi_query=True, same_pool=True, gelu_tanh=True)
VARIANTS = {
    "nest_tiny": NestConfig(embed_dims=(96, 192, 384), num_heads=(3, 6, 12), depths=(2, 2, 8)),
    "nest_small": NestConfig(embed_dims=(96, 192, 384), num_heads=(3, 6, 12), depths=(2, 2, 20)),
    "nest_base": NestConfig(embed_dims=(128, 256, 512), num_heads=(4, 8, 16), depths=(2, 2, 20)),
}
# the official JAX weights' networks (timm's *_jx): the aggregation's max pool padded as 'SAME'
VARIANTS |= {f"{name}_jx": replace(cfg, same_pool=True) for name, cfg in VARIANTS.items()}
VARIANTS |= {
    # the paper's CIFAR networks (official nest_*_s16_32): 4 hierarchies of 4x4-token blocks
    "nest_tiny_cifar": NestConfig(embed_dims=(192,) * 4, num_heads=(3,) * 4, **_CIFAR),
    "nest_small_cifar": NestConfig(embed_dims=(384,) * 4, num_heads=(6,) * 4, **_CIFAR),
    "nest_base_cifar": NestConfig(embed_dims=(768,) * 4, num_heads=(12,) * 4, **_CIFAR),
}

_CIFAR_NOTE = "top-1 is CIFAR-10; params as counted with a 1000-class head; with 10 classes {} M (see models/nest.py)"

register_family(
    "nest",
    Nest,
    VARIANTS,
    default_cfgs=lambda name, cfg: default_cfg(
        32, crop_pct=1.0, first_conv="patch_embed.proj", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)
    ) if name.endswith("_cifar") else default_cfg(224, first_conv="patch_embed.proj"),
    published={
        "nest_tiny": dict(params=17.0, gmacs=5.8, top1=81.5),
        "nest_small": dict(params=38.0, gmacs=10.4, top1=83.3),
        "nest_base": dict(params=68.0, gmacs=17.9, top1=83.8),
        **{f"nest_{size}_jx": dict(params=params, gmacs=gmacs, top1=top1, note="the paper's network with its official weights' 'SAME'-padded pool")
           for size, params, gmacs, top1 in (("tiny", 17.0, 5.8, 81.5), ("small", 38.0, 10.4, 83.3), ("base", 68.0, 17.9, 83.8))},
        "nest_tiny_cifar": dict(params=6.2, top1=96.0, note=_CIFAR_NOTE.format(6.01)),
        "nest_small_cifar": dict(params=23.4, top1=97.0, note=_CIFAR_NOTE.format(22.85)),
        "nest_base_cifar": dict(params=90.1, top1=97.2, note=_CIFAR_NOTE.format(89.05)),
    },
    paper="Zhang et al., Nested Hierarchical Transformer: Towards Accurate, Data-Efficient and Interpretable Visual Understanding, AAAI 2022",
)
