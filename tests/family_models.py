"""One small model per family, chosen from the registry, for tests that cover every family."""

import functools
import math

import torch

import visionzoo
from visionzoo.registry import families, get_entry


@functools.lru_cache(maxsize=None)
def smallest_per_family() -> dict[str, str]:
    """{family: its registered model with the fewest parameters} (counted on the meta device)."""
    best: dict[str, tuple[int, str]] = {}
    for name in visionzoo.list_models():
        fam = get_entry(name).family
        with torch.device("meta"):
            n = sum(p.numel() for p in visionzoo.create_model(name).parameters())
        if fam not in best or n < best[fam][0]:
            best[fam] = (n, name)
    assert set(best) == set(families())
    return {f: best[f][1] for f in sorted(best)}


def small_side(model) -> int:
    """The smallest side >= 32 that the network takes."""
    m = max(model.input_multiple, 1)
    return math.ceil(max(model.min_input_size, 32) / m) * m


def shallow_options(name: str) -> dict:
    """ViT-L, ViT-H and the EVAs at 4 of their 24-40 blocks (EVA-02-CLIP-E at 2 of 64), the ConvNeXts of 2048 channels and more
    (XL, V2-H) at 3 blocks a stage, and EfficientNetV2-L / XL at a quarter of their blocks, for
    checks that build and run them: each block is the same code, and 120-660M parameters took
    10-45 s a check on 2 cores. Widths, heads, patch and input size stay; their full depth is
    checked by the parameter counts of the reference tests and by the slow every-shared-model
    sweep."""
    entry = get_entry(name)
    if entry.family in ("vit", "eva") and entry.config.depth > 12:
        return {"depth": 4 if entry.config.embed_dim < 1792 else 2}  # EVA-02-CLIP-E's blocks are 68M each
    if entry.family == "convnext" and entry.config.dims[-1] >= 2048:
        return {"depths": (3, 3, 3, 3)}
    if entry.family == "efficientnet" and sum(s.repeats for s in entry.config.stages) > 60:
        return {"depth_coefficient": 0.25}
    return {}
