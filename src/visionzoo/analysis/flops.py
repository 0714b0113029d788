"""Where a model's multiply-adds go: per stage and per kind of layer.

The counts come from the same counter as :func:`visionzoo.model_info` (``torch.utils.
flop_counter`` with scaled dot-product attention counted on every device, see
:func:`visionzoo.factory.run_flop_counter`), so the breakdown always sums to the
``gmacs`` that ``model_info`` reports. The counter records, for every module, the flops
of each operator run inside it; an operator is attributed to the innermost module that
ran it (a module's own count minus its children's).

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


def _stage_paths(model: nn.Module) -> list[str]:
    """Top-level children; a container of 2 to 8 blocks (``stages``) is split into its items."""
    out = []
    for name, child in model.named_children():
        items = list(child.named_children()) if isinstance(child, (nn.Sequential, nn.ModuleList)) else []
        if 2 <= len(items) <= 8 and all(any(True for _ in m.children()) for _, m in items):
            out += [f"{name}.{sub}" for sub, _ in items]
        else:
            out.append(name)
    return out


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


def _breakdown(model: nn.Module, fc: Any) -> tuple[dict[str, float], dict[str, float]]:
    counts = fc.get_flop_counts()
    root = type(model).__name__
    excl = _exclusive_counts(counts, root)
    stage_of = _stage_paths(model)
    stages: dict[str, int] = defaultdict(int)
    kinds: dict[str, int] = {k: 0 for k in LAYER_KINDS}
    for path, ops in excl.items():
        parts = path.split(".") if path else []
        chain = [("", model)]
        m = model
        for p in parts:
            m = m.get_submodule(p)
            chain.append((p, m))
        stage = next((s for s in (".".join(parts[:2]), parts[0] if parts else "") if s in stage_of), "(model)")
        for op, flops in ops.items():
            stages[stage] += flops
            kinds[_kind(op, chain)] += flops
    order = list(stage_of) + ["(model)"]
    stages_g = {s: stages[s] / 2e9 for s in order if stages.get(s)}
    return stages_g, {k: v / 2e9 for k, v in kinds.items()}


def flops_breakdown(name: str, *, img_size: int | Sequence[int] | None = None, **overrides: Any) -> dict[str, Any]:
    """Multiply-adds of a registered model, total and split by stage and kind of layer.

    The model is built on the meta device, as in :func:`visionzoo.model_info`.

    Returns:
        dict with ``name``, ``params``, ``gmacs`` (the total, equal to ``model_info``'s),
        ``input_size``, ``stages`` (stage path -> GMACs: the model's top-level children,
        containers of 2-8 stages split into ``stages.0``, ``stages.1``, ...; ``(model)`` for
        operators run by the model itself), ``kinds`` (:data:`LAYER_KINDS` -> GMACs) and
        ``published`` (the registry's figures, for ``published_input_size``).
    """
    from ..base import count_params
    from ..factory import _meta_model, run_flop_counter
    from ..registry import get_entry

    entry = get_entry(name)
    model = _meta_model(entry.name, img_size=img_size, **overrides)
    input_size = tuple(model.default_cfg["input_size"])
    fc = run_flop_counter(model, input_size)
    stages, kinds = _breakdown(model, fc)
    return {
        "name": entry.name,
        "params": count_params(model),
        "gmacs": fc.get_total_flops() // 2 / 1e9,
        "input_size": input_size,
        "stages": stages,
        "kinds": kinds,
        "published": dict(entry.published),
        "published_input_size": tuple(entry.default_cfg["input_size"]),
    }


def flops_table(pattern: str | None = None, *, img_size: int | Sequence[int] | None = None) -> list[dict[str, Any]]:
    """One row per registered model matching ``pattern`` (fnmatch): counted and published figures.

    Returns:
        list of dicts with ``name``, ``params_m``, ``gmacs``, ``input_size``,
        ``published_params_m``, ``published_gmacs``, ``published_top1``,
        ``published_input_size``.
    """
    from ..factory import model_info
    from ..registry import list_models

    rows = []
    for n in list_models(pattern):
        info = model_info(n, img_size=img_size)
        rows.append({
            "name": n,
            "params_m": info["params"] / 1e6,
            "gmacs": info["gmacs"],
            "input_size": info["input_size"],
            "published_params_m": info["published_params_m"],
            "published_gmacs": info["published_gmacs"],
            "published_top1": info["published_top1"],
            "published_input_size": info["published_input_size"],
        })
    return rows

