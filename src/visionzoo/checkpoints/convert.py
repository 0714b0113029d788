"""Key converters: other libraries' and authors' layouts -> visionzoo's.

Each family registers one small function per foreign layout::

    @register_converter("vit", "torchvision")
    def _from_torchvision(sd, model):
        ...
        return converted

visionzoo's own layout needs no converter. Where timm's layout equals ours, a family
registers ``identity`` for "timm" so that the source is accepted by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, nn

__all__ = ["SOURCES", "converters_for", "identity", "register_converter", "rename_keys"]

SOURCES = ("visionzoo", "timm", "torchvision", "official")

Converter = Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]
_CONVERTERS: dict[str, dict[str, Converter]] = {}


def register_converter(family: str, source: str) -> Callable[[Converter], Converter]:
    """Decorator registering ``fn(state_dict, model) -> state_dict`` for (family, source)."""
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
