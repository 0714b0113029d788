"""Linear layers for CPU inference: matmul, bias and activation in one oneDNN call.

Eager ``F.linear`` on a CPU runs a BLAS GEMM, then adds the bias, and the activation that
follows is another pass over memory. oneDNN's inner-product primitive (the kernel that
``torch.compile``'s CPU backend emits for linear layers) adds the bias and applies the
activation while each output tile is still in cache. Whether that wins depends on the
CPU, so the path is on by default only where PyTorch reports AVX-512:

- 2-core AMD EPYC with AVX-512: 1.05-1.35x faster per layer than ``F.linear`` on the
  shapes of ViT, Swin and ConvNeXt, and 1.1-1.6x with GELU fused;
- 2-core AMD EPYC (Zen 3) with AVX2 only: slower, 132-154 against 130-175 GFLOP/s
  unfused and 92-110 against 117-159 GFLOP/s with GELU (``benchmarks/linear_paths.py``).

:func:`linear` (and :func:`linear_act`, for a bare weight) take that path only when it
gives the result of ``act(fc(x))`` and nothing can observe the difference: autograd off
(``torch.no_grad`` / ``inference_mode``), a plain ``nn.Linear`` (not a quantised,
parametrised or wrapped one) without hooks, a plain fp32 or bf16 CPU tensor (bf16 only where
oneDNN has a bf16 primitive on this CPU; not on AVX2-only x86), and no
tracing, compiling, exporting or dispatch mode (FLOP counters, fake tensors) active. Everywhere else it is ``act(fc(x))``. The outputs agree
to float rounding (~1e-6 relative). ``VISIONZOO_ONEDNN_LINEAR=1`` / ``0`` or
:func:`set_onednn_linear` turns the path on or off whatever the CPU.

On that path each fp32 weight is reordered once into the blocked layout the kernel computes
with, and the copy is cached (:func:`~visionzoo.layers.clear_derived_caches`): handed a plain
weight, the kernel reorders it on every call. That made whole models 3-7 % faster on the
AVX-512 host (Swin-T, ViT-S/B, ConvNeXt-T, CoAtNet-0, NesT-T at batch 4), at the cost of a
second copy of the linear weights while the model runs inference. A weight is reordered the
second time it is used unchanged, so one made afresh for each call (a folded or re-ordered
copy) is never reordered only to be dropped.

On Intel CPUs the largest fp32 weights (``INTEL_BLAS_FROM`` elements and more: EVA-g's and
ViT-g's 1408-wide qkv and MLP layers, ViT-H's MLP) take the BLAS path instead. On the 2-core
Xeon (AVX-512, MKL's GEMM) oneDNN's inner product ran their products ~10 % slower inside the
model than MKL (EVA-g at 6 blocks, batch 4: 1169 against 1072 ms a forward; ViT-H at 8 blocks
1208 against 1114), though within 4 % of it on each shape alone; ViT-L's 1024 x 4096 layers
and smaller ones are faster through oneDNN there. On the AMD hosts, whose MKL runs at about
half oneDNN's rate, every weight stays on the oneDNN path.

Off the oneDNN path, under the same conditions, the activation runs in place on the GEMM's
fresh output, and :func:`linear_add` lets a GEMM accumulate into a residual.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import GELU, INPLACE_ACTS
from .drop_path import skippable
from .helpers import DerivedCache, autograd_off, env_switch, no_hooks, onednn_post_op, plain_cpu_eager

__all__ = ["add_projection", "linear", "linear_act", "linear_add", "onednn_linear_available", "register_linear_type", "scaled_linear", "set_onednn_linear", "use_onednn_linear"]

_KERNEL = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
_REORDER = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None) if _KERNEL is not None else None
_BLOCKED = DerivedCache()  # weight tensor -> (its copy in oneDNN's blocked layout,), or (None,) once seen
_DTYPES = (torch.float32, torch.bfloat16)
_LINEAR_TYPES: set[type[nn.Module]] = {nn.Linear}


def _default_on() -> bool:
    """The environment's choice, else whether the CPU has AVX-512 (module docstring)."""
    return env_switch("VISIONZOO_ONEDNN_LINEAR", torch.backends.cpu.get_cpu_capability().startswith("AVX512"))


def _intel_cpu() -> bool:
    """Whether /proc/cpuinfo names an Intel CPU (False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "GenuineIntel" in f.read(4096)
    except OSError:
        return False


#: on Intel CPUs, fp32 weights of this many elements and more take the BLAS path (module docstring)
INTEL_BLAS_FROM = 5_500_000

_state = {"enabled": _default_on(), "blas_from": INTEL_BLAS_FROM if _intel_cpu() else None}


def _onednn_for(weight: Tensor) -> bool:
    """Whether ``weight``'s product takes the oneDNN path (on, and not a large fp32 weight on Intel)."""
    big = _state["blas_from"] is not None and weight.dtype == torch.float32 and weight.numel() >= _state["blas_from"]
    return not big and onednn_linear_available()


_dtype_works: dict[torch.dtype, bool] = {}  # bf16 needs CPU support (none on AVX2-only x86)


def _post_op(act: nn.Module | None) -> tuple[str, list, str] | None:
    """oneDNN's (attr, scalars, algorithm) for an activation module the linear kernel fuses
    (GELU, ReLU, SiLU, Hardswish; :func:`~visionzoo.layers.helpers.onednn_post_op`), None for any other."""
    if act is None or type(act) in (nn.Identity, nn.GELU, GELU, nn.ReLU, nn.SiLU, nn.Hardswish):
        return onednn_post_op(act)
    return None



def _kernel_works(dtype: torch.dtype = torch.float32) -> bool:
    """Run the kernel once on a small case against ``F.linear`` (a torch build may lack it,
    and a CPU without bf16 instructions has no bf16 primitive: oneDNN raises there)."""
    if _KERNEL is None:
        return False
    if dtype not in _dtype_works:
        try:
            g = torch.Generator().manual_seed(0)
            x, w, b = (torch.randn(s, generator=g).to(dtype) for s in ((3, 5, 16), (8, 16), (8,)))
            with torch.inference_mode():
                out = _KERNEL(x, w, b, "gelu", [], "none").float()
                ref = F.gelu(F.linear(x, w, b)).float()
            tol = 1e-4 if dtype == torch.float32 else 5e-2
            _dtype_works[dtype] = bool(torch.allclose(out, ref, rtol=tol, atol=tol))
        except RuntimeError:
            _dtype_works[dtype] = False
    return _dtype_works[dtype]


def _blocked(weight: Tensor, x: Tensor) -> Tensor:
    """``weight`` (fp32, for the oneDNN kernel on ``x``) in the blocked layout the kernel
    computes with: a cached copy from its second use unchanged on (module docstring);
    ``weight`` itself on its first use, for other dtypes, and where it cannot be tracked (an
    inference tensor) or the torch build cannot reorder it."""
    if weight.dtype != torch.float32 or not _reorder_works():
        return weight
    owner = weight if weight._base is None else weight._base  # a Parameter behind a view
    extra = (weight.shape, weight.stride())
    entry = _BLOCKED.lookup(owner, (weight,), extra)
    if entry is None:  # first use (or changed since): only marked as seen
        _BLOCKED.put(owner, (weight,), (None,), extra)
        return weight
    if entry[0] is None:
        rows = max(1, x.numel() // max(1, x.shape[-1]))  # the layout oneDNN picks may depend on them
        entry = _BLOCKED.put(owner, (weight,), (_REORDER(weight, rows),), extra)
    return entry[0]


@functools.cache
def _reorder_works() -> bool:
    """Whether the kernel gives the same result from a reordered weight as from the plain one
    (checked once; :func:`_kernel_works` checked the plain one against ``F.linear``)."""
    if _REORDER is None or not _kernel_works():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(s, generator=g) for s in ((3, 5, 16), (8, 16), (8,)))
        with torch.inference_mode():
            return bool(torch.allclose(_KERNEL(x, _REORDER(w, 15), b, "none", [], ""), _KERNEL(x, w, b, "none", [], ""), rtol=1e-5, atol=1e-5))
    except RuntimeError:
        return False


def onednn_linear_available() -> bool:
    """Whether :func:`linear` can use the oneDNN kernel here (and it is not turned off)."""
    return _state["enabled"] and _kernel_works()  # (the kernel check runs once per dtype)


def set_onednn_linear(enabled: bool) -> None:
    """Turn the oneDNN path of :func:`linear` on or off for the process."""
    _state["enabled"] = bool(enabled)


@contextmanager
def use_onednn_linear(enabled: bool) -> Iterator[None]:
    """Within the block, turn the oneDNN path on or off (for A/B timing and tests)."""
    saved = dict(_state)
    set_onednn_linear(enabled)
    try:
        yield
    finally:
        _state.update(saved)


def _inference_tensors(x: Tensor, w: Tensor) -> bool:
    """True when nothing but the result of this matmul can be observed (see module doc)."""
    if not autograd_off() or (type(w) is not nn.Parameter and type(w) is not Tensor):
        return False
    if w.device.type != "cpu" or not plain_cpu_eager(x) or x.dtype not in _DTYPES or w.dtype != x.dtype:
        return False  # (plain_cpu_eager first: an FX proxy must not reach the comparisons)
    return x.dtype == torch.float32 or _kernel_works(x.dtype)


def linear_act(x: Tensor, weight: Tensor, bias: Tensor | None = None, act: nn.Module | None = None) -> Tensor:
    """``act(F.linear(x, weight, bias))``, as one oneDNN call for CPU inference.

    ``act`` is an activation module or None. GELU (erf or tanh), ReLU, SiLU and Hardswish
    fuse into the kernel; any other runs after it.
    """
    if not _inference_tensors(x, weight):
        x = F.linear(x, weight, bias)
        return act(x) if act is not None else x
    if _onednn_for(weight):
        weight = _blocked(weight, x)
        post = _post_op(act)
        if post is not None:
            return _KERNEL(x, weight, bias, *post)
        return act(_KERNEL(x, weight, bias, "none", [], ""))
    x = F.linear(x, weight, bias)
    if act is None:
        return x
    inplace = INPLACE_ACTS.get(type(act))  # the GEMM's output is fresh: no second buffer
    return inplace(x, act) if inplace is not None else act(x)


def linear_add(residual: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None = None, *, out: Tensor | None = None) -> Tensor:
    """``residual + F.linear(x, weight, bias)``; in CPU inference without a separate pass
    for the product.

    The GEMM accumulates into a copy of ``residual + bias`` (``addmm_`` with beta 1), where
    eager code writes the product (after broadcasting the bias into it) and then adds the two
    into a third tensor. With the oneDNN path on, the product comes from the oneDNN kernel and
    the residual is added in place. The result is contiguous, shaped like ``residual``; with
    ``out`` (contiguous, shaped like ``residual``) it is written there.
    """
    if not (_inference_tensors(x, weight) and plain_cpu_eager(residual)) or residual.dtype != x.dtype or residual.shape != (*x.shape[:-1], weight.shape[0]):
        return residual + F.linear(x, weight, bias) if out is None else torch.add(residual, F.linear(x, weight, bias), out=out)
    if _onednn_for(weight):
        y = _KERNEL(x, _blocked(weight, x), bias, "none", [], "")
        return y.add_(residual) if out is None else torch.add(y, residual, out=out)
    if out is None:
        out = torch.empty(residual.shape, dtype=residual.dtype)
    if bias is None:
        out.copy_(residual)
    else:
        torch.add(residual, bias, out=out)
    out.view(-1, weight.shape[0]).addmm_(x.reshape(-1, weight.shape[1]), weight.t())
    return out


def add_projection(residual: Tensor, x: Tensor, proj: nn.Module, *after: nn.Module | None) -> Tensor:
    """``residual + a_n(... a_1(proj(x)))``: the end of a residual branch, a projection followed
    by dropout / drop-path modules ``after`` (None entries are skipped).

    In inference, when every module of ``after`` drops nothing (:func:`~visionzoo.layers.drop_path.skippable`)
    and ``proj`` is a plain unhooked ``nn.Linear``, the projection accumulates into the residual
    (:func:`linear_add`) instead of writing its own output for a separate sum.
    """
    if autograd_off() and _plain_linear(proj) and all(skippable(m) for m in after):
        return linear_add(residual, x, proj.weight.flatten(1), proj.bias)
    x = proj(x)
    for m in after:
        if m is not None:
            x = m(x)
    return residual + x


def scaled_linear(fc: nn.Linear, scale: Tensor) -> tuple[Tensor, Tensor | None]:
    """The (weight, bias) of ``scale * fc(x)`` (a per-output-channel scale, as a layer scale), detached:
    what a residual branch's last projection computes with its layer scale folded in."""
    g = scale.detach()
    return fc.weight.detach() * g[:, None], None if fc.bias is None else fc.bias.detach() * g


def register_linear_type(cls: type[nn.Module]) -> type[nn.Module]:
    """Let :func:`linear` fuse modules of ``cls``, whose forward must be
    ``F.linear(x, weight.flatten(1), bias)`` (e.g. a 1x1 convolution run on channels-last
    tokens). Usable as a class decorator."""
    _LINEAR_TYPES.add(cls)
    return cls


def _plain_linear(fc: nn.Module) -> bool:
    """Whether ``fc`` is a plain ``nn.Linear`` (or a registered type) without hooks, whose
    weights a fast path may use in place of calling it."""
    return type(fc) in _LINEAR_TYPES and no_hooks(fc)


def linear(fc: nn.Module, x: Tensor, act: nn.Module | None = None) -> Tensor:
    """``act(fc(x))`` (``fc(x)`` without ``act``), as one oneDNN call for CPU inference.

    Only a plain ``nn.Linear`` (or a registered type) without hooks takes the fused path;
    any other module (a quantised, parametrised or wrapped layer, or one a user hooked) is
    called as usual.
    """
    if _plain_linear(fc):
        return linear_act(x, fc.weight.flatten(1), fc.bias, act)
    x = fc(x)
    return act(x) if act is not None else x


def qv_bias(q_bias: Tensor, v_bias: Tensor) -> Tensor:
    """The 3C bias of a fused query / key / value projection whose keys carry none (BEiT, EVA,
    Swin V2): the query bias, zeros, the value bias."""
    return torch.cat((q_bias, torch.zeros_like(q_bias), v_bias))


def qv_biased_linear(qkv: nn.Module, x: Tensor, q_bias: Tensor | None, v_bias: Tensor | None) -> Tensor:
    """``qkv(x)`` plus the :func:`qv_bias` of ``q_bias`` and ``v_bias`` (none without them), as
    one product where ``qkv`` is a plain layer; any other module (hooked, quantised, wrapped)
    is called and the bias added to its output."""
    if q_bias is None:
        return linear(qkv, x)
    bias = qv_bias(q_bias, v_bias)
    if not _plain_linear(qkv):
        return qkv(x) + bias
    return linear_act(x, qkv.weight.flatten(1), bias if qkv.bias is None else qkv.bias + bias)
