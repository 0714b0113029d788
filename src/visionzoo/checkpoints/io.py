"""Reading and writing checkpoints without ever executing code from them."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import re
import tempfile
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["CheckpointError", "read_state_dict", "save_state_dict", "unwrap_state_dict"]

# Keys under which training scripts nest the weights (timm, DeiT, Swin, ConvNeXt, torchvision references).
_NESTED_KEYS = ("state_dict", "model", "model_state", "module", "net", "params")
# ... and their EMA copies: taken first with prefer_ema, else only where no plain copy exists
_EMA_KEYS = ("model_ema", "state_dict_ema", "ema")
_log = logging.getLogger(__name__)


class _ConfigNode:
    """Stand-in for yacs' ``CfgNode``, the options Swin's training script saves as "config".

    A CfgNode is a dict subclass; weights-only unpickling gives items only to plain dicts, so
    this class's constructor returns an ``OrderedDict``, which then receives the node's items
    and attributes. yacs is never imported and nothing from the file runs.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
        return OrderedDict()


# Objects besides tensors that weights-only unpickling may rebuild: the training scripts of timm,
# DeiT and ConvNeXt store their argparse.Namespace of options as "args", Swin's its yacs CfgNode
# as "config". Rebuilding either only sets items and attributes, and their values must
# themselves be tensors, containers or plain values.
_SAFE_GLOBALS: tuple[Any, ...] = (argparse.Namespace, (_ConfigNode, "yacs.config.CfgNode"))


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

    Training checkpoints nest the weights (``{"model": ..., "optimizer": ...}``), some beside
    an EMA copy, taken with ``prefer_ema`` (the entry used is logged); wrappers
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
            others = [k for k in keys if k != key and isinstance(obj.get(k), Mapping) and obj[k]]
            if others:
                _log.info("%s: loading the weights under %r (the checkpoint also holds %s)", source, key, others)
            return unwrap_state_dict(inner, source=source, prefer_ema=prefer_ema)
    sd = {str(k): v for k, v in obj.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    empty = [k for k in bad if isinstance(sd[k], Mapping) and not sd[k]]
    if empty and len(bad) == len(sd):  # {"state_dict": {}, "epoch": 1}
        raise CheckpointError(f"{source}: the checkpoint holds no tensors ({', '.join(map(repr, empty[:5]))} empty)")
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

    if not zipfile.is_zipfile(path):  # else numpy would try it as a pickle, and advise loading it unsafely
        raise CheckpointError(f"{path}: not a readable checkpoint: not an .npz archive (a zip of arrays)")
    with np.load(path, allow_pickle=False) as data:  # pickled objects refused: no code runs
        arrays = {k: torch.from_numpy(np.ascontiguousarray(data[k])) for k in data.files}
    # a Flax training state keeps the weights under opt/target/ (the ViT authors' fine-tuned files)
    if arrays and all(k.startswith(_FLAX_TARGET) for k in arrays):
        arrays = {k[len(_FLAX_TARGET):]: v for k, v in arrays.items()}
    return arrays


_FLAX_TARGET = "opt/target/"


# sentences of numpy's and torch's errors that advise loading the file unsafely
_IN_SENTENCE = r"(?:[^.]|\.(?=\S))*"  # up to a full stop that ends the sentence
_UNSAFE_ADVICE = re.compile(_IN_SENTENCE + r"(?:\btrust|unsafe|weights_only=False|allow_pickle=True)" + _IN_SENTENCE + r"(?:\.\s*|$)", re.IGNORECASE)


def _brief(text: str, limit: int = 300) -> str:
    """An error message on one line, without advice to load unsafely, cut at a sentence
    (or else a word) boundary within ``limit`` characters."""
    text = " ".join(_UNSAFE_ADVICE.sub(" ", " ".join(str(text).split())).split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = cut.rfind(". ")
    if end > limit // 3:
        return cut[: end + 1]
    return cut[: cut.rfind(" ")].rstrip(",;:") + " ..." if " " in cut else cut + " ..."


def _cause(e: BaseException) -> str:
    """``": Type: message"`` of the error a reader raised, or "" where its message says
    nothing: the unpickler's ``KeyError(101)`` on a text file would read as a bare "101"."""
    text = _brief(str(e))
    return f": {type(e).__name__}: {text}" if re.search(r"[A-Za-z]{2}", text) else ""


def _unpickling_failure(e: pickle.UnpicklingError) -> tuple[bool, str]:
    """(whether the pickle names a Python global, i.e. carries code or objects; the reason in
    a few words) from torch's weights-only error, without its advice to load unsafely."""
    text = " ".join(str(e).split())
    found = re.search(r"unsupported GLOBAL:? (?:GLOBAL )?(\S+)", text, re.IGNORECASE)
    if found:
        return True, f"global {found.group(1)}"
    found = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    return False, _brief(found.group(1) if found else text)


def check_zip_crcs(path: Path) -> None:
    """Raise :class:`CheckpointError` where a member of the zip archive ``path`` (torch's
    format since 1.6) does not match the CRC-32 its header records.

    torch.load does not check them, so bytes damaged inside a tensor's data would load as
    silently wrong weights (numpy reads .npz members through ``zipfile``, which does). Members
    recorded with a CRC of 0 are not checked: torch writes 0 when saving with
    ``torch.utils.serialization.config.save.compute_crc32 = False``. About 0.2 s per GB read.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 or info.is_dir():
                    continue
                try:
                    with archive.open(info) as member:  # raises BadZipFile at the end on a CRC mismatch
                        while member.read(1 << 24):
                            pass
                except (zipfile.BadZipFile, zlib.error, EOFError):
                    raise CheckpointError(f"{path}: corrupt, archive member {info.filename!r} does not match its CRC-32 checksum") from None
    except (zipfile.BadZipFile, OSError):
        return  # not a zip archive (torch's legacy format) or not readable: the reader says what is wrong


_ZIP_MAGIC = b"PK\x03\x04"


def _file_format(path: Path) -> str:
    """``'safetensors'``, ``'npz'`` or ``'torch'``: what the file's first bytes say it is, else
    what its suffix says. Files are renamed and downloaded under other names (a safetensors
    file saved as ``.pth``, a hub blob without a suffix); read by the suffix alone, such a file
    was refused with the wrong reader's error ("Unsupported operand 80", "header too large").

    A safetensors file opens with its header's length (8 bytes, little-endian) and the JSON
    header itself; torch's format and numpy's ``.npz`` are zip archives, told apart by their
    members (``.npy`` arrays in an ``.npz``); torch's legacy format is a pickle. A file that fits neither, corrupt or not a
    checkpoint, goes to the reader its suffix names, whose error then describes it."""
    by_suffix = {".safetensors": "safetensors", ".npz": "npz"}.get(path.suffix.lower(), "torch")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        if head[:4] == _ZIP_MAGIC:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            return "npz" if names and all(n.endswith(".npy") for n in names) else "torch"
        if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
            return "safetensors"
        if head[:1] == b"\x80":  # a pickle's PROTO opcode: torch's legacy (pre-1.6) format
            return "torch"
    except (OSError, zipfile.BadZipFile):
        pass
    return by_suffix


def read_state_dict(path: str | os.PathLike, *, prefer_ema: bool = False) -> dict[str, Tensor]:
    """Read a checkpoint file (.safetensors, .pth/.pt/.bin/.ckpt or JAX .npz) to a state dict.

    Pickle-based files are read with ``torch.load(weights_only=True)``, which refuses any
    object but tensors, plain containers and values, and the options training scripts store
    (an ``argparse.Namespace``; Swin's yacs ``CfgNode``, read as a dict): a checkpoint never
    runs code when loaded.

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
    kind = _file_format(path)
    try:
        if kind == "safetensors":  # (no checksums in the format: damaged tensor bytes cannot be seen)
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        elif kind == "npz":  # (numpy's reads check the members' CRC-32)
            obj = _read_npz(path)
        else:
            check_zip_crcs(path)  # torch's format since 1.6; the legacy one has no checksums
            allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
            # (an open file: torch.load hands a path ending in .safetensors to safetensors)
            with allow(list(_SAFE_GLOBALS)) if allow else contextlib.nullcontext(), open(path, "rb") as f, warnings.catch_warnings():
                # (torch warns of a pickle protocol above 2, which any file pickled since Python 3.8 has)
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                obj = torch.load(f, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        code, reason = _unpickling_failure(e)
        if code:
            raise CheckpointError(
                f"{path}: refused, the file holds Python objects other than tensors ({reason}), and loading them could run code"
            ) from None
        if reason.startswith("Unsupported operand 149"):  # FRAME, which pickle protocols 4 and 5 open with
            raise CheckpointError(
                f"{path}: pickled with protocol 4 or 5 (torch.save(..., pickle_protocol=4) or pickle.dump), which torch's safe "
                "reader does not read, and the unsafe one could run code: save its tensors with torch.save's default "
                "protocol or as safetensors"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt, truncated, or a pickle torch.save did not write): {reason}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as e:
        # (the unpickler reading a text file: KeyError, IndexError "pop from empty list")
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt, truncated, or not a checkpoint at all?){_cause(e)}") from None
    except Exception as e:  # safetensors raises its own error type
        raise CheckpointError(f"{path}: not a readable checkpoint{_cause(e)}") from None
    return unwrap_state_dict(obj, source=str(path), prefer_ema=prefer_ema)


def save_state_dict(state_dict: Mapping[str, Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a state dict atomically: to a temporary file beside ``path``, then rename.

    ``.safetensors`` paths are written with safetensors (shared tensors are copied), other
    suffixes with ``torch.save``. A crash mid-write never leaves a half-written ``path``.

    Raises:
        ValueError: ``metadata`` for a path that is not ``.safetensors`` (only safetensors
            files store it).
    """
    if not isinstance(state_dict, Mapping):
        hint = " (pass model.state_dict())" if isinstance(state_dict, torch.nn.Module) else ""
        raise TypeError(f"save_state_dict takes a state dict, a mapping of names to tensors; got {type(state_dict).__name__}{hint}")
    path = Path(path)
    if metadata and path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: metadata is stored only in .safetensors files; save to a .safetensors path or pass no metadata")
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
