"""The interface every visionzoo classifier implements.

A family subclasses :class:`VisionModel` and provides

* ``forward_features(x)``: the unpooled output of the last stage (tokens or a map);
* ``pooled_head(x, pre_logits=False)``: pooling, final norm where it belongs, classifier
  (behind timm's ``forward_head``), and ``unpooled_head(x)`` where a model built with
  ``global_pool=''`` returns more than ``forward_features`` (a head norm applied per position);
* ``reset_head(num_classes)``: a new classifier (behind timm's ``reset_classifier``);
* ``intermediate_maps(x, indices, with_features=False)``: NCHW maps of the stages in
  ``indices`` (behind ``features_only`` and timm's ``forward_intermediates``), and
  ``final_norm`` where ``forward_features`` ends with a norm;
* ``feature_info``: one :class:`FeatureInfo` per stage (channels, stride, module name);
* ``num_features``, ``num_classes``, ``in_chans`` (and ``head_hidden_size`` where the head has
  hidden layers);
* ``grad_checkpoint_units``: the blocks :meth:`~VisionModel.set_grad_checkpointing` recomputes.

The base class turns these into ``forward`` and ``features_only`` behaviour, and checks
inputs once, cheaply, at the stem (:meth:`check_input`).
"""

from __future__ import annotations

import functools
import inspect
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, is_dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from .layers.helpers import as_int, channels_last_map, check_int, classifier, clear_derived_caches, note_input, plain_cpu_eager, to_2tuple, to_channels_last, to_contiguous
from .layers.pooling import global_pool_2d

__all__ = ["FeatureInfo", "FeatureInfoList", "InputError", "VisionModel", "check_image_batch", "count", "evenly_spaced", "nonempty_size", "plain_layout", "tap_outputs"]


class InputError(ValueError):
    """A tensor a model cannot take; the message says what it got and what it expects."""


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map of ``features_only``: channels, stride w.r.t. the input, module."""

    num_chs: int
    reduction: int
    module: str

    def __getitem__(self, key: str) -> Any:  # timm-style dict access: info["num_chs"]
        return getattr(self, key)


class FeatureInfoList(list):
    """A model's ``feature_info``: a list of :class:`FeatureInfo`, with the accessors of timm's
    ``feature_info`` (``backbone.feature_info.channels()`` and the like, as FPN code calls them).

    A ``features_only`` model lists the maps it returns; ``out_indices`` are their indices
    among all the model's feature maps. As in timm, the accessors' ``idx`` counts in that full
    list: None means the maps returned, an int or a sequence of ints the maps at those indices.
    """

    def __init__(self, infos: Iterable[FeatureInfo] = (), out_indices: Sequence[int] | None = None, every: Sequence[FeatureInfo] | None = None) -> None:
        super().__init__(infos)
        self._out_indices = None if out_indices is None else tuple(out_indices)
        self._every = every  # all the model's feature maps, where this lists some of them

    @property
    def out_indices(self) -> tuple[int, ...]:
        return tuple(range(len(self))) if self._out_indices is None else self._out_indices

    def _select(self, idx: int | Sequence[int] | None) -> FeatureInfo | list[FeatureInfo]:
        every = self if self._every is None else self._every
        if idx is None:
            return list(self)
        if isinstance(idx, (tuple, list)):
            return [every[i] for i in idx]
        return every[idx]

    def _each(self, fn: Callable[[FeatureInfo], Any], idx: int | Sequence[int] | None) -> Any:
        """``fn`` of the entry ``idx`` picks, or the list of ``fn`` of each entry it picks."""
        picked = self._select(idx)
        return [fn(info) for info in picked] if isinstance(picked, list) else fn(picked)

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        return self._each(lambda info: info[key], idx)

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None) -> Any:
        """Entries as dicts of ``keys`` (default all), as timm's."""
        keys = ("num_chs", "reduction", "module") if keys is None else tuple(keys)
        return self._each(lambda info: {k: info[k] for k in keys}, idx)

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)


class _CheckpointedForward:
    """The forward of a block under gradient checkpointing (:meth:`VisionModel.set_grad_checkpointing`):
    its class's forward, run through ``torch.utils.checkpoint`` while autograd records.

    The backward pass runs the block's forward again; its BatchNorms normalise with the batch's
    statistics then, as the first time, but do not fold them into the running statistics a
    second time (they would count every batch twice). Under torch.compile the recomputation
    is the compiler's, which does not repeat the updates."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        forward = type(self.module).forward
        if torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            if not torch.compiler.is_compiling() and any(m.training for m in self.norms):
                kwargs["context_fn"] = lambda: (nullcontext(), _running_stats_frozen(self.norms))
            return checkpoint(forward, self.module, *args, use_reentrant=False, **kwargs)
        return forward(self.module, *args, **kwargs)


@contextmanager
def _running_stats_frozen(norms: Sequence[nn.Module]) -> Iterator[None]:
    """Undo what the recomputation of a block in the backward pass adds to its BatchNorms' running statistics."""
    bufs = [b for m in norms if m.training for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    saved = [b.clone() for b in bufs]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(bufs, saved):
                b.copy_(s)


def _in_cpu_layout(forward_features: Callable[..., Any]) -> Callable[..., Any]:
    """A family's ``forward_features``, run on the layout of :meth:`VisionModel.cpu_layout` when
    a caller hands it a map in another (its maps then come back in the plain layout, as from
    ``forward``); a channels-last map, which is what ``forward`` passes on, goes straight in."""

    @functools.wraps(forward_features)
    def run(self: VisionModel, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        if not self.cpu_channels_last or not isinstance(x, Tensor) or channels_last_map(x):
            return forward_features(self, x, *args, **kwargs)
        x, channels_last = self.cpu_layout(x)
        out = forward_features(self, x, *args, **kwargs)
        return plain_layout(out) if channels_last else out

    run.in_cpu_layout = True
    return run


class VisionModel(nn.Module):
    """Base class of every visionzoo classifier (see module docstring)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("forward_features")
        if own is not None and not getattr(own, "in_cpu_layout", False):
            cls.forward_features = _in_cpu_layout(own)  # called directly, as fast as from forward

    family: str = ""
    #: spatial sides must be multiples of this (a patch size, the total stride of a
    #: windowed network); 1 when any size works.
    input_multiple: int = 1
    #: smallest spatial side the network can take.
    min_input_size: int = 1
    #: regular expressions, matched against whole module names, of the blocks that
    #: :meth:`set_grad_checkpointing` recomputes (the units of the main sequence, as timm
    #: checkpoints them); empty where the family has none worth it (VGG, as in timm)
    grad_checkpoint_units: tuple[str, ...] = ()
    #: run CPU inference in channels-last memory (convolutional families, where oneDNN's
    #: NHWC kernels beat its NCHW ones; see :meth:`cpu_layout`): ``forward``,
    #: ``forward_features`` and ``forward_intermediates``. An instance may turn it off.
    cpu_channels_last: bool = False
    #: the ``global_pool`` values the head takes besides ``''``: ``avg`` alone, or timm's four
    #: (:data:`~visionzoo.layers.POOL_TYPES`) in families whose head pools the map with
    #: :meth:`pool` and classifies :attr:`pooled_features` with one linear layer
    pool_types: tuple[str, ...] = ("avg",)
    #: the feature maps are the blocks' outputs, all at one stride (ViT, ConvMixer): ``features_only``
    #: takes the last three by default, as timm does, and dense heads four spread over the depth
    block_features: bool = False
    #: ``features_only`` and ``forward_intermediates`` return contiguous maps, as timm's ViT, Swin and
    #: CoAtNet do (``.view`` works on them), unless the input was channels-last: the maps then keep
    #: that layout. The dense heads, whose convolutions read either, turn it off to skip the copies.
    contiguous_maps: bool = True

    @classmethod
    def timm_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """``create_model``'s family options with timm's spellings of them turned into this
        family's configuration fields (ResNet's ``cardinality``, ``block_args``); as given by
        default. Raises ValueError for a timm spelling with a value the family does not build."""
        return options

    def __init__(self) -> None:
        super().__init__()
        self.features_only = False
        self.out_indices: tuple[int, ...] = ()
        #: state-dict keys that ``features_only`` pruned (head, final norm, later stages): a
        #: checkpoint of the whole network holds them, and ``load_checkpoint`` skips only those
        self.pruned_keys: frozenset[str] = frozenset()
        self._pruned_after: int | None = None  # the last feature map left by prune_intermediate_layers
        self.feature_info = FeatureInfoList()
        self.default_cfg: dict[str, Any] = {}
        self.model_name = ""
        self.in_chans = 3
        self.num_classes = 0
        self.num_features = 0  # channels of forward_features' output
        #: width of ``forward_head(x, pre_logits=True)`` (timm's), where it is not ``num_features``
        self._head_hidden_size: int | None = None
        #: timm's ``global_pool=''``: without a classifier, ``forward`` returns ``forward_features``
        self.unpooled = False
        self.global_pool = "avg"  # one of pool_types

    def pool(self, x: Tensor) -> Tensor:
        """The head's global pool of an NCHW map: (B, C), or (B, 2C) for ``catavgmax``."""
        return global_pool_2d(x, self.global_pool)

    @property
    def pooled_features(self) -> int:
        """Width of :meth:`pool`'s output: ``num_features``, twice that for ``catavgmax``."""
        return self.num_features * (2 if self.global_pool == "catavgmax" else 1)

    @property
    def head_hidden_size(self) -> int:
        """Width of the pooled features the classifier sees (``forward_head(x, pre_logits=True)``,
        and ``forward`` after ``reset_classifier(0)``): ``num_features`` unless the head has
        hidden layers of its own (VGG's fc6 / fc7), as timm's attribute."""
        return self.pooled_features if self._head_hidden_size is None else self._head_hidden_size

    @head_hidden_size.setter
    def head_hidden_size(self, width: int) -> None:
        self._head_hidden_size = width

    @property
    def feature_info(self) -> FeatureInfoList:
        """One :class:`FeatureInfo` per feature map (timm's ``feature_info``, with its accessors)."""
        return self._feature_info

    @feature_info.setter
    def feature_info(self, infos: Iterable[FeatureInfo]) -> None:  # a family may assign a plain list
        self._feature_info = infos if isinstance(infos, FeatureInfoList) else FeatureInfoList(infos)

    def train(self, mode: bool = True) -> VisionModel:
        """nn.Module's ``train`` / ``eval``, which also drop the weights cached for CPU
        inference (:func:`~visionzoo.layers.clear_derived_caches`): after weights were
        written through ``.data``, ``model.eval()`` makes the next call see them."""
        clear_derived_caches(self)
        return super().train(mode)

    # ---------------------------------------------------------------- interface
    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """timm's ``forward_head`` of ``forward_features``' output: :meth:`pooled_head`, or for a
        model without classifier and with ``global_pool=''`` what its ``forward`` returns, the
        unpooled features (:meth:`unpooled_head`), as timm's head then neither pools nor
        classifies (``pre_logits`` changes nothing there)."""
        if self._pruned_after is not None:  # pruned: no head, as timm's (reset to 0 classes, no pooling)
            return x
        return self.unpooled_head(x) if self.returns_unpooled else self.pooled_head(x, pre_logits)

    def pooled_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Default: ``self.head(x, pre_logits, self.global_pool)``, a head module that pools as
        :attr:`global_pool` says (and normalises) and classifies with ``head.fc``; families
        with another head override this."""
        return self.head(x, pre_logits, self.global_pool)

    def unpooled_head(self, x: Tensor) -> Tensor:
        """The head of a model built with timm's ``global_pool=''`` and no classifier, on
        ``forward_features``' output: by default the features themselves; a family whose head
        normalises (or projects) before it pools applies that per position, as timm does."""
        return x

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` (timm's method; PyTorch's default initialisation);
        0 removes it, and ``forward`` returns the pooled features. ``global_pool``: None keeps the pooling;
        otherwise as :meth:`set_global_pool` (``reset_classifier(0, '')``: unpooled features)."""
        check_int("num_classes", num_classes, 0)
        if global_pool is not None:
            self.set_global_pool(global_pool, num_classes)  # (checked before anything changes)
        self.num_classes = num_classes
        self.reset_head(num_classes)

    def set_global_pool(self, pool: str, num_classes: int | None = None) -> None:
        """timm's ``global_pool``: ``''`` makes ``forward`` return the unpooled features
        (:meth:`unpooled_head`), which needs a model without classifier (``num_classes`` 0,
        the model's own when None; timm's ViT and ConvNeXt would classify every position);
        ``'avg'`` is the family's own pooling, and
        families with ``pool_types`` also take timm's ``'max'``, ``'avgmax'`` and
        ``'catavgmax'`` (a new classifier when the pooled width changes). A family with other
        pools (ViT: ``'token'``) overrides this."""
        num_classes = self.num_classes if num_classes is None else num_classes
        if pool == "":
            if num_classes != 0:
                raise ValueError(f"{self._name()}: global_pool='' (no pooling) needs num_classes=0 (visionzoo's heads classify pooled features; "
                                 f"per-position logits are not built); got num_classes={num_classes}")
            self.unpooled = True
        elif pool in self.pool_types:
            width = self.pooled_features
            self.unpooled, self.global_pool = False, pool
            if self.pooled_features != width:
                self.reset_head(self.num_classes)
        else:
            takes = " or ".join(repr(p) for p in self.pool_types)
            raise ValueError(f"{self._name()}'s head takes global_pool {takes}, or '' with num_classes=0 (forward returns the unpooled features), got {pool!r}")

    def _name(self) -> str:
        return self.model_name or type(self).__name__

    def reset_head(self, num_classes: int) -> None:
        """Family hook of :meth:`reset_classifier`. Default: a new ``self.head.fc`` (an Identity
        for 0 classes); see :meth:`forward_head`."""
        self.head.fc = classifier(self.pooled_features, num_classes)

    def get_classifier(self) -> nn.Module | tuple[nn.Module, ...]:
        """The classifier module (timm's method): the one ``default_cfg["classifier"]`` names, or
        a tuple of them for a model with two heads (DeiT distilled: ``head``, ``head_dist``); an
        ``nn.Identity`` when the model has no classifier. Auxiliary heads (Inception's
        ``AuxLogits``, GoogLeNet's ``aux1`` / ``aux2``), which only training uses, are left out,
        as timm does."""
        spec = self.default_cfg.get("classifier", "head.fc")
        names = (spec,) if isinstance(spec, str) else tuple(spec)
        mods = tuple(self.get_submodule(n) for n in names if not n.lower().startswith("aux"))
        return mods[0] if len(mods) == 1 else mods

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        """Family hook: NCHW maps of the stages in ``indices`` (indices into ``feature_info``, in
        that order), running the network no further than the last of them; with
        ``with_features``, ``(maps, forward_features(x))`` from one pass through the whole network."""
        raise NotImplementedError

    def final_norm(self, feature_map: Tensor) -> Tensor:
        """Family hook of ``forward_intermediates(norm=True)``: the last stage's NCHW map with
        the normalisation ``forward_features`` ends with (identity where it ends with none)."""
        return feature_map

    def stopped_features(self, feature_map: Tensor) -> Tensor:
        """Family hook of ``forward_intermediates(stop_early=True)`` stopping before the last
        stage: the features returned beside the maps, the last map taken (NCHW) as it left its
        stage (the final norm fits the last stage only), in ``forward_features``' layout, as
        timm's CNNs return it."""
        return feature_map

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's method: ``(forward_features(x), maps)`` from one pass, or with
        ``intermediates_only`` the maps alone, the network run only as far as the last of them.

        Args:
            indices: which of the ``feature_info`` maps (timm's index space: stages, or blocks
                for ViT and ConvMixer): None all, an int n the last n, a sequence those (negative
                from the end). The maps come in network order, each once, as in timm.
            norm: the final norm of ``forward_features`` applied to the maps it fits (the last
                stage's; every block's for ViT), as in timm.
            stop_early: run the network no further than the last map taken, which is then the
                features returned (:meth:`stopped_features`), as timm's; without it the whole
                network runs for ``forward_features(x)``. ``intermediates_only`` always stops
                there.
            output_fmt: ``'NCHW'``, ``'NHWC'`` or ``'NLC'`` ((B, H*W, C) tokens).
            intermediates_only: return only the maps.
        """
        take, fmt = self._intermediates_request(indices, output_fmt, intermediates_only)
        x_in = x
        x, channels_last = self.cpu_layout(x)
        stop = stop_early and not intermediates_only and take[-1] < len(self.feature_info) - 1
        if intermediates_only or stop:
            maps, features = self.intermediate_maps(x, take), None
        else:
            maps, features = self.intermediate_maps(x, take, with_features=True)
        if stop:
            features = self.stopped_features(maps[-1])
        if norm and take[-1] == len(self.feature_info) - 1:
            maps[-1] = self.final_norm(maps[-1])
        maps = self._maps_out([fmt(m) for m in maps], x_in, channels_last, nchw=output_fmt == "NCHW")
        if features is not None and channels_last and not channels_last_map(x_in):  # as forward_features gives them
            features = plain_layout(features)
        return maps if intermediates_only else (features, maps)

    def _intermediates_request(self, indices: int | Sequence[int] | None, output_fmt: str, intermediates_only: bool) -> tuple[list[int], Callable[[Tensor], Tensor]]:
        """:meth:`forward_intermediates`' indices to take and the NCHW map -> ``output_fmt`` function."""
        if self.features_only:
            raise ValueError(f"{self._name()} was built with features_only=True: call it to get its maps (forward_intermediates needs the whole network)")
        fmt = _MAP_FORMATS.get(output_fmt)
        if fmt is None:
            raise ValueError(f"output_fmt must be one of {', '.join(map(repr, _MAP_FORMATS))}, got {output_fmt!r}")
        take = self.take_indices(indices)
        end = self._pruned_after
        if end is not None and (not intermediates_only or take[-1] > end):
            raise ValueError(
                f"{self._name()} was pruned after feature map {end} (prune_intermediate_layers): it gives maps 0..{end} "
                f"with intermediates_only=True, got indices {take} with intermediates_only={intermediates_only}"
            )
        return take, fmt

    def prune_intermediate_layers(self, indices: int | Sequence[int] | None = 1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """timm's method: drop the layers after the last of the feature maps ``indices`` (as
        :meth:`forward_intermediates` reads them) and the classifier; returns the indices, sorted.
        Afterwards ``forward_intermediates(x, indices, intermediates_only=True)`` gives those maps
        (and ``features_only``'s pruning is the same). ``prune_norm=False`` keeps the final norm
        for ``norm=True`` where its width is that of the last map left (ViT), and drops it
        otherwise, as timm; ``num_features`` becomes that map's width, and ``forward`` returns
        ``forward_features`` (no pooling, no classifier), as timm's. visionzoo always drops the
        classifier: ``prune_head=False`` is refused."""
        if not prune_head:
            raise ValueError(f"{self._name()}: prune_intermediate_layers drops the classifier with the layers after the last map; prune_head=False is not supported")
        take = self.take_indices(indices)
        norm = getattr(self, "norm", None)
        self.prune_for_features(take)
        width = self.feature_info[take[-1]].num_chs
        if isinstance(norm, nn.Module):  # a final norm sized for a stage that is gone goes, as in timm
            shape = getattr(norm, "normalized_shape", None) or (getattr(norm, "num_features", width),)
            self.norm = norm if not prune_norm and shape[-1] == width else nn.Identity()
        self.num_features = width  # forward_features now ends at that map, as timm's
        self._pruned_after = take[-1]
        return take

    def take_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        """timm's ``indices`` of :meth:`forward_intermediates` as sorted, distinct indices into
        ``feature_info``; a clear error for one out of range."""
        n = len(self.feature_info)
        if indices is None:
            return list(range(n))
        count = as_int(indices)
        if count is not None:
            if not 0 < count <= n:
                raise ValueError(f"indices={count} asks for the last {count} maps; {self._name()} has {n} (1..{n})")
            return list(range(n - count, n))
        if isinstance(indices, (str, bytes, bool)) or not isinstance(indices, Iterable):
            raise ValueError(f"indices takes None (all maps), a count n (the last n) or a sequence of indices, got {indices!r}")
        take = {self._feature_index(i) for i in indices}
        if not take:
            raise ValueError("indices is empty: give None (all maps), a count, or a sequence of indices")
        return sorted(take)

    def _feature_index(self, i: Any) -> int:
        """A feature-map index (negative from the end) as an index into ``feature_info``; a
        clear error for a non-integer or one out of range."""
        n, j = len(self.feature_info), as_int(i)
        if j is None:
            raise ValueError(f"feature indices are integers, got {i!r}")
        if not -n <= j < n:
            raise ValueError(f"feature index {j} is out of range: {self._name()} has {n} feature maps (0..{n - 1}, or -{n}..-1)")
        return j % n

    def level_ends(self) -> list[str]:
        """Per ``feature_info`` level, the module (named as in this model) that ends it in
        definition order: a level owns the modules defined after the previous level's end up
        to its own (:func:`visionzoo.detection.backbone_levels`, which freezes a fine-tuned
        detector's shallow levels, and :func:`visionzoo.analysis.flops_breakdown`'s stage rows). Default: each map's own module; a family whose maps are
        tapped from modules defined after the trunk (HRNet) names its trunk's stages."""
        return [fi.module for fi in self.feature_info]

    def default_out_indices(self) -> tuple[int, ...]:
        """Maps returned by ``features_only`` when no ``out_indices`` is given, as timm's: every
        stage, or for a family whose maps are its blocks' (``block_features``) the last three."""
        n = len(self.feature_info)
        return tuple(range(max(n - 3, 0), n)) if self.block_features else tuple(range(n))

    def dense_out_indices(self) -> tuple[int, ...]:
        """Maps the dense-prediction heads read by default (:mod:`visionzoo.detection`,
        :mod:`visionzoo.tasks.segmentation`): ``default_out_indices``, or for a family whose
        maps are its blocks' four evenly spaced blocks (2, 5, 8, 11 of 12), as ViTDet's and
        DPT's heads tap ViT."""
        return evenly_spaced(len(self.feature_info)) if self.block_features else self.default_out_indices()

    def prune_for_features(self, indices: Sequence[int]) -> None:
        """Drop modules that ``features_only`` never uses (head, final norm, later stages)."""
        self.reset_classifier(0)

    def adapt_state_dict(self, state_dict: dict[str, Tensor], source: VisionModel | None = None) -> dict[str, Tensor]:
        """Family hook of ``load_checkpoint``: resize position tables to this model's size.
        ``source``: the model ``state_dict`` comes from, where known (:meth:`set_input_size`):
        its sizes then replace those inferred from the tables' shapes (taken as square)."""
        return state_dict

    def set_input_size(self, img_size: int | Sequence[int] | None = None, **size_options: Any) -> None:
        """timm's method: make this model the one ``create_model`` builds for ``img_size``,
        keeping its trained values, in place.

        The parts that depend on the size (position embeddings and relative-position tables,
        Swin's windows, their index buffers and masks) become those of a model built for
        ``img_size``; the trained tables are resampled as :meth:`adapt_state_dict` resamples a
        checkpoint of another size when it loads (so the model equals one built for
        ``img_size`` that loaded this model's state dict). Every other parameter is kept as
        it is: an optimizer holding them still does, and the resized ones are new Parameters
        (``requires_grad``, device and dtype kept). ``default_cfg["input_size"]`` is updated.
        Families with nothing size-dependent (the CNNs) only update ``default_cfg``.

        ``size_options``: the family's own (Swin: ``window_size``, ``window_ratio``; ViT:
        ``patch_size``); others raise TypeError. Nothing is changed where the size or an option
        is refused (ValueError).
        """
        current = tuple(self.default_cfg.get("input_size", ())[1:])
        if img_size is None and not current:
            raise ValueError(f"{self._name()}: the size it was built for is unknown (no default_cfg['input_size']): give img_size")
        size = to_2tuple(img_size, "img_size") if img_size is not None else current
        if min(size) < 1:
            raise ValueError(f"{self._name()}: img_size must be positive, got {img_size!r}")
        takes = [k for k, v in inspect.signature(self.config_for_size).parameters.items() if v.kind is v.KEYWORD_ONLY]
        unknown = sorted(set(size_options) - set(takes))
        if unknown:
            raise TypeError(f"{self._name()}: set_input_size takes img_size{''.join(f', {k}' for k in takes)}; got {unknown}")
        cfg = self.config_for_size(size, current or size, **size_options)
        problem = self.size_problem(*size) if cfg == getattr(self, "cfg", None) else None  # (another patch size: the resized model's)
        if problem:
            raise ValueError(f"{self._name()} cannot take img_size {size[0]}x{size[1]}: it {problem}")
        if self.size_dependent:
            _resize_in_place(self, cfg, current or size, size)
        self.default_cfg = {**self.default_cfg, "input_size": (self.in_chans, *size)}

    #: built with parts whose shapes or values depend on ``img_size`` (:meth:`set_input_size`)
    size_dependent: bool = False

    def config_for_size(self, size: tuple[int, int], current: tuple[int, int]) -> Any:
        """Family hook of :meth:`set_input_size`: the configuration a model for ``size`` is built
        with (``current``: the size this one is for); a family's own options of
        ``set_input_size`` are its keyword-only arguments."""
        return getattr(self, "cfg", None)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of keeping its activations
        (timm's method; ``visionzoo train --grad-checkpointing``).

        With autograd on, every module named by ``grad_checkpoint_units`` runs under
        ``torch.utils.checkpoint`` (non-reentrant): the forward keeps only the blocks' inputs,
        and the backward runs each block again, about a third more compute for a fraction of
        the activation memory. Gradients are those of the plain model; random masks (dropout,
        drop path) are replayed. A BatchNorm inside a block in training updates its running
        statistics once a step, as in the plain model: what the recomputation adds is undone
        (timm's checkpointing counts each batch twice), except under ``torch.compile``, where
        the recomputation updates them again as in timm. Parameter names and checkpoints are
        unchanged; ``enable=False`` restores the plain forward.
        """
        units = [m for n, m in self.named_modules() if any(re.fullmatch(p, n) for p in self.grad_checkpoint_units)]
        if enable and not units:
            raise ValueError(f"{self._name()}: gradient checkpointing is not supported by the {self.family or type(self).__name__} family (no blocks to recompute)")
        for m in units:
            if enable:
                m.forward = _CheckpointedForward(m)  # an instance attribute: nn.Module.__call__ finds it first
            else:
                m.__dict__.pop("forward", None)

    @property
    def grad_checkpointing(self) -> bool:
        """Whether :meth:`set_grad_checkpointing` is on (assigning to it sets it, as timm's attribute)."""
        return any(isinstance(m.__dict__.get("forward"), _CheckpointedForward) for m in self.modules())

    @grad_checkpointing.setter
    def grad_checkpointing(self, enable: bool) -> None:
        self.set_grad_checkpointing(enable)

    # ---------------------------------------------------------------- behaviour
    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        x_in = x
        x, channels_last = self.cpu_layout(x)
        if self.features_only:
            return self._maps_out(self.intermediate_maps(x, self.out_indices), x_in, channels_last)
        out = self._forward_classifier(x)
        return plain_layout(out) if channels_last else out

    def _maps_out(self, maps: list[Tensor], x: Tensor, converted: bool, *, nchw: bool = True) -> list[Tensor]:
        """``maps`` of a call on input ``x`` in the layout they go back in: for a channels-last
        ``x``, channels-last (``nchw``: the maps are (B, C, H, W); otherwise contiguous);
        otherwise contiguous where :meth:`cpu_layout` ``converted`` the input or under
        :attr:`contiguous_maps`, and as computed without either."""
        if channels_last_map(x) and not x.is_contiguous():
            return [m.contiguous(memory_format=torch.channels_last) if nchw else m.contiguous() for m in maps]
        return plain_layout(maps) if converted or self.contiguous_maps else maps

    def _forward_classifier(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        """``forward`` of the classifier (not ``features_only``): the logits. A family whose
        training forward also returns auxiliary logits overrides this."""
        return self.forward_head(self.forward_features(x))

    @property
    def returns_unpooled(self) -> bool:
        """Whether ``forward`` returns the unpooled features (timm's ``global_pool=''``, no classifier)."""
        return self.unpooled and self.num_classes == 0

    def cpu_layout(self, x: Tensor) -> tuple[Tensor, bool]:
        """``x`` in the memory layout this call runs in, and whether that is channels-last.

        For CPU inference of a family with ``cpu_channels_last`` (eval mode, autograd off, a plain 4-D
        CPU tensor, no tracing or compiling) the network runs on a channels-last copy of the
        input: oneDNN's NHWC convolutions are 1.1-2x faster than its NCHW ones on these
        models. :func:`plain_layout` gives any map the call returns back in the ordinary layout.
        Anything but a tensor gets :meth:`check_input`'s InputError here, before it is touched.
        """
        if not isinstance(x, Tensor):
            self.check_input(x)
        if self.cpu_channels_last and not self.training and x.dim() == 4 and not torch.is_grad_enabled() and plain_cpu_eager(x):
            return to_channels_last(x), True
        return x, False

    def set_features_only(self, out_indices: int | Sequence[int] | None = None) -> VisionModel:
        """Turn the classifier into a feature extractor returning a list of NCHW maps:
        ``out_indices`` None gives the family's default maps, an int n the last n, a sequence
        those maps (negative from the end). The maps come in network order, each once, as
        timm's do (``out_indices=(-1, -3)`` returns the shallower map first); ``feature_info``
        lists them in that order too."""
        if not self.feature_info:
            raise ValueError(f"{self._name()} defines no feature maps")
        if out_indices is None:
            idx: Sequence[int] = self.default_out_indices()
        else:
            if isinstance(out_indices, Iterable) and not isinstance(out_indices, (str, bytes)):
                out_indices = list(out_indices)
                if not out_indices:
                    raise ValueError(f"out_indices is empty: {self._name()} has {len(self.feature_info)} feature maps; name at least one")
            elif as_int(out_indices) is None:
                raise ValueError(f"out_indices takes None, a count n (the last n maps) or a sequence of indices, got {out_indices!r}")
            idx = self.take_indices(out_indices)
        self.out_indices = tuple(self._feature_index(i) for i in idx)
        whole = self.state_dict().keys()
        self.prune_for_features(self.out_indices)
        self.pruned_keys = frozenset(whole - self.state_dict().keys())
        self.features_only = True
        every = list(self.feature_info)
        self.feature_info = FeatureInfoList((every[i] for i in self.out_indices), self.out_indices, every)
        return self

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`InputError` for a tensor this network cannot take."""
        check_image_batch(x, self._name(), self.in_chans, next(self.parameters(), None), self.size_problem)

    def size_problem(self, H: int, W: int) -> str | None:
        """What keeps this network from taking an H x W input (``min_input_size``,
        ``input_multiple``); None when it can."""
        m, smallest = self.input_multiple, self.min_input_size
        if H < smallest or W < smallest:
            return f"needs inputs of at least {smallest}x{smallest}, got {H}x{W}"
        if H % m or W % m:
            return f"needs height and width divisible by {m}, got {H}x{W}"
        return None

    @property
    def pretrained_cfg(self) -> Mapping[str, Any]:  # timm's name for the same thing
        return self.default_cfg

    def no_weight_decay(self) -> set[str]:
        """Parameter names that the optimiser should not decay (position tables, tokens)."""
        return set()

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's grouping of the parameters by depth (read by :mod:`visionzoo.param_groups`
        and by timm's optimizer factory): ``stem``, then ``blocks`` (one group per block, per
        stage with ``coarse=True``); the head is what no expression matches. Each family
        defines its own."""
        raise NotImplementedError(f"{type(self).__name__} does not group its parameters by depth")


_PLAIN = (bool, int, float, str, type(None))


def _plain(value: Any) -> bool:
    """A value a module keeps as a setting (a window, a grid, a configuration): numbers, strings,
    None, tuples and lists of them, frozen dataclasses (not tensors, modules or caches)."""
    if isinstance(value, _PLAIN):
        return True
    if type(value) in (tuple, list, torch.Size):
        return all(_plain(v) for v in value)
    return is_dataclass(value) and not isinstance(value, type)


def _resize_in_place(model: VisionModel, cfg: Any, current: tuple[int, int], size: tuple[int, int]) -> None:
    """:meth:`VisionModel.set_input_size` of a size-dependent family. Two twins of ``model`` are
    built (its configuration, channels and classes): one for the size it is for (on the meta
    device: shapes and settings only) and one for ``size`` (real, for its derived buffers). What
    differs between them is what depends on the size: settings (windows, grids), parameters
    and buffers of another shape, and every derived (non-persistent) buffer of a module whose
    settings change. The parameters take ``model``'s values resampled by the new twin's
    :meth:`~VisionModel.adapt_state_dict`; the buffers and settings are the new twin's. All of it
    is worked out before ``model`` is touched."""
    name = model._name()
    kwargs = dict(num_classes=model.num_classes, in_chans=model.in_chans, drop_path_rate=0.0)
    try:
        with torch.random.fork_rng(devices=[]):  # the new twin's random initialisation leaves the caller's stream alone
            with torch.device("meta"):
                old = type(model)(model.cfg, img_size=current, **kwargs)
            new = type(model)(cfg, img_size=size, **kwargs)
    except ValueError as e:  # the family's own checks of a configuration or size: name the model
        raise ValueError(f"{name}: {e}") from None
    problem = new.size_problem(*size)
    if problem:
        raise ValueError(f"{name} cannot take img_size {size[0]}x{size[1]}: it {problem}")
    old_mods, new_mods = dict(old.named_modules()), dict(new.named_modules())
    if old_mods.keys() != new_mods.keys() or any(type(old_mods[k]) is not type(m) for k, m in new_mods.items()):
        raise ValueError(f"{name}: a model for {size[0]}x{size[1]} has other layers than one for {current[0]}x{current[1]}; build it with create_model(img_size=...) and load this one's state dict")
    own = dict(model.named_modules())
    adapted = new.adapt_state_dict(dict(model.state_dict()), source=model)
    settings, tensors = [], []  # (module, attribute, value) to set
    for path, nm in new_mods.items():
        om, target = old_mods[path], own.get(path)
        changed = {a: v for a, v in vars(nm).items() if not a.startswith("_") and a != "training" and _plain(v) and v != vars(om).get(a)}
        # resampled: tables of another shape, and those of a module whose settings change (a
        # transposed grid: the same shape, another layout), where the values change
        params = [k for k, p in nm._parameters.items() if p is not None and (changed or p.shape != om._parameters[k].shape)]
        buffers = [
            k for k, b in nm._buffers.items()
            if b is not None and (b.shape != om._buffers[k].shape or (changed and k in nm._non_persistent_buffers_set))
        ]
        if not (changed or params or buffers) or target is None:  # nothing size-dependent, or pruned (features_only)
            continue
        if type(target) is not type(nm):
            raise ValueError(f"{name}: {path or 'the model'} is a {type(target).__name__} where the family builds a {type(nm).__name__}; set_input_size resizes models as create_model builds them")
        settings += [(target, a, v) for a, v in changed.items()]
        for k in params:
            key = f"{path}.{k}" if path else k
            value, mine = adapted.get(key), target._parameters[k]
            if value is None or value.shape != nm._parameters[k].shape:
                raise ValueError(f"{name}: {key} ({tuple(mine.shape)}) cannot be resampled to {tuple(nm._parameters[k].shape)} for {size[0]}x{size[1]}")
            if value.shape == mine.shape and torch.equal(value, mine):
                continue  # unchanged: the same Parameter
            param = nn.Parameter(value.detach().to(device=mine.device, dtype=mine.dtype), requires_grad=mine.requires_grad)
            tensors.append((target, k, param))
        for k in buffers:
            mine, value = target._buffers.get(k), nm._buffers[k]
            if mine is not None:
                value = value.to(device=mine.device, dtype=mine.dtype if value.is_floating_point() else value.dtype)
            else:  # (a buffer this model lacks: where its parameters are)
                value = value.to(device=next(model.parameters()).device)
            tensors.append((target, k, value))
    reductions = {f.module: f.reduction for f in new.feature_info}  # strides change with ViT's patch size
    infos = model.feature_info
    if reductions != {f.module: f.reduction for f in old.feature_info}:
        rescale = lambda fs: [replace(f, reduction=reductions.get(f.module, f.reduction)) for f in fs]  # noqa: E731
        infos = FeatureInfoList(rescale(infos), infos._out_indices, None if infos._every is None else rescale(infos._every))
    for target, attribute, value in settings + tensors:
        setattr(target, attribute, value)
    model.feature_info = infos
    clear_derived_caches(model)


def nonempty_size(H: int, W: int) -> str | None:
    """The size rule of a network that pads any input to a size it takes: none but an empty side."""
    return f"needs inputs of at least 1x1, got {H}x{W}" if H < 1 or W < 1 else None


def check_image_batch(
    x: Tensor, name: str, in_chans: int, weight: Tensor | None = None, size_problem: Callable[[int, int], str | None] = nonempty_size
) -> None:
    """Raise :class:`InputError`, its message starting with ``name``, for anything but a float
    (B, ``in_chans``, H, W) tensor of ``weight``'s dtype (unless autocast is on) whose H x W
    ``size_problem`` takes (:meth:`VisionModel.check_input`; UNeXt and the segmentation
    wrappers, which pad any non-empty size)."""
    if torch.jit.is_tracing():
        # the checks read the traced sizes as Python values, each a TracerWarning; they only
        # validate, and the trace records nothing from them
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return _check_image_batch(x, name, in_chans, weight, size_problem)
    return _check_image_batch(x, name, in_chans, weight, size_problem)


def _check_image_batch(x: Tensor, name: str, in_chans: int, weight: Tensor | None, size_problem: Callable[[int, int], str | None]) -> None:
    if isinstance(x, torch.fx.Proxy):
        raise InputError(
            f"{name} cannot be traced by torch.fx.symbolic_trace (nor torchvision's create_feature_extractor, which "
            "uses it): the network reads its input's shape in Python. For feature maps use features_only=True or "
            "forward_intermediates; for a graph torch.export (visionzoo.export.export_program) or torch.jit.trace"
        )
    if not isinstance(x, Tensor):
        raise InputError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise InputError(f"{name} expects a 4-D tensor (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(
            f"{name} expects a floating-point tensor, got dtype {x.dtype} (convert images with x.float() / 255)"
        )
    if weight is not None and x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        # (autocast runs a float32 input on bf16 / fp16 weights; without it PyTorch's own error names no fix)
        raise InputError(
            f"{name} expects a {_dtype_name(weight.dtype)} tensor (its parameters are {_dtype_name(weight.dtype)}), got dtype "
            f"{_dtype_name(x.dtype)}: convert it with x{_cast(weight.dtype)}, or the model with model{_cast(x.dtype)}"
        )
    if x.shape[1] != in_chans:
        if x.shape[-1] == in_chans:  # an image batch as (B, H, W, C), as PIL / numpy give it
            raise InputError(
                f"{name} expects (B, C, H, W) with C = {in_chans}, got shape {tuple(x.shape)}, which looks like "
                f"(B, H, W, C): permute it with x.permute(0, 3, 1, 2)"
            )
        raise InputError(
            f"{name} expects {in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
            f"create it with in_chans={x.shape[1]} to take such input"
        )
    problem = size_problem(*x.shape[-2:])
    if problem:
        raise InputError(f"{name} {problem}")
    note_input(x)  # NaN in, NaN out: where the input holds NaN or inf, no clamping post-op turns it finite


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _cast(dtype: torch.dtype) -> str:
    """The call that converts a tensor or module to ``dtype``: ``.float()``, ``.double()``, ..."""
    method = {torch.float32: "float", torch.float64: "double", torch.float16: "half", torch.bfloat16: "bfloat16"}.get(dtype)
    return f".{method}()" if method else f".to({dtype})"


_MAP_FORMATS = {
    "NCHW": lambda m: m,
    "NHWC": lambda m: m.permute(0, 2, 3, 1),
    "NLC": lambda m: m.flatten(2).transpose(1, 2),
}


def evenly_spaced(depth: int, count: int = 4) -> tuple[int, ...]:
    """``count`` evenly spaced block indices ending with the last (2, 5, 8, 11 for depth 12):
    the default ``features_only`` maps of the families whose feature maps are their blocks."""
    return tuple(sorted({max(round((i + 1) * depth / count) - 1, 0) for i in range(count)}))


def plain_layout(out: Any) -> Any:
    """``out`` (a tensor, or a list or tuple of them) with every tensor contiguous
    (:func:`~visionzoo.layers.helpers.to_contiguous`)."""
    if isinstance(out, Tensor):
        return to_contiguous(out)
    return type(out)(plain_layout(o) for o in out)


def tap_outputs(
    x: Tensor, modules: Sequence[nn.Module], positions: Sequence[int], *, to_end: bool = False, tail: Callable[[Tensor], Tensor] | None = None
) -> list[Tensor] | tuple[list[Tensor], Tensor]:
    """Run ``x`` through ``modules`` in order, as far as the last wanted one, and return the
    output of ``modules[p]`` for each ``p`` in ``positions`` (in that order); with ``to_end``,
    through all of them, returning ``(outputs, tail(output of the last module))`` (``tail``
    None: that output itself), where ``tail`` is what ``forward_features`` does after them.

    The loop behind ``intermediate_maps`` of the families whose feature maps are the
    outputs of a sequence of stages, blocks or layers.
    """
    wanted, out = set(positions), {}
    modules = list(modules)
    for j, module in enumerate(modules if to_end else modules[: max(positions) + 1]):
        x = module(x)
        if j in wanted:
            out[j] = x
    maps = [out[p] for p in positions]
    if not to_end:
        return maps
    return maps, (x if tail is None else tail(x))


def count(n: int, noun: str) -> str:
    """``n`` and the noun, plural unless n is 1 ("1 round", "5 rounds"): for messages, here where
    both the library (training's notes) and the command line (``visionzoo.cli.count``) reach it."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def count_params(model: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


