"""Swin Transformer V2: Swin with cosine attention, a continuous position bias and res-post-norm.

Paper: Liu et al., "Swin Transformer V2: Scaling Up Capacity and Resolution", CVPR 2022.

The network is Swin's (:mod:`visionzoo.models.swin`: patch embedding, four stages of
(shifted-)window attention opened by patch merging, the same window plans and masks), with
the paper's three changes for training large models at high resolution:

* **scaled cosine attention** (Sec. 3.2): the logits are cos(q, k) / tau, one learnable
  temperature per head, stored as ``logit_scale`` = log(1 / tau) and clamped at log(100);
* **log-spaced continuous position bias** (Sec. 3.3): a 2-layer MLP (``cpb_mlp``, 2 -> 512 ->
  heads) maps each relative offset (dy, dx), normalised by the window (or by the window
  of pre-training, ``pretrained_window_sizes``, so that a fine-tuned larger window reads the
  offsets it learned), scaled to [-8, 8] and log-spaced as sign(d) * log2(1 + |d|) / 3, to a
  bias per head, 16 * sigmoid(mlp) added to the logits. A window of any size thus has a bias
  without interpolating a table;
* **res-post-norm** (Sec. 3.1): each block's branch is normed at its output, x + LN(attn(x)),
  x + LN(mlp(x)), whose norms start at zero (every block the identity at initialisation); patch
  merging norms after its linear layer.

Queries and values carry biases, keys none (``q_bias`` / ``v_bias``). Maps that do not fit the
windows follow Swin's "shrink" rule, padding before the shift (see the Swin module doc; where
no padding is needed ours and timm's logits agree). In CPU inference the position bias is
computed once per weights (cached) rather than per forward, and a stage keeps its tokens in
window order as in Swin.

State-dict keys follow timm's ``swinv2_*`` models (``layers.N.downsample`` opens stage N); the
official release (downsampling closing a stage, ``head`` a plain Linear) converts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoints import register_converter
from ..layers import DropPath, Mlp, linear, trunc_normal_
from ..layers.attention import ProjectedAttention
from ..layers.helpers import DerivedCache, autograd_off, no_hooks, plain_cpu_eager, to_2tuple
from ..layers.linear import qv_biased_linear
from ..registry import default_cfg, register_family
from .swin import (
    _B, _L, _S, _T, PatchMerging, SwinBlocks, SwinConfig, SwinStage, SwinTransformer, WindowBlock, WindowPlan, _from_official, _from_timm, table_index, window_sdpa,
)

__all__ = ["CosineWindowAttention", "SwinTransformerV2", "SwinV2Config", "log_spaced_offsets"]

#: the largest logit scale, 1 / tau with tau >= 0.01 (the paper's clamp)
MAX_LOGIT_SCALE = math.log(100.0)


def log_spaced_offsets(window: tuple[int, int], reference: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """((2Mh-1)(2Mw-1), 2) relative offsets (dy, dx) of an Mh x Mw window, row by row as Swin's
    bias table: each divided by ``reference - 1`` along its axis (at least 1), times 8, then
    sign(d) * log2(1 + |d|) / log2(8)."""
    axes = [torch.arange(-(m - 1), m, device=device, dtype=torch.float32) / max(r - 1, 1) for m, r in zip(window, reference)]
    d = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 2) * 8
    return torch.sign(d) * torch.log2(d.abs() + 1.0) / math.log2(8)


class CosineWindowAttention(ProjectedAttention):
    """Window attention with scaled cosine logits and a continuous position bias (SwinV2).

    Args:
        dim: token width C.
        num_heads: heads nH.
        window: the window (Mh, Mw) the block is built for.
        qkv_bias: biases on the queries and values (the keys have none).
        attn_drop, proj_drop: dropout on the attention weights and after ``proj``.
        pretrained_window: the window whose offsets normalise the bias MLP's input (SwinV2's
            ``pretrained_window_size``); 0 or (0, 0): ``window`` itself.

    Shapes:
        (B, nW, N, C) windows of N = Mh*Mw tokens -> (B, nW, N, C).
    """

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], *, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 pretrained_window: int | tuple[int, int] = 0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        pretrained = to_2tuple(pretrained_window, "pretrained_window")
        if min(pretrained) < 0 or (0 in pretrained and pretrained != (0, 0)):
            raise ValueError(f"pretrained_window must be 0 (the window itself) or positive sides, got {pretrained_window!r}")
        self.num_heads, self.head_dim, self.window = num_heads, dim // num_heads, window
        self.offset_reference = pretrained if pretrained[0] else window
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False))
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.register_buffer("relative_coords_table", log_spaced_offsets(window, self.offset_reference), persistent=False)
        self.register_buffer("relative_position_index", table_index(window, window), persistent=False)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused = True

    def relative_bias(self, window: tuple[int, int]) -> Tensor:
        """(nH, N, N) bias of every query-key pair of a window, 16 * sigmoid(cpb_mlp(offset)).
        A window other than the built one (a map smaller than it) reads the offsets it has,
        normalised as the built window's. Cached in CPU inference while the MLP is unchanged."""
        N = window[0] * window[1]
        if window != self.window:
            device = self.relative_coords_table.device
            offsets = log_spaced_offsets(window, self.offset_reference, device).to(self.relative_coords_table.dtype)
            return self._bias(offsets, table_index(window, window).to(device), N)
        offsets, idx = self.relative_coords_table, self.relative_position_index
        if autograd_off() and not self.training and plain_cpu_eager(offsets) and no_hooks(*self.cpb_mlp.modules()):
            cached = _BIAS.get(self, [*self.cpb_mlp.parameters(), offsets], lambda: (self._bias(offsets, idx, N),))
            if cached is not None:
                return cached[0]
        return self._bias(offsets, idx, N)

    def _bias(self, offsets: Tensor, idx: Tensor, N: int) -> Tensor:
        """The bias of the MLP at ``offsets`` (one row per offset), gathered for the N x N pairs by ``idx``."""
        table = self.cpb_mlp(offsets)  # (2Mh-1)(2Mw-1), nH
        return 16 * torch.sigmoid(table[idx.view(-1)].view(N, N, self.num_heads).permute(2, 0, 1).contiguous())

    def attend(self, x: Tensor, window: tuple[int, int], mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """(B, nW, N, C) windows -> the heads' output (B, nW, N, C) before ``proj``."""
        B, nW, N, C = x.shape
        nH, hd = self.num_heads, self.head_dim
        qkv = qv_biased_linear(self.qkv, x, self.q_bias, self.v_bias).view(B, nW, N, 3, nH, hd).permute(3, 0, 1, 4, 2, 5)  # 3, B, nW, nH, N, hd
        # cos(q, k) / tau as the product of unit vectors, the queries' times 1 / tau per head: one
        # pass over q and k for their norms, one multiplying each by its factor (F.normalize's
        # x / max(|x|, 1e-12))
        qk = qkv[:2]
        factor = torch.linalg.vector_norm(qk, dim=-1, keepdim=True).clamp_min(1e-12).reciprocal()  # 2, B, nW, nH, N, 1
        scale = torch.clamp(self.logit_scale, max=MAX_LOGIT_SCALE).exp()  # nH, 1, 1
        factor = factor * torch.stack([scale, torch.ones_like(scale)])[:, None, None]  # 2, 1, 1, nH, 1, 1 broadcast
        q, k = (qk * factor).unbind(0)
        v = qkv[2]
        return window_sdpa(q, k, v, self.relative_bias(window), mask, dropout_p=self.attn_drop if self.training else 0.0, fused=self.fused, scale=1.0)


_BIAS = DerivedCache()  # attention -> its (nH, N, N) position bias (CPU inference)


class SwinV2Block(WindowBlock):
    """(Shifted-)window cosine attention -> LN -> + x; MLP -> LN -> + x (res-post-norm). Maps
    are (B, H, W, C). Arguments as :class:`SwinBlock`'s; ``pretrained_window`` as
    :class:`CosineWindowAttention`'s. (Its layers are registered in timm's order, so that the
    state dict lists its keys as timm's.)"""

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], *, shifted: bool, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, pretrained_window: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.shifted = shifted
        self.attn = CosineWindowAttention(dim, num_heads, window, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop, pretrained_window=pretrained_window)
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path1 = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor, plan: WindowPlan) -> Tensor:
        x = x + self.drop_path1(self.norm1(self.window_attention(x, plan)))
        return x + self.drop_path2(self.norm2(self.mlp(x)))

    def forward_windowed(self, x: Tensor, plan: WindowPlan) -> Tensor:
        """The block on tokens already in ``plan.order`` ((B, L, C)), as :meth:`SwinBlock.forward_windowed`."""
        B, L, C = x.shape
        N = plan.window[0] * plan.window[1]
        y = self.attn(x.view(B, L // N, N, C), plan.window, plan.mask).view(B, L, C)
        x = x + self.drop_path1(self.norm1(y))
        return x + self.drop_path2(self.norm2(self.mlp(x)))


class SwinV2Blocks(SwinBlocks):
    windowed_blocks = (SwinV2Block,)


class PatchMergingV2(nn.Module):
    """Each 2x2 neighbourhood concatenated (4C), linear to ``out_dim`` (2C), then LayerNorm (SwinV2
    norms after the reduction). Shapes: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim)."""

    def __init__(self, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, out_dim or 2 * dim, bias=False)
        self.norm = nn.LayerNorm(out_dim or 2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(linear(self.reduction, PatchMerging.neighbourhoods(x)))


class SwinV2Stage(SwinStage):
    merge_cls = PatchMergingV2
    blocks_cls = SwinV2Blocks


@dataclass(frozen=True)
class SwinV2Config(SwinConfig):
    """A SwinV2: Swin's fields, and per stage the window of pre-training that normalises the
    position bias's offsets (0: the stage's own window)."""

    pretrained_window_sizes: tuple[int, ...] = (0, 0, 0, 0)


class SwinTransformerV2(SwinTransformer):
    """Swin Transformer V2 classifier; shapes and interface as :class:`SwinTransformer`'s."""

    family = "swinv2"
    block_cls = SwinV2Block
    stage_cls = SwinV2Stage
    size_rules = ("shrink",)

    def __init__(self, cfg: SwinV2Config, **kwargs: Any) -> None:
        sizes = cfg.pretrained_window_sizes
        if not isinstance(sizes, (tuple, list)) or len(sizes) != len(cfg.depths):
            raise ValueError(f"pretrained_window_sizes takes one window per stage ({len(cfg.depths)}), got {sizes!r}")
        for i, w in enumerate(sizes):
            if isinstance(w, bool) or not isinstance(w, int) or w < 0:
                raise ValueError(f"pretrained_window_sizes[{i}] must be 0 (the stage's own window) or a positive int, got {w!r}")
        super().__init__(replace(cfg, pretrained_window_sizes=tuple(sizes)), **kwargs)
        for stage in self.layers:  # res-post-norm: every block starts as the identity
            for blk in stage.blocks:
                for norm in (blk.norm1, blk.norm2):
                    nn.init.zeros_(norm.weight), nn.init.zeros_(norm.bias)

    @staticmethod
    def _stage_kwargs(cfg: SwinV2Config, stage: int) -> dict:
        return dict(pretrained_window=cfg.pretrained_window_sizes[stage])

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):  # (the bias MLP's layers too, as in the release)
            trunc_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """The position-bias MLPs and the logit scales (as the release)."""
        return {n for n, _ in self.named_parameters() if ".cpb_mlp." in n or n.endswith("logit_scale")}


# --------------------------------------------------------------------------- checkpoints
register_converter("swinv2", "timm")(_from_timm)
register_converter("swinv2", "official")(_from_official)


# --------------------------------------------------------------------------- variants
# Swin's T / S / B / L widths, depths and heads (_T, _S, _B, _L)
_FROM_12 = dict(pretrained_window_sizes=(12, 12, 12, 6))  # fine-tuned from the 192-px, window-12 ImageNet-22k models

VARIANTS = {
    "swinv2_tiny_window8_256": SwinV2Config(**_T, window_size=8),
    "swinv2_tiny_window16_256": SwinV2Config(**_T, window_size=16),
    "swinv2_small_window8_256": SwinV2Config(**_S, window_size=8),
    "swinv2_small_window16_256": SwinV2Config(**_S, window_size=16),
    "swinv2_base_window8_256": SwinV2Config(**_B, window_size=8),
    "swinv2_base_window16_256": SwinV2Config(**_B, window_size=16),
    "swinv2_base_window12_192": SwinV2Config(**_B, window_size=12),
    "swinv2_base_window12to16_192to256": SwinV2Config(**_B, window_size=16, **_FROM_12),
    "swinv2_base_window12to24_192to384": SwinV2Config(**_B, window_size=24, **_FROM_12),
    "swinv2_large_window12_192": SwinV2Config(**_L, window_size=12),
    "swinv2_large_window12to16_192to256": SwinV2Config(**_L, window_size=16, **_FROM_12),
    "swinv2_large_window12to24_192to384": SwinV2Config(**_L, window_size=24, **_FROM_12),
}


def _cfg(name: str, cfg: SwinV2Config) -> dict:
    size = int(name.rsplit("_", 1)[-1].rsplit("to", 1)[-1])
    extra = dict(num_classes=21841) if name.endswith("_192") else {}  # the ImageNet-22k models
    return default_cfg(size, crop_pct=1.0 if size == 384 else 0.9, first_conv="patch_embed.proj", classifier="head.fc", **extra)


# the official model zoo (github.com/microsoft/Swin-Transformer, README "ImageNet-1K and ImageNet-22K
# Pretrained Swin-V2 Models"); FLOPs there are multiply-adds
_IN22K = "ImageNet-22k pre-training only (no ImageNet-1k top-1); the parameters with a 1000-class head (the 21841-class one adds 21M to SwinV2-B, 32M to SwinV2-L)"
_PUBLISHED = {
    "swinv2_tiny_window8_256": dict(params=28.0, gmacs=5.9, top1=81.8),
    "swinv2_tiny_window16_256": dict(params=28.0, gmacs=6.6, top1=82.8),
    "swinv2_small_window8_256": dict(params=50.0, gmacs=11.5, top1=83.7),
    "swinv2_small_window16_256": dict(params=50.0, gmacs=12.6, top1=84.1),
    "swinv2_base_window8_256": dict(params=88.0, gmacs=20.3, top1=84.2),
    "swinv2_base_window16_256": dict(params=88.0, gmacs=21.8, top1=84.6),
    "swinv2_base_window12_192": dict(params=88.0, note=_IN22K),
    "swinv2_base_window12to16_192to256": dict(params=88.0, gmacs=21.8, top1=86.2, note="after ImageNet-22k pre-training"),
    "swinv2_base_window12to24_192to384": dict(params=88.0, gmacs=54.7, top1=87.1, note="after ImageNet-22k pre-training"),
    "swinv2_large_window12_192": dict(params=197.0, note=_IN22K),
    "swinv2_large_window12to16_192to256": dict(params=197.0, gmacs=47.5, top1=86.9, note="after ImageNet-22k pre-training"),
    "swinv2_large_window12to24_192to384": dict(params=197.0, gmacs=115.4, top1=87.6, note="after ImageNet-22k pre-training"),
}
register_family(
    "swinv2",
    SwinTransformerV2,
    VARIANTS,
    default_cfgs=_cfg,
    published=_PUBLISHED,
    paper="Liu et al., Swin Transformer V2: Scaling Up Capacity and Resolution, CVPR 2022",
)
