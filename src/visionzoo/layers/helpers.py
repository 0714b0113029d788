"""Small helpers shared by layers and models."""

from __future__ import annotations

import math
import operator
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.nn.modules import module as _module
from torch.utils.weak import WeakIdKeyDictionary

from .activations import GELU
from .grad_mode import autograd_off, needs_grad

__all__ = ["as_int", "to_2tuple", "make_divisible", "pad_same", "pad_to_fit", "check_int", "check_output_stride", "dilate_strides", "get_same_padding", "plain_cpu_eager", "autograd_off", "needs_grad", "channels_last_map", "no_hooks", "evaluating", "onednn_post_op", "DerivedCache", "clear_derived_caches"]


def to_2tuple(x: int | Iterable[int], name: str = "size") -> tuple[int, int]:
    """``7 -> (7, 7)``; a pair is returned as a tuple of ints.

    Raises ValueError naming ``name`` for anything else: a bool, a float (224.9 is not
    truncated), a string, a sequence of another length.
    """
    pair = tuple(x) if isinstance(x, Iterable) and not isinstance(x, (str, bytes)) else (x, x)
    ints = [as_int(v) for v in pair]
    if len(pair) != 2 or None in ints:
        raise ValueError(f"{name} takes an int or a pair of ints, got {x!r}")
    return ints[0], ints[1]  # type: ignore[return-value]


def as_int(value: object) -> int | None:
    """``value`` as an int if it is an integer (Python, NumPy or a 0-d tensor; not a bool, not
    224.0), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, then every module's own mode back (a model in
    training with frozen, eval-mode BatchNorms keeps them so; ``model.train(was_training)``
    would set them training)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def classifier(in_features: int, num_classes: int) -> nn.Module:
    """A classification layer: ``nn.Linear(in_features, num_classes)``, or ``nn.Identity()``
    for 0 classes (the model then returns its pooled features, as in timm)."""
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10 %."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def get_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """Total padding TensorFlow's 'SAME' adds along one axis."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def pad_same(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int] = (1, 1), value: float = 0.0) -> Tensor:
    """Pad (B, C, H, W) as TensorFlow's 'SAME' does: the extra pixel goes right/bottom."""
    ih, iw = x.shape[-2:]
    ph = get_same_padding(ih, kernel[0], stride[0], dilation[0])
    pw = get_same_padding(iw, kernel[1], stride[1], dilation[1])
    if ph > 0 or pw > 0:
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=value)
    return x


_SWITCH_WORDS = {"1": True, "on": True, "true": True, "yes": True, "0": False, "off": False, "false": False, "no": False}


def env_switch(name: str, default: bool) -> bool:
    """The environment variable ``name`` as a switch: 1 / 0, on / off, true / false, yes / no in
    any case; ``default`` where unset or empty, and, with a warning naming it, for any other
    value (which a reading of '0' alone as off would have taken as on)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = _SWITCH_WORDS.get(raw.lower())
    if value is None:
        warnings.warn(f"{name}={raw!r} is not 1 or 0 (on or off): left {'on' if default else 'off'}", stacklevel=2)
        return default
    return value


def check_int(name: str, value: object, least: int = 1, why: str = "") -> None:
    """Refuse ``value`` unless it is an int (not a bool) of at least ``least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an int >= {least}{why}, got {value!r}")


def check_output_stride(output_stride: object, allowed: tuple[int, ...] = (8, 16, 32)) -> None:
    """Refuse an ``output_stride`` other than one of the ints ``allowed``."""
    if type(output_stride) is not int or output_stride not in allowed:
        names = ", ".join(map(str, allowed[:-1])) + f" or {allowed[-1]}"
        raise ValueError(f"output_stride must be the int {names}, got {output_stride!r}")


def dilate_strides(strides: Sequence[int], stem_stride: int, output_stride: int) -> list[tuple[int, int, int, int]]:
    """Per stage: (stride, reduction after it, dilation of its first block, of the others).

    A stride that would take the reduction past ``output_stride`` becomes 1 and multiplies
    the dilation instead; the stage's first block keeps the previous dilation, as timm's
    ``EfficientNetBuilder``.
    """
    plan, reduction, dilation = [], stem_stride, 1
    for stride in strides:
        first = dilation
        if reduction * stride > output_stride:  # trade the stride for dilation
            stride, dilation = 1, dilation * stride
        reduction *= stride
        plan.append((stride, reduction, first, dilation))
    return plan


def pad_to_fit(x: Tensor, multiple: int = 1, min_size: int = 1, mode: str = "constant") -> Tensor:
    """``x`` (..., H, W) padded at the bottom and right to the smallest size whose sides are
    multiples of ``multiple`` and at least ``min_size`` (mmsegmentation's ``size_divisor``):
    with zeros, or ``mode="replicate"`` repeating the last row and column; ``x`` itself when
    it already fits."""
    H, W = x.shape[-2:]
    Hp, Wp = (-(-max(side, min_size) // multiple) * multiple for side in (H, W))
    return x if (Hp, Wp) == (H, W) else F.pad(x, (0, Wp - W, 0, Hp - H), mode=mode)


@torch.no_grad()
def trunc_normal_(t: Tensor, std: float = 0.02) -> Tensor:
    """Normal(0, std) truncated at +-2 std, the initialisation of ViT-style models.

    Each out-of-range draw (4.6 %) is replaced by an in-range one of its own, drawn by rejection:
    the exact truncated distribution, about 12x faster on CPU than the inverse-CDF method of
    ``nn.init.trunc_normal_`` (which matters for 600M-parameter models), and 3x faster than
    redrawing in place until no value is left out of range (a pass over the chunk per round).
    """
    if t.device.type == "meta":
        return t
    flat = t.view(-1) if t.is_contiguous() else torch.empty(t.numel(), dtype=t.dtype, device=t.device)
    bound = 2 * std
    for chunk in flat.split(1 << 20):  # chunks keep the masks small and in cache
        chunk.normal_(0.0, std)
        bad = chunk.abs() > bound
        n = int(torch.count_nonzero(bad))
        while n:  # n in-range draws from a few more (95.4 % are in range; rarely a second round)
            fresh = torch.empty(n + n // 8 + 16, dtype=t.dtype, device=t.device).normal_(0.0, std)
            fresh = fresh[fresh.abs() <= bound]
            if fresh.numel() >= n:
                chunk.masked_scatter_(bad, fresh[:n])
                break
    if not t.is_contiguous():
        t.copy_(flat.view_as(t))
    return t


def he_normal_fan_out_(conv: nn.Conv2d) -> None:
    """He-normal over the fan-out per group (TF's and pycls's convolution init, timm's
    ``_init_weight_goog``): weight ~ N(0, 2 / (kh * kw * out / groups)), bias 0."""
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _vmapped(x: Tensor) -> bool:
    """Whether ``x`` is a tensor of torch.func's transforms (vmap, grad); False while dynamo
    traces, which handles those transforms itself and cannot trace this query (a graph break)."""
    return not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(x)


def channels_last_map(x: Tensor) -> bool:
    """Whether ``x`` is a 4-D map whose memory is in channels-last order with the channels
    innermost (stride 1): the layout oneDNN's NHWC kernels take.

    ``x.is_contiguous(memory_format=torch.channels_last)`` alone also holds for plain NCHW maps
    of one channel, and ``x.is_contiguous()`` also for channels-last maps of 1x1, where both
    orders put the same values in the same places; the channel stride tells them apart. A 1x1
    map (B, C, 1, 1) with its channels at stride 1 qualifies, as any contiguous one does.
    """
    if _vmapped(x):  # inside vmap, which cannot say
        return False
    return x.dim() == 4 and x.stride(1) == 1 and x.is_contiguous(memory_format=torch.channels_last)


def to_channels_last(x: Tensor) -> Tensor:
    """A 4-D map in channels-last memory that :func:`channels_last_map` accepts: a copy where
    needed; a one-channel map, already in that order, gets channels-last strides (a view).
    Inside torch.func's vmap, which has no memory formats, ``x`` as it is."""
    if _vmapped(x):
        return x
    x = x.contiguous(memory_format=torch.channels_last)
    if x.stride(1) != 1:  # one channel: the same memory, given channels-last strides
        B, _, H, W = x.shape
        x = x.reshape(B, H, W, 1).permute(0, 3, 1, 2)
    return x


def to_contiguous(x: Tensor) -> Tensor:
    """``x.contiguous()``; a large channels-last CPU map is transposed block by block.

    ``contiguous()`` turns a channels-last map into NCHW as one strided copy that walks the whole
    map for every channel; in blocks of ~32k values (a few hundred pixels) source and target
    stay in cache. Batch 4, 2-core Xeon, ms, ``contiguous()`` / blocks: 64 x 224 x 224
    45.7 / 11.7, 128 x 112 x 112 25.0 / 5.0, 256 x 56 x 56 10.4 / 2.4; maps under 2**20 values
    (equal or slower in blocks), anything autograd records and anything traced or exported take ``contiguous()``.
    """
    # plain_cpu_eager first: under torch.export a size test on a symbolic batch would be a guard
    if not plain_cpu_eager(x) or x.requires_grad or x.is_contiguous() or x.numel() < 1 << 20 or not channels_last_map(x):
        return x.contiguous()
    B, C, H, W = x.shape
    tokens = x.permute(0, 2, 3, 1).reshape(B, H * W, C)  # a view of the channels-last memory
    out = torch.empty((B, C, H, W), dtype=x.dtype)
    flat = out.view(B, C, H * W)
    step = max(16, (1 << 15) // C)
    for i in range(0, H * W, step):
        flat[:, :, i : i + step].copy_(tokens[:, i : i + step].transpose(1, 2))
    return out


def plain_cpu_eager(x: Tensor) -> bool:
    """True when ``x`` is a plain CPU tensor in an eager call that nothing else observes.

    No tensor subclass, and no compiler, tracer, TorchScript, torch.func transform (``vmap``,
    ``grad``), dispatch mode (FlopCounterMode, FakeTensorMode) or torch-function mode
    (``torch.device(...)`` contexts) active: the
    condition under which a fast path may run other aten ops than the module it replaces.
    Autograd and dtype conditions are each caller's own.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False  # (first: under torch.jit.trace, see autograd_off, x is not touched)
    if type(x) is not Tensor or x.device.type != "cpu" or torch._C._are_functorch_transforms_active():
        return False  # (torch.func's vmap and grad wrap tensors the fast kernels cannot take)
    return torch._C._len_torch_dispatch_stack() == 0 and not torch._C._is_torch_function_mode_enabled()


def no_hooks(*modules: nn.Module) -> bool:
    """True when neither ``modules`` nor the global registry has forward (pre-)hooks: a fast
    path that replaces their forward calls skips nothing a user asked to observe."""
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


_ONEDNN_ACTS = {nn.ReLU: "relu", nn.SiLU: "swish", nn.Hardswish: "hardswish", nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid", nn.Tanh: "tanh"}


_input_state = threading.local()  # whether the input of the forward under way holds NaN or inf (per thread)
#: activations whose oneDNN post-ops clamp (max / min): they turn NaN into a finite number where PyTorch keeps it
_CLAMPING_ACTS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardsigmoid)


def note_input(x: Tensor) -> None:
    """Record whether ``x``, the input of a network's forward (its stem's check), holds NaN or
    inf where the fused CPU inference kernels may see it: those forwards then run ReLU,
    ReLU6 / Hardtanh and Hardsigmoid after a convolution or linear layer instead of as its
    oneDNN post-op, which maps NaN to a finite number (PyTorch's and timm's outputs are NaN
    there). One sum over the input; anything else (autograd on, another device, tracing)
    records False. A layer called on its own afterwards reads the last forward's record."""
    nonfinite = False
    if not torch.is_grad_enabled() and plain_cpu_eager(x) and x.is_floating_point() and x.numel():
        nonfinite = not bool(torch.isfinite(x.sum()))  # (a finite input whose sum overflows: the exact path, no harm)
    _input_state.nonfinite = nonfinite


def onednn_post_op(act: nn.Module | None) -> tuple[str, list[float], str] | None:
    """oneDNN's post-op (name, scalars, algorithm) computing the activation module ``act``, as
    its fused convolution and linear kernels take it: ``("none", [], "")`` for None or
    ``nn.Identity``; None for an activation oneDNN has no post-op for, and for a clamping one
    (ReLU, ReLU6, Hardtanh, Hardsigmoid) while the forward's input holds NaN or inf
    (:func:`note_input`)."""
    kind = type(act)
    if act is None or kind is nn.Identity:
        return "none", [], ""
    if kind in _CLAMPING_ACTS and getattr(_input_state, "nonfinite", False):
        return None
    if kind in _ONEDNN_ACTS:
        return _ONEDNN_ACTS[kind], [], ""
    if kind in (nn.ReLU6, nn.Hardtanh):
        return "hardtanh", [float(act.min_val), float(act.max_val)], ""
    if kind is nn.LeakyReLU:
        return "leaky_relu", [float(act.negative_slope)], ""
    if kind in (nn.GELU, GELU):  # visionzoo's GELU: exact, in place outside autograd
        return "gelu", [], act.approximate  # "none" (erf) or "tanh"
    return None


_CACHES: list[DerivedCache] = []  # every DerivedCache (module-level objects, made at import)


def clear_derived_caches(model: nn.Module | None = None) -> None:
    """Drop the tensors cached from the weights of ``model``'s modules (every model's: None):
    BatchNorm folded into convolutions, prepacked and standardised kernels, ConvNeXt's scaled
    fc2, linear weights in oneDNN's blocked layout. They are recomputed on the next CPU inference call.

    Needed only after writing weights through ``.data`` (``w.data.mul_(0.5)``), which the
    caches cannot see; ``train()`` and ``eval()`` of a visionzoo model call it too.
    """
    owners = None if model is None else [*model.modules(), *model.parameters()]
    for cache in _CACHES:
        if owners is None:
            cache.clear()
        else:
            cache.discard_all(owners)


class DerivedCache:
    """Tensors computed from a module's parameters (BatchNorm folded into a convolution, layer
    scale folded into a linear layer, a standardised weight), kept for CPU inference.

    Each entry is stamped with the storage, version counter and dtype of every tensor it was
    computed from, so an optimizer step, ``load_state_dict``, ``.to()`` or any in-place change
    makes the next :meth:`get` recompute it. A write through ``.data`` is the exception: like
    autograd, the version counter does not see it (:func:`clear_derived_caches`). Owners are
    modules, or tensors (a weight, for a copy of it in another layout), held weakly and by
    identity: the cache neither keeps them alive nor travels with ``deepcopy`` or pickling.
    """

    def __init__(self) -> None:
        self._entries: WeakIdKeyDictionary = WeakIdKeyDictionary()  # owner -> (stamp, value, weak refs to the sources' storages)
        _CACHES.append(self)

    @staticmethod
    def stamp(sources: Iterable[Tensor | None]) -> tuple | None:
        """What identifies the values of ``sources``: per tensor its storage object, data
        pointer, version counter and dtype; None when one cannot be tracked (an inference
        tensor changes in place without bumping its version counter)."""
        out = []
        for t in sources:
            if t is None:
                out.append(None)
            elif t.is_inference() or _vmapped(t):
                return None  # (a vmapped weight, as in model ensembling, has no one storage)
            else:
                out.append((t.untyped_storage()._cdata, t.data_ptr(), t._version, t.dtype))
        return tuple(out)

    def _store(self, owner: object, sources: tuple[Tensor | None, ...], key: tuple, value: tuple[Tensor, ...]) -> None:
        # The entry holds weak references to the sources' storages: while it lives, no other
        # storage can take their addresses. ``.to()`` / ``.float()`` give a parameter a new
        # storage without touching its version counter, and the allocator may hand the new data
        # the old data pointer, so the pointer alone would let a stale value be reused.
        refs = tuple(StorageWeakRef(t.untyped_storage()) for t in sources if t is not None)
        self._entries[owner] = (key, value, refs)

    def get(self, owner: object, sources: Iterable[Tensor | None], compute: Callable[[], tuple[Tensor, ...] | None], extra: tuple = ()) -> tuple[Tensor, ...] | None:
        """The cached ``compute()`` for ``owner`` while ``sources`` (and ``extra``, plain values
        such as an eps) are unchanged; None where the sources cannot be tracked or ``compute``
        gives None."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return None  # a cached value would enter the trace as a constant; dynamo cannot trace the stamps (a graph break per call)
        sources = tuple(sources)
        stamp = self.stamp(sources)
        if stamp is None:
            return None
        key = stamp + extra
        hit = self._hit(owner, key)
        if hit is not None:
            return hit
        # plain tensors even inside inference_mode: a cached weight handed to a cache of its
        # own (linear's blocked copy) must be trackable there, and inference tensors are not
        with torch.inference_mode(False), torch.no_grad():
            value = compute()
        if value is not None:
            self._store(owner, sources, key, value)
        return value

    def lookup(self, owner: object, sources: Iterable[Tensor | None], extra: tuple = ()) -> tuple[Tensor, ...] | None:
        """``owner``'s value while ``sources`` (and ``extra``) are as when it was stored, else None."""
        stamp = self.stamp(sources)
        return None if stamp is None else self._hit(owner, stamp + extra)

    def _hit(self, owner: object, key: tuple) -> tuple[Tensor, ...] | None:
        entry = self._entries.get(owner)
        return entry[1] if entry is not None and entry[0] == key else None

    def put(self, owner: object, sources: Iterable[Tensor | None], value: tuple[Tensor, ...], extra: tuple = ()) -> tuple[Tensor, ...]:
        """Store ``value`` for ``owner`` as computed from ``sources`` (and ``extra``) as they are
        now, replacing any entry (nothing is stored where they cannot be tracked); returns ``value``."""
        sources = tuple(sources)
        stamp = self.stamp(sources)
        if stamp is not None:
            self._store(owner, sources, stamp + extra, value)
        return value

    def discard(self, owner: object) -> None:
        """Drop ``owner``'s entry (a call off the cached path does not keep the copy). Nothing
        while torch.compile traces: it never fills the cache, and dynamo does not trace into
        ``torch.utils.weak`` (a graph break)."""
        if not torch.compiler.is_compiling() and self._entries:
            self._entries.pop(owner, None)

    def clear(self) -> None:
        self._entries.clear()

    def discard_all(self, owners: Iterable[object]) -> None:
        """Drop the entries of every module in ``owners``."""
        if self._entries:
            for owner in owners:
                self._entries.pop(owner, None)

    def __contains__(self, owner: object) -> bool:
        return owner in self._entries
