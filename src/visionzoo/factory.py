"""``create_model`` and ``model_info``."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import inspect
import logging
import math
import numbers
import os
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .base import VisionModel, count_params
from .layers import DropPath
from .layers.helpers import check_int, to_2tuple
from .registry import default_num_classes, get_entry, split_tag

__all__ = ["create_model", "model_info"]

_log = logging.getLogger(__name__)


def _pop_global_pool(config: Any, overrides: dict[str, Any]) -> str | None:
    """timm's ``global_pool`` argument, taken out of ``overrides`` to be set on the built model
    (:meth:`VisionModel.set_global_pool`); a family whose configuration has the field (ViT:
    ``'token'`` / ``'avg'``, which shape the model) keeps those values in ``overrides``."""
    own = dataclasses.is_dataclass(config) and "global_pool" in {f.name for f in dataclasses.fields(config)}
    if "global_pool" not in overrides or (own and overrides["global_pool"] != ""):
        return None
    return overrides.pop("global_pool")


def _apply_overrides(name: str, config: Any, overrides: Mapping[str, Any]) -> Any:
    if not overrides:
        return config
    fields = {f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else set()
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(_unknown_options_message(name, unknown, fields))
    hints = _type_hints(type(config))
    checked = {k: _checked_value(name, k, hints[k], v, getattr(config, k)) for k, v in overrides.items()}
    return dataclasses.replace(config, **checked)


# the family checks these: the message names the strides that family allows; SwinV2's
# pretrained windows take 0 (none) as well
_CHECKED_BY_FAMILY = {"output_stride", "pretrained_window_sizes"}


def _checked_value(name: str, key: str, hint: Any, value: Any, default: Any) -> Any:
    """An override ``value`` for the configuration field ``key`` (annotated ``hint``), checked
    against the annotation before anything is built: ints (and tuples of ints: depths, widths)
    must be positive, numbers finite and not negative, drop rates below 1; lists become tuples.
    The allowed values of strings and ``output_stride`` are checked by the family, which knows them;
    fields of other types pass unchanged. Raises ValueError (one line), as ``create_model``'s
    own arguments do for a value of the wrong type or range."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    or_none = ""
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        or_none = "None or " if type(None) in args else ""
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return value
        hint = rest[0]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if (value is None and default is None) or key in _CHECKED_BY_FAMILY:
        return value
    where = f"{name}: option {key}"
    if hint in (int, float, bool):
        return _checked_scalar(where, key, hint, value)
    if origin is tuple and args and all(a in (int, float, Ellipsis) for a in args):
        kinds = [a for a in args if a is not Ellipsis]
        if len(set(kinds)) != 1:
            return value
        kind = kinds[0]
        if not isinstance(value, (tuple, list)):
            raise ValueError(f"{where} takes {or_none}a sequence of {kind.__name__}s, got {value!r}")
        if Ellipsis not in args and len(value) != len(args):
            raise ValueError(f"{where} takes {len(args)} values (one per stage), got {len(value)}: {value!r}")
        return tuple(_checked_scalar(f"{where}[{i}]", key, kind, v) for i, v in enumerate(value))
    if hint is str and not isinstance(value, str):
        raise ValueError(f"{where} takes a string, got {value!r}")
    return value


def _checked_scalar(where: str, key: str, kind: type, value: Any) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} takes True or False, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where} takes {'an int' if kind is int else 'a number'}, got {value!r}")
    if kind is int:
        if not isinstance(value, numbers.Integral):
            raise ValueError(f"{where} takes an int, got {value!r}")
        if value < 1:
            raise ValueError(f"{where} must be a positive int, got {value}")
        return int(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where} must be a finite number >= 0, got {value}")
    if key.endswith("drop_rate") and value >= 1:
        raise ValueError(f"{where} is a probability in [0, 1), got {value}")
    return float(value)


_DOWNLOAD_SOURCES = ("url", "hf_hub_id", "hf_hub_filename", "hf_hub_revision")


def _timm_weight_arguments(
    name: str, pretrained: bool, checkpoint: Any, checkpoint_path: Any, overlay: Mapping[str, Any] | None
) -> tuple[Any, dict[str, Any]]:
    """timm's ways of naming local weights (``checkpoint_path``, ``pretrained=True`` with
    ``pretrained_cfg_overlay=dict(file=...)``) as ``checkpoint``, checked: returns the
    checkpoint and the overlay's entries for ``default_cfg``."""
    if checkpoint_path is not None:
        if checkpoint is not None:
            raise ValueError(f"{name}: checkpoint_path is timm's name for checkpoint; give one of the two, got both")
        checkpoint = checkpoint_path
    if overlay is None:
        overlay = {}
    if not isinstance(overlay, Mapping):
        raise ValueError(f"{name}: pretrained_cfg_overlay takes a dict (as timm's), got {overlay!r}")
    overlay = dict(overlay)
    sources = [k for k in _DOWNLOAD_SOURCES if overlay.get(k)]
    if sources:
        raise ValueError(
            f"{name}: visionzoo downloads no weights (pretrained_cfg_overlay has {sources[0]!r}); "
            "pass the downloaded file as pretrained_cfg_overlay=dict(file=PATH) or checkpoint=PATH"
        )
    if "architecture" in overlay:
        raise ValueError(f"{name}: pretrained_cfg_overlay cannot set 'architecture'; the model name sets it")
    if overlay.get("num_classes") is not None:
        check_int("pretrained_cfg_overlay's num_classes", overlay["num_classes"], 0)
    size = overlay.get("input_size")
    if size is not None and not (isinstance(size, Sequence) and len(size) == 3 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ValueError(f"{name}: pretrained_cfg_overlay's input_size takes (channels, height, width), positive integers, got {size!r}")
    file = overlay.pop("file", None)
    for key in _DOWNLOAD_SOURCES:
        overlay.pop(key, None)  # (empty entries, as timm's configurations carry)
    if file is not None:
        if not pretrained:
            raise ValueError(f"{name}: pretrained_cfg_overlay's 'file' is read only with pretrained=True (as timm does); pass pretrained=True or checkpoint=PATH")
        if checkpoint is not None:
            raise ValueError(f"{name}: pretrained_cfg_overlay's 'file' and checkpoint both name weights; give one")
        checkpoint = file
    if pretrained and checkpoint is None:
        raise ValueError(
            f"{name}: visionzoo downloads no weights (pretrained=True); pass checkpoint=PATH, a timm, "
            f"torchvision or official checkpoint file (or state dict) of {name}, which load_checkpoint converts"
        )
    return checkpoint, overlay


#: default_cfg's preprocessing entries, which a pretrained tag's weights may want otherwise
_PREPROCESSING = {"mean", "std", "interpolation", "crop_pct", "crop_mode", "input_size", "test_input_size"}

#: timm options visionzoo has no use for, and why (the closest name would mislead: img_size)
_TIMM_ONLY = {
    "dynamic_img_size": "visionzoo's ViT takes any input whose sides the patch divides, its position embedding resized to each",
    "dynamic_img_pad": "an input whose sides the patch does not divide is refused: pad or resize it first",
}


def _entry_default_cfg(entry: Any, cfg: Any) -> Mapping[str, Any]:
    """The registry entry's default_cfg, or an overridden configuration's own where the family
    computes it from its configuration (EfficientNet's ``resolution`` sets its size and crop)."""
    return entry.default_cfg if cfg is entry.config or entry.default_cfg_for is None else entry.default_cfg_for(cfg)


@functools.cache
def _create_model_arguments() -> frozenset[str]:
    """The keyword arguments ``create_model`` takes itself (``checkpoint``, ``dtype``, ...): the
    other keywords are options of the family's configuration."""
    return frozenset(p.name for p in inspect.signature(create_model).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _family_options(entry: Any, overrides: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(the configuration fields among ``overrides``, timm's spellings of them turned into the
    family's, ``global_pool``): an option given as ``None`` is left out, as timm leaves it at its
    default, unless ``None`` is a value of that field's own."""
    options = {k: v for k, v in overrides.items() if v is not None or k in _fields_taking_none(entry.config)}
    try:
        options = entry.model_cls.timm_options(options)
    except ValueError as e:
        raise ValueError(f"{entry.name}: {e}") from None
    return options, _pop_global_pool(entry.config, options)


def default_cfg_of(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``default_cfg`` (input size, crop, mean and std) of ``create_model(name, **overrides)``
    without building the model. ``overrides`` may hold any keyword ``create_model`` takes: its own
    arguments (``checkpoint``, ``dtype``, ...) are set aside, but for ``pretrained_cfg_overlay``'s
    preprocessing, which goes into the result as it goes into the model's; the rest are the
    family's options, timm's spellings among them, checked as ``create_model`` checks them."""
    entry = get_entry(name)
    overrides = dict(overrides or {})
    own = {k: overrides.pop(k) for k in _create_model_arguments() & set(overrides)}
    options, _ = _family_options(entry, overrides)
    cfg = dict(_entry_default_cfg(entry, _apply_overrides(entry.name, entry.config, options)))
    if own.get("pretrained_cfg_overlay") is not None:
        _, overlay = _timm_weight_arguments(entry.name, bool(own.get("pretrained")), own.get("checkpoint"), own.get("checkpoint_path"),
                                            own["pretrained_cfg_overlay"])
        cfg.update(overlay)
    return cfg


def _unknown_options_message(name: str, unknown: Sequence[str], fields: set[str]) -> str:
    """The error for keyword arguments ``create_model`` does not take: the closest accepted
    name of each (a misspelt ``num_classes`` lands among the family's overrides), or for a timm
    option with no use here why, then the options every model takes apart from those of the
    family's configuration."""
    params = inspect.signature(create_model).parameters.values()
    common = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY] + ["global_pool"]
    why = [f"{u}: {_TIMM_ONLY[u]}" for u in unknown if u in _TIMM_ONLY and {"pos_embed", "class_token"} <= fields]  # a ViT
    if why:
        hint = f" ({'; '.join(why)})"
    else:
        close = {u: difflib.get_close_matches(u, [*common, *fields], n=1) for u in unknown}
        hints = [f"{c[0]!r}" if len(unknown) == 1 else f"{c[0]!r} for {u!r}" for u, c in close.items() if c]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    own = sorted(fields - set(common))
    family = f"this family's options: {own}" if own else "this family has no options of its own"
    return f"{name}: unknown option(s) {list(unknown)}{hint}; options of every model: {common}; {family}"


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | Sequence[int] | None = None,
    drop_path_rate: float | None = 0.0,
    features_only: bool | None = False,
    out_indices: int | Sequence[int] | None = None,
    checkpoint: str | os.PathLike | Mapping[str, Tensor] | None = None,
    pretrained: bool | None = False,
    checkpoint_path: str | os.PathLike | None = None,
    pretrained_cfg_overlay: Mapping[str, Any] | None = None,
    scriptable: bool | None = None,
    exportable: bool | None = None,
    no_jit: bool | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> VisionModel:
    """Build a registered model.

    Args:
        name: a name from :func:`visionzoo.list_models` (or an alias), with or without one of
            timm's pretrained tags (``"resnet50.a1_in1k"``: the architecture, ``default_cfg["tag"]``
            the tag; the weights come from ``checkpoint``, with a warning that ``default_cfg``'s
            preprocessing is the architecture's unless ``pretrained_cfg_overlay`` sets it).
        num_classes: classifier outputs; 0 gives pooled features (no classifier). By default
            the variant's ``default_cfg["num_classes"]`` where it has one, timm's class count of
            its default weights (0 for backbones released without a classifier, as DINOv2's;
            11221 for MIIL's ImageNet-21k ViT; a CLIP tower's projection width), else 1000;
            or ``pretrained_cfg_overlay``'s ``num_classes``, as in timm.
        in_chans: image channels; 3 by default, or the channels of ``pretrained_cfg_overlay``'s
            ``input_size``, as in timm.
        img_size: the size the model is built for (position tables, windows); the
            variant's default input size when omitted (or ``pretrained_cfg_overlay``'s
            ``input_size``). Most networks also take other sizes.
        drop_path_rate: stochastic-depth rate of the deepest block, in [0, 1); a rate above 0
            is refused by the families built without stochastic depth (VGG, DenseNet, the
            Inception networks, HRNet, ConvMixer, MobileNet v1), where it would do nothing.
        features_only: return a list of NCHW maps, one per stage (see ``feature_info``).
        out_indices: which maps ``features_only`` returns: a sequence of indices, or an int n for the last n (as timm).
        checkpoint: a checkpoint file or state dict loaded with ``load_checkpoint``
            (layout detected).
        pretrained: timm's argument, accepted so that timm code runs: visionzoo downloads no
            weights, so ``True`` needs local weights (``checkpoint``, ``checkpoint_path`` or
            ``pretrained_cfg_overlay=dict(file=PATH)``) and raises without; ``False`` does nothing.
        checkpoint_path: timm's name for ``checkpoint`` (give one of the two).
        pretrained_cfg_overlay: timm's overlay of the pretrained configuration: with
            ``pretrained=True`` its ``file`` is the checkpoint; its preprocessing keys
            (``mean``, ``std``, ``crop_pct``, ``interpolation``, ...) go into ``default_cfg``; its
            ``num_classes`` and ``input_size`` (channels, height, width), which describe the
            weights, are the defaults of the arguments of those names.
            Download sources (``url``, ``hf_hub_id``) are refused.
        scriptable, exportable, no_jit: timm's layer flags. Every model traces and exports as it
            is, so ``exportable`` and ``no_jit`` change nothing; ``scriptable=True`` is refused
            (``torch.jit.script`` does not take this code; ``torch.jit.trace`` does).
        device, dtype: where and in which floating type the model is built (timm's arguments):
            its parameters are created under ``torch.device(device)``, so ``device="cuda"`` skips
            the copy from host memory and ``device="meta"`` allocates nothing (no checkpoint then).
        **overrides: fields of the family's configuration dataclass, for example
            ``pos_embed="learned_2d"`` for ViT or ``layout="C-T-T-T"`` for CoAtNet; and timm's
            ``global_pool``: ``''`` with ``num_classes=0`` makes ``forward`` return the unpooled
            features as timm does, ``'avg'`` is the default pooling (ViT also takes ``'token'``).

    Raises:
        UnknownModelError: for an unknown name, naming the closest registered ones.
        ValueError: for an argument of the wrong type or range (``num_classes=True``,
            ``img_size=224.9``, ``drop_path_rate="0.1"``), naming it and the value; the
            configuration's own fields (``drop_rate``, ``attn_drop_rate``, ...) likewise; and
            for a configuration its family refuses (Swin's ``depths`` and ``num_heads`` of
            different lengths), its message starting with the model's name.
        TypeError: for an option that is neither an argument above nor a field of the family's
            configuration, naming the closest accepted one.

    An argument given as ``None`` is left at its default, as timm does (its training script
    passes ``drop_path_rate=None``, ``drop_block_rate=None``, ``bn_eps=None`` ... for options not
    set), except a configuration field for which ``None`` is a value of its own (ConvNeXt's
    ``ls_init_value=None``: no LayerScale; CoAtNet's ``head_hidden_size=None``: no pre-logits layer).
    """
    entry = get_entry(name)
    tag = split_tag(name)[1]  # timm's pretrained tag ('a1_in1k' of 'resnet50.a1_in1k'): names the weights
    pretrained = False if pretrained is None else pretrained
    checkpoint, cfg_overlay = _timm_weight_arguments(entry.name, pretrained, checkpoint, checkpoint_path, pretrained_cfg_overlay)
    # the overlay's classifier size and input size describe the weights: the defaults of the arguments, as in timm
    weights_classes, weights_size = cfg_overlay.pop("num_classes", None), cfg_overlay.pop("input_size", None)
    if num_classes is None:
        num_classes = default_num_classes(entry.default_cfg) if weights_classes is None else weights_classes
    if weights_size is not None:
        in_chans = weights_size[0] if in_chans is None else in_chans
        img_size = tuple(weights_size[1:]) if img_size is None else img_size
    in_chans = 3 if in_chans is None else in_chans
    drop_path_rate = 0.0 if drop_path_rate is None else drop_path_rate
    features_only = False if features_only is None else features_only
    device, dtype = _placement(entry.name, device, dtype, checkpoint)
    if scriptable:
        raise ValueError(
            f"{entry.name}: scriptable=True is not supported: torch.jit.script does not take visionzoo's code; "
            "torch.jit.trace, visionzoo.export.export_program and export_onnx do"
        )
    check_int("num_classes", num_classes, 0)
    check_int("in_chans", in_chans)
    if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, numbers.Real):
        raise ValueError(f"drop_path_rate takes a number in [0, 1), got {drop_path_rate!r}")
    if not 0 <= drop_path_rate < 1:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
    if not isinstance(features_only, bool):
        raise ValueError(f"features_only takes True or False, got {features_only!r}")
    overrides, global_pool = _family_options(entry, overrides)
    cfg = _apply_overrides(entry.name, entry.config, overrides)
    entry_cfg = _entry_default_cfg(entry, cfg)
    size = to_2tuple(img_size, "img_size") if img_size is not None else tuple(entry_cfg["input_size"][1:])
    if min(size) < 1:
        raise ValueError(f"img_size must be positive, got {img_size!r}")
    try:
        with device if device is not None else contextlib.nullcontext():
            model = entry.model_cls(
                cfg, num_classes=num_classes, in_chans=in_chans, img_size=size, drop_path_rate=drop_path_rate
            )
    except ValueError as e:  # the family's own checks of its configuration: name the model, as the checks above do
        if len(e.args) == 1 and isinstance(e.args[0], str) and not e.args[0].startswith(entry.name):
            e.args = (f"{entry.name}: {e.args[0]}",)
        raise
    if drop_path_rate and not any(isinstance(m, DropPath) and m.drop_prob > 0 for m in model.modules()):
        raise ValueError(f"{entry.name} is built without stochastic depth: drop_path_rate must be 0, got {drop_path_rate}")
    problem = model.size_problem(*size)  # the input check every forward runs
    if problem:
        raise ValueError(f"{entry.name} cannot take img_size {size[0]}x{size[1]}: it {problem}")
    if device is not None or dtype is not None:  # what a constructor made on another device, and the type
        model.to(device=device, dtype=dtype)
    model.model_name = entry.name
    model.family = entry.family
    if global_pool is not None:
        model.set_global_pool(global_pool)
    model.default_cfg = {
        **entry_cfg,
        "input_size": (in_chans, *size),
        "num_classes": num_classes,
        **cfg_overlay,
        "architecture": entry.name,
        **({"tag": tag} if tag else {}),
    }
    if tag and checkpoint is not None and not _PREPROCESSING.intersection(cfg_overlay):
        warnings.warn(
            f"{entry.name}.{tag}: visionzoo does not know the preprocessing timm gives the weights tagged {tag!r}; "
            f"default_cfg is {entry.name}'s (interpolation {model.default_cfg.get('interpolation')!r}, crop_pct "
            f"{model.default_cfg.get('crop_pct')}): set the tag's with pretrained_cfg_overlay=dict(mean=..., std=..., "
            "interpolation=..., crop_pct=...) where they differ",
            stacklevel=2,
        )
    if features_only:
        model.set_features_only(out_indices)
    elif out_indices is not None:
        raise ValueError("out_indices is only meaningful with features_only=True")
    if checkpoint is not None:
        from .checkpoints import load_checkpoint

        load_checkpoint(model, checkpoint)  # a features_only model ignores the head's keys
    return model


@functools.cache
def _type_hints(config_cls: type) -> dict[str, Any]:
    """A configuration dataclass's field annotations, resolved once per class."""
    return typing.get_type_hints(config_cls)


def _fields_taking_none(config: Any) -> set[str]:
    """The fields of a family's configuration for which ``None`` is a value of its own (their type
    admits it and their default is another)."""
    if not dataclasses.is_dataclass(config):
        return set()
    hints = _type_hints(type(config))
    return {
        f.name
        for f in dataclasses.fields(config)
        if getattr(config, f.name) is not None and type(None) in typing.get_args(hints[f.name])
    }


def _placement(name: str, device: Any, dtype: Any, checkpoint: Any) -> tuple[torch.device | None, torch.dtype | None]:
    """create_model's ``device`` and ``dtype``, checked: (a torch.device or None, a floating dtype or None)."""
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"{name}: device takes a torch.device or a name like 'cpu' or 'cuda:0', got {device!r}") from e
        if device.type == "meta" and checkpoint is not None:
            raise ValueError(f"{name}: a model on the meta device holds no values, so no checkpoint can be loaded into it")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"{name}: dtype takes a floating torch.dtype (torch.float32, torch.bfloat16, ...), got {dtype!r}")
    return device, dtype


class _FlopCounter:
    """torch.utils.flop_counter with scaled_dot_product_attention counted on every device."""

    def __init__(self) -> None:
        from torch.utils.flop_counter import FlopCounterMode, sdpa_flop

        def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
            # FlopCounterMode passes custom formulas the shapes (shape_wrapper), not tensors
            shape = lambda t: getattr(t, "shape", t)  # noqa: E731
            return sdpa_flop(shape(query), shape(key), shape(value))

        mapping = {}
        op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
        if op is not None:
            mapping[op] = cpu_sdpa
        self.mode = FlopCounterMode(display=False, custom_mapping=mapping)

    def __enter__(self) -> Any:
        return self.mode.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)


def run_flop_counter(model: torch.nn.Module, input_size: Sequence[int], *, device: str | torch.device = "meta") -> Any:
    """One forward pass at ``input_size`` (C, H, W), batch 1, under the FLOP counter.

    Returns the finished ``torch.utils.flop_counter.FlopCounterMode``: its
    ``get_total_flops()`` and per-module ``get_flop_counts()`` (2 flops per multiply-add).
    :func:`count_macs` and :mod:`visionzoo.analysis.flops` both read it.
    """
    x = torch.zeros(1, *input_size, device=device)
    counter = _FlopCounter()
    with torch.no_grad(), counter as fc:
        model(x)
    return fc


def count_macs(model: torch.nn.Module, input_size: Sequence[int], *, device: str | torch.device = "meta") -> int:
    """Multiply-adds of one forward pass at ``input_size`` (C, H, W), batch 1."""
    return run_flop_counter(model, input_size, device=device).get_total_flops() // 2


_UNSET = object()
#: create_model's arguments at the values the papers' figures are for (and num_classes at the
#: variant's default: 1000 unless its default_cfg says otherwise)
_PLAIN_ARGS = {"in_chans": 3}


def _published_for(entry: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The registry's published figures of ``entry``, or only a note where ``overrides``
    change the network (any but dropout rates, and ``num_classes`` / ``in_chans`` at their
    defaults, 1000 (or the variant's) / 3):
    the paper's figures describe the default configuration."""
    plain = {**_PLAIN_ARGS, "num_classes": default_num_classes(entry.default_cfg)}
    changed = [f"{k}={v!r}" for k, v in overrides.items() if "drop" not in k and v != getattr(entry.config, k, plain.get(k, _UNSET))]
    if changed:
        return {"note": f"the paper's figures are for the default configuration; this one sets {', '.join(changed)}"}
    return dict(entry.published)


def _meta_model(name: str, **kwargs: Any) -> VisionModel:
    """``create_model`` on the meta device (no memory, no initialisation), in eval mode."""
    return create_model(name, device="meta", **kwargs).eval()


def infos_at_size(names: Sequence[str], img_size: int | Sequence[int] | None, unfit: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """:func:`model_info` of each name at ``img_size``. A model that cannot take that size raises,
    unless ``unfit`` is a list: it is then left out and ``(name, reason)`` appended there (the
    tables of ``visionzoo info PATTERN`` and ``flops --table`` list the models that can); where
    none of them can, the first one's error is raised."""
    infos, first = [], None
    for n in names:
        try:
            infos.append(model_info(n, img_size=img_size))
        except ValueError as e:
            if unfit is None or img_size is None:
                raise
            unfit.append((n, str(e)))
            first = first or e
    if first is not None and not infos:
        raise first
    return infos


def model_info(name: str, *, img_size: int | Sequence[int] | None = None, **overrides: Any) -> dict[str, Any]:
    """Size and cost of a registered model beside the paper's figures.

    The model is built on the meta device (no memory, no initialisation), so this is
    cheap even for the largest variants.

    Returns:
        dict with ``name``, ``family``, ``params``, ``gmacs`` (multiply-adds counted by
        torch.utils.flop_counter at the default or given input size), ``input_size``,
        ``published_params_m``, ``published_gmacs``, ``published_top1``, ``paper`` and
        ``published_input_size`` (the size the paper's figures are for: the entry's default).
        Where ``overrides`` change the network (any but dropout rates, and ``num_classes`` /
        ``in_chans`` at 1000 / 3), the published figures are None and ``published_note`` says
        what was changed: the paper's figures describe the default configuration.
    """
    entry = get_entry(name)
    model = _meta_model(entry.name, img_size=img_size, **overrides)
    input_size = model.default_cfg["input_size"]
    macs = count_macs(model, input_size)
    pub = _published_for(entry, overrides)
    return {
        "name": entry.name,
        "family": entry.family,
        "params": count_params(model),
        "gmacs": macs / 1e9,
        "input_size": tuple(input_size),
        "published_params_m": pub.get("params"),
        "published_gmacs": pub.get("gmacs"),
        "published_top1": pub.get("top1"),
        "published_note": pub.get("note"),
        "published_input_size": tuple(entry.default_cfg["input_size"]),
        "paper": entry.paper,
        "default_cfg": dict(model.default_cfg),
    }
