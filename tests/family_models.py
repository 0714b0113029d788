"""One small model per family, chosen from the registry, for tests that cover every family."""

import functools
import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import visionzoo
from visionzoo.registry import families, get_entry


class _NoMetaInit(TorchDispatchMode):
    """Skips the in-place initialisers (normal_, uniform_, fill_, zero_, ...) on meta tensors: they
    hold no data, and the meta kernels of the random ones are Python decompositions that cost a
    third of building every model at collection. Shape-changing in-place ops still run."""

    _SHAPE_OPS = {"resize_", "resize_as_", "as_strided_", "set_", "squeeze_", "unsqueeze_", "t_", "transpose_",
                  "swapdims_", "swapaxes_"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if (name.endswith("_") and name not in self._SHAPE_OPS and args and isinstance(args[0], torch.Tensor)
                and args[0].is_meta):
            return args[0]
        return func(*args, **(kwargs or {}))


@functools.lru_cache(maxsize=None)
def meta_facts() -> dict[str, tuple[int, bool]]:
    """{name: (parameters at its full size, cpu_channels_last)} for every registered model, from one
    pass that builds each on the meta device."""
    out = {}
    for name in visionzoo.list_models():
        with torch.device("meta"), _NoMetaInit():
            model = visionzoo.create_model(name)
        out[name] = (sum(p.numel() for p in model.parameters()), bool(model.cpu_channels_last))
    return out


def full_params() -> dict[str, int]:
    """{name: parameters of the registered model at its full size} (counted on the meta device)."""
    return {name: n for name, (n, _) in meta_facts().items()}


@functools.lru_cache(maxsize=None)
def smallest_per_family() -> dict[str, str]:
    """{family: its registered model with the fewest parameters} (counted on the meta device)."""
    best: dict[str, tuple[int, str]] = {}
    for name, n in full_params().items():
        fam = get_entry(name).family
        if fam not in best or n < best[fam][0]:
            best[fam] = (n, name)
    assert set(best) == set(families())
    return {f: best[f][1] for f in sorted(best)}


#: the battery runs models of up to this many parameters (at full size) by default, the others
#: under ``-m slow`` (every family's smallest model always runs)
BATTERY_DEFAULT_MAX_PARAMS = 30_000_000


def distinct_configs(names) -> list[str]:
    """The first of each group of ``names`` registered with one configuration (timm's _224 / _384
    pairs and the like, which differ only in their default input size, preprocessing and weights):
    for checks that build the network at a size of their own."""
    seen: set[str] = set()
    return [n for n in names if not (repr(get_entry(n).config) in seen or seen.add(repr(get_entry(n).config)))]


def small_side(model) -> int:
    """The smallest side >= 32 that the network takes."""
    m = max(model.input_multiple, 1)
    return math.ceil(max(model.min_input_size, 32) / m) * m


def shallow_options(name: str, compact: bool = False) -> dict:
    """Options that build a deep model shallower, for checks that build and run every registered
    model: each block of a stage is the same code, and 100-660M parameters at full depth took
    5-45 s a check on 2 cores. The ViTs and EVAs at 4 blocks (those of 1408 wide and more, ViT-g /
    EVA-g to EVA-02-CLIP-E, whose blocks are 25-68M each, at 2; DINOv3-7B at 1, of 168M), EfficientNetV2-L / XL at a quarter of their blocks, and any network of more than 16
    blocks in its stage table (ResNet-101 and deeper, DenseNet, Swin-B / L, ConvNeXt-B and up,
    CoAtNet-2 and up, NesT-B, Inception-ResNet-v2) at 2 blocks a stage. Widths, heads, patch and
    input size stay; the full depth is checked by the parameter counts of the reference tests and
    by the slow every-shared-model sweep.

    ``compact``: for checks of the operators a network is made of (export, tracing), not of its
    depth: every stage table at 2 blocks a stage (a stage's first block, which may change width
    or stride or, in Swin, leave its windows unshifted, and one of the rest), the ViTs, EVAs and
    ConvMixers at 2 blocks, and VGG's 4096-wide classifier MLP at 256 (its 100M weights were most
    of an ONNX export's time)."""
    entry = get_entry(name)
    cfg = entry.config
    if compact:
        out = {}
        if entry.family in ("vit", "eva", "convmixer") and cfg.depth > 2:
            out["depth"] = 2
        for field in ("depths", "layers"):
            stages = getattr(cfg, field, None)
            if isinstance(stages, tuple) and all(isinstance(d, int) for d in stages) and max(stages) > 2:
                out[field] = tuple(min(d, 2) for d in stages)
        if getattr(cfg, "mlp_dim", 0) > 256:
            out["mlp_dim"] = 256
        return out
    if entry.family in ("vit", "eva") and cfg.depth > 4:
        return {"depth": 4 if cfg.embed_dim < 1408 else 2 if cfg.embed_dim < 4096 else 1}
    if entry.family == "efficientnet" and sum(s.repeats for s in cfg.stages) > 60:
        return {"depth_coefficient": 0.25}
    for field in ("depths", "layers"):  # blocks per stage (timm's names: ResNet's layers)
        stages = getattr(cfg, field, None)
        if isinstance(stages, tuple) and all(isinstance(d, int) for d in stages) and sum(stages) > 16:
            return {field: tuple(min(d, 2) for d in stages)}
    return {}
