"""Squeeze-and-excitation (Hu et al., 2018)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = ["SqueezeExcite"]


class SqueezeExcite(nn.Module):
    """Channel attention: global pool -> 1x1 reduce -> act -> 1x1 expand -> gate.

    Args:
        channels: channels of the map being gated.
        rd_channels: width of the bottleneck.
        act_layer: activation between the two 1x1 convolutions.
        gate_layer: the gate (sigmoid by default).

    Submodules ``fc1`` / ``fc2`` follow timm's naming, so its checkpoints map one to one.

    Shapes:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(
        self,
        channels: int,
        rd_channels: int,
        *,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)
        self.gate = gate_layer()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)  # B, C, 1, 1
        return x * self.gate(self.fc2(self.act(self.fc1(s))))
