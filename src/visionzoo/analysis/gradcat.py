"""GradCAT: gradient-based class-aware tree traversal of a NesT (Zhang et al., AAAI 2022).

NesT's hierarchies form a tree: the top hierarchy is one block (the root), and each block
of hierarchy l+1 is the aggregation of 2 x 2 neighbouring blocks of hierarchy l, its
children. GradCAT walks this tree from the root down: at every hierarchy it scores the
blocks by gradient times activation of the class logit Y, and among the four children of
the block chosen one level up it takes the one with the highest score. The chosen blocks,
one per hierarchy, are the path that explains the class; the paper draws them over the
image.

The activation of a block (a tree node) is its feature vector, the mean over the block's
positions of the hierarchy's output map A (the transformer layers' output on the image
plane, before the next aggregation); the gradient is taken with respect to that node
feature (the block's mean of dY/dA, up to the block size, a constant per hierarchy):

    h_block = sum_c  mean_block(A)[c] * mean_block(dY/dA)[c].

Pooling before the product matters in NesT: the next block aggregation normalises the 3x3
convolution of A with a LayerNorm, so Y hardly changes when the inside of a block is
rescaled, and the per-position products sum_c A[c] dY/dA[c] cancel within a block (exactly
so at the root, whose output goes straight into the final LayerNorm). ``h_block`` is the
first-order change of Y when the block's mean feature is added to all of its positions.
The heat map given beside the path puts the scores on the image plane: for every
hierarchy below the root, the block scores (negative ones set to 0, scaled to a maximum
of 1) are spread over the pixels each block covers, and the hierarchies are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..layers.helpers import as_int, evaluating

__all__ = ["GradCATResult", "gradcat"]


@dataclass
class GradCATResult:
    """What :func:`gradcat` finds.

    Attributes:
        path: the chosen block of each hierarchy, root first, as (row, col) in that
            hierarchy's block grid (the root is (0, 0); hierarchy ``levels[i]`` has a
            2^k x 2^k grid).
        levels: the hierarchy index (into ``model.levels``) of each entry of ``path``.
        boxes: each chosen block as (top, left, bottom, right) in input pixels (bottom and
            right exclusive).
        scores: the block scores h of each hierarchy, (g, g) tensors, root first.
        heatmap: (H, W) map at the input's size, values in [0, 1], on the model's device.
        logit: the class logit.
    """

    path: list[tuple[int, int]]
    levels: list[int]
    boxes: list[tuple[int, int, int, int]]
    scores: list[Tensor]
    heatmap: Tensor
    logit: float


def gradcat(model: nn.Module, image: Tensor, class_index: int) -> GradCATResult:
    """Trace the blocks of a NesT that carry the evidence for ``class_index``.

    Args:
        model: a NesT classifier (``visionzoo.create_model("nest_*")``), not features-only.
        image: (C, H, W) or (1, C, H, W), preprocessed as the model expects.
        class_index: the class whose logit is explained.

    Returns:
        a :class:`GradCATResult` (path root first, heat map at the image's size).
    """
    levels = getattr(model, "levels", None)
    if levels is None or not all(hasattr(lvl, "grid") for lvl in levels):
        raise TypeError(f"gradcat needs a NesT (a model with block hierarchies), got {type(model).__name__}")
    if getattr(model, "features_only", False):
        raise ValueError("gradcat needs the classifier; the model was made features_only")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"gradcat explains one image, (C, H, W) or (1, C, H, W); got shape {tuple(image.shape)}")
    num_classes = getattr(model, "num_classes", 0)
    index = as_int(class_index)
    if index is None:
        raise ValueError(f"class_index must be an integer, got {class_index!r}")
    if not 0 <= index < num_classes:
        raise ValueError(f"class_index {index} out of range for {num_classes} classes")
    class_index = index

    acts: list[Tensor] = []
    hooks = [lvl.register_forward_hook(lambda m, i, out: acts.append(out)) for lvl in levels]
    try:
        with evaluating(model), torch.enable_grad():
            x = image.detach().requires_grad_(True)  # a graph even if the weights are frozen
            logit = model(x)[0, class_index]
            grads = torch.autograd.grad(logit, acts)
    finally:
        for h in hooks:
            h.remove()

    H, W = image.shape[-2:]
    n = len(levels)
    scores = []
    for i in range(n):
        g = levels[i].grid
        C, h_l, w_l = acts[i].shape[1:]
        a = acts[i].detach()[0].view(C, g, h_l // g, g, w_l // g).mean((2, 4))  # C, g, g: node features
        d = grads[i][0].view(C, g, h_l // g, g, w_l // g).mean((2, 4))  # C, g, g: their gradients
        scores.append((a * d).sum(0))  # g, g

    path, order, boxes = [(0, 0)], [n - 1], [(0, 0, H, W)]
    for i in range(n - 2, -1, -1):  # top-down: the 2 x 2 children of the chosen parent
        r, c = path[-1]
        children = scores[i][2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
        k = int(children.flatten().argmax())
        r, c = 2 * r + k // 2, 2 * c + k % 2
        g = levels[i].grid
        path.append((r, c))
        order.append(i)
        boxes.append((r * H // g, c * W // g, (r + 1) * H // g, (c + 1) * W // g))

    heat = torch.zeros(H, W, device=scores[0].device)  # on the model's device, as the scores it sums
    for i in range(n - 1):
        s = scores[i].clamp_min(0)
        s = s / s.max() if s.max() > 0 else s
        g = levels[i].grid
        heat += s.repeat_interleave(H // g, 0).repeat_interleave(W // g, 1)  # H, W (nearest)
    heat /= max(n - 1, 1)
    return GradCATResult(path, order, boxes, [scores[i] for i in order], heat, float(logit.detach()))
