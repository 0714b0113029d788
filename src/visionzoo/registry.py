"""Model registry: name -> (family, model class, configuration, default preprocessing).

Families register their variant table once, at import of their module::

    register_family("swin", SwinTransformer, VARIANTS, default_cfgs=..., published=...)

Names follow timm where timm has the architecture. Aliases (torchvision's names, say) map
to a registered name.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INCEPTION_MEAN",
    "INCEPTION_STD",
    "ModelEntry",
    "UnknownModelError",
    "default_cfg",
    "get_entry",
    "is_model",
    "list_models",
    "register_alias",
    "register_family",
    "register_model",
    "split_tag",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's (Radford et al.) and EVA-CLIP's
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class UnknownModelError(KeyError, ValueError):
    """A model name that is not registered; the message names the closest ones or, where it
    has none to offer (``listing=True``), where every name is listed: ``list_models()`` in
    Python, ``visionzoo list`` on the command line (:meth:`message`)."""

    def __init__(self, message: str, listing: bool = False) -> None:
        super().__init__(message, listing)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message("visionzoo.list_models()")

    def message(self, listing: str) -> str:
        """The message, pointing to ``listing`` for the names where it offers none."""
        return f"{self.args[0]}; see {listing}" if self.args[1] else str(self.args[0])


def default_num_classes(cfg: Mapping[str, Any]) -> int:
    """The class count of a variant's default weights (timm's ``pretrained_cfg["num_classes"]``:
    0 for a backbone released without a classifier), 1000 where its ``default_cfg`` gives none."""
    return int(cfg.get("num_classes", 1000))


def default_cfg(
    input_size: int | tuple[int, int] = 224,
    *,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    interpolation: str = "bicubic",
    crop_pct: float = 0.875,
    first_conv: str = "",
    classifier: str | tuple[str, ...] = "head",
    **extra: Any,
) -> dict[str, Any]:
    """Preprocessing and layout metadata of a variant (timm's ``pretrained_cfg`` keys).

    ``first_conv`` and ``classifier`` name the modules that ``load_checkpoint`` adapts to
    another ``in_chans`` or drops for another ``num_classes``.
    """
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    return {
        "input_size": (3, *input_size),
        "mean": mean,
        "std": std,
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "first_conv": first_conv,
        "classifier": classifier,
        **extra,
    }


@dataclass(frozen=True)
class ModelEntry:
    """One registered variant."""

    name: str
    family: str
    model_cls: Callable[..., Any]
    config: Any
    default_cfg: Mapping[str, Any]
    published: Mapping[str, Any] = field(default_factory=dict)
    paper: str = ""
    #: the family's ``default_cfg`` as a function of the configuration, where it depends on it
    #: (EfficientNet's ``resolution``): ``create_model`` applies it to an overridden configuration
    default_cfg_for: Callable[[Any], Mapping[str, Any]] | None = None


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def register_model(
    name: str,
    *,
    family: str,
    model_cls: Callable[..., Any],
    config: Any,
    default_cfg: Mapping[str, Any],
    published: Mapping[str, Any] | None = None,
    paper: str = "",
    default_cfg_for: Callable[[Any], Mapping[str, Any]] | None = None,
) -> ModelEntry:
    """Register one variant; a name registered twice is an error (two families clashing)."""
    if name in _REGISTRY or name in _ALIASES:
        raise ValueError(f"model name {name!r} is registered twice")
    entry = ModelEntry(name, family, model_cls, config, dict(default_cfg), dict(published or {}), paper, default_cfg_for)
    _REGISTRY[name] = entry
    return entry


def register_family(
    family: str,
    model_cls: Callable[..., Any],
    variants: Mapping[str, Any],
    *,
    default_cfgs: Mapping[str, Mapping[str, Any]] | Callable[[str, Any], Mapping[str, Any]],
    published: Mapping[str, Mapping[str, Any]] | None = None,
    paper: str = "",
) -> None:
    """Register a family's table of variants.

    Args:
        family: family key (also the key of its checkpoint converters).
        model_cls: called as ``model_cls(config, num_classes=, in_chans=, img_size=, drop_path_rate=)``.
        variants: name -> configuration (a frozen dataclass).
        default_cfgs: name -> :func:`default_cfg` dict, or a function (name, config) -> dict.
        published: name -> the paper's figures (``params`` in M, ``gmacs``, ``top1``, ``note``).
        paper: citation shown by ``visionzoo info``.
    """
    published = published or {}
    for name, cfg in variants.items():
        dcfg = default_cfgs(name, cfg) if callable(default_cfgs) else default_cfgs[name]
        register_model(
            name, family=family, model_cls=model_cls, config=cfg, default_cfg=dcfg,
            published=published.get(name), paper=paper,
            default_cfg_for=functools.partial(default_cfgs, name) if callable(default_cfgs) else None,
        )


def register_alias(alias: str, name: str) -> None:
    """Make ``alias`` (for example torchvision's name) resolve to the registered ``name``."""
    if alias in _REGISTRY or alias in _ALIASES:
        raise ValueError(f"model name {alias!r} is registered twice")
    _ALIASES[alias] = name


def _ensure_loaded() -> None:
    from . import models  # noqa: F401  (importing the package registers every family)


def get_entry(name: str) -> ModelEntry:
    """The entry of ``name`` (or of the name an alias points to).

    Raises:
        UnknownModelError: naming the closest registered names.
    """
    _ensure_loaded()
    if not isinstance(name, str):
        raise UnknownModelError(f"a model name must be a string, got {type(name).__name__}")
    if not name.strip():  # nothing to suggest from: difflib would offer the first names it meets
        raise UnknownModelError(f"the model name is empty ({name!r})", listing=True)
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        raise UnknownModelError(
            f"{name!r} names weights to download or a folder of timm's: visionzoo downloads nothing; give the "
            "architecture's name (and its pretrained tag if you like: 'resnet50.a1_in1k') with checkpoint=PATH to the weights file"
        )
    name = _ALIASES.get(name, name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    arch, tag = split_tag(name)
    if tag and _ALIASES.get(arch, arch) in _REGISTRY:  # timm's name of a weight set: its architecture
        return _REGISTRY[_ALIASES.get(arch, arch)]
    known = sorted(set(_REGISTRY) | set(_ALIASES))
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    if not close:  # try a prefix match before giving up: 'swin' -> swin_*
        close = [k for k in known if k.startswith(name.split("_")[0])][:5]
    if not close:
        raise UnknownModelError(f"unknown model {name!r}", listing=True)
    raise UnknownModelError(f"unknown model {name!r}; did you mean: {', '.join(close)}?")


def list_models(
    filter: str | Iterable[str] | None = "",
    module: str | Iterable[str] = "",
    pretrained: bool = False,
    exclude_filters: str | Iterable[str] = "",
    name_matches_cfg: bool = False,
    include_tags: bool | None = None,
    *,
    family: str | None = None,
    aliases: bool = False,
    sort: bool = True,
    pattern: str | None = None,
) -> list[str]:
    """Sorted registered names, with timm's arguments.

    Args:
        filter: an fnmatch pattern (``'vit*'``) or a list of them: the names any of them
            matches; empty or None: every name.
        module: a visionzoo family key (:func:`families`: ``'vit'``, ``'swin'``,
            ``'resnet'``, ...) or a list of them. timm's ``module`` is the Python module a
            model is defined in (``'vision_transformer'``, ``'swin_transformer'``,
            ``'maxxvit'`` for CoAtNet); visionzoo's families are its files' keys, so timm's
            module names are not taken: an unknown key is refused, naming the families.
        pretrained: timm's argument: visionzoo downloads no weights, so no model has any to
            list and ``True`` raises (``create_model(name, checkpoint=PATH)`` loads a timm,
            torchvision or official checkpoint); ``False`` does nothing.
        exclude_filters: an fnmatch pattern or a list of them: names any of them matches
            are left out.
        name_matches_cfg: timm's "only names that have their own configuration": every
            registered name has one, so ``True`` only leaves out the aliases.
        include_tags: timm's pretrained tags (``resnet50.a1_in1k``): visionzoo has none, so
            ``True`` is refused; None and False list the plain names.
        family: a family key, as ``module``.
        aliases: include aliases (torchvision's names, say) of the registered names.
        sort: ``False`` keeps the order in which families registered their variants (a
            family's own order, e.g. the ConvNeXt roadmap's steps).
        pattern: the name of ``filter`` before it took timm's name (one pattern), kept so
            that ``list_models(pattern='vit*')`` still works.

    Raises:
        TypeError: a filter, module or family of the wrong type.
        ValueError: ``pretrained=True``, ``include_tags=True``, an unknown family key.
    """
    include = _patterns("filter", filter, "an fnmatch pattern such as 'vit*'")
    if pattern is not None:
        if include:
            raise TypeError("list_models: give filter or pattern (its former name), not both")
        include = _patterns("pattern", pattern, "an fnmatch pattern such as 'vit*'")
    exclude = _patterns("exclude_filters", exclude_filters, "an fnmatch pattern such as '*_384'")
    keys = _patterns("module", module, "a family key such as 'vit'")
    if family is not None:
        if not isinstance(family, str):
            raise TypeError(f"list_models: family takes a family key such as 'vit' (a str) or None, got {type(family).__name__} {family!r}")
        keys.append(family)
    if pretrained:
        raise ValueError(
            "list_models(pretrained=True): visionzoo downloads no weights, so no model has pretrained weights to list; "
            "list_models() names every model, and create_model(name, checkpoint=PATH) loads a timm, torchvision or official checkpoint"
        )
    if include_tags:
        raise ValueError("list_models(include_tags=True): visionzoo's names carry no pretrained tags (timm's 'resnet50.a1_in1k'): it has no weights to tag")
    _ensure_loaded()
    unknown = [k for k in keys if k not in families()]
    if unknown:
        raise ValueError(f"list_models: unknown family {unknown[0]!r} (module and family take visionzoo's family keys, not timm's module names): one of {families()}")
    names = [n for n, e in _REGISTRY.items() if not keys or e.family in keys]
    if aliases and not name_matches_cfg:
        names += [a for a, n in _ALIASES.items() if not keys or _REGISTRY[n].family in keys]
    if include:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in include)]
    names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    return sorted(names) if sort else names


def _patterns(arg: str, value: object, takes: str) -> list[str]:
    """``value`` (a str, a list of them, or empty / None: none) as a list of non-empty strs."""
    if not value:
        return []
    if isinstance(value, str):
        return [value]
    items = list(value) if isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)) else None
    if items is None or not all(isinstance(v, str) for v in items):
        raise TypeError(f"list_models: {arg} takes {takes} (a str), a list of them or '', got {type(value).__name__} {value!r}")
    return [v for v in items if v]


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model name or an alias (timm's ``is_model``), with or
    without one of timm's pretrained tags (``resnet50.a1_in1k``): what :func:`visionzoo.create_model` accepts."""
    _ensure_loaded()
    if not isinstance(name, str):
        return False
    arch = split_tag(name)[0]
    return any(n in _REGISTRY or n in _ALIASES for n in (name, arch))


def split_tag(name: str) -> tuple[str, str]:
    """timm's model name with a pretrained tag, ``'resnet50.a1_in1k'``, as (architecture, tag);
    ``('resnet50', '')`` for a name without one."""
    arch, _, tag = name.partition(".")
    return arch, tag


def families() -> list[str]:
    """Sorted family keys."""
    _ensure_loaded()
    return sorted({e.family for e in _REGISTRY.values()})
