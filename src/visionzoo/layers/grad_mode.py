"""Grad-mode tests for choosing inference-only paths that ``torch.jit.trace`` can check."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["autograd_off", "needs_grad"]


def autograd_off() -> bool:
    """``not torch.is_grad_enabled()``, for choosing a path only inference may take; False
    while torch.jit.trace records. A trace checks itself by tracing again under no_grad and
    comparing the two graphs, value names included (a value is named after the first
    variable that holds it when an op reads it), so a traced call must take the same path,
    reading the same tensors, in either grad mode: the tracer is checked before anything else."""
    return not torch.jit.is_tracing() and not torch.is_grad_enabled()


def needs_grad(x: Tensor) -> bool:
    """Whether autograd may need ``x`` as it is, so that an op may not overwrite it: it
    records and ``x`` requires grad; True while torch.jit.trace records (:func:`autograd_off`)."""
    return torch.jit.is_tracing() or (torch.is_grad_enabled() and x.requires_grad)
