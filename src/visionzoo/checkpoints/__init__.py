"""Loading checkpoints from visionzoo, timm, torchvision and the papers' official releases.

:func:`load_checkpoint` reads the file without executing code, converts the keys, adapts
what a user can reasonably expect to be adapted (position embeddings and relative-position
tables resized to the model's size, the first convolution to ``in_chans``, a classifier of
another size dropped and one a backbone checkpoint lacks left initialised, each with a
warning) and then loads everything, or nothing: a model is never left half-loaded.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .convert import SOURCES, ConfigChanges, converters_for, identity, register_converter, rename_keys, split_converted
from .io import CheckpointError, read_state_dict, save_state_dict, unwrap_state_dict

__all__ = [
    "CheckpointError",
    "SOURCES",
    "adapt_input_conv",
    "converted_state_dict",
    "identity",
    "load_checkpoint",
    "read_state_dict",
    "register_converter",
    "rename_keys",
    "save_state_dict",
    "unwrap_model",
]

_log = logging.getLogger(__name__)


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """Adapt a first-layer kernel (O, I, kh, kw) trained on I channels to ``in_chans``.
    (Checkpoints are adapted from I = 3, as timm's are, or I = 1; their loading refuses others,
    where channels would be dropped or made up.)

    One channel: the kernel summed over its input channels (a grey image then gives the
    response the RGB network gave to the same image in colour; not exactly for a
    weight-standardised stem, the R50+ViT hybrid's, whose standardisation does not commute
    with the sum, as in timm). Otherwise the kernel is
    tiled over the new channels and rescaled by ``I / in_chans`` so activations keep
    their magnitude.
    """
    O, I = weight.shape[:2]
    if I == in_chans:
        return weight
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        reps = -(-in_chans // I)
        w = w.repeat(1, reps, 1, 1)[:, :in_chans] * (I / in_chans)
    return w.to(weight.dtype)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside the wrappers training puts around it: DistributedDataParallel's and
    DataParallel's ``module``, torch.compile's ``_orig_mod``, in any nesting. A wrapper shares
    the inner model's parameters but prefixes their names (``module.``, ``_orig_mod.``) and
    hides its family and configuration, so checkpoints are matched against, and loaded into,
    the model it wraps."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _prefixes(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    if not spec:
        return ()
    return (spec,) if isinstance(spec, str) else tuple(spec)


def _match_score(sd: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> tuple[float, int]:
    """(the share of the model's keys the converted checkpoint fills, a shape match counting
    more; minus the keys it leaves over): of two layouts that fill the model alike, the one that
    accounts for every key (DINOv2's: its unused mask_token dropped) is the checkpoint's."""
    hits = sum(1 for k, v in sd.items() if k in target and tuple(v.shape) == tuple(target[k].shape))
    named = sum(1 for k in sd if k in target)
    return (hits + 0.5 * named) / max(len(target), 1), -(len(sd) - named)


def _key_candidates(sd: dict[str, Tensor], names: Iterable[str]) -> list[list[tuple[str, dict[str, Tensor]]]]:
    """Readings of the keys, in groups the layout detection tries in turn, each reading
    ``(how, keys)``: first ``("", sd)``, then the keys without a leading prefix all of them
    share, shortest first (Lightning's ``model.``, a wrapper's ``net.`` / ``backbone.``,
    ``model.model.``). Each group adds its keys with the module names of timm's
    ``features_only`` wrappers restored (:func:`_unflatten_timm_features`), where any are
    flattened; the best-fitting reading of a group is taken."""
    readings, prefix = [("", sd)], ""
    while sd and all("." in k for k in sd) and len({k.split(".", 1)[0] for k in sd}) == 1:
        prefix += next(iter(sd)).split(".", 1)[0] + "."
        sd = {k.split(".", 1)[1]: v for k, v in sd.items()}
        readings.append((f"keys stripped of their common prefix {prefix!r}", sd))
    groups = []
    for how, keys in readings:
        group = [(how, keys)]
        unflat = _unflatten_timm_features(keys, names)
        if unflat is not None:
            note = "module names of a timm features_only model restored (stem_0 -> stem.0)"
            group.append((f"{how}; {note}" if how else note, unflat))
        groups.append(group)
    return groups


def _unflatten_timm_features(sd: dict[str, Tensor], names: Iterable[str]) -> dict[str, Tensor] | None:
    """The keys of a timm ``features_only`` state dict in the model's own module names, or
    None where none is flattened.

    timm's feature wrappers (``FeatureListNet``, ``FeatureDictNet``) lift the children of a
    top-level Sequential to the top, joining the two names with '_': ``stem.0.weight`` is
    saved as ``stem_0.weight``, ``features.conv0.weight`` as ``features_conv0.weight``. Which
    '_' was a '.' is read off the model's keys ``names`` (with those ``features_only`` pruned):
    a checkpoint key's first name is restored where it equals the first two names of one of
    the model's keys joined with '_', and is no first name of the model's own. Only names are restored; the layout detection and the
    checks of :func:`load_checkpoint` then judge the keys as any others.
    """
    names = list(names)
    own = {k.split(".", 1)[0] for k in names}
    joined: dict[str, str | None] = {}
    for k in names:
        parts = k.split(".")
        if len(parts) >= 3:  # module.child.tensor: the child may be lifted
            dotted, flat = f"{parts[0]}.{parts[1]}", f"{parts[0]}_{parts[1]}"
            joined[flat] = dotted if joined.get(flat, dotted) == dotted else None  # None: two readings
    out, restored = {}, False
    for k, v in sd.items():
        first, sep, rest = k.partition(".")
        dotted = joined.get(first) if sep and first not in own else None
        if dotted is not None:
            k, restored = f"{dotted}.{rest}", True
        out[k] = v
    return out if restored else None


def _convert(family: str, source: str, sd: dict[str, Tensor], model: nn.Module, name: str) -> tuple[str, dict[str, Tensor], ConfigChanges]:
    """(layout, converted state dict, configuration changes). Converters only read the model;
    where the keys fit no layout but do once a prefix all of them share is removed
    (a Lightning module's ``model.``), that prefix is removed; the flattened module names of
    a timm ``features_only`` model are restored where that fits better."""
    table = converters_for(family)
    target = model.state_dict()
    if source != "auto":
        if source not in SOURCES:
            raise CheckpointError(f"unknown checkpoint source {source!r}; use one of {SOURCES} or 'auto'")
        if source not in table:
            known = ", ".join(table)
            raise CheckpointError(f"{name}: visionzoo has no converter from the {source} layout for {family} (has: {known})")
        table = {source: table[source]}
    error: Exception | None = None
    first: tuple[str, dict[str, Tensor], ConfigChanges] | None = None
    names = target.keys() | getattr(model, "pruned_keys", frozenset())  # a features_only model's whole network
    for group in _key_candidates(sd, names):
        best: tuple[tuple[float, int], str, str, dict[str, Tensor], ConfigChanges] | None = None
        for how, candidate in group:
            for src, fn in table.items():
                try:
                    out, changes = split_converted(fn(dict(candidate), model))
                except (KeyError, ValueError, RuntimeError, IndexError) as e:
                    error = error or e
                    continue
                first = first or (src, out, changes)
                score = _match_score(out, target)
                if best is None or score > best[0]:
                    best = (score, how, src, out, changes)
        if best is not None and best[0][0] >= 0.5:
            if best[1]:
                _log.info("%s: %s", name, best[1])
            return best[2], best[3], best[4]
    if source != "auto":
        if first is None:
            raise CheckpointError(f"{name}: not a {source} checkpoint of a {family} model ({type(error).__name__}: {error})") from None
        return first  # it fits poorly: the checks below say how
    sample = ", ".join(list(sd)[:4])
    raise CheckpointError(
        f"{name}: does not look like a checkpoint of {getattr(model, 'model_name', '') or family} in any known layout "
        f"({', '.join(table)}); its first keys are {sample}"
    )


@torch.no_grad()
def load_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Tensor],
    *,
    source: str = "auto",
    strict: bool = True,
    use_ema: bool = True,
) -> dict[str, list[str]]:
    """Load weights into ``model``, converting from another layout where needed.

    Args:
        model: a visionzoo model (from :func:`visionzoo.create_model`), also inside DDP,
            DataParallel or torch.compile (:func:`unwrap_model`).
        checkpoint: a file (.safetensors, .pth, .pt, .bin, .npz) or a state dict.
        source: "visionzoo", "timm", "torchvision", "official" or "auto" (detected from
            the keys).
        strict: every weight of the model must come from the checkpoint, except a
            classifier of another size (dropped with a warning) or one the checkpoint lacks
            (left initialised with a warning, listed as missing), and every key of the
            checkpoint must be used. With ``strict=False`` what matches is loaded and the
            rest keeps its initialisation.
        use_ema: of a training checkpoint holding the weights and their EMA copy (timm's
            ``state_dict`` / ``state_dict_ema``, DeiT's and ConvNeXt's ``model`` /
            ``model_ema``), take the EMA copy, as timm's ``load_checkpoint`` does; ``False``
            takes the plain one. A checkpoint with one copy loads it either way.

    Returns:
        ``{"missing": [...], "unexpected": [...], "dropped": [...], "source": [name]}``.

    A layout may decide part of the model's configuration (efficientnet_pytorch's weights
    need TensorFlow's numerics): a model with ``reconfigure`` gets those changes, or none for
    a layout that decides nothing, when the load succeeds; ``model.cfg`` then shows them.

    Raises:
        CheckpointError: an unreadable file, a checkpoint of another architecture, shapes
            that cannot be adapted, non-finite weights. The model is then left unchanged:
            weights, configuration and numerics; nor is any warning given.
    """
    return load_read_checkpoint(unwrap_model(model), *read_checkpoint(checkpoint, use_ema=use_ema), source=source, strict=strict)


def read_checkpoint(checkpoint: str | os.PathLike | Mapping[str, Tensor], *, use_ema: bool = True) -> tuple[str, dict[str, Tensor]]:
    """The name :func:`load_checkpoint`'s messages give ``checkpoint`` (its path, or
    ``<state dict>``) and its flat state dict, the file read once; ``use_ema`` as there."""
    if isinstance(checkpoint, (str, os.PathLike)):
        return str(checkpoint), read_state_dict(Path(checkpoint), prefer_ema=use_ema)
    return "<state dict>", unwrap_state_dict(checkpoint, source="<state dict>", prefer_ema=use_ema)


@torch.no_grad()
def converted_state_dict(model: nn.Module, sd: dict[str, Tensor], *, name: str = "<state dict>") -> dict[str, Tensor]:
    """``sd`` in ``model``'s keys, as :func:`load_checkpoint` would convert it from its layout
    (before sizes are adapted); ``model`` may be on the meta device. CheckpointError where no
    known layout fits."""
    return _convert(getattr(model, "family", ""), "auto", sd, model, name)[1]


def load_read_checkpoint(model: nn.Module, name: str, sd: dict[str, Tensor], *, source: str = "auto", strict: bool = True) -> dict[str, list[str]]:
    """:func:`load_checkpoint` of a checkpoint :func:`read_checkpoint` has read (``name``,
    ``sd``) into ``model`` (unwrapped): for a caller that looks at the keys too."""
    family = getattr(model, "family", "")
    src, sd, changes = _convert(family, source, sd, model, name)
    settable = getattr(model, "reconfigurable", ()) if hasattr(model, "reconfigure") else ()
    if set(changes) - set(settable):
        raise CheckpointError(f"{name}: the {src} layout needs configuration {changes}, which this model cannot take after it is built")

    adapt = getattr(model, "adapt_state_dict", None)
    if adapt is not None:
        try:
            sd = adapt(sd)
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{name}: cannot adapt the checkpoint to this model: {e}") from None

    target = model.state_dict()
    cfg = getattr(model, "default_cfg", {}) or {}
    for conv in _prefixes(cfg.get("first_conv", "")):
        key = f"{conv}.weight"
        if key in sd and key in target and sd[key].ndim == 4 and sd[key].shape[1] != target[key].shape[1]:
            if sd[key].shape[0] == target[key].shape[0] and sd[key].shape[2:] == target[key].shape[2:]:
                if sd[key].shape[1] not in (1, 3):
                    raise CheckpointError(
                        f"{name}: {key} takes {sd[key].shape[1]} input channels and the model's {target[key].shape[1]}: "
                        f"only an RGB or a grey kernel is adapted to another count (this one would lose or invent "
                        f"channels); build the model with in_chans={sd[key].shape[1]}"
                    )
                _log.info("adapting %s from %d to %d input channels", key, sd[key].shape[1], target[key].shape[1])
                sd[key] = adapt_input_conv(sd[key], target[key].shape[1])

    dropped: list[str] = []
    headless: list[str] = []  # the model's classifier weights, which a headless checkpoint lacks
    notes: list[str] = []  # warnings, given only once the load is certain
    for head in _prefixes(cfg.get("classifier", "")):
        keys = [k for k in sd if k == head or k.startswith(head + ".")]
        if not keys:
            own = [k for k in target if k == head or k.startswith(head + ".")]
            if own and any(k in target for k in sd):
                notes.append(f"{name}: the checkpoint has no classifier {head} (a backbone checkpoint); the model's is left initialised")
                headless += own
            continue
        if any(k not in target for k in keys):
            if all(k not in target for k in keys):  # the model has no classifier (num_classes=0 / features)
                for k in keys:
                    sd.pop(k)
                continue
        if any(k in target and sd[k].shape != target[k].shape for k in keys):
            shapes = {k: tuple(sd[k].shape) for k in keys}
            notes.append(
                f"{name}: classifier {head} of the checkpoint has another size ({shapes}) than the model's "
                f"({ {k: tuple(target[k].shape) for k in keys if k in target} }); it is left initialised"
            )
            for k in keys:
                sd.pop(k)
                dropped.append(k)

    unexpected = sorted(k for k in sd if k not in target)
    if getattr(model, "features_only", False):
        # the layers features_only pruned (head, final norm, unused stages), and only those: a
        # deeper variant's extra blocks (resnet34's layer1.2 in resnet18) stay unexpected
        pruned = getattr(model, "pruned_keys", None)
        skipped = [k for k in unexpected if pruned is None or k in pruned]
        for k in skipped:
            sd.pop(k)
        unexpected = [k for k in unexpected if k not in skipped]
    missing = sorted(k for k in target if k not in sd and k not in dropped)
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sd
        if k in target and tuple(sd[k].shape) != tuple(target[k].shape)
    ]
    if mismatched:
        raise CheckpointError(f"{name}: shapes do not fit ({len(mismatched)}): " + "; ".join(mismatched[:5]))
    # BatchNorm's step counters are optional, as in PyTorch's own loading: checkpoints of frozen
    # norms (torchvision's detection backbones, FrozenBatchNorm2d) and of old releases lack them
    absent = [k for k in missing if k not in headless and not k.endswith(".num_batches_tracked")]
    if strict and (absent or unexpected):
        parts = []
        if absent:
            parts.append(f"missing {len(absent)} key(s) such as {absent[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) such as {unexpected[:5]}")
        raise CheckpointError(f"{name}: checkpoint ({src} layout) does not fit the model: " + "; ".join(parts))
    for k, v in sd.items():
        if k not in target:
            continue
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{name}: weight {k} holds NaN or Inf values; nothing was loaded")
        if v.is_floating_point() != target[k].is_floating_point():
            raise CheckpointError(f"{name}: weight {k} has dtype {v.dtype}, the model expects {target[k].dtype}")

    # everything was checked above: copying cannot fail half-way
    for note in notes:
        warnings.warn(note, stacklevel=_caller_level())
    if settable:
        model.reconfigure(**changes)
    model.load_state_dict({k: v for k, v in sd.items() if k in target}, strict=False)
    return {"missing": missing, "unexpected": unexpected, "dropped": dropped, "source": [src]}


def _caller_level() -> int:
    """``stacklevel`` that reports a warning at the first frame outside visionzoo and torch
    (the user's ``load_checkpoint`` or ``create_model(checkpoint=...)`` line), whatever
    decorators and wrappers lie between."""
    roots = tuple(os.path.dirname(m.__file__) + os.sep for m in (sys.modules["visionzoo"], torch))
    frame, level = sys._getframe(1), 1  # frame: the caller of warnings.warn
    while frame is not None and frame.f_code.co_filename.startswith(roots):
        frame, level = frame.f_back, level + 1
    return level
