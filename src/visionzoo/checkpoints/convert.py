"""Key converters: other libraries' and authors' layouts -> visionzoo's.

Each family registers one small function per foreign layout::

    @register_converter("vit", "torchvision")
    def _from_torchvision(sd, model):
        ...
        return converted

visionzoo's own layout needs no converter. Where timm's layout equals ours, a family
registers ``identity`` for "timm" so that the source is accepted by name.

A converter never changes the model: ``load_checkpoint`` runs every converter of a family
to detect the layout, and a checkpoint may still be refused afterwards. Where a layout's
weights need another configuration than the model's (EfficientNet's TensorFlow numerics),
the converter returns ``(state_dict, {field: value})``; ``load_checkpoint`` applies the
changes with the model's ``reconfigure`` once every check has passed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, nn

__all__ = ["SOURCES", "ConfigChanges", "converters_for", "identity", "register_converter", "rename_keys", "split_converted"]

SOURCES = ("visionzoo", "timm", "torchvision", "official")

ConfigChanges = dict[str, Any]
Converter = Callable[[dict[str, Tensor], nn.Module], "dict[str, Tensor] | tuple[dict[str, Tensor], ConfigChanges]"]
_CONVERTERS: dict[str, dict[str, Converter]] = {}


def register_converter(family: str, source: str) -> Callable[[Converter], Converter]:
    """Decorator registering ``fn(state_dict, model) -> state_dict`` (or ``(state_dict,
    config_changes)``) for (family, source)."""
    if source not in SOURCES[1:]:
        raise ValueError(f"unknown checkpoint source {source!r}; one of {SOURCES[1:]}")

    def deco(fn: Converter) -> Converter:
        table = _CONVERTERS.setdefault(family, {})
        if source in table:
            raise ValueError(f"a {source} converter for {family} is registered twice")
        table[source] = fn
        return fn

    return deco


def identity(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """For layouts equal to visionzoo's."""
    return dict(sd)


def split_converted(out: dict[str, Tensor] | tuple[dict[str, Tensor], ConfigChanges]) -> tuple[dict[str, Tensor], ConfigChanges]:
    """A converter's result as (state dict, configuration changes, {} when none)."""
    if isinstance(out, tuple):
        sd, changes = out
        return sd, dict(changes)
    return out, {}


def converters_for(family: str) -> dict[str, Converter]:
    """{source: converter} for a family, visionzoo's own layout first."""
    from .. import models  # noqa: F401  (families register their converters at import)

    return {"visionzoo": identity, **_CONVERTERS.get(family, {})}


def rename_keys(sd: dict[str, Any], rules: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Apply regex substitutions, in order, to every key."""
    compiled = [(re.compile(p), r) for p, r in rules]
    out = {}
    for k, v in sd.items():
        for p, r in compiled:
            k = p.sub(r, k)
        out[k] = v
    return out
