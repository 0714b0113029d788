"""Parameters grouped by depth, and layer-wise learning-rate decay.

Every model answers timm's ``group_matcher(coarse=False)``: a dict whose entries, in order,
are a regular expression or a list of ``(expression, suffix)`` pairs over parameter names. A
parameter's sort key is the ordinal of the first entry that matches it, the numbers its
expression captures (block and stage indices), then the suffix; keys ending in
:data:`MATCH_PREV_GROUP` join the group before them, and parameters no expression matches
(the classifier) sort last. Consecutive keys number the groups from 0 (the stem) up. The
format is timm's, so timm's optimizer factory reads these models too; the reading here is
this project's own.

Layer-wise decay (BEiT, section 2.5 of its fine-tuning recipe; used by MAE, ConvNeXt and
Swin fine-tuning) scales the learning rate of group ``i`` of ``n`` by ``decay ** (n - 1 - i)``:
the classifier learns at the full rate, the stem at the smallest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from typing import Any

from torch import Tensor, nn

__all__ = ["MATCH_PREV_GROUP", "layer_ids", "param_groups_layer_decay", "weight_decayed"]

#: a suffix that puts a parameter into the group before its own key (timm's value)
MATCH_PREV_GROUP = (99999,)


def _rules(spec: dict[str, Any]) -> list[tuple[re.Pattern, int, tuple]]:
    rules = []
    for ordinal, entry in enumerate(spec.values()):
        if entry is None:
            continue
        pairs = entry if isinstance(entry, (list, tuple)) else [(entry, None)]
        for pattern, suffix in pairs:
            rules.append((re.compile(pattern), ordinal, tuple(suffix or ())))
    return rules


def layer_ids(model: nn.Module, coarse: bool = False) -> dict[str, int]:
    """{parameter name: group id} from ``model.group_matcher(coarse)``: 0 for the stem, one id
    per block (per stage with ``coarse=True``) in the order of depth, the largest for the
    parameters no expression matches (the head)."""
    missing = ValueError(f"{type(model).__name__} has no group_matcher(): its parameters cannot be grouped by depth")
    if not callable(getattr(model, "group_matcher", None)):
        raise missing
    try:
        spec = model.group_matcher(coarse=coarse)
    except NotImplementedError:
        raise missing from None
    rules = _rules(spec)

    def key(name: str) -> tuple[float, ...]:
        for rx, ordinal, suffix in rules:
            m = rx.match(name)
            if m:
                return (float(ordinal), *(float(g) for g in m.groups() if g is not None), *map(float, suffix))
        return (math.inf,)

    keys = {name: key(name) for name, _ in model.named_parameters()}
    ids: dict[tuple[float, ...], int] = {}
    current = -1
    for k in sorted(set(keys.values())):
        if current < 0 or k[-1] != MATCH_PREV_GROUP[0]:
            current += 1
        ids[k] = current
    return {name: ids[k] for name, k in keys.items()}


def weight_decayed(model: nn.Module, no_weight_decay: Collection[str] = ()) -> Callable[[str, Tensor], bool]:
    """Whether weight decay applies to a parameter ``(name, tensor)`` of ``model``: not to 1-D
    tensors (biases, norms' scales) nor to the names of ``model.no_weight_decay()`` (position
    tables, tokens) and ``no_weight_decay``. A network inside ``model`` (a segmentation model's
    backbone) adds its own ``no_weight_decay()``, under its prefix."""
    skip = set(no_weight_decay)
    for prefix, m in model.named_modules():
        if callable(getattr(m, "no_weight_decay", None)):
            skip |= {f"{prefix}.{n}" if prefix else n for n in m.no_weight_decay()}
    return lambda name, p: p.ndim > 1 and name not in skip


def param_groups_layer_decay(
    model: nn.Module, weight_decay: float, layer_decay: float, no_weight_decay: Collection[str] = ()
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with layer-wise learning-rate decay.

    Each group has ``params``, ``weight_decay`` (0 for 1-D parameters, biases and norms, and for
    the names in ``no_weight_decay`` and the model's ``no_weight_decay()``) and ``lr_scale``,
    ``layer_decay ** (deepest id - id)`` (:func:`layer_ids`); the caller multiplies its learning
    rate by ``lr_scale``. Parameters that do not require grad are left out.
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    ids = layer_ids(model)
    deepest = max(ids.values(), default=0)
    decayed = weight_decayed(model, no_weight_decay)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = decayed(name, p)
        i = ids[name]
        group = groups.setdefault((i, decays), {
            "params": [], "weight_decay": weight_decay if decays else 0.0, "lr_scale": layer_decay ** (deepest - i), "layer_id": i,
        })
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]
