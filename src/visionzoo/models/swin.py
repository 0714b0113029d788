"""Swin Transformer: a hierarchical vision Transformer with shifted windows.

Paper: Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", ICCV 2021.

4x4 patches are embedded linearly (patch partition + linear embedding), then four stages
run at strides 4/8/16/32. Each stage but the first opens with patch merging (2x2
neighbours concatenated, LayerNorm, linear 4C -> 2C). Blocks alternate

* W-MSA: self-attention inside non-overlapping M x M windows, and
* SW-MSA: the same after a cyclic shift of the map by (-M/2, -M/2); windows that then
  hold pixels from regions not adjacent in the image get an additive mask,

each with a learned relative position bias B[i - j] ((2M-1)^2 entries per head) added to
the attention logits, and each followed by an MLP (pre-norm, residual). LayerNorm, global
average pooling and a linear classifier end it.

Any input size. Patch merging pads odd maps, and each stage pads its map to a multiple of
the window *before* the cyclic shift, the mask being built from the padded size, as the
official code for detection and segmentation and torchvision do. (timm pads after the
shift, so that the mask misses tokens that wrapped around: timm issue #2438. Where no
padding is needed, ours and timm's logits agree.) Maps that do not fit the windows follow
``SwinConfig.size_rule``:

* ``"shrink"`` (the timm names; the official code and timm): along an axis where a
  stage's map is no longer than the window, the window shrinks to the map and does not
  shift. A model built for a small ``img_size`` builds such a stage with the smaller
  window and bias table, as timm does; a checkpoint's larger tables are cut to the
  sub-table of the offsets that window has when loaded, and a map smaller than a stage's
  window at run time reads that sub-table too. The patch embedding pads the image to a
  multiple of the patch.
* ``"torchvision"`` (``swin_t``, ``swin_s``, ``swin_b``): such a map is padded up to the
  window (zeros the attention does not mask) and does not shift, and the patch embedding
  drops the image's remainder, as torchvision's models do.

Masks are built once per stage and forward (cached per size in eager mode) and shared by
the stage's shifted blocks; the bias and mask reach ``scaled_dot_product_attention`` as
one additive tensor. In inference, a stage whose map needs no padding keeps its tokens
listed window by window (one gather between a regular and a shifted block instead of
rolling, partitioning and reversing in each), and the projections accumulate into the
residual.

State-dict keys follow timm (``layers.N.downsample`` opens stage N). The official release
(downsampling at the end of a stage, ``head`` a plain Linear) and torchvision's
``features.N`` layout convert.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import FeatureInfo, VisionModel, tap_outputs
from ..checkpoints import register_converter
from ..layers import POOL_TYPES, DropPath, Mlp, classifier, drop_path_rates, global_pool_2d, linear, resize_rel_pos_bias_table, trunc_normal_
from ..layers.attention import ProjectedAttention, attention, sdpa_biased_short
from ..layers.helpers import as_int, autograd_off, no_hooks, to_2tuple
from ..layers.window import shift_window_mask, window_partition, window_reverse
from ..param_groups import MATCH_PREV_GROUP
from ..registry import default_cfg, register_family

__all__ = ["PatchMerging", "SwinConfig", "SwinTransformer", "WindowPlan", "plan_windows", "window_sdpa"]


# --------------------------------------------------------------------------- windows
class WindowPlan(NamedTuple):
    """How one block partitions an H x W map: window, shift, padded size, mask (or None)."""

    window: tuple[int, int]
    shift: tuple[int, int]
    padded: tuple[int, int]
    mask: Tensor | None  # (nW, 1, N, N) additive, only when shifted
    order: Tensor | None  # (Hp*Wp,) raster index of each token in window order; None: raster order
    inverse: Tensor | None  # (Hp*Wp,) position in window order of each raster token


def plan_windows(H: int, W: int, window: tuple[int, int], shifted: bool, device: torch.device, *, pad_small: bool = False) -> WindowPlan:
    """Window and shift per axis for an H x W map (see the module doc): a side no longer
    than the window is one window without a shift, shrunk to the side (timm's rule) or, with
    ``pad_small``, the full window over the side padded up to it (torchvision's)."""
    win, shift, padded = [], [], []
    for side, m in zip((H, W), window):
        if side <= m:  # one window covers the axis: no partition, no shift
            one = m if pad_small else side
            win.append(one), shift.append(0), padded.append(one)
        else:
            win.append(m), shift.append(m // 2 if shifted else 0), padded.append(math.ceil(side / m) * m)
    mask = None
    if any(shift):
        mask = shift_window_mask(padded[0], padded[1], (win[0], win[1]), (shift[0], shift[1]), device=device)
        mask = mask.unsqueeze(1)  # nW, 1, N, N (broadcast over heads)
    order = inverse = None
    if any(shift) or win[1] != padded[1]:  # (windows spanning whole rows, unshifted, keep raster order)
        idx = torch.arange(padded[0] * padded[1], device=device).view(1, padded[0], padded[1], 1)
        order = window_partition(torch.roll(idx, (-shift[0], -shift[1]), (1, 2)), (win[0], win[1])).flatten()
        inverse = torch.argsort(order)
    return WindowPlan((win[0], win[1]), (shift[0], shift[1]), (padded[0], padded[1]), mask, order, inverse)


def table_index(window: tuple[int, int], table_window: tuple[int, int]) -> Tensor:
    """(N, N) rows of a ((2Th-1)(2Tw-1))-row bias table for the offsets of an Mh x Mw window.

    With ``window == table_window`` this is the Swin paper's relative position index; a
    smaller window reads the sub-table of the offsets it can have.
    """
    Mh, Mw = window
    Th, Tw = table_window
    coords = torch.stack(torch.meshgrid(torch.arange(Mh), torch.arange(Mw), indexing="ij")).flatten(1)  # 2, N
    rel = coords[:, :, None] - coords[:, None, :]  # 2, N, N
    return (rel[0] + Th - 1) * (2 * Tw - 1) + (rel[1] + Tw - 1)


# --------------------------------------------------------------------------- layers
class WindowAttention(ProjectedAttention):
    """Multi-head self-attention within windows, with relative position bias.

    Shapes:
        (B, nW, N, C) windows of N = Mh*Mw tokens -> (B, nW, N, C).
    """

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], *, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.window = num_heads, dim // num_heads, window
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window[0] - 1) * (2 * window[1] - 1), num_heads))
        self.register_buffer("relative_position_index", table_index(window, window), persistent=False)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused = True

    def relative_bias(self, window: tuple[int, int]) -> Tensor:
        """(nH, N, N) bias of every query-key pair of a window (once per block and forward)."""
        if window == self.window:
            idx = self.relative_position_index
        else:
            idx = table_index(window, self.window).to(self.relative_position_bias_table.device)
        N = window[0] * window[1]
        # contiguous (a small copy): a heads-last bias would make ``bias + mask`` heads-last too,
        # and repeating that per image a transposing copy, 3-4x slower than a plain one
        return self.relative_position_bias_table[idx.view(-1)].view(N, N, self.num_heads).permute(2, 0, 1).contiguous()

    def attend(self, x: Tensor, window: tuple[int, int], mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """(B, nW, N, C) windows -> the heads' output (B, nW, N, C) before ``proj``."""
        B, nW, N, C = x.shape
        nH, hd = self.num_heads, self.head_dim
        qkv = linear(self.qkv, x).view(B, nW, N, 3, nH, hd)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # 3 x (B, nW, nH, N, hd)
        bias = self.relative_bias(window)  # nH, N, N: the same for every window
        return window_sdpa(q, k, v, bias, mask, dropout_p=self.attn_drop if self.training else 0.0, fused=self.fused)


def window_sdpa(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None, *, dropout_p: float = 0.0, fused: bool = True,
                scale: float | None = None) -> Tensor:
    """Attention within windows: q, k, v (B, nW, nH, N, hd), the (nH, N, N) position bias
    shared by the windows, the (nW, 1, N, N) shift mask or None -> (B, nW, N, C), the heads
    concatenated. ``scale``: the logits' (``hd ** -0.5`` by default)."""
    B, nW, nH, N, hd = q.shape
    bias = bias.to(q.dtype)
    if mask is None:  # windows as batch: (B*nW, nH, N, hd), bias (1, nH, N, N) broadcast
        bias = bias.unsqueeze(0)
    else:  # bias + mask (nW, nH, N, N), repeated for each image: (B*nW, nH, N, N)
        bias = (bias + mask.to(q.dtype)).unsqueeze(0).expand(B, nW, nH, N, N).reshape(B * nW, nH, N, N)
    q, k, v = (t.reshape(B * nW, nH, N, hd) for t in (q, k, v))
    # q, k, v are views of the qkv projection (no copy). 4-D inputs with a 4-D mask take SDPA's
    # flash kernel on CPU; 5-D inputs or a 3-D mask fall back to the math path, 2-3x slower.
    # Repeating the (N x N) mask per image moves half the bytes that copying q, k, v into a
    # (B, nW*nH, N, hd) layout with a broadcast mask would (N / 3hd), and measured ~5% faster.
    if fused:
        x = sdpa_biased_short(q, k, v, bias, dropout_p=dropout_p, scale=scale)
    else:
        x = attention(q, k, v, bias, dropout_p=dropout_p, fused=False, scale=scale)
    if torch.compiler.is_compiling():
        # CPU SDPA writes its output as (.., N, heads, hd) so the reshape below is a view in
        # eager; export may swap in a kernel with another layout after tracing that view
        x = x.clone(memory_format=torch.contiguous_format)
    return x.view(B, nW, nH, N, hd).transpose(2, 3).reshape(B, nW, N, nH * hd)


class WindowBlock(nn.Module):
    """What the blocks of the Swin families share: their attention run on the (shifted) windows
    of a (B, H, W, C) map. A subclass sets ``shifted`` (which of a stage's two window plans it
    takes) and ``attn``, called on (B, nW, N, C) windows with the window and the plan's mask."""

    shifted: bool

    def window_attention(self, x: Tensor, plan: WindowPlan) -> Tensor:
        B, H, W, C = x.shape
        (Mh, Mw), (sh, sw), (Hp, Wp) = plan.window, plan.shift, plan.padded
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        if sh or sw:
            x = torch.roll(x, (-sh, -sw), (1, 2))
        windows = window_partition(x, (Mh, Mw)).view(B, (Hp // Mh) * (Wp // Mw), Mh * Mw, C)  # B, nW, N, C
        windows = self.attn(windows, (Mh, Mw), plan.mask)
        x = window_reverse(windows.view(-1, Mh * Mw, C), (Mh, Mw), Hp, Wp)  # B, Hp, Wp, C
        if sh or sw:
            x = torch.roll(x, (sh, sw), (1, 2))
        return x[:, :H, :W] if (Hp, Wp) != (H, W) else x


class SwinBlock(WindowBlock):
    """LN -> (shifted-)window attention -> + x; LN -> MLP -> + x. Maps are (B, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], *, shifted: bool, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor, plan: WindowPlan) -> Tensor:
        x = x + self.drop_path1(self.window_attention(self.norm1(x), plan))
        return self.mlp.add_to(x, x, self.drop_path2, self.norm2)

    def forward_windowed(self, x: Tensor, plan: WindowPlan) -> Tensor:
        """The block on tokens already in ``plan.order`` ((B, L, C), L = Hp * Wp): nothing to
        pad, roll, partition or reverse, as LayerNorm and the MLP act per token."""
        B, L, C = x.shape
        N = plan.window[0] * plan.window[1]
        x = x.view(B, L // N, N, C)  # B, nW, N, C
        x = self.attn.add_to(x, self.norm1(x), plan.window, plan.mask, drop_path=self.drop_path1).view(B, L, C)
        return self.mlp.add_to(x, x, self.drop_path2, self.norm2)


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (4C), LayerNorm, linear to ``out_dim`` (2C).

    Odd sides are padded by one. Channel order: (0,0), (1,0), (0,1), (1,1) as (row, col)
    offsets, as in the paper's code. Shapes: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim).
    """

    def __init__(self, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim or 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return linear(self.reduction, self.norm(self.neighbourhoods(x)))

    @staticmethod
    def neighbourhoods(x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 4C): each 2x2 neighbourhood's tokens side by
        side (odd sides padded by one)."""
        B, H, W, C = x.shape
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
            H, W = H + H % 2, W + W % 2
        return x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)  # B, H/2, W/2, (col, row, C)


class SwinBlocks(nn.ModuleList):
    """A stage's blocks, alternating W-MSA and SW-MSA, called as one module (timm's
    ``layers.N.blocks``, an ``nn.Sequential`` there: a forward hook on it sees the tokens the
    stage gives). Shapes: (B, H, W, C) and the stage's window plans -> (B, H, W, C)."""

    #: the block classes whose ``forward_windowed`` inference may run instead of ``forward``
    windowed_blocks: tuple[type[nn.Module], ...] = (SwinBlock,)

    def forward(self, x: Tensor, plans: tuple[WindowPlan, WindowPlan]) -> Tensor:
        _, H, W, _ = x.shape
        if autograd_off() and all(type(b) in self.windowed_blocks and no_hooks(*b.modules()) for b in self) and plans[0].padded == (H, W):
            return self._forward_windowed(x, plans)
        for blk in self:
            x = blk(x, plans[blk.shifted])
        return x

    def _forward_windowed(self, x: Tensor, plans: tuple[WindowPlan, WindowPlan]) -> Tensor:
        """Inference on a map that needs no padding: the tokens stay listed window by window
        through the stage, re-listed once between a regular and a shifted block (one gather,
        where the per-block path rolls, partitions, reverses and rolls back), and the
        attention's projection accumulates into the residual. LayerNorm and the MLP act per
        token, so the order changes nothing but the memory traffic. Not taken where a block or
        any part of it has forward hooks: they would see tokens in window order."""
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)
        prev = None  # the plan whose order the tokens are in; None: raster
        for blk in self:
            plan = plans[blk.shifted]
            x = _reorder(x, prev, plan)
            x, prev = blk.forward_windowed(x, plan), plan
        return _reorder(x, prev, None).view(B, H, W, C)


class SwinStage(nn.Module):
    """Optional patch merging, then ``depth`` blocks alternating W-MSA and SW-MSA.

    The window plans (and the shift mask) are made once per forward and shared by the blocks.
    """

    merge_cls: type[nn.Module] = PatchMerging
    blocks_cls: type[nn.ModuleList] = SwinBlocks

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, window: tuple[int, int], *, downsample: bool, drop_paths: Sequence[float], block_cls: type[nn.Module] = SwinBlock, pad_small: bool = False, **block_kwargs) -> None:
        super().__init__()
        self.window, self.pad_small = window, pad_small
        self.downsample = self.merge_cls(in_dim, dim) if downsample else nn.Identity()
        self.blocks = self.blocks_cls(
            [block_cls(dim, num_heads, window, shifted=i % 2 == 1, drop_path=drop_paths[i], **block_kwargs) for i in range(depth)]
        )
        self._plans: dict[tuple, tuple[WindowPlan, WindowPlan]] = {}

    def plans(self, H: int, W: int, device: torch.device) -> tuple[WindowPlan, WindowPlan]:
        """(regular, shifted) plans for an H x W map; cached per size and window outside
        compilation (set_input_size may give the stage another window for a size it has seen)."""
        make = lambda shifted: plan_windows(H, W, self.window, shifted, device, pad_small=self.pad_small)  # noqa: E731
        if torch.compiler.is_compiling() or torch.jit.is_tracing():  # (a plan made by a trace is part of its graph)
            return make(False), make(True)
        key = (H, W, device, self.window, self.pad_small)
        if key not in self._plans:
            self._plans[key] = (make(False), make(True))
        return self._plans[key]

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        _, H, W, _ = x.shape
        return self.blocks(x, self.plans(H, W, x.device))


def _reorder(x: Tensor, src: WindowPlan | None, dst: WindowPlan | None) -> Tensor:
    """Tokens (B, L, C) listed in the window order of plan ``src`` re-listed in that of ``dst``
    (None, or a plan whose order is None: raster order)."""
    if src is dst:
        return x
    src_inv = None if src is None else src.inverse
    dst_order = None if dst is None else dst.order
    if src_inv is None and dst_order is None:
        return x
    idx = dst_order if src_inv is None else src_inv if dst_order is None else src_inv[dst_order]
    B, L, C = x.shape
    # one gather of rows over the flattened batch: ~2x faster than index_select along dim 1
    rows = (idx + torch.arange(0, B * L, L, device=idx.device)[:, None]).view(-1)
    return x.reshape(B * L, C).index_select(0, rows).view(B, L, C)


class SwinPatchEmbed(nn.Module):
    """p x p stride-p convolution + LayerNorm; pads the image to a multiple of p (or, with
    ``pad=False``, drops its remainder). (B, C, H, W) -> (B, H/p, W/p, D)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, *, pad: bool = True) -> None:
        super().__init__()
        self.patch_size, self.pad = patch_size, pad
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        H, W = x.shape[-2:]
        if self.pad and (H % p or W % p):
            x = F.pad(x, (0, -W % p, 0, -H % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class SwinConfig:
    """One Swin: width C of stage 1 (doubling per stage), blocks and heads per stage, window M
    (an int, or (Mh, Mw) as timm's ``window_size`` takes)."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int | tuple[int, int] = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    #: dropout before the classifier (timm's meaning); after the attention projection and
    #: MLP layers; on the attention weights
    drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    #: maps that do not fit the windows (module doc): "shrink" (timm's rule) or "torchvision"
    size_rule: str = "shrink"


def window_pair(window: int | Sequence[int]) -> tuple[int, int]:
    """A Swin window, ``7`` or ``(7, 10)``, as (Mh, Mw) of positive ints; ValueError otherwise."""
    pair = to_2tuple(window, "window_size")
    if min(pair) < 1:
        raise ValueError(f"window_size must be positive, got {window!r}")
    return pair


class SwinTransformer(VisionModel):
    """Swin Transformer classifier.

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); any H, W >= patch size.
        ``forward_features``: channels-last (B, H/32, W/32, 8C), after the final LayerNorm.
        ``forward_intermediates``: NCHW stage outputs (no final norm), as timm's.
    """

    family = "swin"
    pool_types = POOL_TYPES
    grad_checkpoint_units = (r"layers\.\d+\.blocks\.\d+",)
    block_cls: type[nn.Module] = SwinBlock
    stage_cls: type[SwinStage] = SwinStage
    size_rules: tuple[str, ...] = ("shrink", "torchvision")

    def __init__(self, cfg: SwinConfig, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (224, 224), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if len(cfg.depths) != len(cfg.num_heads):
            raise ValueError(f"depths {cfg.depths} and num_heads {cfg.num_heads} must have one entry per stage")
        if cfg.size_rule not in self.size_rules:
            raise ValueError(f"size_rule must be one of {', '.join(map(repr, self.size_rules))}, got {cfg.size_rule!r}")
        torchvision_rule = cfg.size_rule == "torchvision"
        self.cfg = cfg
        self.num_classes, self.in_chans = num_classes, in_chans
        self.min_input_size = cfg.patch_size
        n = len(cfg.depths)
        dims = [cfg.embed_dim * 2**i for i in range(n)]
        windows = self.stage_windows(cfg, img_size)
        self.patch_embed = SwinPatchEmbed(cfg.patch_size, in_chans, cfg.embed_dim, pad=not torchvision_rule)
        dpr = drop_path_rates(drop_path_rate, sum(cfg.depths))
        layers, start = [], 0
        for i in range(n):
            layers.append(self.stage_cls(
                dims[max(i - 1, 0)], dims[i], cfg.depths[i], cfg.num_heads[i], windows[i],
                downsample=i > 0, drop_paths=dpr[start : start + cfg.depths[i]], block_cls=self.block_cls,
                pad_small=torchvision_rule, **self._block_kwargs(cfg), **self._stage_kwargs(cfg, i),
            ))
            start += cfg.depths[i]
        self.layers = nn.Sequential(*layers)
        self.num_features = dims[-1]
        self.norm = nn.LayerNorm(self.num_features)
        self.head = _PoolHead(self.num_features, num_classes, cfg.drop_rate)
        self.feature_info = [FeatureInfo(d, cfg.patch_size * 2**i, f"layers.{i}") for i, d in enumerate(dims)]
        self.apply(self._init)

    @classmethod
    def stage_windows(cls, cfg: SwinConfig, img_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Each stage's window (its bias tables' size) for maps of ``img_size``: under the
        "shrink" rule, an axis along which a stage's map is no longer than the window gets a
        window the size of the map, as in the official code and timm (whose tables then have
        that size too); under "torchvision" every stage keeps the window."""
        Mh, Mw = window_pair(cfg.window_size)
        if cfg.size_rule != "shrink":
            return [(Mh, Mw)] * len(cfg.depths)
        sides = [math.ceil(s / cfg.patch_size) for s in img_size]
        windows = []
        for _ in cfg.depths:
            windows.append((min(sides[0], Mh), min(sides[1], Mw)))
            sides = [math.ceil(s / 2) for s in sides]  # patch merging pads odd sides
        return windows

    #: :meth:`set_input_size` without a window scales the window with the patch grid (timm's rule)
    scales_windows: bool = True
    size_dependent = True

    def set_input_size(self, img_size: int | Sequence[int] | None = None, **size_options: Any) -> None:
        """timm's method (:meth:`VisionModel.set_input_size`), with timm's window rule: without
        ``window_size`` or ``window_ratio``, the window scales with the patch grid, so that it
        keeps its ratio to the grid the model was built for (or last given a window for):
        ``swin_tiny_patch4_window7_224`` at 384 gets windows of 12 (7 x 96 // 56), and its
        bias tables are interpolated to them; calling it at the current size changes nothing.
        ``window_size`` (an int or (h, w)) sets the window; ``window_ratio`` sets it to the patch
        grid divided by the ratio. As everywhere in Swin, a stage whose map is no larger than the
        window takes a window the size of the map. The torchvision-rule models (``swin_t``, ...)
        and Swin-MLP, whose weights are tied to the window, keep their window unless given one."""
        built = tuple(self.default_cfg.get("input_size", ())[1:])
        reference = self._reference(built) if built else None  # taken before the resize changes the window
        super().set_input_size(img_size, **size_options)
        if reference is None or any(size_options.get(k) is not None for k in ("window_size", "window_ratio")):  # a new reference
            reference = (window_pair(self.cfg.window_size), self._patch_grid(self.default_cfg["input_size"][1:]))
        self._window_reference = reference  # kept across calls: resizing back gives the window back, without rounding drift

    def _reference(self, current: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """timm's rule's reference: (window, patch grid) of the size built for or last given a window."""
        return getattr(self, "_window_reference", None) or (window_pair(self.cfg.window_size), self._patch_grid(current))

    def config_for_size(self, size: tuple[int, int], current: tuple[int, int], *, window_size: int | Sequence[int] | None = None, window_ratio: int | None = None) -> SwinConfig:
        grid = self._patch_grid(size)
        if window_size is not None:
            window = window_pair(window_size)
        elif window_ratio is not None:
            ratio = as_int(window_ratio)
            if ratio is None or ratio < 1:
                raise ValueError(f"window_ratio takes a positive int, got {window_ratio!r}")
            window = (max(1, grid[0] // ratio), max(1, grid[1] // ratio))
        elif self.scales_windows and self.cfg.size_rule == "shrink":
            ref_window, ref_grid = self._reference(current)
            window = tuple(max(1, w * g // r) for w, g, r in zip(ref_window, grid, ref_grid))
        else:
            window = window_pair(self.cfg.window_size)
        return replace(self.cfg, window_size=window[0] if window[0] == window[1] else window)

    def _patch_grid(self, size: Sequence[int]) -> tuple[int, int]:
        p = self.cfg.patch_size
        return -(-size[0] // p), -(-size[1] // p)

    @staticmethod
    def _block_kwargs(cfg: SwinConfig) -> dict:
        return dict(mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, drop=cfg.proj_drop_rate, attn_drop=cfg.attn_drop_rate)

    @staticmethod
    def _stage_kwargs(cfg: SwinConfig, stage: int) -> dict:
        """Block options that differ between stages (SwinV2's pretrained windows)."""
        return {}

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv1d)):  # Conv1d: Swin-MLP's spatial MLP, initialised so in its release
            trunc_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, WindowAttention):
            trunc_normal_(m.relative_position_bias_table)

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.norm(self.layers(self.patch_embed(x)))

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        self.check_input(x)
        out = tap_outputs(self.patch_embed(x), self.layers, indices, to_end=with_features, tail=self.norm)  # (B, H, W, C) maps
        maps = [m.permute(0, 3, 1, 2) for m in (out[0] if with_features else out)]
        return (maps, out[1]) if with_features else maps

    def final_norm(self, feature_map: Tensor) -> Tensor:
        return self.norm(feature_map.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # over channels

    def stopped_features(self, feature_map: Tensor) -> Tensor:
        return feature_map.permute(0, 2, 3, 1)  # (B, H, W, C), as forward_features'

    def prune_for_features(self, indices: Sequence[int]) -> None:
        self.layers = self.layers[: max(indices) + 1]
        self.norm = nn.Identity()  # type: ignore[assignment]
        self.head = nn.Identity()  # type: ignore[assignment]
        self.num_classes = 0

    def group_matcher(self, coarse: bool = False) -> dict:
        """Group 0 is the patch embedding; then one group per block, a stage's patch merging
        (which opens the stage) with its first block and the final norm with the last block
        (``coarse``: one group per stage, the final norm with the head); the head last."""
        if coarse:
            return dict(stem=r"^patch_embed\.", blocks=r"^layers\.(\d+)\.")
        return dict(
            stem=r"^patch_embed\.",
            blocks=[
                (r"^layers\.(\d+)\.downsample\.", (0,)),
                (r"^layers\.(\d+)\.blocks\.(\d+)\.", None),
                (r"^norm\.", MATCH_PREV_GROUP),
            ],
        )

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    def adapt_state_dict(self, state_dict: dict[str, Tensor], source: VisionModel | None = None) -> dict[str, Tensor]:
        """Fit relative-position tables of another window size to each block's window: a
        larger window interpolates bicubically (e.g. 7 -> 12, as the official code does), a
        smaller one (a stage at a small ``img_size``) keeps the sub-table of its offsets
        (:func:`~visionzoo.layers.resize_rel_pos_bias_table`). The source window is the
        ``source`` model's where given, else inferred from the table as square."""
        out = dict(state_dict)
        theirs = dict(source.named_modules()) if source is not None else {}
        for name, m in self.named_modules():
            k = f"{name}.relative_position_bias_table"
            if isinstance(m, WindowAttention) and k in state_dict:
                v, own = state_dict[k], m.relative_position_bias_table
                window = getattr(theirs.get(name), "window", None)
                if (v.shape != own.shape or window not in (None, m.window)) and v.ndim == 2 and v.shape[1] == own.shape[1]:
                    out[k] = resize_rel_pos_bias_table(v, m.window, window)
        return out


class _PoolHead(nn.Module):
    """Global pool (average by default) of a channels-last map -> dropout -> Linear (key ``head.fc``)."""

    def __init__(self, dim: int, num_classes: int, drop: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop)
        self.fc = classifier(dim, num_classes)

    def forward(self, x: Tensor, pre_logits: bool = False, pool_type: str = "avg") -> Tensor:
        x = self.drop(global_pool_2d(x, pool_type, (1, 2)))  # B, C (2C: catavgmax)
        return x if pre_logits else self.fc(x)


# --------------------------------------------------------------------------- checkpoints
_BUFFERS = ("relative_position_index", "attn_mask", "relative_coords_table")


def _from_stage_end_layout(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official (and old timm) layout: ``layers.N.downsample`` closes stage N; ``head`` a Linear."""
    out = {}
    for k, v in sd.items():
        if k.rsplit(".", 1)[-1] in _BUFFERS:
            continue
        parts = k.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) + 1)
        elif parts[0] == "head" and len(parts) == 2:
            parts = ["head", "fc", parts[1]]
        out[".".join(parts)] = v
    return out


@register_converter("swin", "timm")
def _from_timm(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """timm >= 0.9 (downsampling opens a stage); older timm files use the official layout."""
    if "layers.0.downsample.reduction.weight" in sd or "head.weight" in sd:
        return _from_stage_end_layout(sd)
    return {k: v for k, v in sd.items() if k.rsplit(".", 1)[-1] not in _BUFFERS}


@register_converter("swin", "official")
def _from_official(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """microsoft/Swin-Transformer releases (``model`` entry already unwrapped)."""
    if "layers.0.downsample.reduction.weight" not in sd and "head.weight" not in sd:
        raise KeyError("layers.0.downsample.reduction.weight")
    return _from_stage_end_layout(sd)


@register_converter("swin", "torchvision")
def _from_torchvision(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """torchvision's ``features.N``: 0 = patch embedding, odd N = stage (N-1)/2, even N = merging."""
    if "features.0.0.weight" not in sd:
        raise KeyError("features.0.0.weight")
    mlp = {"0": "fc1", "3": "fc2"}
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[-1] in _BUFFERS:
            continue
        if parts[0] == "features":
            n = int(parts[1])
            if n == 0:
                k = {"0": "patch_embed.proj", "2": "patch_embed.norm"}[parts[2]] + "." + parts[3]
            elif n % 2 == 1:
                rest = parts[3:]
                if rest[0] == "mlp":
                    rest = ["mlp", mlp[rest[1]], rest[2]]
                k = f"layers.{(n - 1) // 2}.blocks.{parts[2]}." + ".".join(rest)
            else:
                k = f"layers.{n // 2}.downsample." + ".".join(parts[2:])
        elif parts[0] == "head":
            k = "head.fc." + parts[1]
        out[k] = v
    return out


# --------------------------------------------------------------------------- variants
_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
_L = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))

VARIANTS = {
    "swin_tiny_patch4_window7_224": SwinConfig(**_T),
    "swin_small_patch4_window7_224": SwinConfig(**_S),
    "swin_base_patch4_window7_224": SwinConfig(**_B),
    "swin_base_patch4_window12_384": SwinConfig(**_B, window_size=12),
    "swin_large_patch4_window7_224": SwinConfig(**_L),
    "swin_large_patch4_window12_384": SwinConfig(**_L, window_size=12),
}
# torchvision's builds: the same networks as (timm name) with torchvision's rule for maps that do
# not fit the windows; and torchvision's eval resize before its 224 crop
_TORCHVISION = {
    "swin_t": ("swin_tiny_patch4_window7_224", 232),
    "swin_s": ("swin_small_patch4_window7_224", 246),
    "swin_b": ("swin_base_patch4_window7_224", 238),
}
VARIANTS.update({tv: replace(VARIANTS[name], size_rule="torchvision") for tv, (name, _) in _TORCHVISION.items()})


def _cfg(name: str, cfg: SwinConfig) -> dict:
    size = 384 if name.endswith("_384") else 224
    crop_pct = 224 / _TORCHVISION[name][1] if name in _TORCHVISION else 1.0 if size == 384 else 0.9
    return default_cfg(size, crop_pct=crop_pct, first_conv="patch_embed.proj", classifier="head.fc")


_PUBLISHED = {  # paper Table 1 (ImageNet-1k) and the official model hub; L only after ImageNet-22k
    "swin_tiny_patch4_window7_224": dict(params=28.0, gmacs=4.5, top1=81.3),
    "swin_small_patch4_window7_224": dict(params=50.0, gmacs=8.7, top1=83.0),
    "swin_base_patch4_window7_224": dict(params=88.0, gmacs=15.4, top1=83.5),
    "swin_base_patch4_window12_384": dict(params=88.0, gmacs=47.0, top1=84.5, note="ImageNet-1k training; 86.4 with ImageNet-22k pre-training"),
    "swin_large_patch4_window7_224": dict(params=197.0, gmacs=34.5, top1=86.3, note="top-1 after ImageNet-22k"),
    "swin_large_patch4_window12_384": dict(params=197.0, gmacs=103.9, top1=87.3, note="top-1 after ImageNet-22k"),
}
register_family(
    "swin",
    SwinTransformer,
    VARIANTS,
    default_cfgs=_cfg,
    published={**_PUBLISHED, **{tv: _PUBLISHED[name] for tv, (name, _) in _TORCHVISION.items()}},
    paper="Liu et al., Swin Transformer: Hierarchical Vision Transformer using Shifted Windows, ICCV 2021",
)
