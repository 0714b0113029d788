"""Where a model's multiply-adds go: per stage and per kind of layer.

The counts come from the same counter as :func:`visionzoo.model_info` (``torch.utils.
flop_counter`` with scaled dot-product attention counted on every device, see
:func:`visionzoo.factory.run_flop_counter`), so the breakdown always sums to the
``gmacs`` that ``model_info`` reports. The counter records, for every module, the flops
of each operator run inside it; an operator is attributed to the innermost module that
ran it (a module's own count minus its children's).

Stages follow the model's feature maps (``feature_info``, through ``level_ends``, as
:func:`visionzoo.detection.backbone_levels` splits a backbone): a stage holds the modules
defined after the previous map's module up to its own (ResNet's ``layer2`` with its
downsampling, DenseNet's ``denseblock2`` with ``transition1`` before it, VGG's layers between
two pools). The modules before the first map's module are a stem row when that module runs
multiply-adds itself (ConvNeXt's ``stem``, Swin's ``patch_embed``); when it runs none, the
map is the stem's own output (ResNet's ``act1``) and the stem is the first stage. Modules
after the last map are the head row. Where every block is a map (ViT, DeiT, ConvMixer:
``block_features``), the blocks make one row: they cost the same, and a row each would
only repeat one number.

Kinds of layer:

* ``convolution``: convolution operators, wherever they are;
* ``attention``: the token products of attention modules (q k^T, attention @ v, fused
  scaled-dot-product attention, relative-position products);
* ``attention_proj``: the linear projections of attention modules (qkv, output);
* ``mlp``: linear layers of MLP / feed-forward blocks;
* ``norm``: operators inside normalisation layers;
* ``other``: everything else (classifier heads, patch merging, ...).

Only matrix products and convolutions are multiply-adds in this count (as in the
papers' GMACs); norms, activations and softmax contribute nothing.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from torch import nn

__all__ = ["LAYER_KINDS", "flops_breakdown", "flops_table"]

LAYER_KINDS = ("attention", "attention_proj", "mlp", "convolution", "norm", "other")

_ATTN = re.compile(r"attention|attn", re.IGNORECASE)
_MLP = re.compile(r"mlp|feedforward|ffn", re.IGNORECASE)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, _NORMS) or type(m).__name__.lower().endswith("norm") or "norm2d" in type(m).__name__.lower()


def _kind(op: str, chain: Sequence[tuple[str, nn.Module]]) -> str:
    """Kind of an operator run in the innermost module of ``chain`` ((name, module) root first)."""
    if "conv" in op:
        return "convolution"
    inner = chain[-1][1]
    for name, m in reversed(chain[1:]):
        if _ATTN.search(type(m).__name__) or _ATTN.fullmatch(name):
            # a weighted layer inside the attention module (nn.Linear, or a 1x1 convolution run
            # as a matmul) is a projection; products of activations are the token products
            return "attention_proj" if inner is not m and isinstance(inner._parameters.get("weight"), nn.Parameter) else "attention"
        if _MLP.search(type(m).__name__) or _MLP.fullmatch(name):
            return "mlp"
    if isinstance(inner, nn.modules.conv._ConvNd):  # a convolution run as a matmul (1x1 over tokens)
        return "convolution"
    if _is_norm(inner):
        return "norm"
    return "other"


def _exclusive_counts(counts: dict[str, dict[Any, int]], root: str) -> dict[str, dict[str, int]]:
    """Module path (relative to the model, '' for the model) -> op name -> flops of that module alone.

    The counter adds an operator to every module active when it ran; a module's own share
    is its count minus those of the modules directly below it. Containers whose forward is
    never called (a ``ModuleList`` indexed by its parent) have no count, so "directly below"
    means: the nearest ancestor that has one.
    """
    names = [n for n in counts if n == root or n.startswith(root + ".")]
    present = set(names)
    own = {n: defaultdict(int, {str(op): v for op, v in counts[n].items()}) for n in names}
    for c in names:
        if c == root:
            continue
        parent = c.rsplit(".", 1)[0]
        while parent not in present and "." in parent:
            parent = parent.rsplit(".", 1)[0]
        if parent in present:
            for op, v in counts[c].items():
                own[parent][str(op)] -= v
    return {
        (n[len(root) + 1 :] if n != root else ""): {op: v for op, v in ops.items() if v} for n, ops in own.items()
    }


def _label(items: list[str], macs: dict[str, int], tap: str | None) -> str:
    """A row's name from the modules it wholly holds (``items``, in network order).

    Numbered siblings read as a range (``features.5-9``); otherwise the modules that run
    multiply-adds are named: one by its path, two as the larger (or the one holding the
    feature map) with the other in parentheses, three or more as ``first … last``.
    """
    parent = items[0].rpartition(".")[0]
    if len(items) > 1 and all(i.rpartition(".")[0] == parent and i.rpartition(".")[2].isdigit() for i in items):
        return f"{parent}.{items[0].rpartition('.')[2]}-{items[-1].rpartition('.')[2]}"
    named = [i for i in items if macs.get(i)] or items

    def short(i: str) -> str:  # drop the prefix the main name already shows
        return i[len(parent) + 1 :] if parent and i.startswith(parent + ".") else i

    if len(named) == 1:
        return named[0]
    if len(named) == 2:
        main = next((i for i in named if tap is not None and (tap == i or tap.startswith(i + "."))), max(named, key=lambda i: macs[i]))
        return f"{main} (+ {short(next(i for i in named if i != main))})"
    return f"{named[0]} … {short(named[-1])}"


def _stage_rows(model: nn.Module, own: dict[str, int]) -> tuple[list[tuple[str, list[int]]], dict[str, str]]:
    """The stage rows of ``model`` and the row of each module path that runs operators.

    ``own``: module path -> multiply-adds run by that module alone. Returns ``[(label,
    feature_info indices the row ends), ...]`` in network order and {module path: label};
    a module that spans rows (the model itself, a container cut by a feature map) maps to
    ``"(model)"``. See :func:`flops_breakdown` for the rows.
    """
    names = [n for n, _ in model.named_modules()]  # definition order, the root first
    pos = {n: i for i, n in enumerate(names)}
    last = {}  # path -> position of its last descendant
    for i, n in enumerate(names):
        parts = n.split(".") if n else []
        for k in range(len(parts) + 1):
            last[".".join(parts[:k])] = i
    macs: dict[str, int] = defaultdict(int)  # path -> multiply-adds of its subtree
    for n, v in own.items():
        parts = n.split(".") if n else []
        for k in range(len(parts) + 1):
            macs[".".join(parts[:k])] += v
    level_ends = getattr(model, "level_ends", None)
    taps = [t for t in (level_ends() if callable(level_ends) else []) if t in pos]
    if taps:
        ends = [last[t] for t in taps]
        for k in range(1, len(ends)):  # a level cannot end before the one above it
            ends[k] = max(ends[k], ends[k - 1])
        levels = [[k] for k in range(len(taps))]
        first = taps[0]  # the first stage starts where the outermost module beginning with its map's module starts
        if getattr(model, "block_features", False):  # every block is a map: the blocks make one row
            levels, ends = [list(range(len(taps)))], [ends[-1]]
            parent = first.rpartition(".")[0]  # from the first block, also where the maps taken start later (features_only)
            first = names[pos[parent] + 1] if parent else first
        while "." in first and pos[first] == pos[first.rpartition(".")[0]] + 1:
            first = first.rpartition(".")[0]
        # modules before the first map's own module are a stem row of their own, unless that
        # module runs nothing (ResNet's act1, DenseNet's relu0: the map is the stem's output)
        stem = pos[first] > 1 and macs.get(taps[0], 0) > 0
        bounds = ([(1, pos[first] - 1, [], None)] if stem else []) + [
            ((ends[k - 1] + 1) if k else (pos[first] if stem else 1), ends[k], lv, taps[lv[-1]]) for k, lv in enumerate(levels)
        ]
        if ends[-1] < len(names) - 1:
            bounds.append((ends[-1] + 1, len(names) - 1, [], None))
    else:  # a model without feature maps: its top-level children
        bounds = [(pos[n], last[n], [], None) for n, _ in model.named_children()]
    rows, row_of = [], {}
    for lo, hi, lv, tap in bounds:
        inside = [n for n in names[lo : hi + 1] if last[n] <= hi]
        items = [n for n in inside if n.rpartition(".")[0] not in inside]
        if not items:
            continue
        label = _label(items, macs, tap)
        while label in row_of.values() or label == "(model)":
            label += "'"
        rows.append((label, lv))
        row_of.update({n: label for n in inside})
    for n in own:  # a module the named_modules walk does not list (a shared module's alias): its parent's row
        p = n
        while p not in pos and p:
            p = p.rpartition(".")[0]
        row_of.setdefault(n, row_of.get(p, "(model)"))
    return rows, row_of


def _breakdown(model: nn.Module, fc: Any) -> tuple[dict[str, float], dict[str, list[int]], dict[str, float]]:
    counts = fc.get_flop_counts()
    root = type(model).__name__
    excl = _exclusive_counts(counts, root)
    rows, row_of = _stage_rows(model, {path: sum(ops.values()) for path, ops in excl.items()})
    stages: dict[str, int] = defaultdict(int)
    kinds: dict[str, int] = {k: 0 for k in LAYER_KINDS}
    for path, ops in excl.items():
        parts = path.split(".") if path else []
        chain = [("", model)]
        m = model
        for p in parts:
            m = m.get_submodule(p)
            chain.append((p, m))
        for op, flops in ops.items():
            stages[row_of.get(path, "(model)")] += flops
            kinds[_kind(op, chain)] += flops
    # every row that ends a feature map is shown, even at 0 (VGG's last max-pool)
    stages_g = {s: stages[s] / 2e9 for s, lv in rows if lv or stages.get(s)}
    if stages.get("(model)"):
        stages_g["(model)"] = stages["(model)"] / 2e9
    levels = {s: lv for s, lv in rows if s in stages_g}
    return stages_g, levels, {k: v / 2e9 for k, v in kinds.items()}


def flops_breakdown(name: str, *, img_size: int | Sequence[int] | None = None, **overrides: Any) -> dict[str, Any]:
    """Multiply-adds of a registered model, total and split by stage and kind of layer.

    The model is built on the meta device, as in :func:`visionzoo.model_info`.

    Returns:
        dict with ``name``, ``params``, ``gmacs`` (the total, equal to ``model_info``'s),
        ``input_size``, ``stages`` (row -> GMACs, in network order: the stem where it is
        a row of its own, one row per feature map, the head; see the module docstring. A
        row is named by the modules it holds: one path (``layer3``, ``stages.2``), numbered
        siblings as a range (``features.5-9``), else the modules that run multiply-adds,
        ``features.denseblock2 (+ transition1)`` or ``Mixed_6a … Mixed_6e``. ``(model)``,
        where present, holds operators run by a module spanning several rows, the model
        itself included), ``stage_levels`` (row -> the ``feature_info`` indices whose maps
        the row ends: ``[2]``, all of them for ViT's ``blocks``, ``[]`` for stem and head),
        ``kinds`` (:data:`LAYER_KINDS` -> GMACs) and ``published`` (the registry's
        figures, for ``published_input_size``; where ``overrides`` change the network, only
        a ``note`` saying so, as in ``model_info``). The rows, as the kinds, sum to ``gmacs``.
    """
    from ..base import count_params
    from ..factory import _meta_model, _published_for, run_flop_counter
    from ..registry import get_entry

    entry = get_entry(name)
    model = _meta_model(entry.name, img_size=img_size, **overrides)
    input_size = tuple(model.default_cfg["input_size"])
    fc = run_flop_counter(model, input_size)
    stages, levels, kinds = _breakdown(model, fc)
    return {
        "name": entry.name,
        "params": count_params(model),
        "gmacs": fc.get_total_flops() // 2 / 1e9,
        "input_size": input_size,
        "stages": stages,
        "stage_levels": levels,
        "kinds": kinds,
        "published": _published_for(entry, overrides),
        "published_input_size": tuple(entry.default_cfg["input_size"]),
    }


def flops_table(pattern: str | None = None, *, img_size: int | Sequence[int] | None = None, unfit: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """One row per registered model matching ``pattern`` (fnmatch): counted and published figures.
    A model that cannot take ``img_size`` raises ValueError, unless ``unfit`` is a list: it is
    then left out, and ``(name, reason)`` appended there (where none can, the first one raises).

    Returns:
        list of dicts with ``name``, ``params_m``, ``gmacs``, ``input_size``,
        ``published_params_m``, ``published_gmacs``, ``published_top1``,
        ``published_input_size``.
    """
    from ..factory import infos_at_size
    from ..registry import list_models

    rows = []
    for info in infos_at_size(list_models(pattern), img_size, unfit):
        rows.append({
            "name": info["name"],
            "params_m": info["params"] / 1e6,
            "gmacs": info["gmacs"],
            "input_size": info["input_size"],
            "published_params_m": info["published_params_m"],
            "published_gmacs": info["published_gmacs"],
            "published_top1": info["published_top1"],
            "published_input_size": info["published_input_size"],
        })
    return rows

