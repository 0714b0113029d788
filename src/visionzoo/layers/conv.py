"""Convolution building blocks: conv-norm-act, weight-standardised convolution, and the
CPU inference paths of a convolution with the BatchNorm, activation and residual sum after it.

:func:`apply_conv_bn` returns ``act(bn(conv(x)) + residual)`` (each part optional). In CPU
inference it runs one convolution whose weight and bias already hold the BatchNorm's affine
map (``W' = W * s``, ``b' = b * s + t`` with ``s = gamma / sqrt(var + eps)``,
``t = beta - mean * s``), so the separate pass of the BatchNorm over the output goes away:
9 % of ResNet-50's CPU time at batch 4 in a profile. The folded weights are computed once and
cached beside the module, keyed by the storage and version counter of every tensor they come
from: an optimizer step, ``load_state_dict``, ``.to()`` or any in-place change invalidates
them. The cost is a second copy of the convolution weights while a model is used for CPU
inference (ResNet-50: 94 MB); a call that does not take the folded path (training,
autograd, another device) drops the module's copy.

The path is taken only where nothing can observe the difference (the conditions of
:func:`visionzoo.layers.linear.linear`): autograd off, a plain CPU tensor in an eager call,
an ``nn.Conv2d`` whose ``forward`` is ``nn.Conv2d.forward`` or :class:`Conv2d`'s (subclasses
that override only ``_conv_forward``, e.g. for 'SAME' padding, qualify) and that is not
parametrised (``torch.nn.utils.parametrize``: weight norm, spectral norm), an
``nn.BatchNorm2d`` in eval mode with running statistics, no hooks, and parameters that are
not inference tensors (whose in-place changes have no version counter). Outputs agree with
the unfolded pair to float rounding (~1e-6 relative). ``VISIONZOO_FOLD_BN=0`` or
:func:`set_bn_folding` turns folding off.

Prepacked weights. On a channels-last float32 map (the layout :meth:`VisionModel.cpu_layout`
gives the families that set ``cpu_channels_last``), the same calls, :class:`Conv2d` for a
convolution without a norm and :func:`apply_conv_bn_seq` for whole ``nn.Sequential`` stacks
run oneDNN's convolution on a weight already reordered into its blocked layout for that input
shape. ``F.conv2d`` reorders the weight on every call, which dominates the small-map layers:
ResNet-50 at batch 2 and 64 px ran 52 ms channels-last against 38 ms NCHW, and 26 ms with
packed weights. The packed weight is cached as the folded one is, with the input's shape in
its stamp: a new shape repacks it (from the cached folded weights: one reorder, the cost
every NCHW call pays), and a packed weight is never used on a shape it was not packed for
(oneDNN then falls back to slow kernels: ResNet-50 ran 3.6-25x slower on weights packed for
another shape). A convolution with a BatchNorm so keeps two extra copies of its weights
(ResNet-50: 2 x 94 MB), one without keeps one. The
same call applies the activation (ReLU, ReLU6/Hardtanh, LeakyReLU, SiLU, Hardswish, GELU,
sigmoid, tanh, hard sigmoid) and adds the residual as oneDNN post-ops, without another pass
over the output (oneDNN takes a sum only alone or before a ReLU). ``VISIONZOO_PACK_CONV=0``
or :func:`set_conv_packing` turns packing off (so does turning folding off, for the
convolutions a BatchNorm follows).

Depthwise weight gradients. In CPU training, :class:`Conv2d` (and :func:`conv2d`) computes
the weight gradient of a depthwise convolution larger than 3x3 as one depthwise convolution
over the batch's planes (:func:`depthwise_weight_grad`); oneDNN's kernel for it takes 5-40x
the forward pass at these sizes (BENCHMARKS.md, training notes). 3x3 kernels, grouped
convolutions, autocast, ``torch.func`` transforms, compilation and tracing keep ``F.conv2d``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import INPLACE_ACTS
from .helpers import DerivedCache, channels_last_map, env_switch, no_hooks, onednn_post_op, pad_same, plain_cpu_eager, to_2tuple

__all__ = ["Conv2d", "ConvNormAct", "StdConv2d", "apply_bn_act", "apply_conv_bn", "apply_conv_bn_seq", "bn_affine", "conv2d", "depthwise_weight_grad", "set_bn_folding", "set_conv_packing", "use_bn_folding"]

_FOLD = {"enabled": env_switch("VISIONZOO_FOLD_BN", True)}
_PACK = {"enabled": env_switch("VISIONZOO_PACK_CONV", True)}
_FOLDED = DerivedCache()  # conv module -> (folded weight, folded bias)
_PACKED = DerivedCache()  # conv module -> (weight packed for one input shape, bias), folded if a BN follows
_MKLDNN = torch.ops.mkldnn


def _have_packed_conv() -> bool:
    """Whether this torch build has oneDNN's prepacked-weight convolution ops (inductor's)."""
    try:
        return torch.backends.mkldnn.is_available() and all(hasattr(_MKLDNN, op) for op in ("_reorder_convolution_weight", "_convolution_pointwise"))
    except RuntimeError:  # builds that raise on an unknown op rather than AttributeError
        return False


_HAVE_PACKED_CONV = _have_packed_conv()
_STANDARDIZED = DerivedCache()  # StdConv2d -> (its standardised weight,)
_AFFINE = DerivedCache()  # BatchNorm2d -> its (scale, shift), shaped (1, C, 1, 1)


def uses_running_stats(bn: nn.Module) -> bool:
    """Whether a BatchNorm normalises with its running statistics (eval mode, statistics
    tracked): where :func:`bn_affine` gives its scale and shift."""
    return not bn.training and bn.running_var is not None


def bn_tensors(bn: nn.Module) -> tuple[Tensor | None, ...]:
    """A BatchNorm's weight, bias, running mean and running variance, and its count of
    batches: what an affine or fold derived from it depends on. A training-mode forward
    updates the running statistics without moving their version counters; it counts the batch
    with an in-place add, which moves the count's, so a cache stamped with these tensors sees
    the new statistics. (Read from the module's dicts: the ``nn.Module.__getattr__`` route
    costs ~1 us a tensor, on every call.)"""
    q, b = bn._parameters, bn._buffers
    return q.get("weight"), q.get("bias"), b.get("running_mean"), b.get("running_var"), b.get("num_batches_tracked")


def bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor] | None:
    """(scale, shift) of a BatchNorm in inference (running statistics), else None."""
    if not uses_running_stats(bn):
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


def set_conv_packing(enabled: bool) -> None:
    """Turn prepacked convolution weights for channels-last CPU inference on or off (off frees them)."""
    _PACK["enabled"] = bool(enabled)
    if not enabled:
        _PACKED.clear()


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
    """The tensors the folded weights come from (read from the modules' dicts, as :func:`bn_tensors`)."""
    p = conv._parameters
    return p["weight"], p.get("bias"), *bn_tensors(bn)


def _packs(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether ``conv`` runs on ``x`` with a prepacked weight: a float32 map in channels-last
    order (:func:`~visionzoo.layers.helpers.channels_last_map`: a 1x1 map qualifies, a plain NCHW
    map of one channel does not), explicit zero padding, and ``nn.Conv2d``'s own ``_conv_forward`` (a subclass
    that overrides it for 'SAME' padding says where it pads as ``nn.Conv2d`` does through a
    true ``plain_padding`` attribute)."""
    return (
        _PACK["enabled"]
        and _HAVE_PACKED_CONV
        and torch._C._get_mkldnn_enabled()
        and x.dtype == torch.float32
        and channels_last_map(x)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and (type(conv)._conv_forward in (nn.Conv2d._conv_forward, Conv2d._conv_forward) or getattr(conv, "plain_padding", False))
    )


def _pack(conv: nn.Conv2d, weight: Tensor, bias: Tensor | None, shape: torch.Size) -> tuple[Tensor, Tensor | None]:
    """``weight`` reordered into oneDNN's blocked layout for inputs of ``shape``."""
    return _MKLDNN._reorder_convolution_weight(weight, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, list(shape)), bias


_NO_ACT = ("none", [], "")


def _is_act(m: nn.Module) -> bool:
    """Whether ``m`` is an activation oneDNN can apply as a post-op."""
    return type(m) is not nn.Identity and onednn_post_op(m) is not None


def _run_packed(conv: nn.Conv2d, x: Tensor, weight: Tensor, bias: Tensor | None, act: tuple = _NO_ACT, residual: Tensor | None = None, into_residual: bool = False) -> Tensor:
    """``act(conv(x) + residual)`` in one oneDNN call on a packed weight; with
    ``into_residual``, written into ``residual`` (oneDNN's sum post-op) and returned."""
    geometry = list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups
    if residual is None:
        return _MKLDNN._convolution_pointwise(x, weight, bias, *geometry, *act)
    name, scalars, algorithm = act
    op = _MKLDNN._convolution_pointwise_.binary if into_residual else _MKLDNN._convolution_pointwise.binary
    args = (residual, x) if into_residual else (x, residual)
    return op(*args, weight, bias, *geometry, "add", 1.0, None if name == "none" else name, scalars, algorithm)


def _fusable_residual(conv: nn.Conv2d, x: Tensor, residual: Tensor | None) -> bool:
    """Whether oneDNN can add ``residual`` to ``conv(x)`` as a post-op: a plain float32 tensor
    of exactly the output's shape, channels-last like ``x``."""
    if residual is None:
        return True
    size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(x.shape[2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
    return (
        type(residual) is Tensor
        and residual.dtype == x.dtype
        and residual.shape == (x.shape[0], conv.out_channels, *size)
        and channels_last_map(residual)
    )


def _eager_inference(conv: nn.Module, x: Tensor, *others: nn.Module) -> bool:
    """The conditions every cached path needs (module docstring), but the BatchNorm's."""
    return (
        isinstance(conv, nn.Conv2d)
        and type(conv).forward in _PLAIN_FORWARDS
        and "parametrizations" not in conv._modules
        and not torch.is_grad_enabled()
        and plain_cpu_eager(x)  # before any use of x: an FX proxy must not reach the comparison
        and x.dtype == conv._parameters["weight"].dtype
        and no_hooks(conv, *others)
    )


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, ...] | None:
    """The cached (weight, bias) of ``bn(conv(.))`` as one convolution; None if untrackable."""

    def fold() -> tuple[Tensor, Tensor] | None:
        aff = bn_affine(bn)
        if aff is None:
            return None
        w = conv.weight
        dt = torch.promote_types(w.dtype, torch.float32)  # fold in fp32 at least (fp16/bf16 weights), fp64 in fp64
        scale, shift = (a.to(dt) for a in aff)
        weight = (w.to(dt) * scale.reshape(-1, *[1] * (w.dim() - 1))).to(w.dtype)
        return weight, (shift if conv.bias is None else conv.bias.to(dt) * scale + shift).to(w.dtype)

    return _FOLDED.get(conv, _sources(conv, bn), fold, (bn.eps,))


def _prepared(conv: nn.Module, bn: nn.Module | None, x: Tensor) -> tuple[tuple[Tensor, ...] | None, bool]:
    """The cached (weight, bias) that run ``bn(conv(x))`` (``conv(x)`` for ``bn=None``) as one
    convolution, and whether the weight is packed; (None, False) where no cached path applies."""
    if bn is None or (type(bn) is nn.Identity and no_hooks(bn)):
        if _eager_inference(conv, x) and _packs(conv, x):
            p = conv._parameters
            return _PACKED.get(conv, (p["weight"], p["bias"]), lambda: _pack(conv, p["weight"], p["bias"], x.shape), (x.shape,)), True
    elif _FOLD["enabled"] and type(bn) is nn.BatchNorm2d and not bn.training and _eager_inference(conv, x, bn):
        wb = _folded(conv, bn)
        if wb is None or not _packs(conv, x):
            _PACKED.discard(conv)
            return wb, False
        # packed from the cached folded pair: a new input shape costs one reorder, as every NCHW call does
        return _PACKED.get(conv, _sources(conv, bn), lambda: _pack(conv, *wb, x.shape), (bn.eps, x.shape)), True
    else:
        _FOLDED.discard(conv)  # training, autograd, another device: the folded copy is not kept
    _PACKED.discard(conv)
    return None, False


def depthwise_weight_grad(x: Tensor, grad: Tensor, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
    """The weight gradient of a depthwise convolution (one filter per channel) of ``x`` whose
    output received ``grad``, shaped ``(C, 1, kh, kw)``.

    ``dW[c, i, j] = sum over b, h, w of grad[b, c, h, w] * x_pad[b, c, s*h + d*i, s*w + d*j]``
    is itself a correlation: of each padded (image, channel) plane with that plane's output
    gradient as the kernel. So it runs as one depthwise convolution over the batch's B*C
    planes (stride and dilation swap roles), summed over images.
    """
    B, C, H, W = x.shape
    planes = F.conv2d(x.reshape(1, B * C, H, W), grad.reshape(B * C, 1, *grad.shape[2:]), None, dilation, padding, stride, B * C)
    # the planes can reach past the kernel when stride > 1 leaves input rows unused: crop
    return planes[..., : kernel_size[0], : kernel_size[1]].reshape(B, C, *kernel_size).sum(0).unsqueeze(1)


class _DepthwiseConv2d(torch.autograd.Function):
    """``F.conv2d`` of a depthwise convolution, its weight gradient from :func:`depthwise_weight_grad`.

    The backward is built from differentiable ops, so double backward works.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
        return F.conv2d(x, weight, bias, stride, padding, dilation, x.shape[1])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        x, weight, bias, ctx.stride, ctx.padding, ctx.dilation = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        x, weight = ctx.saved_tensors
        geometry = list(ctx.stride), list(ctx.padding), list(ctx.dilation)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(grad, x, weight, None, *geometry, False, [0, 0], x.shape[1], [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            gw = depthwise_weight_grad(x, grad, weight.shape[2:], ctx.stride, ctx.padding, ctx.dilation)
            if gw.stride() != weight.stride():  # in the weight's layout, as autograd's own: DDP's buckets follow it
                gw = torch.empty_like(weight).copy_(gw)
        if ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None, None, None


def _slow_depthwise_grad(x: Tensor, weight: Tensor, padding: tuple[int, int] | str, groups: int) -> bool:
    """Whether ``F.conv2d(x, weight, ...)`` is a CPU depthwise convolution larger than 3x3
    whose weight gradient autograd will compute (see :func:`conv2d`)."""
    return (
        plain_cpu_eager(x)  # first: an FX proxy (of x or the weight) must not reach the comparisons
        and torch.is_grad_enabled()
        and weight.requires_grad
        and weight.dim() == 4
        and weight.shape[2] * weight.shape[3] > 9
        and not isinstance(padding, str)
        and x.dim() == 4
        and groups == x.shape[1] == weight.shape[0]
        and not torch.is_autocast_enabled("cpu")
        and torch._C._functorch.peek_interpreter_stack() is None  # not under torch.func transforms
    )


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: tuple[int, int] = (1, 1), padding: tuple[int, int] | str = (0, 0), dilation: tuple[int, int] = (1, 1), groups: int = 1) -> Tensor:
    """``F.conv2d`` (pairs for ``stride``, ``padding`` and ``dilation``) whose weight gradient,
    for a depthwise convolution larger than 3x3 on the CPU, comes from
    :func:`depthwise_weight_grad`.

    oneDNN computes that gradient with a kernel 5-40x slower than its forward pass (its fast
    kernel covers 3x3 only): at batch 4, 111 ms against 15 for ConvMixer-768/32's 7x7 layer
    and 34 against 2.1 for ConvNeXt-T's first stage. The result agrees with autograd's to
    float rounding.
    """
    if _slow_depthwise_grad(x, weight, padding, groups):
        return _DepthwiseConv2d.apply(x, weight, bias, to_2tuple(stride), to_2tuple(padding), to_2tuple(dilation))
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same arguments, parameters and keys) with visionzoo's CPU paths: inference
    on a channels-last float32 map runs on a cached prepacked weight (for the convolutions no
    BatchNorm follows directly; those take :func:`apply_conv_bn`), and a depthwise convolution
    larger than 3x3 gets its weight gradient from :func:`depthwise_weight_grad` (:func:`conv2d`)."""

    def forward(self, x: Tensor) -> Tensor:
        wb, packed = _prepared(self, None, x)
        return _run_packed(self, x, *wb) if packed and wb is not None else super().forward(x)

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "zeros":
            return super()._conv_forward(x, weight, bias)
        return conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


_PLAIN_FORWARDS = (nn.Conv2d.forward, Conv2d.forward)


def apply_conv_bn(conv: nn.Module, bn: nn.Module | None, x: Tensor, act: nn.Module | None = None, residual: Tensor | None = None, *, into_residual: bool = False) -> Tensor:
    """``act(bn(conv(x)) + residual)``, without the norm, the sum or the activation where
    ``bn``, ``residual`` or ``act`` is None. In CPU inference one convolution with the BatchNorm
    folded in; on a channels-last map one oneDNN call on a prepacked weight, with the
    activation and the sum as its post-ops where oneDNN has them: ReLU, ReLU6/Hardtanh,
    LeakyReLU, SiLU, Hardswish, GELU, sigmoid, tanh and hard sigmoid without a sum; a sum alone
    or before a ReLU.

    ``into_residual=True`` says the caller owns ``residual`` and nothing reads it afterwards
    (a tensor made in the same forward that no hook or other caller has seen): that fused call
    then writes the result into ``residual`` and returns it, oneDNN's in-place sum, which
    reads the residual where the output goes instead of from a second tensor. ResNet-50's
    1x1 expansions with the residual, batch 4, 2-core Xeon: 0.89-0.94x the time of the
    out-of-place sum per call; the model 0.949x (paired A/B, its blocks handed their shortcuts
    by :class:`~visionzoo.models.resnet.ResidualStage`). Every other path leaves ``residual``
    unchanged.

    Any ``conv``, ``bn`` and ``act`` work (an ``nn.Identity`` norm, a frozen or synchronised BN,
    a hooked module): where the fast paths' conditions (module docstring) do not hold, this is
    the expression above. The sum is written into ``bn``'s output, a fresh tensor.
    """
    wb, packed = _prepared(conv, bn, x)
    if wb is None:
        y = conv(x) if bn is None else bn(conv(x))
    else:
        post = onednn_post_op(act) if packed and (act is None or no_hooks(act)) else None  # a hooked act must see its call
        if post is not None and residual is not None and post[0] not in ("none", "relu"):
            post = None  # oneDNN's convolution takes a sum only alone or before a ReLU
        if post is not None and _fusable_residual(conv, x, residual):
            return _run_packed(conv, x, *wb, post, residual, into_residual)  # (no residual: no sum to write)
        y = _run_packed(conv, x, *wb) if packed else conv._conv_forward(x, *wb)
    if residual is not None:
        y += residual
    return y if act is None else act(y)


def apply_bn_act(bn: nn.Module, x: Tensor, act: nn.Module | None = None) -> Tensor:
    """``act(bn(x))`` for a BatchNorm that no convolution precedes (a pre-activation network's
    BN -> ReLU -> conv). In CPU inference, for an ``nn.BatchNorm2d`` with running statistics
    and modules without hooks, one ``addcmul`` with the cached (scale, shift) and the activation
    in place on its fresh output: on the channel slices of a channels-last map that DenseNet's
    layers read, 2.3-2.6x faster than ``F.batch_norm`` and ``relu_`` (batch 4, 2-core Xeon).
    Anywhere else the modules are called."""
    if (
        type(bn) is nn.BatchNorm2d
        and uses_running_stats(bn)
        and not torch.is_grad_enabled()
        and plain_cpu_eager(x)
        and x.dim() == 4
        and x.dtype == bn.running_var.dtype
        and no_hooks(bn, *([act] if act is not None else []))
    ):
        inplace = INPLACE_ACTS.get(type(act)) if act is not None else None
        affine = _AFFINE.get(bn, bn_tensors(bn), lambda: tuple(t.view(1, -1, 1, 1) for t in bn_affine(bn)), (bn.eps,))
        if affine is not None and (act is None or inplace is not None):
            y = torch.addcmul(affine[1], x, affine[0])
            return y if act is None else inplace(y, act)
    else:
        _AFFINE.discard(bn)
    x = bn(x)
    return x if act is None else act(x)


def apply_conv_bn_seq(seq: nn.Module, x: Tensor) -> Tensor:
    """``seq(x)``, where ``seq`` is a plain ``nn.Sequential`` without hooks running each
    convolution, with the BatchNorm and the activation that follow it, through
    :func:`apply_conv_bn` (nested plain ``nn.Sequential`` likewise); any other module is called."""
    if type(seq) is not nn.Sequential or not no_hooks(seq):
        return seq(x)
    mods = list(seq._modules.values())
    i = 0
    while i < len(mods):
        m = mods[i]
        i += 1
        if isinstance(m, nn.Conv2d):
            bn = act = None
            if i < len(mods) and type(mods[i]) is nn.BatchNorm2d:
                bn, i = mods[i], i + 1
            if i < len(mods) and _is_act(mods[i]):
                act, i = mods[i], i + 1
            x = apply_conv_bn(m, bn, x, act)
        else:
            x = apply_conv_bn_seq(m, x)
    return x


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
        return apply_conv_bn(self.conv, self.bn, x, self.act)


class StdConv2d(nn.Conv2d):
    """Weight-standardised convolution (Qiao et al., 2019), as in BiT and the ViT hybrids.

    The kernel of each output channel is normalised to zero mean and unit variance before
    the convolution. With ``same_pad=True`` the input is padded as TensorFlow's 'SAME'
    (the layout the official BiT / R50+ViT weights were trained with).

    In CPU inference the standardised kernel is computed once and cached (as folded BatchNorms
    are); on a channels-last float32 map it is also prepacked for oneDNN, as :class:`Conv2d`'s.
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
        if hit is not None and _packs(self, x):  # packed from the cached standardised kernel
            p = self._parameters
            packed = _PACKED.get(self, (p["weight"], p["bias"]), lambda: _pack(self, w, p["bias"], x.shape), (self.eps, x.shape))
            if packed is not None:
                return _run_packed(self, x, *packed)
        else:
            _PACKED.discard(self)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
