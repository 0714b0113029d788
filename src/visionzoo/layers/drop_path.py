"""Stochastic depth (Huang et al., 2016), per sample."""

from __future__ import annotations

from torch import Tensor, nn

from .helpers import no_hooks

__all__ = ["DropPath", "drop_path_rates", "skippable"]


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Linearly increasing drop-path rates over ``depth`` blocks, 0 for the first.

    Python floats rather than ``torch.linspace(...).tolist()`` so that models can be built
    on the meta device (``model_info`` sizes models that way).
    """
    if depth <= 1:
        return [0.0] * depth
    return [rate * i / (depth - 1) for i in range(depth)]


class DropPath(nn.Module):
    """Drop the residual branch of a whole sample with probability ``drop_prob`` in training.

    Shapes:
        (B, ...) -> (B, ...); kept samples are scaled by ``1 / (1 - drop_prob)``.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def skippable(drop_path: nn.Module | None) -> bool:
    """Whether a fast path may leave out the call of ``drop_path``: None, or an unhooked
    ``nn.Identity``, ``DropPath`` or ``nn.Dropout`` that drops nothing (eval mode or rate 0)."""
    if drop_path is None:
        return True
    kind = type(drop_path)
    if kind is DropPath:
        idle = drop_path.drop_prob == 0.0 or not drop_path.training
    elif kind is nn.Dropout:
        idle = drop_path.p == 0.0 or not drop_path.training
    else:
        idle = kind is nn.Identity
    return idle and no_hooks(drop_path)
