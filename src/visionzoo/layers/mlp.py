"""Feed-forward blocks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .drop_path import skippable
from .helpers import no_hooks
from .linear import linear, linear_add

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

    def add_to(self, residual: Tensor, x: Tensor, drop_path: nn.Module | None = None) -> Tensor:
        """``residual + drop_path(self(x))``, the second half of a pre-norm transformer block.

        In inference (autograd off, eval mode, plain ``nn.Linear`` layers, nothing hooked)
        fc2 accumulates into the residual (:func:`~visionzoo.layers.linear.linear_add`): no
        separate passes for the bias and the sum. Elsewhere it is the plain expression.
        """
        if self.inference_unrolled(drop_path):
            return linear_add(residual, linear(self.fc1, x, self.act), self.fc2.weight, self.fc2.bias)
        y = self(x)
        return residual + (y if drop_path is None else drop_path(y))

    def inference_unrolled(self, drop_path: nn.Module | None = None) -> bool:
        """Whether a caller may run fc1 + act and fc2's weights directly instead of calling
        this module (and ``drop_path`` after it): autograd off, eval mode, a plain ``Mlp``
        forward and ``nn.Linear`` fc2, an inactive drop path, nothing hooked."""
        return (
            not torch.is_grad_enabled()
            and not self.training
            and type(self).forward is Mlp.forward
            and type(self.fc2) is nn.Linear
            and skippable(drop_path)
            and no_hooks(self, self.act, self.drop1, self.fc2, self.drop2)
        )

