"""Feed-forward blocks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..runtime import retains
from .drop_path import skippable
from .helpers import autograd_off, no_hooks, plain_cpu_eager
from .linear import linear, linear_add

__all__ = ["GluMlp", "Mlp", "SwiGLU", "residual_mlp"]

# residual_mlp's blocks (measured on ConvNeXt-T, 2-core AVX2 host; BENCHMARKS.md)
ROW_BLOCK = 1024  # tokens per block: a hidden block of 1.5 MB at width 96, ratio 4
MIN_BLOCKED_ROWS = 4 * ROW_BLOCK  # fewer tokens: one block (blocking ConvNeXt-T's 2nd stage cost up to 5 %)
MAX_BLOCKED_HIDDEN = 1024  # wider hidden layers: one block (a block of them outgrows the cache)


def residual_mlp(residual: Tensor, x: Tensor, fc1: nn.Module, act: nn.Module | None, fc2_weight: Tensor, fc2_bias: Tensor | None = None, norm: nn.Module | None = None) -> Tensor:
    """``residual + F.linear(act(fc1(norm(x))), fc2_weight, fc2_bias)`` for inference: the MLP
    branch of a pre-norm block, accumulated into the residual (:func:`~visionzoo.layers.linear.linear_add`).

    Tokens are independent rows here, so with many of them (``MIN_BLOCKED_ROWS``) and a hidden
    layer up to ``MAX_BLOCKED_HIDDEN`` wide (the first stage of Swin-T, NesT-T and ConvNeXt-T
    at 224 px from batch 2 on) the branch runs ``ROW_BLOCK`` tokens at a time: norm, fc1 +
    act and fc2 of a block, whose hidden activation (4x wider than the tokens) fc2 reads
    back from cache, and whose buffers are reused memory rather than fresh pages. A ``norm``
    that is not a plain unhooked ``nn.LayerNorm`` over the last dimension runs once over all
    tokens first; a hooked ``fc1`` makes it one block (its hook sees every token at once).
    The result is contiguous, shaped like ``residual``, and agrees with one pass to float
    rounding (bit for bit on the hosts measured). Blocking is for a CPU's caches: anywhere else
    (a GPU, a compiler, a dispatch mode) the branch is one pass; at batch 128 on a GPU the
    blocks were ~400 small launches per MLP, and Swin-T inference ran at 0.12x timm (H200).
    Most of what blocks gain is the page faults of a fresh hidden activation, so where freed
    memory is kept for reuse (:func:`visionzoo.runtime.retain_freed_memory`, as the
    ``visionzoo`` command does) the branch is one pass too: blocked over one pass measured
    1.014 for Swin-T, 1.007 for ConvNeXt-T and 1.014 for NesT-T there (paired A/Bs, batch 4,
    2-core AMD EPYC), against 0.954 for ConvNeXt-T with glibc's defaults.

    The caller checks that running the modules' weights directly is unobservable
    (:meth:`Mlp.inference_unrolled`).
    """
    if norm is not None and not (type(norm) is nn.LayerNorm and no_hooks(norm) and norm.normalized_shape == x.shape[-1:]):
        x, norm = norm(x), None
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if (rows < MIN_BLOCKED_ROWS or fc2_weight.shape[1] > MAX_BLOCKED_HIDDEN or not autograd_off() or not no_hooks(fc1)
            or not plain_cpu_eager(x) or retains(rows * fc2_weight.shape[1] * x.element_size())):
        return linear_add(residual, linear(fc1, x if norm is None else norm(x), act), fc2_weight, fc2_bias)
    x, res = x.reshape(rows, -1), residual.reshape(rows, -1)
    out = torch.empty(res.shape, dtype=res.dtype, device=res.device)
    for start in range(0, rows, ROW_BLOCK):
        part = slice(start, start + ROW_BLOCK)
        y = x[part] if norm is None else norm(x[part])
        linear_add(res[part], linear(fc1, y, act), fc2_weight, fc2_bias, out=out[part])
    return out.view(residual.shape)


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

    #: the parts fc1's output is cut into, whose product reaches fc2 (:class:`GluMlp`: 2)
    fc1_chunks = 1

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
        self.fc2 = nn.Linear(hidden_features // self.fc1_chunks, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop1(linear(self.fc1, x, self.act))  # one fused call in CPU inference
        return self.drop2(linear(self.fc2, x))

    def add_to(self, residual: Tensor, x: Tensor, drop_path: nn.Module | None = None, norm: nn.Module | None = None) -> Tensor:
        """``residual + drop_path(self(norm(x)))``, the second half of a pre-norm transformer
        block (``norm`` None: no norm).

        In inference (autograd off, eval mode, plain ``nn.Linear`` layers, nothing hooked)
        this is :func:`residual_mlp`: fc2 accumulates into the residual, with no separate
        passes for the bias and the sum, and many tokens go through in blocks. Elsewhere it
        is the plain expression.
        """
        if self.inference_unrolled(drop_path):
            return residual_mlp(residual, x, self.fc1, self.act, self.fc2.weight, self.fc2.bias, norm)
        y = self(x if norm is None else norm(x))
        return residual + (y if drop_path is None else drop_path(y))

    def inference_unrolled(self, drop_path: nn.Module | None = None) -> bool:
        """Whether a caller may run fc1 + act and fc2's weights directly instead of calling
        this module (and ``drop_path`` after it): autograd off, eval mode, a plain ``Mlp``
        forward and ``nn.Linear`` fc2, an inactive drop path, nothing hooked."""
        return _runs_directly(self, Mlp, drop_path, (self.act, self.drop1))


class GluMlp(Mlp):
    """GLU-gated perceptron (Shazeer, "GLU Variants Improve Transformer", 2020): fc1 gives both
    halves of its ``hidden_features`` at once, ``act(first half) * second half`` goes into fc2.
    With SiLU this is SwiGLU as DINOv2's ViT-g packs it (timm's ``SwiGLUPacked``; keys ``fc1`` /
    ``fc2``, the authors' ``w12`` / ``w3``).

    Args:
        in_features: input width.
        hidden_features: fc1's output width, both halves (even).
        out_features: output width (default ``in_features``).
        act_layer: the gate's activation.
        drop: dropout after the gating and after fc2.
        bias: biases on both layers.

    Shapes:
        (..., in_features) -> (..., out_features).
    """

    fc1_chunks = 2

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, *, act_layer: Callable[[], nn.Module] = nn.SiLU,
                 drop: float = 0.0, bias: bool = True) -> None:
        if hidden_features % 2:
            raise ValueError(f"a GLU MLP splits fc1's output in two halves: hidden_features must be even, got {hidden_features}")
        super().__init__(in_features, hidden_features, out_features, act_layer=act_layer, drop=drop, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(linear(self.fc2, self.hidden(x)))

    def hidden(self, x: Tensor) -> Tensor:
        """What fc2 reads: ``drop1(act(first half) * second half)`` of fc1's output."""
        x1, x2 = linear(self.fc1, x).chunk(2, dim=-1)  # 2 x (..., hidden / 2)
        return self.drop1(self.act(x1) * x2)

    def hidden_unrolled(self, drop_path: nn.Module | None = None) -> bool:
        """Whether a caller may run fc2's weights on :meth:`hidden` directly instead of calling
        this module (and ``drop_path`` after it). (:meth:`Mlp.inference_unrolled`, fc1 + act
        run directly, never holds: the hidden layer is gated.)"""
        return _runs_directly(self, GluMlp, drop_path)


class SwiGLU(nn.Module):
    """SwiGLU perceptron with the gate and the value as two layers (Shazeer 2020; EVA-02's MLP,
    timm's ``SwiGLU``, whose keys it keeps): ``fc2(norm(act(fc1_g(x)) * fc1_x(x)))``, where
    ``norm`` is an optional LayerNorm on the hidden layer (EVA-02's sub-LN, "NormFormer").

    Args:
        in_features: input width.
        hidden_features: width of the gated product (each of ``fc1_g`` and ``fc1_x``).
        out_features: output width (default ``in_features``).
        act_layer: the gate's activation.
        norm_layer: a norm over the hidden layer, or None.
        drop: dropout after the gating and after fc2.
        bias: biases on the three layers.

    Shapes:
        (..., in_features) -> (..., out_features).
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, *, act_layer: Callable[[], nn.Module] = nn.SiLU,
                 norm_layer: Callable[[int], nn.Module] | None = None, drop: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.fc1_g = nn.Linear(in_features, hidden_features, bias=bias)
        self.fc1_x = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = norm_layer(hidden_features) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(linear(self.fc2, self.hidden(x)))

    def hidden(self, x: Tensor) -> Tensor:
        """What fc2 reads: ``norm(drop1(act(fc1_g(x)) * fc1_x(x)))``."""
        x = linear(self.fc1_g, x, self.act) * linear(self.fc1_x, x)  # ..., hidden
        return self.norm(self.drop1(x))

    def hidden_unrolled(self, drop_path: nn.Module | None = None) -> bool:
        """As :meth:`GluMlp.hidden_unrolled`."""
        return _runs_directly(self, SwiGLU, drop_path)


def _runs_directly(mlp: Mlp | SwiGLU, cls: type, drop_path: nn.Module | None, also_unhooked: tuple[nn.Module, ...] = ()) -> bool:
    """Whether a caller may run an MLP's fc2 weights directly (and what ``also_unhooked`` names
    as well): autograd off, eval mode, ``cls``'s own forward and an ``nn.Linear`` fc2, an inactive
    drop path, nothing hooked on the module, fc2, the last dropout or ``also_unhooked`` (the
    gated MLPs' :meth:`hidden` calls the layers before fc2 as layers)."""
    return (
        autograd_off()
        and not mlp.training
        and type(mlp).forward is cls.forward
        and type(mlp.fc2) is nn.Linear
        and skippable(drop_path)
        and no_hooks(mlp, *also_unhooked, mlp.fc2, mlp.drop2)
    )
