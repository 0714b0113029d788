"""Image to patch tokens."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .helpers import to_2tuple

__all__ = ["PatchEmbed"]


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
