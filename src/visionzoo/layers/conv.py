"""Convolution building blocks: conv-norm-act, weight-standardised convolution, and
BatchNorm folded into the convolution before it for CPU inference.

:func:`apply_conv_bn` returns ``bn(conv(x))``. In CPU inference it runs one convolution whose
weight and bias already hold the BatchNorm's affine map (``W' = W * s``,
``b' = b * s + t`` with ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``), so the
separate pass of the BatchNorm over the output goes away: 9 % of ResNet-50's CPU time at
batch 4 in a profile. The folded weights are computed once and cached beside the
module, keyed by the storage and version counter of every tensor they come from: an
optimizer step, ``load_state_dict``, ``.to()`` or any in-place change invalidates them.
The cost is a second copy of the convolution weights while a model is used for CPU
inference (ResNet-50: 94 MB); a call that does not take the folded path (training,
autograd, another device) drops the module's copy.

The path is taken only where nothing can observe the difference (the conditions of
:func:`visionzoo.layers.linear.linear`): autograd off, a plain CPU tensor in an eager call,
an ``nn.Conv2d`` whose ``forward`` is ``nn.Conv2d.forward`` (subclasses that override only
``_conv_forward``, e.g. for 'SAME' padding, qualify) and that is not parametrised
(``torch.nn.utils.parametrize``: weight norm, spectral norm), an ``nn.BatchNorm2d`` in eval mode
with running statistics, no hooks, and parameters that are not inference tensors (whose
in-place changes have no version counter). Outputs agree with the unfolded pair to float
rounding (~1e-6 relative). ``VISIONZOO_FOLD_BN=0`` or :func:`set_bn_folding` turns it off.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .helpers import DerivedCache, no_hooks, pad_same, plain_cpu_eager, to_2tuple

__all__ = ["ConvNormAct", "StdConv2d", "apply_conv_bn", "apply_conv_bn_seq", "bn_affine", "set_bn_folding", "use_bn_folding"]

_FOLD = {"enabled": os.environ.get("VISIONZOO_FOLD_BN", "1") != "0"}
_FOLDED = DerivedCache()  # conv module -> (folded weight, folded bias)
_STANDARDIZED = DerivedCache()  # StdConv2d -> (its standardised weight,)


def bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor] | None:
    """(scale, shift) of a BatchNorm in inference (running statistics), else None."""
    if bn.training or bn.running_var is None:
        return None
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def set_bn_folding(enabled: bool) -> None:
    """Turn the folded path of :func:`apply_conv_bn` on or off for the process (off frees the cache)."""
    _FOLD["enabled"] = bool(enabled)
    if not enabled:
        _FOLDED.clear()


@contextmanager
def use_bn_folding(enabled: bool) -> Iterator[None]:
    """Within the block, turn BatchNorm folding on or off (for A/B timing and tests)."""
    saved = _FOLD["enabled"]
    _FOLD["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _FOLD["enabled"] = saved


def _sources(conv: nn.Module, bn: nn.Module) -> tuple[Tensor | None, ...]:
    """The tensors the folded weights come from (read from the modules' dicts: the
    ``nn.Module.__getattr__`` route costs ~1 us a tensor, on every call)."""
    p, q, b = conv._parameters, bn._parameters, bn._buffers
    return p["weight"], p.get("bias"), q.get("weight"), q.get("bias"), b.get("running_mean"), b.get("running_var")


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, ...] | None:
    """The cached (weight, bias) of ``bn(conv(.))`` as one convolution, None if untrackable."""

    def fold() -> tuple[Tensor, Tensor] | None:
        aff = bn_affine(bn)
        if aff is None:
            return None
        w = conv.weight
        scale, shift = (a.float() for a in aff)  # fold in fp32 whatever the parameters' dtype
        weight = (w.float() * scale.reshape(-1, *[1] * (w.dim() - 1))).to(w.dtype)
        return weight, (shift if conv.bias is None else conv.bias.float() * scale + shift).to(w.dtype)

    return _FOLDED.get(conv, _sources(conv, bn), fold, (bn.eps,))


def apply_conv_bn(conv: nn.Module, bn: nn.Module, x: Tensor) -> Tensor:
    """``bn(conv(x))``; in CPU inference one convolution with the BatchNorm folded in.

    Any ``conv`` and ``bn`` work (an ``nn.Identity`` norm, a frozen or synchronised BN, a
    hooked module): where the folded path's conditions (module docstring) do not hold, this
    is ``bn(conv(x))``.
    """
    if (
        _FOLD["enabled"]
        and type(bn) is nn.BatchNorm2d
        and isinstance(conv, nn.Conv2d)
        and type(conv).forward is nn.Conv2d.forward
        and "parametrizations" not in conv._modules  # (a parametrised BN is not of type BatchNorm2d)
        and not torch.is_grad_enabled()
        and not bn.training
        and plain_cpu_eager(x)  # before any use of x: an FX proxy must not reach the comparison
        and x.dtype == conv._parameters["weight"].dtype
        and no_hooks(conv, bn)
    ):
        wb = _folded(conv, bn)
        if wb is not None:
            return conv._conv_forward(x, *wb)
    _FOLDED.discard(conv)  # training, autograd, another device: the folded copy is not kept
    return bn(conv(x))


def apply_conv_bn_seq(seq: nn.Module, x: Tensor) -> Tensor:
    """``seq(x)`` for an ``nn.Sequential(conv, bn)``, through :func:`apply_conv_bn` where ``seq``
    is a plain two-module ``nn.Sequential`` without hooks."""
    if type(seq) is nn.Sequential and len(seq) == 2 and no_hooks(seq):
        return apply_conv_bn(seq[0], seq[1], x)
    return seq(x)


class ConvNormAct(nn.Sequential):
    """Conv2d -> norm -> activation, with 'same'-style symmetric padding by default.

    Args:
        in_chs, out_chs: channel counts.
        kernel_size, stride, groups, dilation: as ``nn.Conv2d``.
        padding: explicit padding; default ``dilation * (kernel_size - 1) // 2``.
        norm_layer: a class taking the channel count, or ``None`` for no norm.
        act_layer: a class taking no arguments, or ``None`` for no activation; one with an
            ``inplace`` attribute (ReLU, ReLU6, SiLU, ...) is switched to in place.
        bias: bias on the convolution (default: only without a norm).

    Submodules are named ``conv``, ``bn`` and ``act``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        padding: int | None = None,
        groups: int = 1,
        dilation: int = 1,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] | None = nn.ReLU,
        bias: bool | None = None,
    ) -> None:
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        if bias is None:
            bias = norm_layer is None
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=bias)
        self.bn = norm_layer(out_chs) if norm_layer is not None else nn.Identity()
        self.act = act_layer() if act_layer is not None else nn.Identity()
        if hasattr(self.act, "inplace"):
            self.act.inplace = True  # its input is always the fresh norm (or conv) output

    def forward(self, x: Tensor) -> Tensor:
        return self.act(apply_conv_bn(self.conv, self.bn, x))


class StdConv2d(nn.Conv2d):
    """Weight-standardised convolution (Qiao et al., 2019), as in BiT and the ViT hybrids.

    The kernel of each output channel is normalised to zero mean and unit variance before
    the convolution. With ``same_pad=True`` the input is padded as TensorFlow's 'SAME'
    (the layout the official BiT / R50+ViT weights were trained with).
    """

    def __init__(self, *args, eps: float = 1e-6, same_pad: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps
        if same_pad and self.padding in ((0, 0), "valid"):
            # where 'SAME' does not depend on the input size (stride 1 and an odd reach, or a 1x1
            # kernel), it is the convolution's own symmetric padding: no padded copy of the map
            reach = [(k - 1) * d for k, d in zip(self.kernel_size, self.dilation)]
            if all(k == 1 for k in self.kernel_size):
                same_pad = False
            elif all(s == 1 for s in self.stride) and all(r % 2 == 0 for r in reach):
                self.padding, same_pad = tuple(r // 2 for r in reach), False
        self.same_pad = same_pad

    def standardized_weight(self) -> Tensor:
        """Each output channel's kernel at zero mean and unit variance."""
        w = self.weight
        return F.batch_norm(w.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0, eps=self.eps).reshape_as(w)

    def forward(self, x: Tensor) -> Tensor:
        if self.same_pad:
            x = pad_same(x, to_2tuple(self.kernel_size), to_2tuple(self.stride), to_2tuple(self.dilation))
        hit = None
        if not torch.is_grad_enabled() and "parametrizations" not in self._modules and plain_cpu_eager(x):
            # CPU inference: the standardised kernel is computed once (cached like folded BatchNorm)
            hit = _STANDARDIZED.get(self, (self._parameters["weight"],), lambda: (self.standardized_weight(),), (self.eps,))
        else:
            _STANDARDIZED.discard(self)
        w = hit[0] if hit is not None else self.standardized_weight()
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
