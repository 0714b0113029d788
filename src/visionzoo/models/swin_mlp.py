"""Swin-MLP: Swin's hierarchy with attention replaced by a per-head spatial MLP in windows.

Source: the Swin Transformer authors' release (microsoft/Swin-Transformer, ``swin_mlp.py``
and its model hub); there is no separate paper.

Each block mixes the tokens of an M x M window with a learned N x N matrix per head
(N = M^2, channels split into nH groups of C/nH), implemented in the release as a grouped
1x1 Conv1d. Shifted blocks do not roll the map: they pad it by (M - s) before and s after
on each axis (s = M/2), so the window grid is offset by s and the border windows hold zeros
instead of wrapped-around pixels — no mask is needed. A channel MLP follows, both pre-norm
and residual. Patch embedding, patch merging and head are Swin's.

Any input size: maps are padded up to a multiple of M (weights are tied to M, so unlike
Swin the window never shrinks). A shifted block shifts only where both sides of the map are
longer than M; where the shorter side is at most M it shifts along neither axis. That is the
release's rule, ``min(H, W) <= M``, decided per block, not per axis: an 8 x 16 stage map
with M = 8 runs unshifted (Swin's attention blocks decide per axis, as timm's). Where that
side is shorter than M the release also shrinks the window to it, which changes the
weights' shapes; visionzoo keeps M and pads instead (the released checkpoints, built at 256
with M = 8 and at 224 with M = 7, have no such stage; a model the release builds for a
smaller size is not loadable).

Initialisation as the release: the spatial MLP's grouped Conv1d as the Linear layers,
weights truncated normal (std 0.02; visionzoo's ``trunc_normal_``), biases zero.
Evaluation crop as the release: resize to int(S * 256 / 224), centre crop S (crop_pct
0.875: 292 -> 256, 256 -> 224).

The ``c24``/``c12``/``c6`` names give the channels per head of stage 1 (96/4, 96/8, 96/16).
Keys follow the Swin layout of timm (downsampling opens a stage); the official release
(downsampling closes a stage, ``head`` a Linear) converts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints import register_converter
from ..layers import DropPath, Mlp
from ..layers.helpers import no_hooks
from ..layers.window import window_partition, window_reverse
from ..registry import default_cfg, register_family
from .swin import SwinConfig, SwinStage, SwinTransformer, _from_stage_end_layout, window_pair

__all__ = ["SwinMLP", "SwinMLPBlock"]


class SwinMLPBlock(nn.Module):
    """LN -> per-head spatial MLP in (offset-)windows -> + x; LN -> MLP -> + x. Maps (B, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], *, shifted: bool, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0, **_: object) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.shifted, self.window, self.num_heads = shifted, window, num_heads
        N = window[0] * window[1]
        self.norm1 = nn.LayerNorm(dim)
        # nH independent N x N token-mixing matrices: one grouped 1x1 conv (the release's keys)
        self.spatial_mlp = nn.Conv1d(num_heads * N, num_heads * N, kernel_size=1, groups=num_heads)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path)

    def shifts(self, H: int, W: int) -> bool:
        """Whether the block shifts on an H x W map: shifted, and both sides longer than the
        window (the release's ``min(H, W) > M``; otherwise neither axis shifts)."""
        return self.shifted and H > self.window[0] and W > self.window[1]

    @staticmethod
    def _pads(side: int, m: int, shift: bool) -> tuple[int, int]:
        """(before, after) padding of one axis: offset grid when shifting, then up to a multiple of m."""
        before = m - m // 2 if shift else 0
        after = -(side + before) % m
        return before, after

    def spatial_mixing(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        (Mh, Mw), nH = self.window, self.num_heads
        shift = self.shifts(H, W)
        (top, bottom), (left, right) = self._pads(H, Mh, shift), self._pads(W, Mw, shift)
        x = F.pad(x, (0, 0, left, right, top, bottom))
        Hp, Wp = H + top + bottom, W + left + right
        N = Mh * Mw
        win = window_partition(x, (Mh, Mw)).view(-1, N, nH, C // nH).transpose(1, 2)  # B*nW, nH, N, C/nH
        if no_hooks(self.spatial_mlp):  # its weight as nH (N x N) matrices: no copy of the windows
            win = torch.matmul(self.spatial_mlp.weight.view(nH, N, N), win) + self.spatial_mlp.bias.view(nH, N, 1)  # B*nW, nH, N, C/nH
        else:  # the module, on the release's (B*nW, nH*N, C/nH) layout
            win = self.spatial_mlp(win.reshape(-1, nH * N, C // nH)).view(-1, nH, N, C // nH)
        x = window_reverse(win.transpose(1, 2).reshape(-1, N, C), (Mh, Mw), Hp, Wp)
        return x[:, top : top + H, left : left + W]

    def forward(self, x: Tensor, plan: object = None) -> Tensor:
        x = x + self.drop_path1(self.spatial_mixing(self.norm1(x)))
        return self.mlp.add_to(x, x, self.drop_path2, self.norm2)


class SwinMLPStage(SwinStage):
    """A Swin stage of Swin-MLP blocks (they pad for themselves: no window plans or masks)."""

    def plans(self, H: int, W: int, device: torch.device) -> tuple[None, None]:
        return None, None


class SwinMLP(SwinTransformer):
    """Swin-MLP classifier (same shapes and interface as :class:`SwinTransformer`; its
    parameters are grouped by depth as Swin's, by the inherited ``group_matcher``)."""

    family = "swin_mlp"
    block_cls = SwinMLPBlock
    stage_cls = SwinMLPStage
    size_rules = ("shrink",)  # its blocks pad for themselves, as the release does
    scales_windows = False  # the spatial MLPs' weights are tied to the window

    def __init__(self, cfg: SwinConfig, **kwargs: object) -> None:
        # SwinConfig's attention options have nothing to act on here: refused, not ignored
        unused = [f"{k}={getattr(cfg, k)!r}" for k, v in (("qkv_bias", True), ("attn_drop_rate", 0.0)) if getattr(cfg, k) != v]
        if unused:
            raise ValueError(f"Swin-MLP has no attention: {', '.join(unused)} would change nothing (use proj_drop_rate / drop_rate for dropout)")
        super().__init__(cfg, **kwargs)

    @classmethod
    def stage_windows(cls, cfg: SwinConfig, img_size: tuple[int, int]) -> list[tuple[int, int]]:
        """The configured window in every stage: the blocks pad a smaller map up to it."""
        return [window_pair(cfg.window_size)] * len(cfg.depths)

    @staticmethod
    def _block_kwargs(cfg: SwinConfig) -> dict:
        return dict(mlp_ratio=cfg.mlp_ratio, drop=cfg.proj_drop_rate)


@register_converter("swin_mlp", "official")
def _from_official(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """microsoft/Swin-Transformer's ``swin_mlp`` releases."""
    if "layers.0.downsample.reduction.weight" not in sd and "head.weight" not in sd:
        raise KeyError("layers.0.downsample.reduction.weight")
    return _from_stage_end_layout(sd)


@register_converter("swin_mlp", "timm")
def _timm_layout(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """visionzoo's own (timm-style) layout; timm itself has no Swin-MLP."""
    return dict(sd)


def _tiny(heads: Sequence[int]) -> SwinConfig:
    return SwinConfig(embed_dim=96, depths=(2, 2, 6, 2), num_heads=tuple(heads), window_size=8)


VARIANTS = {
    "swin_mlp_tiny_c24_patch4_window8_256": _tiny((4, 8, 16, 32)),
    "swin_mlp_tiny_c12_patch4_window8_256": _tiny((8, 16, 32, 64)),
    "swin_mlp_tiny_c6_patch4_window8_256": _tiny((16, 32, 64, 128)),
    "swin_mlp_base_patch4_window7_224": SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7),
}

register_family(
    "swin_mlp",
    SwinMLP,
    VARIANTS,
    default_cfgs=lambda name, cfg: default_cfg(
        256 if name.endswith("_256") else 224, crop_pct=0.875, first_conv="patch_embed.proj", classifier="head.fc"
    ),
    published={  # official model hub (ImageNet-1k); params rounded to 1M there
        "swin_mlp_tiny_c24_patch4_window8_256": dict(params=20.0, gmacs=4.0, top1=79.4),
        "swin_mlp_tiny_c12_patch4_window8_256": dict(params=21.0, gmacs=4.0, top1=79.6),
        "swin_mlp_tiny_c6_patch4_window8_256": dict(params=23.0, gmacs=4.0, top1=79.7),
        "swin_mlp_base_patch4_window7_224": dict(params=61.0, gmacs=10.4, top1=81.3),
    },
    paper="Swin Transformer authors' release (microsoft/Swin-Transformer, swin_mlp.py)",
)
