"""Helpers for checking models against reference implementations.

Used by visionzoo's own test suite and useful to anyone porting a model: give the
reference random weights whose normalisation layers are far from their identity
initialisation (so a mis-mapped norm shows), move them over with ``load_checkpoint`` and
compare logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["build_random", "calibrate_batch_norms", "gradient_rel_diffs", "is_norm", "max_rel_diff", "randomize_norms", "random_weights"]


def is_norm(module: nn.Module) -> bool:
    """BatchNorm/LayerNorm/GroupNorm and their subclasses, or any module named like a norm."""
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
        return True
    name = type(module).__name__.lower()
    return "norm" in name and hasattr(module, "weight") and isinstance(getattr(module, "weight"), nn.Parameter)


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if not is_norm(m):
            continue
        w, b = getattr(m, "weight", None), getattr(m, "bias", None)
        if isinstance(w, Tensor) and w.is_floating_point():
            w.copy_(1.0 + 0.2 * torch.randn(w.shape, generator=g))
        if isinstance(b, Tensor) and b.is_floating_point():
            b.copy_(0.2 * torch.randn(b.shape, generator=g))
        rm, rv = getattr(m, "running_mean", None), getattr(m, "running_var", None)
        if isinstance(rm, Tensor):
            rm.copy_(0.2 * torch.randn(rm.shape, generator=g))
        if isinstance(rv, Tensor):
            rv.copy_(0.5 + torch.rand(rv.shape, generator=g))
    return model


@torch.no_grad()
def random_weights(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Overwrite every floating parameter with noise (biases, tokens and gains included)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.copy_(std * torch.randn(p.shape, generator=g))
    return randomize_norms(model, seed)


def max_rel_diff(out: Tensor, ref: Tensor) -> float:
    """max |out - ref| / max |ref|: the relative error the equivalence tests bound."""
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def build_random(fn, seed: int = 0) -> nn.Module:
    """Build ``fn()`` with random weights, skipping its (slow) initialisation where safe.

    The model is built on the meta device and materialised uninitialised, then every
    parameter and norm statistic is drawn by :func:`random_weights`. Models whose buffers
    hold computed values (index tables, masks, anything but norm statistics) are built
    normally instead, so those values are right.
    """
    with torch.device("meta"):
        model = fn()
    norm_buffers = {
        f"{mn}.{bn}" if mn else bn
        for mn, m in model.named_modules()
        if is_norm(m)
        for bn, _ in m.named_buffers(recurse=False)
    }
    computed = [n for n, _ in model.named_buffers() if n not in norm_buffers]
    if computed:
        model = fn()
    else:
        model = model.to_empty(device="cpu")
        for m in model.modules():
            nbt = getattr(m, "num_batches_tracked", None)
            if isinstance(nbt, Tensor):
                nbt.zero_()
    return calibrate_batch_norms(random_weights(model, seed), seed=seed)


#: sides tried for the calibration batch, smallest first, before the model's default input size
_CALIBRATION_SIDES = (64, 96, 128)


@torch.no_grad()
def calibrate_batch_norms(model: nn.Module, x: Tensor | None = None, seed: int = 0) -> nn.Module:
    """Set every BatchNorm's running statistics to those of a random batch, so that a network
    with random weights passes its input's signal to the end. With :func:`random_weights`
    alone, each convolution shrinks the signal while the BatchNorms divide by a random variance
    near 1: a deep CNN's last maps and logits came out the same for every input (EfficientNet-B0
    and MobileNetV2 exactly, ResNet-50 to 5e-5 of their scale), and a comparison of them checked
    the biases' path but not the backbone's. The statistics stay per-channel and far from the
    identity, so a mis-mapped norm still shows. ``x``: the batch (default: 2 random images at
    the model's default input size (224 or 299 px without one), else at 64, 96 or 128 px,
    whichever the model takes first, in training mode). The default size comes first because
    statistics from a smaller input are ill-conditioned where the maps are smallest: at 64 px
    the last BatchNorms of an EfficientNet see 2 x 2 maps, and their near-zero variances
    (4.6e-6 against eps 1e-3) amplify fp32 rounding about 30-fold a layer at the tested size.
    A model without BatchNorm is returned as it is; the model is returned in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return model.eval()
    g = torch.Generator().manual_seed(seed)
    if x is None:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        chans = conv.in_channels if conv is not None else 3
        cfg = getattr(model, "default_cfg", None) or getattr(model, "pretrained_cfg", None) or {}
        default = [tuple(cfg["input_size"][1:])] if "input_size" in cfg else [(224, 224), (299, 299)]  # (torchvision's: no cfg)
        sides = default + [(s, s) for s in _CALIBRATION_SIDES]
        batches = [torch.randn(2, chans, *hw, generator=g) for hw in sides]
    else:
        batches = [x]
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 1.0  # the running statistics become the batch's
    model.train()
    try:
        for batch in batches:
            try:
                model(batch)
                break
            except Exception:  # a size (or channel count) the model does not take: the next one
                if batch is batches[-1]:  # none taken: the statistics as they were, and the last error
                    for m, (_, mean, var, _) in zip(norms, saved):
                        m.running_mean.copy_(mean)
                        m.running_var.copy_(var)
                    raise
    finally:
        for m, (momentum, _, _, count) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)
    return model.eval()


def gradient_rel_diffs(model: nn.Module, ref: nn.Module, x: Tensor, seed: int = 0) -> dict[str, float]:
    """One training-mode backward pass of both models on ``x`` (a fixed random projection of
    the output as the loss): :func:`max_rel_diff` of every parameter's gradient, keyed by
    name, and of the input's under ``"input"``. The two models' parameter names must be the
    same (a layout the reference's checkpoints load into unconverted)."""
    names = [n for n, _ in model.named_parameters()]
    ref_params = dict(ref.named_parameters())
    if sorted(names) != sorted(ref_params):
        raise ValueError(f"parameter names differ: {sorted(set(names) ^ set(ref_params))[:5]}")
    grads = []
    for m in (model, ref):
        m.train().zero_grad(set_to_none=True)
        xg = x.detach().clone().requires_grad_()
        out = m(xg)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
        (out * w).sum().backward()
        grads.append({"input": xg.grad, **{n: p.grad for n, p in m.named_parameters()}})
    return {n: max_rel_diff(g, grads[1][n]) for n, g in grads[0].items()}
