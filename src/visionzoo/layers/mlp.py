"""Feed-forward blocks."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .linear import linear

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """Two-layer perceptron used after attention: Linear -> act -> drop -> Linear -> drop.

    Args:
        in_features: input width.
        hidden_features: hidden width (default ``in_features``).
        out_features: output width (default ``in_features``).
        act_layer: activation class.
        drop: dropout after the activation and after the second layer.
        bias: biases on both layers.

    Shapes:
        (..., in_features) -> (..., out_features).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        *,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop1(linear(self.fc1, x, self.act))  # one fused call in CPU inference
        return self.drop2(linear(self.fc2, x))
