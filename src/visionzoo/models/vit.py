"""Vision Transformer (ViT), DeiT and the R50+ViT hybrid.

Papers:
    Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition
    at Scale", ICLR 2021 (ViT, the hybrid, and the position-embedding ablation of App. D.4).
    Touvron et al., "Training data-efficient image transformers & distillation through
    attention", ICML 2021 (DeiT and the distillation token).
    Touvron et al., "Three things everyone should know about Vision Transformers", ECCV 2022
    (parallel blocks: :class:`ParallelBlock`, ``ViTConfig.num_parallel``).

The image is cut into p x p patches, each embedded linearly; a class token is prepended,
position embeddings are added, and a stack of pre-norm transformer blocks follows. The
class token, the mean of the patch tokens, or an attention pool whose learned query reads them
(SigLIP's head, ``global_pool="map"``) feeds the classifier.

Position embeddings (``ViTConfig.pos_embed``), as in the paper's Table 8:

* ``none``: no positional information.
* ``learned_1d``: one learned vector per token of the raster order (the default).
* ``learned_2d``: a row and a column embedding, each of width D/2, concatenated per patch.
* ``relative``: the paper's "1-dimensional Relative Attention": a learned embedding per
  offset p_q - p_k between query and key patches in the raster order (2N - 1 of them for N
  patches), used as keys of an extra attention with the original queries; its logits are
  added to the attention logits before softmax (so it runs through the fused kernel as an
  additive bias).
* ``relative_2d``: the same with an embedding per 2-D offset (dy, dx), (2Gh - 1)(2Gw - 1) of
  them: not in the paper, which tried the 1-D form only; here for comparison.

and where absolute embeddings enter (``pos_embed_at``): ``stem`` (after the patch
embedding), ``every_layer`` (before every block, separate parameters) or
``every_layer_shared`` (before every block, one set of parameters).

The hybrid's ResNet-50 is in :mod:`.vit_hybrid`, the registered variants in
:mod:`.vit_variants`, the checkpoint key converters in :mod:`.vit_convert`.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial, reduce
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import FeatureInfo, VisionModel
from ..layers import (
    NORM_POOL_TYPES,
    Attention,
    AttentionPoolLatent,
    DropPath,
    GluMlp,
    Mlp,
    PatchEmbed,
    attention,
    check_int,
    classifier,
    drop_path_rates,
    global_pool_2d,
    resample_abs_pos_embed,
    resample_patch_kernel,
    trunc_normal_,
)
from ..layers.activations import QuickGELU
from ..layers.attention import ProjectedAttention
from ..layers.drop_path import skippable
from ..layers.helpers import DerivedCache, no_hooks, to_2tuple
from ..layers.linear import linear_add, scaled_linear
from ..layers.mlp import residual_mlp
from ..param_groups import MATCH_PREV_GROUP
from .vit_hybrid import HybridEmbed

__all__ = ["ViTConfig", "VisionTransformer"]

POS_EMBEDS = ("none", "learned_1d", "learned_2d", "relative", "relative_2d")
RELATIVE = ("relative", "relative_2d")
#: the MLPs' activations (timm's act_layer names)
ACT_LAYERS: dict[str, Callable[[], nn.Module]] = {"gelu": nn.GELU, "gelu_tanh": partial(nn.GELU, approximate="tanh"), "quick_gelu": QuickGELU, "silu": nn.SiLU}
#: the blocks' MLP: two linear layers, or SwiGLU packed into one fc1 (DINOv2's ViT-g; timm's SwiGLUPacked)
MLP_LAYERS: dict[str, type[Mlp]] = {"mlp": Mlp, "swiglu_packed": GluMlp}
POS_EMBED_AT = ("stem", "every_layer", "every_layer_shared")


# --------------------------------------------------------------------------- blocks
_SCALED = DerivedCache()  # block -> (proj, fc2) (weight, bias) times their layer scales


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch, learned from ``init_values`` (CaiT; DeiT III).
    Key ``gamma``, as timm's."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)); with ``init_values``,
    each branch scaled per channel by a :class:`LayerScale` (``ls1``, ``ls2``) first.

    Shapes:
        (B, N, C) -> (B, N, C).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = partial(nn.LayerNorm, eps=1e-6),
        attn_layer: type[Attention] = Attention,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        init_values: float | None = None,
        mlp_layer: type[Mlp] = Mlp,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn_layer(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.ls1 = LayerScale(dim, init_values) if init_values else None  # timm's rule: 0 or None, no layer scale
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else None
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor, *args: object) -> Tensor:
        """``args``: the attention's own (RelPosAttention's grid)."""
        if self.ls1 is None:  # the projections accumulate into the residual in inference
            x = self.attn.add_to(x, self.norm1(x), *args, drop_path=self.drop_path1)
            return self.mlp.add_to(x, x, self.drop_path2, self.norm2)
        if self._scales_folded():
            return self._forward_scales_folded(x, *args)
        _SCALED.discard(self)  # training, autograd, hooks: no folded copy kept
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), *args)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def _scales_folded(self) -> bool:
        """Inference with plain, unhooked parts: the layer scales fold into the projections."""
        attn = self.attn
        return (
            self.mlp.inference_unrolled(self.drop_path2)
            and type(attn).forward is ProjectedAttention.forward
            and type(attn.proj) is nn.Linear
            and skippable(attn.proj_drop) and skippable(self.drop_path1)
            and no_hooks(attn, attn.proj, self.ls1, self.ls2)
        )

    def _forward_scales_folded(self, x: Tensor, *args: object) -> Tensor:
        """Each branch's projection with its layer scale multiplied in (cached while the weights
        are unchanged), accumulating into the residual: no separate passes for the scales."""
        (w1, b1), (w2, b2) = _SCALED.get(self, (self.attn.proj.weight, self.attn.proj.bias, self.ls1.gamma, self.mlp.fc2.weight, self.mlp.fc2.bias, self.ls2.gamma), self._scaled) or self._scaled()
        x = linear_add(x, self.attn.attend(self.norm1(x), *args), w1, b1)
        return residual_mlp(x, x, self.mlp.fc1, self.mlp.act, w2, b2, self.norm2)

    def _scaled(self) -> tuple[tuple[Tensor, Tensor | None], tuple[Tensor, Tensor | None]]:
        return scaled_linear(self.attn.proj, self.ls1.gamma), scaled_linear(self.mlp.fc2, self.ls2.gamma)


class ParallelBlock(nn.Module):
    """``num_parallel`` pre-norm attention branches side by side, then as many MLP branches,
    each branch reading the same input: x + sum_i Attn_i(LN_i(x)), then x + sum_i MLP_i(LN_i(x))
    (Touvron et al., "Three things everyone should know about Vision Transformers", ECCV 2022:
    ViT-S 18x2 has the layers of a 36-block ViT-S in 18 blocks of two parallel branches).
    Keys as timm's ``ParallelThingsBlock``: ``attns.i.{norm,attn,ls}``, ``ffns.i.{norm,mlp,ls}``.

    Shapes:
        (B, N, C) -> (B, N, C).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        num_parallel: int = 2,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = partial(nn.LayerNorm, eps=1e-6),
        act_layer: Callable[[], nn.Module] = nn.GELU,
        init_values: float | None = None,
        mlp_layer: type[Mlp] = Mlp,
    ) -> None:
        super().__init__()

        def branch(name: str, layer: nn.Module) -> nn.Sequential:
            scale = LayerScale(dim, init_values) if init_values else nn.Identity()
            return nn.Sequential(OrderedDict(norm=norm_layer(dim), **{name: layer}, ls=scale, drop_path=DropPath(drop_path)))

        self.attns = nn.ModuleList(branch("attn", Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)) for _ in range(num_parallel))
        self.ffns = nn.ModuleList(branch("mlp", mlp_layer(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)) for _ in range(num_parallel))

    def forward(self, x: Tensor) -> Tensor:
        # the branches summed among themselves, then into x (timm's order); reduce, not sum(),
        # whose start value 0 would cost a pass over the tokens per block half
        x = x + reduce(operator.add, (f(x) for f in self.attns))
        return x + reduce(operator.add, (f(x) for f in self.ffns))


class RelPosAttention(Attention):
    """Attention with the ViT paper's relative position embeddings (App. D.4).

    Each offset between two patches has a learned embedding of the head width, shared by the
    heads: the paper's 1-D offset p_i - p_j of their raster positions (``two_d=False``), or
    the 2-D offset (dy, dx) (``two_d=True``, not in the paper). The queries attend to these
    embeddings as extra keys; the resulting logits q_i . E[p_i - p_j] are added to
    q_i . k_j before softmax. Pairs with a class or distillation token get no relative term
    (the paper does not say).

    Args:
        grid_size: patch grid (Gh, Gw) the table is built for; other grids resample it
            (linearly over the 2N - 1 raster offsets, bicubically over the 2-D table).
        num_prefix_tokens: tokens before the patch tokens.
        two_d: 2-D offsets instead of the paper's 1-D ones.
    """

    def __init__(self, dim: int, num_heads: int, *, grid_size: tuple[int, int], num_prefix_tokens: int, two_d: bool = False, **kwargs) -> None:
        super().__init__(dim, num_heads, **kwargs)
        self.grid_size = grid_size
        self.num_prefix_tokens = num_prefix_tokens
        Gh, Gw = grid_size
        shape = (2 * Gh - 1, 2 * Gw - 1) if two_d else (2 * Gh * Gw - 1,)
        self.rel_embed = nn.Parameter(torch.zeros(*shape, self.head_dim))
        trunc_normal_(self.rel_embed)

    @staticmethod
    def resampled_table(table: Tensor, grid: tuple[int, int]) -> Tensor:
        """``table`` (1-D: (2N' - 1, hd); 2-D: (2Gh' - 1, 2Gw' - 1, hd)) for the offsets of ``grid``:
        linear over the raster offsets, bicubic over the 2-D ones; unchanged where it fits."""
        Gh, Gw = grid
        if table.dim() == 2:
            n = 2 * Gh * Gw - 1
            return table if table.shape[0] == n else F.interpolate(table.t()[None], size=n, mode="linear", align_corners=False)[0].t()
        if (2 * Gh - 1, 2 * Gw - 1) == tuple(table.shape[:2]):
            return table
        return F.interpolate(table.permute(2, 0, 1)[None], size=(2 * Gh - 1, 2 * Gw - 1), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)

    def _offset_embeddings(self, grid: tuple[int, int]) -> Tensor:
        """(N, N, hd) embeddings of the offsets between every pair of grid patches."""
        table = self.resampled_table(self.rel_embed, grid)  # 1-D: 2N-1, hd; 2-D: 2Gh-1, 2Gw-1, hd
        Gh, Gw = grid
        if table.dim() == 2:  # 1-D: raster offsets i - j in [-(N - 1), N - 1]
            N = Gh * Gw
            idx = torch.arange(N, device=table.device)
            return table[idx[:, None] - idx[None, :] + N - 1]  # N, N, hd
        ys = torch.arange(Gh, device=table.device).repeat_interleave(Gw)  # N
        xs = torch.arange(Gw, device=table.device).repeat(Gh)  # N
        dy = ys[:, None] - ys[None, :] + Gh - 1  # N, N
        dx = xs[:, None] - xs[None, :] + Gw - 1  # N, N
        return table[dy, dx]  # N, N, hd

    def attend(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:  # type: ignore[override]
        B, N, _ = x.shape
        grid = grid or self.grid_size
        P = self.num_prefix_tokens
        q, k, v = self.qkv_heads(x)  # B, nH, N, hd
        emb = self._offset_embeddings(grid)  # Ng, Ng, hd
        rel = torch.einsum("bhnd,nmd->bhnm", q[:, :, P:] * self.scale, emb)  # B, nH, Ng, Ng
        bias = F.pad(rel, (P, 0, P, 0))  # B, nH, N, N (zero for prefix tokens)
        x = attention(q, k, v, bias, dropout_p=self.attn_drop if self.training else 0.0, fused=self.fused, scale=self.scale)
        x = x.transpose(1, 2)  # B, N, nH, hd
        if torch.compiler.is_exporting():  # a copy the graph keeps: torch.export records SDPA with this bias in
            x = x.clone(memory_format=torch.contiguous_format)  # a layout ONNX's decomposition does not give (a view failed)
        return x.reshape(B, N, x.shape[2] * x.shape[3])  # B, N, nH*hd


class RelPosBlock(Block):
    """A :class:`Block` whose attention carries relative position embeddings: called with the
    patch grid, ``block(x, grid)``, which :meth:`Block.forward` hands to the attention."""


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ViTConfig:
    """One ViT variant.

    Attributes:
        patch_size: patch side p (1 for the hybrid, whose ResNet already reduces 16x).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer size.
        class_token: prepend a learned class token.
        global_pool: ``token`` (class token), or a pool of the patch tokens with the final norm
            applied after pooling (as timm's): ``avg`` (their mean, timm's ``*_gap`` models),
            ``max``, ``avgmax`` (the two averaged); or ``map``, attention pooling with a learned
            query after the final norm (SigLIP's head; :class:`~visionzoo.layers.AttentionPoolLatent`,
            key ``attn_pool``).
        pos_embed: one of ``none``, ``learned_1d``, ``learned_2d``, ``relative`` (the paper's
            1-D relative attention), ``relative_2d`` (2-D offsets, not in the paper).
        pos_embed_at: one of ``stem``, ``every_layer``, ``every_layer_shared``.
        distilled: DeiT's distillation token and second head.
        hybrid_layers: ResNet stages of the hybrid's backbone, ``()`` for plain patches.
        init_values: LayerScale's initial value on both branches of every block (CaiT, DeiT III;
            timm's ``init_values``); None (or 0): no layer scale.
        no_embed_class: the position embedding covers the patch tokens only, added before the
            class / distillation tokens are prepended (DeiT III, timm's ``no_embed_class``);
            ``learned_1d`` at the stem only.
        fc_norm: where the final LayerNorm goes with a pool of the patch tokens: after the pool
            (True), or on every token before it (False: timm's ``fc_norm=False``, as its
            ``*_gap_*`` ViTs without registers and the I-JEPA ones); None: after the pool unless
            ``global_pool`` is ``token`` (timm's default).
        pre_norm: a LayerNorm on the tokens before the first block (``norm_pre``), and a
            bias-free patch projection (CLIP's image tower; timm's ``pre_norm``).
        final_norm: the LayerNorm after the last block (``norm``) where ``fc_norm`` does not
            replace it; False: none (the Perception Encoder's spatial and language towers;
            timm's ``use_post_transformer_norm=False``).
        pool_heads, pool_mlp_ratio: the ``map`` pool's heads and MLP width over ``embed_dim``
            (timm's ``attn_pool_num_heads``, ``attn_pool_mlp_ratio``); None: the blocks' own.
        pool_include_prefix: the ``map`` pool attends over the class and register tokens too
            (timm's ``pool_include_prefix``; always so in timm's EVA class), not the patch
            tokens alone.
        norm_eps: every LayerNorm's epsilon (1e-6; CLIP's towers 1e-5, PyTorch's default).
        act_layer: the MLPs' activation: ``gelu`` (exact), ``gelu_tanh``, ``quick_gelu``
            (OpenAI CLIP's ``x * sigmoid(1.702 x)``) or ``silu``.
        mlp_layer: ``mlp`` (two linear layers) or ``swiglu_packed``: fc1 gives
            ``embed_dim * mlp_ratio`` outputs, ``act(first half) * second half`` goes into fc2
            (DINOv2's ViT-g with ``act_layer="silu"``; timm's ``SwiGLUPacked``).
        reg_tokens: learned register tokens after the class token, which no head reads
            (Darcet et al., "Vision Transformers Need Registers", ICLR 2024; timm's
            ``reg_tokens``, key ``reg_token``); they count among the prefix tokens.
        num_parallel: attention and MLP branches per block, run side by side on the block's
            input and summed (:class:`ParallelBlock`; timm's ``ParallelThingsBlock``); 1: the
            usual sequential block.
        drop_rate: dropout before the classifier (timm's meaning).
        pos_drop_rate, proj_drop_rate, attn_drop_rate: dropout after the position embedding,
            after the attention projection and MLP layers, and on the attention weights.
    """

    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    global_pool: str = "token"
    pos_embed: str = "learned_1d"
    pos_embed_at: str = "stem"
    distilled: bool = False
    hybrid_layers: tuple[int, ...] = ()
    init_values: float | None = None
    no_embed_class: bool = False
    fc_norm: bool | None = None
    pre_norm: bool = False
    final_norm: bool = True
    pool_heads: int | None = None
    pool_mlp_ratio: float | None = None
    pool_include_prefix: bool = False
    norm_eps: float = 1e-6
    act_layer: str = "gelu"
    mlp_layer: str = "mlp"
    reg_tokens: int = 0
    num_parallel: int = 1
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0


class VisionTransformer(VisionModel):
    """ViT / DeiT / R50+ViT hybrid classifier.

    Args:
        cfg: the variant (see :class:`ViTConfig`).
        num_classes: classifier outputs (0: none).
        in_chans: image channels.
        img_size: size the position embeddings are built for; other sizes whose sides
            divide by the patch size resample them on the fly (bicubic).
        drop_path_rate: stochastic depth of the last block (linear from 0).

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); ``forward_features``: (B, P + N, C) tokens.
    """

    family = "vit"
    size_dependent = True
    block_features = True
    pool_types = ("token", *NORM_POOL_TYPES, "map")  # timm's, but for its 'prr' pool
    grad_checkpoint_units = (r"blocks\.\d+",)
    mlp_layers: tuple[str, ...] = tuple(MLP_LAYERS)  # the ``mlp_layer`` names the blocks take

    @classmethod
    def timm_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """timm builds a ViT asked for ``global_pool=''`` with its final norm on every token
        (``norm``, no ``fc_norm``) unless ``fc_norm`` says otherwise: its keys and
        ``forward_features`` then are those of timm's model."""
        options = super().timm_options(options)
        if options.get("global_pool") == "" and options.get("fc_norm") is None:
            options = {**options, "fc_norm": False}
        return options

    def __init__(
        self,
        cfg: ViTConfig,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: tuple[int, int] = (224, 224),
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if cfg.pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {cfg.pos_embed!r}")
        if cfg.pos_embed_at not in POS_EMBED_AT:
            raise ValueError(f"pos_embed_at must be one of {POS_EMBED_AT}, got {cfg.pos_embed_at!r}")
        if cfg.pos_embed in ("none", *RELATIVE) and cfg.pos_embed_at != "stem":
            raise ValueError(f"pos_embed={cfg.pos_embed!r} has no placement; pos_embed_at must stay 'stem'")
        if cfg.global_pool not in self.pool_types:
            raise ValueError(f"global_pool must be one of {', '.join(map(repr, self.pool_types))}, got {cfg.global_pool!r}")
        if cfg.global_pool == "token" and not cfg.class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if (cfg.pool_heads is not None or cfg.pool_mlp_ratio is not None) and cfg.global_pool != "map":
            raise ValueError(f"pool_heads / pool_mlp_ratio size the attention pool: they take global_pool='map', got {cfg.global_pool!r}")
        if cfg.distilled and cfg.global_pool != "token":
            raise ValueError(f"global_pool={cfg.global_pool!r}: the distilled head reads the class and distillation tokens; it takes 'token' only (or '' without a classifier: all tokens)")
        if cfg.pos_embed == "learned_2d" and cfg.embed_dim % 2:
            raise ValueError("learned_2d position embeddings need an even embed_dim")
        if cfg.no_embed_class and (cfg.pos_embed != "learned_1d" or cfg.pos_embed_at != "stem"):
            raise ValueError(f"no_embed_class=True takes pos_embed='learned_1d' at the stem, got pos_embed={cfg.pos_embed!r}, pos_embed_at={cfg.pos_embed_at!r}")
        check_int("reg_tokens", cfg.reg_tokens, 0)
        check_int("num_parallel", cfg.num_parallel, 1)
        if cfg.num_parallel > 1 and cfg.pos_embed in RELATIVE:
            raise ValueError(f"num_parallel={cfg.num_parallel} builds parallel branches of plain attention: it takes pos_embed 'none', 'learned_1d' or 'learned_2d', got {cfg.pos_embed!r}")
        if cfg.act_layer not in ACT_LAYERS:
            raise ValueError(f"act_layer must be one of {', '.join(map(repr, ACT_LAYERS))}, got {cfg.act_layer!r}")
        if cfg.mlp_layer not in self.mlp_layers:
            raise ValueError(f"mlp_layer must be one of {', '.join(map(repr, self.mlp_layers))}, got {cfg.mlp_layer!r}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.embed_dim = D = cfg.embed_dim
        self.global_pool = cfg.global_pool

        if cfg.hybrid_layers:
            self.patch_embed: nn.Module = HybridEmbed(in_chans, cfg.hybrid_layers, D, bias=not cfg.pre_norm)
            stride = self.patch_embed.patch_size[0]
            self.input_multiple = 1  # 'SAME' padding takes any size
        else:
            self.patch_embed = PatchEmbed(cfg.patch_size, in_chans, D, flatten=False, bias=not cfg.pre_norm)
            stride = cfg.patch_size
            self.input_multiple = cfg.patch_size
        self.min_input_size = stride
        self.reduction = stride
        self.grid_size = (-(-img_size[0] // stride), -(-img_size[1] // stride))
        Gh, Gw = self.grid_size

        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.distilled else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, D)) if cfg.reg_tokens else None
        self.num_prefix_tokens = int(cfg.class_token) + int(cfg.distilled) + cfg.reg_tokens
        P = self.num_prefix_tokens
        self.pos_prefix_rows = 0 if cfg.no_embed_class else P  # rows of the position embedding for the prefix tokens

        # absolute position embeddings: one set, or one per layer
        n_sets = cfg.depth if cfg.pos_embed_at == "every_layer" else 1
        self.pos_embed = self.pos_embed_row = self.pos_embed_col = self.pos_embed_prefix = None
        if cfg.pos_embed == "learned_1d":
            rows = self.pos_prefix_rows + Gh * Gw
            shape = (1, rows, D) if n_sets == 1 else (n_sets, rows, D)
            self.pos_embed = nn.Parameter(torch.zeros(shape))
        elif cfg.pos_embed == "learned_2d":
            self.pos_embed_row = nn.Parameter(torch.zeros(n_sets, Gh, D // 2))
            self.pos_embed_col = nn.Parameter(torch.zeros(n_sets, Gw, D // 2))
            if P:
                self.pos_embed_prefix = nn.Parameter(torch.zeros(n_sets, P, D))
        self.pos_drop = nn.Dropout(cfg.pos_drop_rate)
        norm_layer = partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.norm_pre = norm_layer(D) if cfg.pre_norm else None

        self.blocks = nn.Sequential(*self._build_blocks(drop_path_rates(drop_path_rate, cfg.depth), norm_layer))
        use_fc_norm = self.default_fc_norm(cfg.global_pool) if cfg.fc_norm is None else cfg.fc_norm
        self.norm = nn.Identity() if use_fc_norm or not cfg.final_norm else norm_layer(D)
        self.attn_pool = None
        if cfg.global_pool == "map":  # after the final norm, as timm's
            self.attn_pool = AttentionPoolLatent(D, cfg.pool_heads or cfg.num_heads, mlp_ratio=cfg.pool_mlp_ratio or cfg.mlp_ratio, norm_layer=norm_layer,
                                                 act_layer=self.pool_act_layer())
        # (timm's ViT: final_norm=False drops both norms; its EVA keeps fc_norm, the norm of the pooled features)
        self.fc_norm = norm_layer(D) if use_fc_norm and (cfg.final_norm or not self.final_norm_gates_fc_norm) else nn.Identity()
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = classifier(D, num_classes)
        self.head_dist = None
        if cfg.distilled:
            self.head_dist = classifier(D, num_classes)
        self.distilled_training = False

        self.feature_info = [FeatureInfo(D, stride, f"blocks.{i}") for i in range(cfg.depth)]
        self._init_weights()

    #: ``final_norm=False`` drops ``fc_norm`` too (timm's ViT); EVA keeps it
    final_norm_gates_fc_norm = True

    def default_fc_norm(self, pool: str) -> bool:
        """Whether a model built with ``global_pool=pool`` and ``fc_norm=None`` norms the pooled
        features (``fc_norm``) in place of the tokens (``norm``): timm's ViT for the pools of the
        patch tokens (not the class token, not the attention pool)."""
        return pool not in ("token", "map")

    def pool_act_layer(self) -> Callable[[], nn.Module]:
        """The activation of the attention pool's MLP (``global_pool='map'``): the blocks' own, as timm's ViT."""
        return ACT_LAYERS[self.cfg.act_layer]

    def _build_blocks(self, dpr: list[float], norm_layer: Callable[[int], nn.Module]) -> list[nn.Module]:
        """The transformer blocks, block i with stochastic depth ``dpr[i]`` (a subclass builds its own)."""
        cfg, D = self.cfg, self.embed_dim
        block_kwargs = dict(mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, drop=cfg.proj_drop_rate, attn_drop=cfg.attn_drop_rate, init_values=cfg.init_values,
                            norm_layer=norm_layer, act_layer=ACT_LAYERS[cfg.act_layer], mlp_layer=MLP_LAYERS[cfg.mlp_layer])
        if cfg.pos_embed in RELATIVE:
            attn = partial(RelPosAttention, grid_size=self.grid_size, num_prefix_tokens=self.num_prefix_tokens, two_d=cfg.pos_embed == "relative_2d")
            return [RelPosBlock(D, cfg.num_heads, drop_path=dpr[i], attn_layer=attn, **block_kwargs) for i in range(cfg.depth)]
        if cfg.num_parallel > 1:
            return [ParallelBlock(D, cfg.num_heads, num_parallel=cfg.num_parallel, drop_path=dpr[i], **block_kwargs) for i in range(cfg.depth)]
        return [Block(D, cfg.num_heads, drop_path=dpr[i], **block_kwargs) for i in range(cfg.depth)]

    def _init_weights(self) -> None:
        for p in (self.pos_embed, self.pos_embed_row, self.pos_embed_col, self.pos_embed_prefix):
            if p is not None:
                trunc_normal_(p)
        for t in (self.cls_token, self.dist_token, self.reg_token):
            if t is not None:
                nn.init.normal_(t, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------ position embeddings
    def _absolute_pos_embed(self, layer: int, grid: tuple[int, int]) -> Tensor | None:
        """The (1, P + Gh*Gw, D) embedding added before block ``layer`` (or at the stem, -1);
        (1, Gh*Gw, D) with ``no_embed_class``."""
        cfg = self.cfg
        if cfg.pos_embed not in ("learned_1d", "learned_2d"):
            return None
        i = layer if cfg.pos_embed_at == "every_layer" else 0
        P = self.num_prefix_tokens
        if cfg.pos_embed == "learned_1d":
            pe = self.pos_embed[i : i + 1]  # 1, P + Gh*Gw, D (no_embed_class: 1, Gh*Gw, D)
            return resample_abs_pos_embed(pe, grid, self.grid_size, num_prefix_tokens=self.pos_prefix_rows)
        row, col = self.pos_embed_row[i], self.pos_embed_col[i]  # Gh, D/2 and Gw, D/2
        if grid != self.grid_size:
            row = F.interpolate(row.T[None], size=grid[0], mode="linear", align_corners=False)[0].T
            col = F.interpolate(col.T[None], size=grid[1], mode="linear", align_corners=False)[0].T
        Gh, Gw = grid
        pe = torch.cat([row[:, None].expand(Gh, Gw, -1), col[None].expand(Gh, Gw, -1)], dim=-1)  # Gh, Gw, D
        pe = pe.reshape(1, Gh * Gw, -1)  # 1, Gh*Gw, D
        if P:
            pe = torch.cat([self.pos_embed_prefix[i : i + 1], pe], dim=1)  # 1, P + Gh*Gw, D
        return pe

    # ------------------------------------------------------------ forward
    def _embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        self.check_input(x)
        x = self.patch_embed(x)  # B, D, Gh, Gw
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # B, Gh*Gw, D
        if self.cfg.no_embed_class:  # DeiT III: the patch tokens take the embedding, the prefix tokens none
            x = x + self._absolute_pos_embed(0, grid)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]
        if prefix:
            x = torch.cat(prefix + [x], dim=1)  # B, P + Gh*Gw, D
        if self.cfg.pos_embed_at == "stem" and not self.cfg.no_embed_class:
            pe = self._absolute_pos_embed(0, grid)
            if pe is not None:
                x = x + pe
        x = self.pos_drop(x)
        return (x if self.norm_pre is None else self.norm_pre(x)), grid

    def _blocks_context(self, grid: tuple[int, int], x: Tensor) -> object:
        """What every block of one forward needs beside the tokens, computed once (a subclass's:
        EVA's rotary tables); None here."""
        return None

    def _block(self, i: int, x: Tensor, grid: tuple[int, int], context: object = None) -> Tensor:
        if self.cfg.pos_embed_at != "stem":
            x = x + self._absolute_pos_embed(i, grid)
        if self.cfg.pos_embed in RELATIVE:
            return self.blocks[i](x, grid)
        return self.blocks[i](x)

    def forward_features(self, x: Tensor) -> Tensor:
        x, grid = self._embed(x)
        if self.cfg.pos_embed_at == "stem" and self.cfg.pos_embed not in RELATIVE:
            x = self.blocks(x)
        else:
            for i in range(len(self.blocks)):
                x = self._block(i, x, grid)
        return self.norm(x)  # B, P + N, D

    def pooled_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.cfg.distilled:
            x, x_dist = x[:, 0], x[:, 1]
            if pre_logits:
                return (x + x_dist) / 2
            x, x_dist = self.head(self.head_drop(x)), self.head_dist(self.head_drop(x_dist))
            if self.distilled_training and self.training:
                return x, x_dist  # type: ignore[return-value]  (class and distillation logits)
            return (x + x_dist) / 2
        if self.global_pool == "token":
            x = x[:, 0]  # B, D
        elif self.global_pool == "map":
            x = self.attn_pool(x if self.cfg.pool_include_prefix else x[:, self.num_prefix_tokens :])  # B, D
        else:
            x = global_pool_2d(x[:, self.num_prefix_tokens :], self.global_pool, 1)  # B, D
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def unpooled_head(self, x: Tensor) -> Tensor:
        """timm's head without a pool or classifier: ``fc_norm`` (where the model has one, the
        norm of a pooled head) on every token, then the head's dropout."""
        return self.head_drop(self.fc_norm(x))

    def set_distilled_training(self, enable: bool = True) -> None:
        """In training, return (class logits, distillation logits) for DeiT's hard distillation."""
        self.distilled_training = enable

    def set_global_pool(self, pool: str, num_classes: int | None = None) -> None:
        """As the base class's: ``'token'`` (the class token, the default), or ``'avg'``,
        ``'max'`` or ``'avgmax'`` of the patch tokens; the norms stay as built, as in timm.
        ``'map'`` only on a model built with it; another pool, ``''`` (unpooled tokens) included,
        drops its attention pool, as timm's (whose checkpoints of such a model have none)."""
        if pool not in self.pool_types:
            super().set_global_pool(pool, num_classes)  # '' (unpooled) or a refusal
            self.attn_pool = None
            return
        if pool == "map" and self.attn_pool is None:
            raise ValueError(f"{self._name()}: global_pool='map' needs the attention pool a model built with global_pool='map' has; this one has none")
        if pool == "token" and not self.cfg.class_token:
            raise ValueError(f"{self._name()}: global_pool='token' needs a class token; this model has none")
        if pool != "token" and self.cfg.distilled:
            raise ValueError(f"{self._name()}: the distilled head reads the class and distillation tokens; global_pool takes 'token' only (or '' without a classifier: all tokens)")
        if pool != "map":
            self.attn_pool = None
        self.global_pool, self.unpooled = pool, False

    def reset_head(self, num_classes: int) -> None:
        self.head = classifier(self.embed_dim, num_classes)
        if self.head_dist is not None:
            self.head_dist = classifier(self.embed_dim, num_classes)

    # ------------------------------------------------------------ features
    def _block_tokens(self, x: Tensor, indices: Sequence[int], with_features: bool) -> tuple[list[Tensor], tuple[int, int], Tensor | None]:
        """The token sequences (B, P + Gh*Gw, D) leaving the blocks in ``indices`` (in that
        order), the patch grid, and with ``with_features`` ``forward_features(x)``, from one pass."""
        wanted = set(indices)
        x, grid = self._embed(x)
        context = self._blocks_context(grid, x)
        out = {}
        for i in range(len(self.blocks) if with_features else max(wanted) + 1):
            x = self._block(i, x, grid, context)
            if i in wanted:
                out[i] = x
        return [out[i] for i in indices], grid, self.norm(x) if with_features else None

    def _token_map(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, P + Gh*Gw, D) tokens -> the patch tokens as a (B, D, Gh, Gw) map (a view)."""
        return tokens[:, self.num_prefix_tokens :].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        """Outputs of the blocks in ``indices``, prefix tokens removed, as (B, D, Gh, Gw) maps."""
        tokens, grid, features = self._block_tokens(x, indices, with_features)
        maps = [self._token_map(t, grid) for t in tokens]
        return (maps, features) if with_features else maps

    def forward_intermediates(  # type: ignore[override]
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
    ) -> list | tuple[Tensor, list] | dict[str, Any]:
        """As :meth:`VisionModel.forward_intermediates` over the blocks, with timm's ViT options:
        ``norm`` applies the final norm to every block's tokens, ``return_prefix_tokens``
        pairs each map with its (B, P, D) class / distillation tokens, and ``output_dict``
        returns ``{"image_intermediates": maps, "image_features": features}`` (no features with
        ``intermediates_only``; the prefix tokens, asked for, as ``"image_intermediates_prefix"``).
        ``stop_early`` runs no block after the last taken, and the features are the final norm
        of its tokens, as timm's."""
        take, fmt = self._intermediates_request(indices, output_fmt, intermediates_only)
        stop = stop_early and not intermediates_only
        tokens, grid, features = self._block_tokens(x, take, not intermediates_only and not stop)
        if stop:
            features = self.norm(tokens[-1])  # (take is sorted: the last block run)
        if norm:
            tokens = [self.norm(t) for t in tokens]
        maps = self._maps_out([fmt(self._token_map(t, grid)) for t in tokens], x, False, nchw=output_fmt == "NCHW")
        prefix = [t[:, : self.num_prefix_tokens] for t in tokens] if return_prefix_tokens and self.num_prefix_tokens else None
        if output_dict:
            out: dict[str, Any] = {"image_intermediates": maps}
            if prefix is not None:
                out["image_intermediates_prefix"] = prefix
            if not intermediates_only:
                out["image_features"] = features
            return out
        if prefix is not None:  # (as timm, plain maps for a model without prefix tokens)
            maps = list(zip(maps, prefix))
        return maps if intermediates_only else (features, maps)

    def get_intermediate_layers(self, x: Tensor, n: int | Sequence[int] = 1, reshape: bool = False, return_prefix_tokens: bool = False, norm: bool = False) -> list:
        """The DINO interface timm's ViT keeps: the last ``n`` blocks' (or blocks ``n``') patch
        tokens, (B, Gh*Gw, D), or (B, D, Gh, Gw) maps with ``reshape``; :meth:`forward_intermediates`."""
        return self.forward_intermediates(x, n, return_prefix_tokens=return_prefix_tokens, norm=norm, output_fmt="NCHW" if reshape else "NLC", intermediates_only=True)

    def prune_for_features(self, indices: Sequence[int]) -> None:
        self.reset_classifier(0)
        self.norm = nn.Identity()
        self.fc_norm = nn.Identity()
        self.attn_pool = None
        if self.cfg.pos_embed_at != "every_layer":
            self.blocks = self.blocks[: max(indices) + 1]

    def group_matcher(self, coarse: bool = False) -> dict:
        """Group 0 is the embedding (the patch embedding, the hybrid's whole ResNet stem
        included, the class / distillation tokens, the position tables); then one group per
        block, the final norm with the last; the head (``fc_norm`` included) last. A ViT has
        no stages: ``coarse`` groups the same way."""
        return dict(
            stem=r"^(?:cls_token|dist_token|reg_token|pos_embed|patch_embed|norm_pre)",
            blocks=[(r"^blocks\.(\d+)\.", None), (r"^norm\.", MATCH_PREV_GROUP)],
        )

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if "pos_embed" in n or n.endswith("_token") or "rel_embed" in n}

    # ------------------------------------------------------------ checkpoints
    def adapt_state_dict(self, state_dict: dict[str, Tensor], source: VisionModel | None = None) -> dict[str, Tensor]:
        """Resample a checkpoint's patch embedding of another patch size (FlexiViT's PI-resize,
        :func:`~visionzoo.layers.resample_patch_kernel`), and its position tables to this model's
        grid as the forward resamples them for another input size: the 1-D embedding (bicubic;
        one set or one per block), the row and column tables of ``learned_2d`` (linear), the
        relative position tables. The source grid is the ``source`` model's where given, else
        taken as square.

        A checkpoint whose prefix tokens (class, distillation) are not this model's is of
        another variant and is refused, naming the token, before any resampling."""
        self._check_prefix_tokens(state_dict)
        kernel, own = state_dict.get("patch_embed.proj.weight"), getattr(self.patch_embed, "proj", None)
        if kernel is not None and isinstance(own, nn.Conv2d) and kernel.ndim == 4 and kernel.shape[0] == own.weight.shape[0] and kernel.shape[2:] != own.weight.shape[2:]:
            # another patch size (a /16 checkpoint in a /8 model): FlexiViT's PI-resize, as timm does;
            # another channel count is then adapted as any first convolution's
            state_dict["patch_embed.proj.weight"] = resample_patch_kernel(kernel, own.weight.shape[2:])
        pe = state_dict.get("pos_embed")
        old_grid = getattr(source, "grid_size", None)
        regridded = old_grid is not None and old_grid != self.grid_size
        if pe is not None and self.pos_embed is not None and (pe.shape != self.pos_embed.shape or regridded) and pe.shape[0] == self.pos_embed.shape[0]:
            # one set, or one per block (pos_embed_at="every_layer"), each resampled as the forward would
            state_dict["pos_embed"] = torch.cat([resample_abs_pos_embed(pe[i : i + 1], self.grid_size, old_grid, num_prefix_tokens=self.pos_prefix_rows)
                                                 for i in range(pe.shape[0])])
        for key, side in (("pos_embed_row", 0), ("pos_embed_col", 1)):  # learned_2d: (sets, G, D/2) tables, linear as the forward's
            t, own = state_dict.get(key), getattr(self, key)
            if t is not None and own is not None and t.ndim == 3 and t.shape[::2] == own.shape[::2] and t.shape[1] != own.shape[1]:
                state_dict[key] = F.interpolate(t.transpose(1, 2), size=self.grid_size[side], mode="linear", align_corners=False).transpose(1, 2)
        for name, m in self.named_modules():  # relative position tables: resampled as the forward does for another grid
            key = f"{name}.rel_embed"
            t = state_dict.get(key)
            if isinstance(m, RelPosAttention) and t is not None and t.shape != m.rel_embed.shape and t.ndim == m.rel_embed.ndim and t.shape[-1] == m.rel_embed.shape[-1]:
                state_dict[key] = m.resampled_table(t, m.grid_size)
        return state_dict

    def config_for_size(self, size: tuple[int, int], current: tuple[int, int], *, patch_size: int | Sequence[int] | None = None) -> ViTConfig:
        """timm's ``set_input_size(img_size, patch_size)``: another (square) patch size resamples the
        patch embedding's kernel by FlexiViT's PI-resize (:func:`~visionzoo.layers.resample_patch_kernel`)
        and the position embedding to the new grid. The hybrid's patches are its ResNet's 16 px."""
        if patch_size is None:
            return self.cfg
        p = to_2tuple(patch_size, "patch_size")
        if p == (self.reduction, self.reduction):
            return self.cfg
        if self.cfg.hybrid_layers:
            raise ValueError(f"{self._name()}: the hybrid's patches are its ResNet's {self.reduction} px; patch_size cannot change")
        if p[0] != p[1] or p[0] < 1:
            raise ValueError(f"{self._name()}: patch_size takes a positive int (square patches), got {patch_size!r}")
        return replace(self.cfg, patch_size=p[0])

    def _check_prefix_tokens(self, state_dict: dict[str, Tensor]) -> None:
        """ValueError where the checkpoint has a class / distillation token this model lacks,
        or lacks one it has: its position embedding then counts other prefix rows, and the
        variant differs (a distilled DeiT's head, a class-token-free average pool); likewise for
        another number of register tokens and for the other position layout (``no_embed_class``:
        no position rows for the prefix tokens). A checkpoint
        without a position embedding (a partial one, loaded with ``strict=False``) is left to the
        key checks of :func:`~visionzoo.load_checkpoint`."""
        if "pos_embed" not in state_dict:
            return
        has = {  # the model lacks the token the checkpoint has: what the checkpoint is
            "cls_token": "a class token (cls_token), which this model (class_token=False) has not: it is a checkpoint of a class-token variant",
            "dist_token": "a distillation token (dist_token, head_dist), which this model has not: it is a distilled DeiT's checkpoint (deit_*_distilled_*)",
        }
        lacks = {  # the model has a token the checkpoint lacks
            "cls_token": "no class token (cls_token), which this model has: it is a checkpoint of a variant without one (class_token=False, global_pool='avg')",
            "dist_token": "no distillation token (dist_token), which this distilled model has: it is a plain ViT's / DeiT's checkpoint, not a distilled DeiT's",
        }
        for key in ("cls_token", "dist_token"):
            ours = getattr(self, key) is not None
            if (key in state_dict) != ours:
                raise ValueError(f"the checkpoint has {lacks[key] if ours else has[key]} (model: {self._name()})")
        theirs = state_dict["reg_token"].shape[1] if "reg_token" in state_dict else 0
        if theirs != self.cfg.reg_tokens:
            raise ValueError(
                f"the checkpoint has {theirs} register tokens (reg_token), this model {self.cfg.reg_tokens}: "
                f"build it with reg_tokens={theirs} (model: {self._name()})"
            )
        rows, P = state_dict["pos_embed"].shape[1], self.num_prefix_tokens
        if P and self.pos_embed is not None and not self.cfg.no_embed_class and rows == self.pos_embed.shape[1] - P:
            # this model's grid and no prefix rows: timm's no_embed_class, whose tokens get no position
            raise ValueError(
                f"the checkpoint's position embedding has {rows} rows, one per patch of this model and none for the class / distillation "
                f"token (timm's no_embed_class=True, as DeiT III's): this model adds one to them too; build it with no_embed_class=True (model: {self._name()})"
            )
        if P and self.pos_embed is not None and self.cfg.no_embed_class and rows == self.pos_embed.shape[1] + P:
            raise ValueError(
                f"the checkpoint's position embedding has {rows} rows, {P} of them for the class / distillation token, which this model "
                f"(no_embed_class=True) gives none (model: {self._name()})"
            )
