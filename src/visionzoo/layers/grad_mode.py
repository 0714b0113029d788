"""Grad-mode tests for choosing inference-only paths that ``torch.jit.trace`` can check and
``torch.export`` never records."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["autograd_off", "needs_grad"]


def _recording() -> bool:
    """A graph is being recorded for deployment: ``torch.jit.trace`` or ``torch.export`` (whose
    programs the ONNX exporter writes). The inference paths stand aside for both: a trace must
    take one path in either grad mode, and an exported program's dynamic batch must not meet
    their size tests (a block size chosen from the token count is a guard on the batch)."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def autograd_off() -> bool:
    """``not torch.is_grad_enabled()``, for choosing a path only inference may take; False
    while torch.jit.trace or torch.export records. A trace checks itself by tracing again under
    no_grad and comparing the two graphs, value names included (a value is named after the first
    variable that holds it when an op reads it), so a traced call must take the same path,
    reading the same tensors, in either grad mode: the recorder is checked before anything else."""
    return not _recording() and not torch.is_grad_enabled()


def needs_grad(x: Tensor) -> bool:
    """Whether autograd may need ``x`` as it is, so that an op may not overwrite it: it
    records and ``x`` requires grad; True while torch.jit.trace or torch.export records (:func:`autograd_off`)."""
    return _recording() or (torch.is_grad_enabled() and x.requires_grad)
