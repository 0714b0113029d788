"""Image to patch tokens."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .helpers import to_2tuple

__all__ = ["PatchEmbed", "resample_patch_kernel"]


def resample_patch_kernel(weight: Tensor, new_size: int | Sequence[int], *, interpolation: str = "bicubic", antialias: bool = True) -> Tensor:
    """FlexiViT's pseudo-inverse resize (PI-resize; Beyer et al., CVPR 2023, sec. 3.2) of a
    patch embedding's (D, C, p, p) kernel to ``new_size`` patches.

    Let R be the matrix of the image resize from p x p to p' x p' patches (``interpolation``,
    ``antialias``, as ``F.interpolate`` resizes). The new kernel w' solves R^T w' = w in the
    least-squares sense, w' = pinv(R^T) w, so that <R x, w'> = <x, w> for every patch x where
    the resize loses nothing (p' >= p: exactly, a patch embedding of the resized image equals
    the old one of the image), and as nearly as least squares allows where it does (p' < p).
    Computed in float64; returned in ``weight``'s dtype.
    """
    old = tuple(weight.shape[-2:])
    new = to_2tuple(new_size, "patch size")
    if old == new:
        return weight
    n_old = old[0] * old[1]
    basis = torch.eye(n_old, dtype=torch.float64, device=weight.device).reshape(n_old, 1, *old)  # each pixel of a patch alone
    resize = F.interpolate(basis, size=new, mode=interpolation, antialias=antialias, align_corners=False)  # n_old, 1, p', p'
    R = resize.reshape(n_old, -1).T  # n_new, n_old: a flattened patch x -> R x
    kernels = weight.detach().to(torch.float64).reshape(-1, n_old)  # D*C, n_old
    resampled = kernels @ torch.linalg.pinv(R.T).T  # D*C, n_new
    return resampled.reshape(*weight.shape[:-2], *new).to(weight.dtype)


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping p x p patches and embed each linearly.

    A strided p x p convolution is the same linear map applied to every flattened patch.

    Args:
        patch_size: patch side p.
        in_chans: image channels.
        embed_dim: token width C.
        norm_layer: optional norm applied to the tokens.
        flatten: return tokens (B, N, C); otherwise the map (B, C, H/p, W/p).
        bias: bias on the projection.
    """

    def __init__(
        self,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        *,
        norm_layer: Callable[[int], nn.Module] | None = None,
        flatten: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.flatten = flatten
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # B, C, H/p, W/p
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)  # B, N, C
        return self.norm(x)
