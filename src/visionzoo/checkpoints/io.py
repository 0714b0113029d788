"""Reading and writing checkpoints without ever executing code from them."""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["CheckpointError", "read_state_dict", "save_state_dict", "unwrap_state_dict"]

# Keys under which training scripts nest the weights (timm, DeiT, Swin, ConvNeXt, torchvision references).
_NESTED_KEYS = ("state_dict", "model", "model_state", "module", "net", "params")
# ... and their EMA copies: taken first with prefer_ema, else only where no plain copy exists
_EMA_KEYS = ("model_ema", "state_dict_ema", "ema")
# Objects besides tensors that weights-only unpickling may rebuild: the training scripts of timm,
# DeiT, Swin and ConvNeXt store their argparse.Namespace of options as "args". Rebuilding one only
# sets attributes, and its values must themselves be tensors, containers or plain values.
_SAFE_GLOBALS = (argparse.Namespace,)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


def temp_beside(path: Path) -> str:
    """A new empty file next to ``path``, to be written, then moved over it by :func:`publish`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return tmp


def publish(tmp: str, path: Path) -> None:
    """Rename the written ``tmp`` to ``path`` (atomic), with the mode a file ``open`` creates
    would have (mkstemp, and safetensors' writer, leave it 0600 whatever the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel / AveragedModel; torch.compile


def unwrap_state_dict(obj: object, *, source: str = "<state dict>", prefer_ema: bool = False) -> dict[str, Tensor]:
    """Find the flat {name: tensor} mapping inside a loaded checkpoint object.

    Training checkpoints nest the weights (``{"model": ..., "optimizer": ...}``); wrappers
    prefix every key: ``module.`` (DDP, DataParallel, ``torch.optim.swa_utils.AveragedModel``,
    whose ``n_averaged`` step counter is dropped: torchvision's EMA) and ``_orig_mod.``
    (``torch.compile``), in any nesting. All are removed.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a mapping of tensors, got {type(obj).__name__}")
    keys = _EMA_KEYS + _NESTED_KEYS if prefer_ema else _NESTED_KEYS + _EMA_KEYS
    for key in keys:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and any(isinstance(v, (Tensor, Mapping)) for v in inner.values()):
            return unwrap_state_dict(inner, source=source)
    sd = {str(k): v for k, v in obj.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad and all(isinstance(sd[k], Mapping) and not sd[k] for k in bad):
        raise CheckpointError(f"{source}: the checkpoint holds no tensors ({', '.join(map(repr, bad[:5]))} empty)")
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {bad[:5]}")
    if not sd:
        raise CheckpointError(f"{source}: the checkpoint holds no tensors")
    if len(sd) > 1 and "n_averaged" in sd and all(k.startswith("module.") for k in sd if k != "n_averaged"):
        del sd["n_averaged"]  # AveragedModel's step counter
    while prefix := next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None):
        sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _read_npz(path: Path) -> dict[str, Tensor]:
    import numpy as np

    with np.load(path, allow_pickle=False) as data:  # pickled objects refused: no code runs
        return {k: torch.from_numpy(np.ascontiguousarray(data[k])) for k in data.files}


def _unpickling_failure(e: pickle.UnpicklingError) -> tuple[bool, str]:
    """(whether the pickle names a Python global, i.e. carries code or objects; the reason in
    a few words) from torch's weights-only error, without its advice to load unsafely."""
    text = " ".join(str(e).split())
    found = re.search(r"unsupported GLOBAL:? (?:GLOBAL )?(\S+)", text, re.IGNORECASE)
    if found:
        return True, f"global {found.group(1)}"
    found = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    return False, (found.group(1) if found else text)[:200]


def read_state_dict(path: str | os.PathLike, *, prefer_ema: bool = False) -> dict[str, Tensor]:
    """Read a checkpoint file (.safetensors, .pth/.pt/.bin/.ckpt or JAX .npz) to a state dict.

    Pickle-based files are read with ``torch.load(weights_only=True)``, which refuses any
    object but tensors, plain containers and values, and the ``argparse.Namespace`` of options
    training scripts store: a checkpoint never runs code when loaded.

    Raises:
        CheckpointError: missing, truncated, corrupt or code-carrying files.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        elif suffix == ".npz":
            obj = _read_npz(path)
        else:
            allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
            with allow(list(_SAFE_GLOBALS)) if allow else contextlib.nullcontext():
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        code, reason = _unpickling_failure(e)
        if code:
            raise CheckpointError(
                f"{path}: refused, the file holds Python objects other than tensors ({reason}), and loading them could run code"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt, truncated, or a pickle torch.save did not write): {reason}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        msg = str(e).split("\n")[0]
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?): {msg[:200]}") from None
    except Exception as e:  # safetensors raises its own error type
        msg = str(e).split("\n")[0]
        raise CheckpointError(f"{path}: not a readable checkpoint: {type(e).__name__}: {msg[:200]}") from None
    return unwrap_state_dict(obj, source=str(path), prefer_ema=prefer_ema)


def save_state_dict(state_dict: Mapping[str, Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a state dict atomically: to a temporary file beside ``path``, then rename.

    ``.safetensors`` paths are written with safetensors (shared tensors are copied), other
    suffixes with ``torch.save``. A crash mid-write never leaves a half-written ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
            save_file(tensors, tmp, metadata=dict(metadata) if metadata else None)
        else:
            torch.save(dict(state_dict), tmp)
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
