"""EVA and EVA-02: plain ViTs pre-trained by masked image modelling towards CLIP features; and
the ViTs with rotary position embeddings built on the same class (RoPE-ViT, timm's SBB RoPE ViTs,
DINOv3).

Papers:
    Fang et al., "EVA: Exploring the Limits of Masked Visual Representation Learning at
    Scale", CVPR 2023 (EVA-g: a ViT-g/14 of 1408 wide, 40 blocks).
    Fang et al., "EVA-02: A Visual Representation for Neon Genesis", 2023 (arXiv 2303.11331).
    Sun et al., "EVA-CLIP: Improved Training Techniques for CLIP at Scale", 2023.
    Heo et al., "Rotary Position Embedding for Vision Transformer", ECCV 2024 (RoPE-Axial, and
    RoPE-Mixed's learned frequencies, on DeiT III's ViTs).
    Siméoni et al., "DINOv3", 2025 (arXiv 2508.10104): self-supervised backbones with register
    tokens and RoPE on centred coordinates, so that one model serves any resolution.

EVA-g is a ViT with an average-pooled head. EVA-02 keeps the plain ViT and changes its block
(the paper's "TrV", Fig. 2):

* 2-D rotary position embeddings on every block's queries and keys (:func:`~visionzoo.layers.rope_2d`;
  the class token is not rotated), besides the learned absolute embedding;
* a SwiGLU MLP whose hidden width is 2/3 of the plain MLP's (``mlp_ratio`` 8/3), so that
  parameters and FLOPs stay those of the ViT: packed into one fc1 in Ti and S, two layers
  (``fc1_g``, ``fc1_x``) with a LayerNorm on the hidden layer ("sub-LN") in B and L;
* queries and values with a bias and keys without (the BEiT layout: ``q_bias``, ``v_bias``),
  or three separate projections in B and L; the EVA-CLIP towers add a LayerNorm on the
  heads' output before the projection (``scale_attn_inner``);
* EVA-02-CLIP-E (``eva02_enormous``): post-norm blocks, ``x + norm(attn(x))``.

Keys are timm's (``timm.models.eva``), so its checkpoints load as they are; the authors' and
EVA-CLIP's layouts convert (:func:`_from_official`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from ..checkpoints import identity, register_converter
from ..layers import GluMlp, Mlp, ProjectedAttention, SwiGLU, apply_rope, attention, linear, linear_act, mixed_rope, mixed_rope_freqs, rope_2d
from ..layers.drop_path import DropPath, skippable
from ..layers.helpers import DerivedCache, autograd_off, no_hooks, plain_cpu_eager, trunc_normal_
from ..layers.linear import linear_add, qv_bias, qv_biased_linear, scaled_linear
from ..layers.mlp import residual_mlp
from ..registry import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, default_cfg, register_family
from .vit import ACT_LAYERS, MLP_LAYERS, ViTConfig, VisionTransformer
from .vit_convert import from_clip

__all__ = ["Eva", "EvaAttention", "EvaBlock", "EvaConfig"]


# --------------------------------------------------------------------------- blocks
class EvaAttention(ProjectedAttention):
    """Multi-head self-attention with EVA's projections and rotary position embeddings.

    Args:
        dim: token width C (``num_heads`` must divide it).
        num_heads: heads nH.
        qkv_bias: a bias on the queries and the values; the keys have none (a key bias
            shifts every logit of a query alike, so softmax cancels it) unless ``k_bias``.
        k_bias: a bias on the keys too: one ``qkv.bias`` (RoPE-ViT's, timm's ``attn_type="rope"``).
        qkv_fused: one ``qkv`` projection (biases ``q_bias`` / ``v_bias``), or separate
            ``q_proj``, ``k_proj``, ``v_proj``.
        num_prefix_tokens: leading tokens (class, registers) the rotation leaves alone.
        rope_half: the rotary pairs are channels (i, i + hd / 2) of a head (timm's ``rotate_half``,
            DINOv3's), not adjacent channels; the table must be built alike (``half=True``).
        norm_layer: a norm over the heads' concatenated output before ``proj`` (EVA-CLIP's
            ``inner_attn_ln``), or None.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.

    Shapes:
        x: (B, N, C) -> (B, N, C); ``rope``: (N - num_prefix_tokens, 2 * hd) from :func:`~visionzoo.layers.rope_2d`,
        or per head (nH, N - num_prefix_tokens, 2 * hd) from :func:`~visionzoo.layers.mixed_rope`.
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, k_bias: bool = False, qkv_fused: bool = True, num_prefix_tokens: int = 1,
                 rope_half: bool = False, norm_layer: Callable[[int], nn.Module] | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.num_prefix_tokens = num_prefix_tokens
        self.rope_half = rope_half
        self.fused = True
        separate_biases = qkv_bias and qkv_fused and not k_bias  # q_bias, v_bias beside a bias-free qkv
        self.q_bias = nn.Parameter(torch.zeros(dim)) if separate_biases else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if separate_biases else None
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias and k_bias) if qkv_fused else None
        self.q_proj = None if qkv_fused else nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = None if qkv_fused else nn.Linear(dim, dim, bias=qkv_bias and k_bias)
        self.v_proj = None if qkv_fused else nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.norm = norm_layer(dim) if norm_layer is not None else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def qkv_heads(self, x: Tensor, rope: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Per-head queries, keys and values, each (B, nH, N, hd); the patch tokens' queries
        and keys rotated by ``rope``.

        In CPU inference (fp32) the rotation of the queries and keys is one complex product:
        a pair of channels (a, b) is the number a + ib, turned by multiplying it with
        cos + i sin (:func:`_turns`; 1 for the prefix tokens), where the real form takes a
        slice, a copy of the swapped pairs, two products, a sum and a concatenation per tensor.
        With ``rope_half`` the pairs are channels (i, i + hd / 2): the projection's query and key
        rows are then re-ordered per head so that each pair comes out side by side (:meth:`_paired_qkv`).
        The queries and keys come out in that one common channel order, other than the
        projection's, which leaves every product q . k, and so the attention, unchanged.
        """
        B, N, C = x.shape
        nH, hd = self.num_heads, self.head_dim
        fast = rope is not None and x.dtype == rope.dtype == torch.float32 and autograd_off() and plain_cpu_eager(x)
        paired = self._paired_qkv(x) if fast and self.rope_half else None
        qkv = paired if paired is not None else self._joint_qkv(x)
        if qkv is None:
            q, k, v = (linear(p, x).view(B, N, nH, hd).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))  # 3 x (B, nH, N, hd)
        else:
            qkv = qkv.view(B, N, 3, nH, hd).permute(2, 0, 3, 1, 4)  # 3, B, nH, N, hd
            if fast:
                P, half = self.num_prefix_tokens, self.rope_half
                turns = _TURNS.get(rope, (rope,), partial(_turns, rope, P, half), (P, half))
                turns = (turns or _turns(rope, P, half))[0]  # (nH,) N, hd/2 (complex)
                qk = qkv[:2]
                if half and paired is None:  # a hooked projection: its output as it is, the pairs gathered
                    qk = torch.complex(*qk.chunk(2, dim=-1))  # 2, B, nH, N, hd/2
                else:
                    qk = torch.view_as_complex(qk.unflatten(-1, (-1, 2)))
                qk = torch.view_as_real(qk * turns)  # 2, B, nH, N, hd/2, 2
                q, k = qk.flatten(-2).unbind(0)
                return q, k, qkv[2]
            q, k, v = qkv.unbind(0)  # 3 x (B, nH, N, hd)
        if rope is not None:
            P = self.num_prefix_tokens
            q = torch.cat([q[:, :, :P], apply_rope(q[:, :, P:], rope, half=self.rope_half)], dim=2)
            k = torch.cat([k[:, :, :P], apply_rope(k[:, :, P:], rope, half=self.rope_half)], dim=2)
        return q, k, v

    def _paired_qkv(self, x: Tensor) -> Tensor | None:
        """(B, N, 3C) queries, keys and values from one product whose query and key rows are
        re-ordered per head so that each rotary pair (i, i + hd / 2) comes out side by side
        (CPU inference with ``rope_half``; the weights cached while they are unchanged); None
        where a projection is hooked or not a plain layer."""
        projs = (self.qkv,) if self.qkv is not None else (self.q_proj, self.k_proj, self.v_proj)
        if not all(type(p) is nn.Linear and no_hooks(p) for p in projs):
            return None
        sources = [t for p in projs for t in (p.weight, p.bias)] + [self.q_bias, self.v_bias]
        return linear_act(x, *(_PAIRED.get(self, sources, self._paired_weights) or self._paired_weights()))

    def _paired_weights(self) -> tuple[Tensor, Tensor | None]:
        if self.qkv is None:
            w, b = _side_by_side(self.q_proj, self.k_proj, self.v_proj)
        else:
            w, b = self.qkv.weight.detach(), self.qkv.bias if self.q_bias is None else qv_bias(self.q_bias, self.v_bias)
            b = None if b is None else b.detach()
        dim, hd = w.shape[0] // 3, self.head_dim
        half = torch.arange(hd // 2, device=w.device)
        pairs = torch.stack([half, half + hd // 2], dim=-1).flatten()  # 0, hd/2, 1, hd/2 + 1, ...
        rows = (torch.arange(0, dim, hd, device=w.device)[:, None] + pairs).flatten()  # every head's
        order = torch.cat([rows, rows + dim, torch.arange(2 * dim, 3 * dim, device=w.device)])  # queries, keys; values as they are
        return w[order], None if b is None else b[order]

    def _joint_qkv(self, x: Tensor) -> Tensor | None:
        """(B, N, 3C) queries, keys and values from one product: the fused projection with its
        q / v biases, or in CPU inference the three projections' weights side by side (cached
        while they are unchanged); None: the separate projections run as three layers."""
        if self.qkv is not None:
            return qv_biased_linear(self.qkv, x, self.q_bias, self.v_bias)
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if not (autograd_off() and plain_cpu_eager(x) and all(type(p) is nn.Linear and no_hooks(p) for p in projs)):
            return None
        sources = [t for p in projs for t in (p.weight, p.bias)]
        joint = _JOINT.get(self, sources, partial(_side_by_side, *projs)) or _side_by_side(*projs)
        return linear_act(x, *joint)

    def attend(self, x: Tensor, rope: Tensor | None = None) -> Tensor:
        """The heads' attended values, concatenated (and normed): (B, N, C) -> (B, N, C), before ``proj``."""
        B, N, C = x.shape
        q, k, v = self.qkv_heads(x, rope)
        x = attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0, fused=self.fused, scale=self.scale)  # B, nH, N, hd
        return self.norm(x.transpose(1, 2).reshape(B, N, C))  # B, N, C


_TURNS = DerivedCache()  # rotary table -> its complex form (CPU inference)
_SCALED = DerivedCache()  # block -> (proj, fc2) (weight, bias) times their layer scales (CPU inference)
_PAIRED = DerivedCache()  # attention -> its joint q / k / v weight and bias, rotary pairs side by side (CPU inference)
_JOINT = DerivedCache()  # attention -> its q / k / v projections' weights and biases side by side (CPU inference)


def _turns(rope: Tensor, num_prefix_tokens: int, half: bool = False) -> tuple[Tensor]:
    """A rotary table (..., N, 2 hd) as (..., P + N, hd / 2) complex factors cos + i sin, one per
    pair of channels (adjacent ones, or with ``half`` channels i and i + hd / 2), with P leading
    ones (the prefix tokens stay)."""
    hd = rope.shape[-1] // 2
    if half:
        turns = torch.complex(rope[..., hd:hd + hd // 2], rope[..., :hd // 2])  # ..., N, hd/2: cos + i sin
    else:
        turns = torch.complex(rope[..., hd::2], rope[..., 0:hd:2])
    ones = torch.ones(*turns.shape[:-2], num_prefix_tokens, hd // 2, dtype=turns.dtype, device=turns.device)
    return (torch.cat([ones, turns], dim=-2),)


def _side_by_side(q: nn.Linear, k: nn.Linear, v: nn.Linear) -> tuple[Tensor, Tensor]:
    """The (3C, C) weight and 3C bias of one product giving q, k and v (a missing bias: zeros)."""
    bias = [p.bias if p.bias is not None else p.weight.new_zeros(p.weight.shape[0]) for p in (q, k, v)]
    return torch.cat([q.weight, k.weight, v.weight]).detach(), torch.cat(bias).detach()


def _mlp(dim: int, hidden: int, kind: str, act_layer: Callable[[], nn.Module], norm_layer: Callable[[int], nn.Module] | None, drop: float) -> nn.Module:
    """The block's MLP; ``hidden`` is the width fc2 reads (of the gated product for the GLUs)."""
    if kind == "swiglu":
        return SwiGLU(dim, hidden, act_layer=act_layer, norm_layer=norm_layer, drop=drop)
    if kind == "swiglu_packed":
        return GluMlp(dim, 2 * hidden, act_layer=act_layer, drop=drop)
    return Mlp(dim, hidden, act_layer=act_layer, drop=drop)


class EvaBlock(nn.Module):
    """Pre-norm EVA block: ``x + attn(norm1(x), rope)``, then ``x + mlp(norm2(x))``; with
    ``init_values`` each branch is scaled per channel first (``gamma_1``, ``gamma_2``).

    Args:
        dim: token width C.
        num_heads: attention heads.
        mlp_hidden: the MLP's hidden width (of the gated product for the GLUs).
        mlp_layer: ``mlp``, ``swiglu_packed`` or ``swiglu``.
        act_layer: the MLP's activation.
        norm_layer: the block's norms (and the sub-LNs).
        qkv_bias, k_bias, qkv_fused, num_prefix_tokens, rope_half: as :class:`EvaAttention`'s.
        scale_mlp: a norm on the SwiGLU's hidden layer.
        scale_attn_inner: a norm on the attention's output before its projection.
        init_values: LayerScale's initial value; None: no layer scale.
        drop, attn_drop, drop_path: dropout after the projections, on the attention weights,
            and stochastic depth.

    Shapes:
        (B, N, C) -> (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_hidden: int, mlp_layer: str = "mlp", act_layer: Callable[[], nn.Module] = nn.GELU,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, qkv_bias: bool = True, k_bias: bool = False, qkv_fused: bool = True, num_prefix_tokens: int = 1,
                 rope_half: bool = False, scale_mlp: bool = False, scale_attn_inner: bool = False, init_values: float | None = None,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = EvaAttention(dim, num_heads, qkv_bias=qkv_bias, k_bias=k_bias, qkv_fused=qkv_fused, num_prefix_tokens=num_prefix_tokens,
                                 rope_half=rope_half, norm_layer=norm_layer if scale_attn_inner else None, attn_drop=attn_drop, proj_drop=drop)
        self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values))) if init_values is not None else None
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = _mlp(dim, mlp_hidden, mlp_layer, act_layer, norm_layer if scale_mlp else None, drop)
        self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values))) if init_values is not None else None
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor, rope: Tensor | None = None) -> Tensor:
        mlp_way = self._unrolled()
        if mlp_way:
            return self._forward_unrolled(x, rope, mlp_way)
        _SCALED.discard(self)  # training, autograd, hooks: no folded copy kept
        if self.gamma_1 is None:
            x = self.attn.add_to(x, self.norm1(x), rope, drop_path=self.drop_path1)
        else:
            x = x + self.drop_path1(self.gamma_1 * self.attn(self.norm1(x), rope))
        y = self.mlp(self.norm2(x))
        return x + self.drop_path2(y if self.gamma_2 is None else self.gamma_2 * y)

    def _unrolled(self) -> str | None:
        """Inference with plain, unhooked parts: both branches end in a projection that
        accumulates into the residual, its layer scale multiplied in. Returns how the MLP runs
        (``"fc1"``: fc1 + act and fc2's weights directly, ``"hidden"``: fc2's weights on the
        gated MLP's hidden layer), or None: the block runs as written."""
        attn, mlp = self.attn, self.mlp
        if isinstance(mlp, Mlp) and mlp.inference_unrolled(self.drop_path2):
            way = "fc1"
        elif isinstance(mlp, (GluMlp, SwiGLU)) and mlp.hidden_unrolled(self.drop_path2):
            way = "hidden"
        else:
            return None
        plain = (
            autograd_off()
            and type(attn).forward is ProjectedAttention.forward
            and type(attn.proj) is nn.Linear
            and skippable(attn.proj_drop) and skippable(self.drop_path1)
            and no_hooks(attn, attn.proj)
        )
        return way if plain else None

    def _forward_unrolled(self, x: Tensor, rope: Tensor | None, mlp_way: str) -> Tensor:
        """The attention's and the MLP's last products accumulate into the residual, with the
        layer scales multiplied into their weights (cached while those are unchanged): no
        separate passes for the scales and the sums."""
        attn, mlp = self.attn, self.mlp
        if self.gamma_1 is None:
            (w1, b1), (w2, b2) = (attn.proj.weight, attn.proj.bias), (mlp.fc2.weight, mlp.fc2.bias)
        else:
            sources = (attn.proj.weight, attn.proj.bias, self.gamma_1, mlp.fc2.weight, mlp.fc2.bias, self.gamma_2)
            (w1, b1), (w2, b2) = _SCALED.get(self, sources, self._scaled) or self._scaled()
        x = linear_add(x, attn.attend(self.norm1(x), rope), w1, b1)
        if mlp_way == "hidden":
            return linear_add(x, mlp.hidden(self.norm2(x)), w2, b2)
        return residual_mlp(x, x, mlp.fc1, mlp.act, w2, b2, self.norm2)

    def _scaled(self) -> tuple[tuple[Tensor, Tensor | None], tuple[Tensor, Tensor | None]]:
        return scaled_linear(self.attn.proj, self.gamma_1), scaled_linear(self.mlp.fc2, self.gamma_2)


class EvaPostNormBlock(nn.Module):
    """Post-norm EVA block (EVA-02-CLIP-E): ``x + norm1(attn(x, rope))``, then ``x + norm2(mlp(x))``.
    Arguments as :class:`EvaBlock`'s, without layer scale."""

    def __init__(self, dim: int, num_heads: int, *, mlp_hidden: int, mlp_layer: str = "mlp", act_layer: Callable[[], nn.Module] = nn.GELU,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, qkv_bias: bool = True, k_bias: bool = False, qkv_fused: bool = True, num_prefix_tokens: int = 1,
                 rope_half: bool = False, scale_mlp: bool = False, scale_attn_inner: bool = False, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.attn = EvaAttention(dim, num_heads, qkv_bias=qkv_bias, k_bias=k_bias, qkv_fused=qkv_fused, num_prefix_tokens=num_prefix_tokens,
                                 rope_half=rope_half, norm_layer=norm_layer if scale_attn_inner else None, attn_drop=attn_drop, proj_drop=drop)
        self.norm1 = norm_layer(dim)
        self.drop_path1 = DropPath(drop_path)
        self.mlp = _mlp(dim, mlp_hidden, mlp_layer, act_layer, norm_layer if scale_mlp else None, drop)
        self.norm2 = norm_layer(dim)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor, rope: Tensor | None = None) -> Tensor:
        x = x + self.drop_path1(self.norm1(self.attn(x, rope)))
        return x + self.drop_path2(self.norm2(self.mlp(x)))


class AxialRope(nn.Module):
    """The fixed 2-D rotary table (:func:`~visionzoo.layers.rope_2d`: on patch indices, or with
    ``centered`` DINOv3's centred coordinates) of a model's patch grid, cached (as timm's, not in
    the state dict); another grid's is computed when asked for.

    Shapes:
        ``rope(grid, device)``: (Gh * Gw, 2 * head_dim).
    """

    def __init__(self, grid: tuple[int, int], head_dim: int, *, temperature: float = 10000.0, ref_grid: tuple[int, int] | None = None, xy: bool = False,
                 centered: bool = False, half: bool = False, offset: float = 0.0) -> None:
        super().__init__()
        self.grid, self.head_dim, self.temperature, self.ref_grid, self.xy = grid, head_dim, temperature, ref_grid, xy
        self.centered, self.half, self.offset = centered, half, offset
        self.register_buffer("table", self._table(grid), persistent=False)

    def _table(self, grid: tuple[int, int], device: torch.device | None = None) -> Tensor:
        return rope_2d(grid, self.head_dim, temperature=self.temperature, ref_grid=self.ref_grid, xy=self.xy, centered=self.centered, half=self.half,
                       offset=self.offset, device=device)

    def forward(self, grid: tuple[int, int], device: torch.device) -> Tensor:
        return self.table if grid == self.grid else self._table(grid, device)


class MixedRope(nn.Module):
    """RoPE-Mixed's learned frequencies (key ``freqs``, timm's), (2, depth, nH, head_dim / 2)
    (:func:`~visionzoo.layers.mixed_rope_freqs`); in CPU inference the tables of a grid are
    cached while the frequencies are unchanged.

    Shapes:
        ``rope(grid, device)``: depth x (nH, Gh * Gw, 2 * head_dim).
    """

    def __init__(self, head_dim: int, depth: int, num_heads: int, *, temperature: float = 10.0, xy: bool = True, half: bool = False) -> None:
        super().__init__()
        self.xy, self.half = xy, half
        self.freqs = nn.Parameter(mixed_rope_freqs(head_dim, depth, num_heads, temperature=temperature))

    def forward(self, grid: tuple[int, int], device: torch.device) -> tuple[Tensor, ...]:
        """Each block's (nH, Gh * Gw, 2 * head_dim) table."""
        if autograd_off() and plain_cpu_eager(self.freqs):
            cached = _MIXED.get(self, (self.freqs,), lambda: mixed_rope(self.freqs, grid, xy=self.xy, half=self.half).unbind(0), (grid,))
            if cached is not None:
                return cached
        return mixed_rope(self.freqs, grid, xy=self.xy, half=self.half).unbind(0)


_MIXED = DerivedCache()  # MixedRope -> its tables of the last grid (CPU inference)


# --------------------------------------------------------------------------- model
ROPES = ("none", "axial", "centered", "mixed")


@dataclass(frozen=True)
class EvaConfig(ViTConfig):
    """One EVA variant: :class:`~visionzoo.models.vit.ViTConfig`'s fields (the embedding, the
    tokens, the pools, the dropouts), with EVA's defaults and these:

    Attributes:
        global_pool: ``avg`` (EVA's default: the mean of the patch tokens, then ``fc_norm``),
            ``token`` (the CLIP towers), ``max``, ``avgmax``, ``map`` (the Perception Encoder's
            attention pool; over every token, the class token included, as timm's EVA class:
            ``pool_include_prefix``).
        mlp_ratio: the MLP's hidden width over ``embed_dim``: of the gated product for the
            SwiGLUs (EVA-02's 8/3, so fc1 of ``swiglu_packed`` is twice that wide), as timm's.
        mlp_layer: ``mlp``, ``swiglu_packed`` (one fc1; Ti, S) or ``swiglu`` (``fc1_g`` and
            ``fc1_x``; B, L).
        init_values: layer scale's initial value (``gamma_1``, ``gamma_2``); None: none. As
            timm's EVA, 0 makes a layer scale of zeros.
        qkv_fused: one qkv projection, or three (``q_proj``, ``k_proj``, ``v_proj``).
        scale_mlp: a LayerNorm on the SwiGLU's hidden layer (sub-LN; ``mlp_layer="swiglu"``).
        scale_attn_inner: a LayerNorm on the attention's output before its projection (EVA-CLIP).
        k_bias: a bias on the keys too, one ``qkv.bias`` (RoPE-ViT; timm's ``attn_type="rope"``).
        mlp_align: the SwiGLU's hidden width rounded up to a multiple of this (timm's
            ``swiglu_align_to``, DINOv3's); 0: as ``mlp_ratio`` gives it.
        rope: 2-D rotary position embeddings in every block: ``none``, ``axial`` (fixed
            frequencies per axis on the patch index, :func:`~visionzoo.layers.rope_2d`; EVA-02,
            RoPE-Axial), ``centered`` (the same frequencies on centred coordinates in [-1, 1],
            times 2 pi; DINOv3) or ``mixed`` (learned 2-D frequencies per block and head, key
            ``rope.freqs``; RoPE-Mixed, :func:`~visionzoo.layers.mixed_rope`).
        rope_half: the rotary pairs are channels (i, i + hd / 2) of a head (timm's
            ``rope_rotate_half``, DINOv3's layout), not adjacent channels.
        rope_offset: added to the patch indices of ``axial`` and ``centered`` tables (timm's
            ``rope_grid_offset``; the Perception Encoder's 1).
        rope_ref_grid: the patch grid the axial coordinates are scaled to (EVA-02's 16 x 16 of
            its 224 px pre-training: a 448 px model turns by half a step per patch); None: the
            patch index itself.
        rope_temperature: the frequencies' base (10000 EVA-02, 100 RoPE-Axial, 10 RoPE-Mixed).
        rope_xy: the first axis of the rotary table is the column, the second the row (timm's
            ``rope_grid_indexing="xy"``, RoPE-ViT's); else the row first.
        post_norm: post-norm blocks (EVA-02-CLIP-E).
    """

    patch_size: int = 14
    global_pool: str = "avg"
    pool_include_prefix: bool = True
    qkv_fused: bool = True
    scale_mlp: bool = False
    scale_attn_inner: bool = False
    k_bias: bool = False
    mlp_align: int = 0
    rope: str = "none"
    rope_ref_grid: tuple[int, int] | None = None
    rope_temperature: float = 10000.0
    rope_xy: bool = False
    rope_half: bool = False
    rope_offset: float = 0.0
    post_norm: bool = False


class Eva(VisionTransformer):
    """EVA / EVA-02 classifier: a :class:`~visionzoo.models.vit.VisionTransformer` whose blocks
    are :class:`EvaBlock` (or :class:`EvaPostNormBlock`) and take the rotary embedding.

    Args:
        cfg: the variant (see :class:`EvaConfig`).
        num_classes: classifier outputs (0: none).
        in_chans: image channels.
        img_size: size the absolute position embedding (and the cached rotary table) is
            built for; other sizes whose sides divide by the patch size resample the one and
            recompute the other.
        drop_path_rate: stochastic depth of the last block (linear from 0).

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); ``forward_features``: (B, P + N, C) tokens.
    """

    family = "eva"
    mlp_layers = (*MLP_LAYERS, "swiglu")

    def __init__(self, cfg: EvaConfig, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (224, 224), drop_path_rate: float = 0.0) -> None:
        if cfg.pos_embed not in ("learned_1d", "none") or cfg.pos_embed_at != "stem":
            raise ValueError(f"EVA takes pos_embed 'learned_1d' or 'none' at the stem (its rotary embedding is relative already), got pos_embed={cfg.pos_embed!r}, pos_embed_at={cfg.pos_embed_at!r}")
        if cfg.distilled or cfg.hybrid_layers or cfg.num_parallel != 1:
            raise ValueError("EVA has no distillation token, hybrid stem or parallel blocks (distilled=False, hybrid_layers=(), num_parallel=1)")
        if cfg.scale_mlp and cfg.mlp_layer != "swiglu":
            raise ValueError(f"scale_mlp=True norms the hidden layer of the two-layer SwiGLU: it takes mlp_layer='swiglu', got {cfg.mlp_layer!r}")
        if cfg.post_norm and cfg.init_values is not None:
            raise ValueError("post-norm blocks have no layer scale: init_values must be None with post_norm=True")
        if cfg.rope not in ROPES:
            raise ValueError(f"rope must be one of {', '.join(map(repr, ROPES))}, got {cfg.rope!r}")
        if cfg.rope != "none" and (cfg.embed_dim // cfg.num_heads) % 4:
            raise ValueError(f"rope={cfg.rope!r} turns 2 halves of channel pairs per head: the head width {cfg.embed_dim} / {cfg.num_heads} must divide by 4")
        if cfg.rope in ("mixed", "centered") and cfg.rope_ref_grid is not None:
            raise ValueError(f"rope={cfg.rope!r} takes no reference grid (mixed: learned frequencies on the patch index; centered: coordinates span [-1, 1] on any grid): rope_ref_grid must be None")
        if cfg.rope == "none" and cfg.rope_half:
            raise ValueError("rope_half=True lays out the pairs of a rotary embedding: it needs rope other than 'none'")
        if cfg.rope_offset and cfg.rope not in ("axial", "centered"):
            raise ValueError(f"rope_offset shifts the coordinates of a fixed rotary table: it takes rope 'axial' or 'centered', got {cfg.rope!r}")
        if cfg.mlp_align < 0 or (cfg.mlp_align and cfg.mlp_layer != "swiglu"):
            raise ValueError(f"mlp_align rounds up the hidden width of the two-layer SwiGLU (timm's swiglu_align_to): it takes mlp_layer='swiglu' and a positive multiple, got mlp_align={cfg.mlp_align}, mlp_layer={cfg.mlp_layer!r}")
        super().__init__(cfg, num_classes=num_classes, in_chans=in_chans, img_size=img_size, drop_path_rate=drop_path_rate)

    final_norm_gates_fc_norm = False

    def default_fc_norm(self, pool: str) -> bool:
        """timm's EVA norms the pooled features only for ``'avg'`` (``'max'`` and ``'avgmax'`` pool
        the normed tokens)."""
        return pool == "avg"

    def pool_act_layer(self) -> Callable[[], nn.Module]:
        """timm's EVA builds its attention pool with GELU, whatever the blocks' activation."""
        return nn.GELU

    def _build_blocks(self, dpr: list[float], norm_layer: Callable[[int], nn.Module]) -> list[nn.Module]:
        cfg, D = self.cfg, self.embed_dim
        hd = D // cfg.num_heads
        # before the blocks, as timm's (its learned frequencies' key, rope.freqs, comes before theirs)
        self.rope: nn.Module | None = None
        if cfg.rope in ("axial", "centered"):
            self.rope = AxialRope(self.grid_size, hd, temperature=cfg.rope_temperature, ref_grid=cfg.rope_ref_grid, xy=cfg.rope_xy,
                                  centered=cfg.rope == "centered", half=cfg.rope_half, offset=cfg.rope_offset)
        elif cfg.rope == "mixed":
            self.rope = MixedRope(hd, cfg.depth, cfg.num_heads, temperature=cfg.rope_temperature, xy=cfg.rope_xy, half=cfg.rope_half)
        hidden = int(D * cfg.mlp_ratio)
        if cfg.mlp_align:
            hidden += -hidden % cfg.mlp_align
        kw = dict(mlp_hidden=hidden, mlp_layer=cfg.mlp_layer, act_layer=ACT_LAYERS[cfg.act_layer], norm_layer=norm_layer, k_bias=cfg.k_bias,
                  qkv_bias=cfg.qkv_bias, qkv_fused=cfg.qkv_fused, num_prefix_tokens=self.num_prefix_tokens, rope_half=cfg.rope_half, scale_mlp=cfg.scale_mlp,
                  scale_attn_inner=cfg.scale_attn_inner, drop=cfg.proj_drop_rate, attn_drop=cfg.attn_drop_rate)
        if cfg.post_norm:
            return [EvaPostNormBlock(D, cfg.num_heads, drop_path=dpr[i], **kw) for i in range(cfg.depth)]
        return [EvaBlock(D, cfg.num_heads, init_values=cfg.init_values, drop_path=dpr[i], **kw) for i in range(cfg.depth)]

    def _init_weights(self) -> None:
        """timm's EVA init: truncated normal (std 0.02) linear weights and tokens, each block's
        output projections divided by sqrt(2 * (i + 1)), the classifier scaled by 1e-3."""
        super()._init_weights()
        for t in (self.cls_token, self.reg_token):
            if t is not None:
                trunc_normal_(t)
        with torch.no_grad():
            for i, blk in enumerate(self.blocks):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))
            if isinstance(self.head, nn.Linear):
                self.head.weight.mul_(1e-3)
                self.head.bias.mul_(1e-3)

    def _blocks_context(self, grid: tuple[int, int], x: Tensor) -> list[Tensor | None]:
        """Each block's rotary table for ``grid`` (None without one): the axial table for all of them,
        or RoPE-Mixed's own per block."""
        if self.rope is None:
            return [None] * len(self.blocks)
        table = self.rope(grid, x.device)
        return list(table) if isinstance(self.rope, MixedRope) else [table] * len(self.blocks)

    def _block(self, i: int, x: Tensor, grid: tuple[int, int], context: object = None) -> Tensor:
        ropes = self._blocks_context(grid, x) if context is None else context
        return self.blocks[i](x, ropes[i])

    def forward_features(self, x: Tensor) -> Tensor:
        x, grid = self._embed(x)
        for blk, rope in zip(self.blocks, self._blocks_context(grid, x)):
            x = blk(x, rope)
        return self.norm(x)  # B, P + N, D

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | ({"rope.freqs"} if isinstance(self.rope, MixedRope) else set())


# --------------------------------------------------------------------------- checkpoints
register_converter("eva", "timm")(identity)

_OFFICIAL_RENAMES = (  # the authors' (EVA-02, EVA-CLIP) names -> timm's
    ("mlp.ffn_ln.", "mlp.norm."),
    ("attn.inner_attn_ln.", "attn.norm."),
    ("mlp.w12.", "mlp.fc1."),
    ("mlp.w1.", "mlp.fc1_g."),
    ("mlp.w2.", "mlp.fc1_x."),
    ("mlp.w3.", "mlp.fc2."),
)


_DINOV3_RENAMES = (("storage_tokens", "reg_token"), (".ls1.gamma", ".gamma_1"), (".ls2.gamma", ".gamma_2"))


@register_converter("eva", "official")
def _from_official(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """The authors' layouts: EVA-02's MIM and fine-tuned checkpoints and EVA-CLIP's whole model
    (baaivision/EVA), whose image tower is under ``visual.`` (its text tower is dropped); and
    DINOv3's backbones (facebookresearch/dinov3).

    EVA: the SwiGLU is ``w1`` (gate), ``w2``, ``w3``; the sub-LNs ``ffn_ln`` and ``inner_attn_ln``;
    with separate projections the query and value biases are ``q_bias`` / ``v_bias``. The
    rotary tables they store are recomputed, not loaded; the MIM checkpoints' mask token and
    prediction head are dropped, and their final norm becomes ``fc_norm`` where the model
    pools by the mean (as timm loads them for fine-tuning).

    DINOv3: ``storage_tokens`` are the register tokens, ``ls1`` / ``ls2`` the layer scales; the
    one ``qkv.bias`` (its key third masked to zero by ``bias_mask``) becomes ``q_bias`` and
    ``v_bias``, or is dropped where it is zero and the model has none (the distilled B, L and
    H+ were trained with zero biases, hence timm's variants with and without ``_qkvb``). The
    rotary periods (stored in bf16; recomputed in fp32, as timm does), the mask token and the
    7B's norm of the local crops' class token (pre-training only) are dropped.

    The Perception Encoder (facebookresearch/perception_models): OpenAI CLIP's layout
    (:func:`~visionzoo.models.vit_convert.from_clip`; ``conv1``, ``transformer.resblocks.N``,
    under ``visual.`` in the core checkpoints, whose text tower is dropped) with the layer
    scales ``ls_1`` / ``ls_2`` and an attention pool (``probe``, one ``in_proj`` for the query
    and the keys / values, ``layernorm``); ``proj`` is the classifier, as in timm."""
    for clip_prefix in ("visual.", "module.visual.", ""):
        if f"{clip_prefix}conv1.weight" in sd:
            return _from_pe(from_clip(sd, clip_prefix))
    prefix = "visual." if any(k.startswith("visual.") for k in sd) else ""
    separate = f"{prefix}blocks.0.attn.q_proj.weight" in sd
    dinov3 = "storage_tokens" in sd or "blocks.0.ls1.gamma" in sd
    mim = f"{prefix}mask_token" in sd and not dinov3
    fc_norm = getattr(model, "fc_norm", None)
    has_qv_bias = any(name.endswith("attn.q_bias") for name, _ in model.named_parameters())
    out = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        k = k[len(prefix):]
        if "rope." in k or k.startswith("lm_head.") or k == "mask_token":
            continue
        if dinov3:
            if k.startswith(("rope_embed.", "local_cls_norm.")) or k.endswith(".bias_mask"):
                continue
            if k.startswith("cls_norm."):
                raise ValueError("this DINOv3 checkpoint norms its class and register tokens apart from the patch tokens (cls_norm): the model here has one final norm for all tokens")
            for old, new in _DINOV3_RENAMES:
                k = k.replace(old, new)
            if k.endswith("attn.qkv.bias"):
                q, _, value = v.chunk(3)  # the key third is masked out
                if has_qv_bias:
                    out[k.replace("qkv.bias", "q_bias")], out[k.replace("qkv.bias", "v_bias")] = q, value
                elif q.any() or value.any():
                    raise ValueError(f"{k}: this DINOv3 checkpoint has query / value biases, which the model has not: build it with qkv_bias=True (timm's '_qkvb' variants)")
                continue
        if mim and k.startswith("norm.") and isinstance(fc_norm, nn.LayerNorm):
            k = "fc_" + k
        for old, new in _OFFICIAL_RENAMES:
            k = k.replace(old, new)
        if separate:
            k = k.replace("attn.q_bias", "attn.q_proj.bias").replace("attn.v_bias", "attn.v_proj.bias")
        out[k] = v
    return out


def _from_pe(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The Perception Encoder's keys past CLIP's renames: layer scales and the attention pool."""
    out = {}
    for k, v in sd.items():
        k = k.replace(".ls_1.gamma", ".gamma_1").replace(".ls_2.gamma", ".gamma_2")
        k = k.replace("attn_pool.probe", "attn_pool.latent").replace("attn_pool.layernorm.", "attn_pool.norm.").replace("attn_pool.attn.proj.", "attn_pool.proj.")
        if k.startswith("attn_pool.attn.qkv."):  # the query's rows, then the keys' and values'
            kind = k.rsplit(".", 1)[1]
            dim = v.shape[0] // 3
            out[f"attn_pool.q.{kind}"], out[f"attn_pool.kv.{kind}"] = v[:dim], v[dim:]
            continue
        out[k] = v
    return out


# --------------------------------------------------------------------------- variants
_CLIP_MEAN_STD = dict(mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
_EVA02 = dict(mlp_ratio=8 / 3, act_layer="silu", rope="axial", rope_ref_grid=(16, 16))
_EVA02_SIZES = {  # name: (embed_dim, depth, num_heads, the MLP and attention layout)
    "tiny": (192, 12, 3, dict(mlp_layer="swiglu_packed")),
    "small": (384, 12, 6, dict(mlp_layer="swiglu_packed")),
    "base": (768, 12, 12, dict(mlp_layer="swiglu", scale_mlp=True, qkv_fused=False)),
    "large": (1024, 24, 16, dict(mlp_layer="swiglu", scale_mlp=True, qkv_fused=False)),
}
_EVA_G = dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=6144 / 1408)

# name: (config, side, crop_pct, crop_mode, mean / std, num_classes of timm's default weights)
_TABLE: dict[str, tuple[EvaConfig, int, float, str, dict, int]] = {
    "eva_giant_patch14_224": (EvaConfig(**_EVA_G), 224, 0.9, "center", _CLIP_MEAN_STD, 1000),
    "eva_giant_patch14_336": (EvaConfig(**_EVA_G), 336, 1.0, "squash", _CLIP_MEAN_STD, 1000),
    "eva_giant_patch14_560": (EvaConfig(**_EVA_G), 560, 1.0, "squash", dict(mean=IMAGENET_MEAN, std=IMAGENET_STD), 1000),
    "eva_giant_patch14_clip_224": (EvaConfig(global_pool="token", **_EVA_G), 224, 0.9, "center", _CLIP_MEAN_STD, 1024),
}
for _size, (_d, _l, _h, _layout) in _EVA02_SIZES.items():
    _cfg = EvaConfig(embed_dim=_d, depth=_l, num_heads=_h, **_EVA02, **_layout)
    _TABLE[f"eva02_{_size}_patch14_224"] = (_cfg, 224, 0.9, "center", _CLIP_MEAN_STD, 0)  # the MIM backbones: no classifier
    _side = 336 if _size in ("tiny", "small") else 448
    _TABLE[f"eva02_{_size}_patch14_{_side}"] = (_cfg, _side, 1.0, "squash" if _side == 448 else "center", _CLIP_MEAN_STD, 1000)
# EVA-02-CLIP's image towers: the class token, a LayerNorm inside the attention; the "classifier" is
# the projection into the joint embedding, as timm builds them
_CLIP_TOWER = dict(global_pool="token", scale_attn_inner=True, **_EVA02, mlp_layer="swiglu", scale_mlp=True, qkv_fused=False)
_TABLE |= {
    "eva02_base_patch16_clip_224": (EvaConfig(patch_size=16, **_CLIP_TOWER), 224, 0.9, "center", _CLIP_MEAN_STD, 512),
    "eva02_large_patch14_clip_224": (EvaConfig(embed_dim=1024, depth=24, num_heads=16, **_CLIP_TOWER), 224, 0.9, "center", _CLIP_MEAN_STD, 768),
    "eva02_large_patch14_clip_336": (EvaConfig(embed_dim=1024, depth=24, num_heads=16, **_CLIP_TOWER), 336, 1.0, "center", _CLIP_MEAN_STD, 768),
    "eva02_enormous_patch14_clip_224": (
        EvaConfig(embed_dim=1792, depth=64, num_heads=16, mlp_ratio=15360 / 1792, global_pool="token", post_norm=True), 224, 0.9, "center", _CLIP_MEAN_STD, 1024,
    ),
}

# timm's "SBB" ViTs with axial RoPE and no absolute embedding: register tokens, mean-pooled, LayerScale
_SBB = dict(patch_size=16, init_values=1e-5, class_token=False, pos_embed="none", rope="axial", rope_ref_grid=(16, 16))
_INCEPTION_MEAN_STD = dict(mean=INCEPTION_MEAN, std=INCEPTION_STD)
_TABLE |= {
    "vit_medium_patch16_rope_reg1_gap_256": (EvaConfig(embed_dim=512, depth=12, num_heads=8, reg_tokens=1, **_SBB), 256, 0.95, "center", _INCEPTION_MEAN_STD, 1000),
    "vit_mediumd_patch16_rope_reg1_gap_256": (EvaConfig(embed_dim=512, depth=20, num_heads=8, reg_tokens=1, qkv_bias=False, **_SBB), 256, 0.95, "center", _INCEPTION_MEAN_STD, 1000),
    "vit_betwixt_patch16_rope_reg4_gap_256": (EvaConfig(embed_dim=640, depth=12, num_heads=10, reg_tokens=4, **_SBB), 256, 0.95, "center", _CLIP_MEAN_STD, 1000),
    "vit_base_patch16_rope_reg1_gap_256": (EvaConfig(embed_dim=768, depth=12, num_heads=12, reg_tokens=1, **_SBB), 256, 0.95, "center", _INCEPTION_MEAN_STD, 1000),
}
# RoPE-ViT (Heo et al., "Rotary Position Embedding for Vision Transformer", ECCV 2024; naver-ai/rope-vit):
# DeiT III's ViTs (LayerScale, class token) with RoPE-Axial (base 100) or RoPE-Mixed (learned, base 10),
# columns first; "_ape" with DeiT III's position embedding for the patch tokens besides
_ROPE_VIT = dict(patch_size=16, k_bias=True, init_values=1e-5, global_pool="token", rope_xy=True)
for _size, (_d, _l, _h) in {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}.items():
    for _kind, _rope in (("rope", dict(rope="axial", rope_temperature=100.0)), ("rope_mixed", dict(rope="mixed", rope_temperature=10.0))):
        for _ape, _pos in (("", dict(pos_embed="none")), ("_ape", dict(no_embed_class=True))):
            _TABLE[f"vit_{_size}_patch16_{_kind}{_ape}_224"] = (
                EvaConfig(embed_dim=_d, depth=_l, num_heads=_h, **_ROPE_VIT, **_rope, **_pos), 224, 0.9, "center", dict(mean=IMAGENET_MEAN, std=IMAGENET_STD), 1000,
            )

# DINOv3 (Siméoni et al., 2025; facebookresearch/dinov3): self-supervised backbones without a classifier,
# 4 register ("storage") tokens, layer scale, no absolute embedding, RoPE on centred coordinates (base 100)
# in the half layout; mean-pooled patch tokens after the final norm (timm's default; the authors pool
# by the class token: global_pool="token"). "_qkvb": query / value biases (timm's names).
_DINOV3 = dict(patch_size=16, reg_tokens=4, pos_embed="none", fc_norm=False, norm_eps=1e-5, init_values=1e-5,
               rope="centered", rope_half=True, rope_temperature=100.0)
_DINOV3_SWIGLU = dict(mlp_layer="swiglu", act_layer="silu", mlp_align=8)
_DINOV3_SIZES = {  # name: (embed_dim, depth, num_heads, the MLP, with / without query and value biases)
    "tiny": (192, 12, 3, {}, ("_qkvb",)),
    "small": (384, 12, 6, {}, ("", "_qkvb")),
    "small_plus": (384, 12, 6, _DINOV3_SWIGLU, ("", "_qkvb")),
    "base": (768, 12, 12, {}, ("", "_qkvb")),
    "large": (1024, 24, 16, {}, ("", "_qkvb")),
    "huge_plus": (1280, 32, 20, _DINOV3_SWIGLU, ("", "_qkvb")),
    "7b": (4096, 40, 32, dict(_DINOV3_SWIGLU, mlp_ratio=2.0, mlp_align=64), ("",)),
}
for _size, (_d, _l, _h, _ffn, _biases) in _DINOV3_SIZES.items():
    for _b in _biases:
        _TABLE[f"vit_{_size}_patch16_dinov3{_b}"] = (
            EvaConfig(embed_dim=_d, depth=_l, num_heads=_h, qkv_bias=_b == "_qkvb", **_DINOV3, **_ffn), 256, 1.0, "center", dict(mean=IMAGENET_MEAN, std=IMAGENET_STD), 0,
        )

# The Perception Encoder (Bolya et al., 2025; facebookresearch/perception_models), as timm builds it: CLIP-style
# towers (norm before the blocks, bias-free patches, a key bias) with axial RoPE on the patch index plus 1
# (columns first, scaled to the pre-training grid) besides the absolute embedding. Core: the attention
# pool (8 heads) and the projection into the joint embedding as the classifier; language and spatial
# towers: no final norm, no classifier; G: no class token and layer scale 0.1 (also on L-lang).
_PE = dict(qkv_fused=True, k_bias=True, pre_norm=True, norm_eps=1e-5, rope="axial", rope_xy=True, rope_offset=1.0)
_PE_CORE = dict(_PE, global_pool="map", pool_heads=8, pool_mlp_ratio=4.0)
_PE_TOWER = dict(_PE, final_norm=False, fc_norm=False)
_PE_G = dict(embed_dim=1536, num_heads=16, mlp_ratio=8960 / 1536, class_token=False, rope_offset=0.0)
_PE_ROWS = {  # name: (patch, embed_dim, depth, num_heads, its kind and the rest, reference grid, side, classes)
    "core_tiny_patch16_384": (16, 192, 12, 3, _PE_CORE, 24, 384, 512),
    "core_small_patch16_384": (16, 384, 12, 6, _PE_CORE, 24, 384, 512),
    "core_base_patch16_224": (16, 768, 12, 12, _PE_CORE, 14, 224, 1024),
    "core_large_patch14_336": (14, 1024, 24, 16, _PE_CORE, 24, 336, 1024),
    "core_gigantic_patch14_448": (14, None, 50, None, dict(_PE_CORE, **_PE_G), 32, 448, 1280),
    "lang_large_patch14_448": (14, 1024, 23, 16, dict(_PE_TOWER, init_values=0.1), 32, 448, 0),
    "lang_gigantic_patch14_448": (14, None, 47, None, dict(_PE_TOWER, init_values=0.1, **_PE_G), 32, 448, 0),
    "spatial_tiny_patch16_512": (16, 192, 12, 3, _PE_TOWER, 32, 512, 0),
    "spatial_small_patch16_512": (16, 384, 12, 6, _PE_TOWER, 32, 512, 0),
    "spatial_base_patch16_512": (16, 768, 12, 12, _PE_TOWER, 32, 512, 0),
    "spatial_large_patch14_448": (14, 1024, 24, 16, _PE_TOWER, 32, 448, 0),
    "spatial_gigantic_patch14_448": (14, None, 50, None, dict(_PE_TOWER, init_values=0.1, **_PE_G), 32, 448, 0),
}
for _n, (_p, _d, _l, _h, _kind, _ref, _side, _classes) in _PE_ROWS.items():
    _size = {} if _d is None else dict(embed_dim=_d, num_heads=_h)
    _TABLE[f"vit_pe_{_n}"] = (EvaConfig(patch_size=_p, depth=_l, rope_ref_grid=(_ref, _ref), **_size, **_kind), _side, 1.0, "center", _INCEPTION_MEAN_STD, _classes)

VARIANTS = {name: row[0] for name, row in _TABLE.items()}
_DEFAULT_CFGS = {
    name: default_cfg(side, crop_pct=crop, first_conv="patch_embed.proj", num_classes=classes, **({"crop_mode": mode} if mode != "center" else {}), **norm)
    for name, (_, side, crop, mode, norm, classes) in _TABLE.items()
}

PUBLISHED = {  # the authors' release, as mmpretrain's table of the converted weights lists it
    "eva02_tiny_patch14_336": dict(params=5.76, gmacs=4.68, top1=80.69, note="EVA-02 release (ImageNet-21k MIM, ImageNet-1k fine-tuning), via mmpretrain's table"),
    "eva02_small_patch14_336": dict(params=22.13, gmacs=15.48, top1=85.78, note="EVA-02 release (ImageNet-21k MIM, ImageNet-1k fine-tuning), via mmpretrain's table"),
    "eva02_base_patch14_448": dict(params=87.13, gmacs=107.11, top1=88.47, note="EVA-02 release (ImageNet-21k MIM and fine-tuning, then 1k), via mmpretrain's table; 88.29 without the 21k fine-tuning"),
    "eva02_large_patch14_448": dict(params=305.08, gmacs=362.33, top1=89.65, note="EVA-02 release (ImageNet-21k MIM and fine-tuning, then 1k), via mmpretrain's table; 89.83 from Merged-38M MIM"),
}
for _name, _params in (("small", 21), ("small_plus", 29), ("base", 86), ("large", 300), ("huge_plus", 840), ("7b", 6716)):  # millions, rounded
    PUBLISHED[f"vit_{_name}_patch16_dinov3"] = dict(params=_params, note="DINOv3 authors' model table (facebookresearch/dinov3 README, LVD-1689M; approximate: ViT-S 21.6M reads 21M); the backbone has no classifier")

register_family(
    "eva",
    Eva,
    VARIANTS,
    default_cfgs=_DEFAULT_CFGS,
    published=PUBLISHED,
    paper="Fang et al., EVA, CVPR 2023; EVA-02, arXiv 2303.11331 (2023); EVA-CLIP: Sun et al., arXiv 2303.15389 (2023); RoPE-ViT: Heo et al., ECCV 2024; "
          "DINOv3: Siméoni et al., arXiv 2508.10104 (2025); Perception Encoder: Bolya et al., arXiv 2504.13181 (2025)",
)
