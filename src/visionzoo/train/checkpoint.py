"""Training checkpoints: weights as safetensors, the rest of the state as a tensors-only file.

A checkpoint of step ``s`` is two files in ``<output>/checkpoints/``::

    step_00000s.safetensors   model weights, metadata: model name, overrides, classes, preprocessing
    step_00000s.state.pt      optimizer, scheduler, EMA, grad scaler, sampler position, RNG states

both written atomically (temporary file, then rename), then ``latest.json`` is replaced
atomically to point at them, then older checkpoints are deleted. A process killed at any
moment leaves ``latest.json`` naming a complete pair. The state file holds only tensors and
plain containers and is read with ``torch.load(weights_only=True)``: loading a checkpoint
never runs code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoints import CheckpointError, save_state_dict
from ..checkpoints.io import _brief, _unpickling_failure, check_zip_crcs, publish, temp_beside
from .distributed import DistInfo, all_gather_object, broadcast_object

#: the name ending of a step's training state (``step_*.state.pt``: what --resume reads besides the weights)
STATE_SUFFIX = ".state.pt"

__all__ = [
    "AddedPaths",
    "STATE_SUFFIX",
    "capture_rng",
    "effective_overrides",
    "finished_run",
    "float_buffers",
    "gather_per_rank",
    "gather_rng",
    "latest_checkpoint",
    "load_buffers",
    "load_training_state",
    "NewRunFolder",
    "own_entry",
    "read_metadata",
    "read_run_config",
    "record_epochs",
    "recorded_path",
    "restore_rng",
    "restore_training",
    "run_config",
    "run_folder",
    "save_training_checkpoint",
    "write_json_atomic",
]

META_KEY = "visionzoo"


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _save_torch_atomic(obj: Any, path: Path) -> None:
    tmp = temp_beside(path)
    try:
        torch.save(obj, tmp)
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    """Every RNG the training loop draws from, in a form torch.load(weights_only=True) accepts."""
    import numpy as np

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype("int64")), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def gather_rng(info: DistInfo) -> list[dict[str, Any]]:
    """:func:`capture_rng` of every rank, in rank order (a collective: every rank calls it); the
    state a checkpoint keeps, so each rank resumes with its own draws."""
    return gather_per_rank(info)["rng"]


def gather_per_rank(info: DistInfo, **values: Any) -> dict[str, list[Any]]:
    """``rng`` (:func:`capture_rng`) and each of ``values``, as every rank holds them: per key, a
    list in rank order (a collective: every rank calls it). What differs between the ranks of a
    run (its RNG states, its share of the epoch's training loss, an EMA's BatchNorm statistics)
    a checkpoint keeps for each, so that each rank resumes with its own, not rank 0's."""
    ranks = all_gather_object({"rng": capture_rng(), **values}, info)
    return {k: [r[k] for r in ranks] for k in ranks[0]}


def float_buffers(module: torch.nn.Module) -> dict[str, Tensor]:
    """The floating-point buffers of ``module`` (BatchNorm's running statistics), on the CPU: under
    torchrun each rank's own until the epoch's end averages them, so a checkpoint keeps each rank's."""
    return {n: b.detach().cpu().clone() for n, b in module.named_buffers() if b.is_floating_point()}


def load_buffers(module: torch.nn.Module, buffers: Mapping[str, Tensor]) -> None:
    """:func:`float_buffers` back into ``module``."""
    for n, b in module.named_buffers():
        if n in buffers:
            b.copy_(buffers[n])


def own_entry(saved: Any, rank: int) -> Any:
    """This ``rank``'s entry of a per-rank list a checkpoint keeps (:func:`gather_per_rank`), or
    ``saved`` as it is where the checkpoint kept one for all ranks (RNG states and epoch sums
    of older checkpoints: a dict, a list of numbers)."""
    if isinstance(saved, list) and saved and isinstance(saved[0], (list, tuple, dict)):
        return saved[rank]
    return saved


def restore_rng(state: Mapping[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------- save / load
def effective_overrides(model: Any, base_config: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The ``create_model`` overrides that rebuild ``model`` as it now is.

    ``overrides`` (what the model was created with), where every field of the model's
    configuration dataclass that was overridden or now differs from ``base_config`` (the
    registry entry's) takes the model's current value: a checkpoint's converter may have
    changed the configuration (EfficientNet's TensorFlow numerics), and the saved run must
    rebuild that network, not the one the name alone gives. Other overrides (timm's
    ``global_pool``) are kept as given.
    """
    cfg = getattr(model, "cfg", None)
    out = dict(overrides)
    if not (dataclasses.is_dataclass(cfg) and dataclasses.is_dataclass(base_config) and type(cfg) is type(base_config)):
        return out
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in overrides or value != getattr(base_config, f.name):
            out[f.name] = value
    return out


def model_metadata(model_name: str, overrides: Mapping[str, Any], classes: list[str], preprocessing: Mapping[str, Any],
                   **extra: Any) -> dict[str, str]:
    """safetensors metadata (str -> str) that lets eval / predict rebuild the model and label outputs.

    ``overrides`` must rebuild the trained model as it is (:func:`effective_overrides`).
    """
    info = {"model": model_name, "overrides": dict(overrides), "classes": list(classes),
            "num_classes": len(classes), "preprocessing": dict(preprocessing), **extra}
    return {META_KEY: json.dumps(info), "format": "pt"}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The visionzoo metadata of a safetensors checkpoint; {} for files without it."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {str(e)[:120]})") from None
    raw = meta.get(META_KEY)
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: its visionzoo metadata is not valid JSON") from None


def save_training_checkpoint(out_dir: Path, step: int, weights: Mapping[str, Tensor], metadata: Mapping[str, str],
                             state: Mapping[str, Any], *, keep: int = 1) -> Path:
    """Write the pair for ``step``, point latest.json at it, delete older pairs beyond ``keep``."""
    ckdir = Path(out_dir) / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    stem = f"step_{step:08d}"
    save_state_dict(weights, ckdir / f"{stem}.safetensors", metadata=metadata)
    _save_torch_atomic(dict(state), ckdir / f"{stem}{STATE_SUFFIX}")
    write_json_atomic({"step": step, "weights": f"{stem}.safetensors", "state": f"{stem}{STATE_SUFFIX}"}, ckdir / "latest.json")
    olds = sorted(p for p in ckdir.glob("step_*.safetensors") if p.name != f"{stem}.safetensors")
    for p in olds[: max(0, len(olds) - (keep - 1))]:
        for q in (p, p.with_name(p.name.replace(".safetensors", STATE_SUFFIX))):
            q.unlink(missing_ok=True)
    return ckdir / f"{stem}.safetensors"


class AddedPaths:
    """What a step that may fail adds to ``folder``: the folders on its path that do not exist yet
    and the entries new in it, which :meth:`remove` deletes, so that a failed step leaves nothing
    half-done (a run's config.json, a partly downloaded archive)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
        self.had = {p.name for p in folder.iterdir()} if folder.is_dir() else set()

    def remove(self) -> None:
        if self.folder.is_dir():
            for entry in self.folder.iterdir():
                if entry.name in self.had:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        for folder in self.created:
            try:
                folder.rmdir()
            except FileNotFoundError:
                continue
            except OSError:  # not empty: another process wrote there
                return


class NewRunFolder:
    """The folder of a new run, made by :meth:`make`, and what :meth:`discard` removes where the
    run fails before its first checkpoint: the files and folders the run added (config.json,
    tensorboard/, a partly written checkpoints/), then each folder ``make`` created, now empty
    (:class:`AddedPaths`). A run that failed on a corrupt image, a NaN loss or a lack of memory
    left config.json and tensorboard/ in a folder nothing could resume. A folder with a
    checkpoint is kept whole: ``--resume`` continues it."""

    def __init__(self) -> None:
        self.added: AddedPaths | None = None

    def make(self, out: Path) -> None:
        self.added = AddedPaths(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # (a place where folders cannot be made: the message names the option)
            raise ValueError(f"--output {out}: the folder cannot be made ({e.strerror or e})") from e

    def discard(self) -> None:
        """Remove what the run added, unless it wrote a checkpoint (``latest.json`` comes last)."""
        added, self.added = self.added, None
        if added is not None and not (added.folder / "checkpoints" / "latest.json").exists():
            added.remove()


def run_folder(output: str | None, resume: bool, default: str, info: DistInfo, *, what: str = "a training run",
               marker: str | None = None) -> tuple[Path, tuple[Path, Path] | None]:
    """The folder of a run and, with ``resume``, its last checkpoint pair. ``default`` (rank 0's,
    so every rank agrees) where no ``output`` is given. ValueError (one line): ``resume`` without
    an ``output`` or a checkpoint in it, an ``output`` that is a file, or a new run in a folder
    that already holds ``what`` (a checkpoint, or the file ``marker``)."""
    if output is None:
        if resume:
            raise ValueError("--resume needs --output DIR (the folder of the run to continue)")
        output = broadcast_object(default, info)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} is a file; give the folder to write the run to")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():  # (else "[Errno 20] Not a directory" once the data is read)
        raise ValueError(f"--output {out}: {above} is a file, not a folder")
    nearest = out if out.exists() else above  # where the run's first file or folder goes
    if nearest is not None and not os.access(nearest, os.W_OK | os.X_OK):  # (else refused once the data and model are built)
        raise ValueError(f"--output {out}: {nearest} is not writable")
    if resume:
        resume_from = latest_checkpoint(out)
        if resume_from is None:
            raise ValueError(f"--resume: no checkpoint in {out / 'checkpoints'} to continue from")
        return out, resume_from
    if latest_checkpoint(out) is not None or (marker is not None and (out / marker).exists()):
        raise ValueError(f"{out} already holds {what}; pass --resume to continue it or choose another --output")
    return out, None


def finished_run(out_dir: Path, latest: Path, epochs: int) -> dict[str, Any] | None:
    """The summary.json of the run in ``out_dir`` where the run has ended: it trained ``epochs``
    epochs, was not interrupted, and wrote its summary and ``model.safetensors`` from its last
    checkpoint, ``latest`` (the weights file ``latest.json`` names). Resuming it to ``epochs``
    has nothing to do. None otherwise (a run killed before it wrote its outputs among them)."""
    try:
        summary = json.loads((out_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    ended = (isinstance(summary, dict) and summary.get("epochs") == epochs and summary.get("interrupted") is False
             and Path(summary.get("last_checkpoint") or "").name == latest.name and (out_dir / "model.safetensors").is_file())
    return summary if ended else None


#: the options that name a file or folder (config.json records them absolute)
PATH_OPTIONS = ("data", "data_dir", "pretrained", "teacher_checkpoint")
#: the --model-arg entries that name a file (create_model's starting weights), recorded absolute likewise
PATH_MODEL_ARGS = ("checkpoint", "checkpoint_path")


def recorded_path(key: str, value: Any) -> Any:
    """``value`` of the option ``key`` as a run's config.json records it: a file or folder
    absolute, so that ``--resume`` from another working folder (a job scheduler's) reads the
    run's own data; a dataset's name (``digits``, ``cifar10``) stays a name, as other options.
    In ``model_args``, the files of :data:`PATH_MODEL_ARGS` are made absolute."""
    from .data import TORCHVISION_SETS

    if key == "model_args" and isinstance(value, Mapping):
        return {k: str(Path(v).resolve()) if k in PATH_MODEL_ARGS and isinstance(v, str) else v for k, v in value.items()}
    if key not in PATH_OPTIONS or not isinstance(value, str) or (key == "data" and value in ("digits", *TORCHVISION_SETS)):
        return value
    return str(Path(value).resolve())


def run_config(cfg: Any) -> dict[str, Any]:
    """What a run's config.json holds: the fields of ``cfg`` (a dataclass), paths absolute
    (:func:`recorded_path`)."""
    return {k: recorded_path(k, v) for k, v in dataclasses.asdict(cfg).items()}


def record_epochs(out_dir: Path, epochs: int) -> None:
    """Write a resumed run's ``epochs`` into its config.json where ``--epochs`` changed it, so
    that a later plain ``--resume`` (the command an interrupted run prints) continues to the
    new length instead of being refused as already past its old one."""
    path = out_dir / "config.json"
    saved = json.loads(path.read_text())
    if saved.get("epochs") != epochs:
        saved["epochs"] = epochs
        write_json_atomic(saved, path)


def read_run_config(out_dir: Path, config_cls: type, task: str) -> Any:
    """The configuration (a ``config_cls`` dataclass) a run of ``task`` (``classify`` or
    ``segment``) in ``out_dir`` was started with, from its config.json; ValueError (one line)
    where there is none, it cannot be read, or it is a run of the other task."""
    try:
        saved = json.loads((out_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"--resume: {out_dir} holds no readable config.json (not a visionzoo training folder)") from None
    kind = saved.get("task", "classify")  # classification runs record no task
    if kind != task:
        raise ValueError(f"--resume: {out_dir} holds a {'segmentation' if kind == 'segment' else 'classification'} run; "
                         f"resume it {'with' if kind == 'segment' else 'without'} --task segment")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    # (JSON has no tuples: a pair such as --scale-range comes back as the tuple it was given as)
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields})


def latest_checkpoint(out_dir: str | os.PathLike) -> tuple[Path, Path] | None:
    """(weights, state) named by latest.json, or None when the folder has no checkpoint."""
    ckdir = Path(out_dir) / "checkpoints"
    pointer = ckdir / "latest.json"
    if not pointer.is_file():
        return None
    try:
        info = json.loads(pointer.read_text())
        weights, state = ckdir / info["weights"], ckdir / info["state"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{pointer}: unreadable; delete it to start afresh") from None
    if not weights.is_file() or not state.is_file():
        raise CheckpointError(f"{pointer} names {weights.name} / {state.name}, which are missing")
    return weights, state


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """The training state (tensors and plain containers only: no code runs; each member's
    CRC-32 checked first, which torch.load does not)."""
    check_zip_crcs(Path(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's words end in advice to load it unsafely, cut mid-sentence
        code, reason = _unpickling_failure(e)
        what = f"it holds Python objects other than tensors ({reason}), and loading them could run code" if code else reason
        raise CheckpointError(f"{path}: not a readable training state, refused: {what}") from None
    except Exception as e:  # noqa: BLE001  (torch's words for a damaged archive run to four sentences: cut at one's end)
        raise CheckpointError(f"{path}: not a readable training state ({type(e).__name__}: {_brief(str(e))})") from None


def restore_training(resume_from: tuple[Path, Path], model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any, *,
                     world_size: int, epochs: int, name: str) -> dict[str, Any]:
    """Load the checkpoint pair ``resume_from`` (weights, state) into ``model``, ``optimizer``,
    ``scheduler`` (a ``LambdaLR``) and ``scaler``; return the state (loop position, history, RNG
    states) for the loop to take the rest from, with a ``schedule_note`` for the user where the
    learning rate jumps (the schedule rebuilt over another ``epochs``).

    ValueError (one line) where the run cannot continue: weights that do not fit ``name``,
    another process count, ``epochs`` below those already trained, or equal to them with the
    checkpoint part-way into the next epoch (its weights are not those of the last evaluated one)."""
    from safetensors.torch import load_file

    weights, state_path = resume_from
    sd, own = load_file(str(weights), device="cpu"), model.state_dict()
    missing, unexpected = set(own) - set(sd), set(sd) - set(own)
    if missing or unexpected:
        raise ValueError(f"{weights}: does not fit {name} (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:  # a shape: the line after torch's "Error(s) in loading state_dict for ..."
        raise ValueError(f"{weights}: does not fit {name} ({str(e).splitlines()[-1].strip()})") from None
    st = load_training_state(state_path)
    if st["world_size"] != world_size:
        raise ValueError(f"the run was saved with {st['world_size']} process(es); resume it with the same number, not {world_size}")
    if st["epoch"] > epochs:
        raise ValueError(f"the run in {weights.parent.parent} has already trained {st['epoch']} epochs, more than the {epochs} asked for "
                         f"(--epochs, or the run's config.json where it is not given); give --epochs above {st['epoch']} to continue it")
    if st["epoch"] == epochs and st["batch_in_epoch"]:  # its weights have moved on from those of its last evaluated epoch
        raise ValueError(f"the run in {weights.parent.parent} has trained {epochs} epochs and is part-way into epoch {epochs + 1} "
                         f"(step {st['global_step']}), so it cannot end at the {epochs} asked for (--epochs, or the run's config.json "
                         f"where it is not given); give --epochs above {epochs} to continue it")
    saved, built = ([len(g["params"]) for g in groups] for groups in (st["optimizer"].get("param_groups", []), optimizer.param_groups))
    if saved != built:
        raise ValueError(f"{state_path}: its optimizer holds {len(saved)} parameter group(s) of {', '.join(map(str, saved))} tensors, "
                         f"where this version of visionzoo builds {len(built)} of {', '.join(map(str, built))} "
                         f"for {name} (a run saved by another version, or with other options); it cannot continue exactly")
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    if st.get("scaler"):
        scaler.load_state_dict(st["scaler"])
    lr_then, lr_now = optimizer.param_groups[0]["lr"], scheduler.base_lrs[0] * scheduler.lr_lambdas[0](st["global_step"])
    if abs(lr_now - lr_then) > 0.05 * lr_then:  # --epochs changed: the warm-up and cosine span the new length
        st["schedule_note"] = (f"note: the schedule now spans {epochs} epochs, so the learning rate goes from {lr_then:.3g} to {lr_now:.3g} "
                               f"at step {st['global_step']} (warmup and cosine over the new length, as timm's resume does)")
    # the next step's rates from the schedule of this run's length: the optimizer's are the saved
    # schedule's, which, where --epochs changed, would drive one more step at the old length's rate
    # (the same value, bit for bit, where it did not: LambdaLR computes them so)
    rates = [base * f(scheduler.last_epoch) for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, rates):
        group["lr"] = lr
    scheduler._last_lr = rates
    return st
