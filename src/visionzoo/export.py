"""Export to ONNX and torch.export, with a dynamic batch axis, verified after writing."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoints.io import publish
from .layers.helpers import check_int, evaluating, to_2tuple

__all__ = ["export_onnx", "export_program", "onnx_files", "verify_onnx"]

_log = logging.getLogger(__name__)

#: the opsets torch.onnx's exporter writes (an older one it fails to convert to, keeping 18)
MIN_OPSET, MAX_OPSET = 18, 23


def _example(model: nn.Module, img_size: int | tuple[int, int] | None, batch: int, in_chans: int | None = None) -> torch.Tensor:
    """A random (batch, C, H, W) input: C ``in_chans``, else the model's ``in_chans``, else its
    ``default_cfg`` input size's (3 without one); H, W ``img_size``, else that input size's."""
    cfg = getattr(model, "default_cfg", {}) or {}
    C, H, W = cfg.get("input_size", (3, 224, 224))
    if img_size is not None:
        H, W = to_2tuple(img_size)
    return torch.randn(batch, in_chans or getattr(model, "in_chans", C), H, W)


def export_program(
    model: nn.Module, img_size: int | tuple[int, int] | None = None, *, batch: int = 2, in_chans: int | None = None
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of the model in eval mode with a dynamic batch dimension, traced on a
    random input of ``batch`` (at least 2) images of ``img_size`` and ``in_chans`` channels
    (default the model's ``in_chans``, for a model without that attribute 3). The model keeps
    its own mode (every module's) afterwards, as :func:`export_onnx` and :func:`verify_onnx` do."""
    # torch.export takes a traced size of 1 for a constant, so that axis could not stay dynamic
    check_int("batch", batch, 2, " (torch.export fixes a traced batch of 1; the program takes any batch)")
    x = _example(model, img_size, batch, in_chans)
    dim = torch.export.Dim("batch", min=1, max=4096)
    with evaluating(model):  # (the caller's model keeps its mode: one in training stays so)
        return torch.export.export(model, (x,), dynamic_shapes=({0: dim},))


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    img_size: int | tuple[int, int] | None = None,
    opset: int = 18,
    batch: int = 2,
    in_chans: int | None = None,
    external_data: bool | None = None,
    optimize: bool = True,
) -> Path:
    """Write ``model``, in eval mode, as ONNX with a dynamic batch axis (input ``image``, output ``logits``, or
    ``features.0``, ``features.1``, ... for a model that returns a list of feature maps),
    traced on a random input of ``img_size`` and ``in_chans`` channels (default the model's
    ``in_chans``, for a model without that attribute 3).

    Weights over ONNX's 2 GB limit (or all, with ``external_data=True``) go to a second file
    beside it, ``<name>.onnx.data``, which the model names. ``optimize``: run the exporter's
    graph optimizer (constant folding, removal of redundant nodes; onnxruntime optimises the
    graph again when it loads it); off, the export of a transformer takes 10-25 % less time.

    The files are written in a temporary folder and moved into place once complete, the weights
    first; folders of ``path`` that do not exist yet are made then, so a failed export leaves
    nothing behind.

    Raises:
        ValueError: an opset outside 18-23; ``path`` is a directory or lies under a file.
        OSError: ``path``'s folder cannot be written (read-only, no permission), naming ``path``.
        The model's own error (e.g. an input size it refuses), from one forward pass run first.
    """
    path = Path(path)
    check_int("batch", batch)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be between {MIN_OPSET} and {MAX_OPSET} (torch.onnx's exporter), got {opset}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give the path of the .onnx file to write")
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise ValueError(f"{above} is a file, not a folder: cannot write {path}")
    with evaluating(model):  # (the caller's model keeps its mode: one in training stays so)
        x = _example(model, img_size, batch, in_chans)
        with torch.no_grad():
            out = model(x)  # the model's own message for an input it refuses, not the exporter's trace
        # a features_only model returns one map per level: features.0, features.1, ...
        names = [f"features.{i}" for i in range(len(out))] if isinstance(out, (list, tuple)) else ["logits"]
        dim = torch.export.Dim("batch", min=1, max=4096)
        # the temporary folder in the nearest existing folder (the same file system, for the moves);
        # a folder that cannot hold it is reported with the path asked for, not the temporary name
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=above or Path.cwd()))
        except OSError as e:
            raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    model, (x,), input_names=["image"], output_names=names,
                    dynamic_shapes=({0: dim},), opset_version=opset, dynamo=True, verbose=False,
                    optimize=optimize,
                )
                program.save(str(tmp / path.name), external_data=external_data)
            data = tmp / f"{path.name}.data"  # the name the exporter gives the external weights
            beside = path.with_name(data.name)
            external = data.exists()
            path.parent.mkdir(parents=True, exist_ok=True)
            if external:
                publish(str(data), beside)
            publish(str(tmp / path.name), path)
            if not external and beside.exists():
                beside.unlink()  # an earlier export's weights, which this model does not read
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def onnx_files(path: str | os.PathLike) -> list[Path]:
    """The files of an exported model: ``path`` and its external weights, if it has them."""
    path = Path(path)
    return [p for p in (path, path.with_name(f"{path.name}.data")) if p.exists()]


def verify_onnx(
    model: nn.Module, path: str | os.PathLike, *, img_size: int | tuple[int, int] | None = None, batch: int = 3, in_chans: int | None = None
) -> float:
    """Max |onnxruntime - PyTorch| relative to max |PyTorch|, at a batch size other than the
    exported one (``img_size`` and ``in_chans`` as :func:`export_onnx`); for a model with
    several outputs (features_only: one per map), the largest of the outputs' figures. Relative:
    an absolute bound passes anything for a model whose outputs are small (a randomly
    initialised EfficientNet's logits are ~1e-4)."""
    check_int("batch", batch)
    import onnxruntime as ort

    x = _example(model, img_size, batch, in_chans)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its notes on graphs it optimises itself (e.g. "can't constant fold CastLike") are not the user's concern
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with evaluating(model), torch.no_grad():
        refs = model(x)
    refs = list(refs) if isinstance(refs, (list, tuple)) else [refs]
    if len(outs) != len(refs):
        raise ValueError(f"{path} has {len(outs)} outputs, the model returns {len(refs)}: it is not this model's export")
    worst = 0.0
    for out, ref in zip(outs, refs):
        diff, scale = float((torch.from_numpy(out) - ref).abs().max()), float(ref.abs().max())
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst
