"""Export to ONNX and torch.export, with a dynamic batch axis, verified after writing."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .layers.helpers import to_2tuple

__all__ = ["export_onnx", "export_program", "verify_onnx"]

_log = logging.getLogger(__name__)

#: the opsets torch.onnx's exporter writes (an older one it fails to convert to, keeping 18)
MIN_OPSET, MAX_OPSET = 18, 23


def _example(model: nn.Module, img_size: int | tuple[int, int] | None, batch: int) -> torch.Tensor:
    cfg = getattr(model, "default_cfg", {}) or {}
    C, H, W = cfg.get("input_size", (3, 224, 224))
    if img_size is not None:
        H, W = to_2tuple(img_size)
    return torch.randn(batch, getattr(model, "in_chans", C), H, W)


def export_program(model: nn.Module, img_size: int | tuple[int, int] | None = None, *, batch: int = 2) -> torch.export.ExportedProgram:
    """``torch.export.export`` of an eval-mode model with a dynamic batch dimension."""
    model = model.eval()
    x = _example(model, img_size, batch)
    dim = torch.export.Dim("batch", min=1, max=4096)
    return torch.export.export(model, (x,), dynamic_shapes=({0: dim},))


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    img_size: int | tuple[int, int] | None = None,
    opset: int = 18,
    batch: int = 2,
) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis (input ``image``, output ``logits``).

    The file is written to a temporary name and renamed once complete.

    Raises:
        ValueError: an opset outside 18-23; ``path`` is a directory.
    """
    path = Path(path)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be between {MIN_OPSET} and {MAX_OPSET} (torch.onnx's exporter), got {opset}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give the path of the .onnx file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = _example(model, img_size, batch)
    dim = torch.export.Dim("batch", min=1, max=4096)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (x,), input_names=["image"], output_names=["logits"],
                dynamic_shapes=({0: dim},), opset_version=opset, dynamo=True, verbose=False,
            )
            program.save(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def verify_onnx(model: nn.Module, path: str | os.PathLike, *, img_size: int | tuple[int, int] | None = None, batch: int = 3) -> float:
    """Max |onnxruntime - PyTorch| at a batch size other than the exported one."""
    import onnxruntime as ort

    model = model.eval()
    x = _example(model, img_size, batch)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model(x)
    if isinstance(ref, (list, tuple)):
        ref = ref[0]
    return float((torch.from_numpy(out) - ref).abs().max())
