"""What attention layers look at: captured weights, rollout, attention distance, position embeddings, Swin masks.

Every function here computes arrays; :mod:`visionzoo.analysis.pictures` draws them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.attention import record_attention_weights
from ..layers.helpers import evaluating, to_2tuple
from ..layers.window import shift_window_mask

__all__ = [
    "attention_rollout",
    "capture_attention",
    "mean_attention_distance",
    "patch_distances",
    "position_embedding_similarity",
    "shift_window_masks",
    "shift_window_regions",
]


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[dict[str, list[Tensor]]]:
    """Record the softmax weights of every attention computed inside ``model``.

    Yields a dict, filled as the model runs: module name (as in ``named_modules``) ->
    list of weight tensors, one per call, each (B, nH, N, L) (windowed attention:
    (B * nW, nH, M*M, M*M)). The weights are attributed to the innermost module running
    when :func:`visionzoo.layers.attention` was called, which is the attention module.
    Inside the block attention uses the explicit softmax path, so run it on small inputs.

    Example::

        with torch.no_grad(), capture_attention(model) as weights:
            model(x)
        first = weights["blocks.0.attn"][0]   # B, nH, N, N
    """
    names = {m: n for n, m in model.named_modules()}
    stack: list[str] = []
    store: dict[str, list[Tensor]] = defaultdict(list)

    def pre(module: nn.Module, args: object) -> None:
        stack.append(names.get(module, type(module).__name__))

    def post(module: nn.Module, args: object, out: object) -> None:
        stack.pop()

    def record(weights: Tensor) -> None:
        store[stack[-1] if stack else ""].append(weights.detach())

    handles = []
    for m in names:
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post, always_call=True))
    try:
        with record_attention_weights(record):
            yield store
    finally:
        for h in handles:
            h.remove()


def _as_batch(image: Tensor) -> Tensor:
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] == 0:
        raise ValueError(f"expected an image (C, H, W) or a batch (B, C, H, W) of at least one, got shape {tuple(image.shape)}")
    return image


def _token_attention(model: nn.Module, images: Tensor) -> list[tuple[str, Tensor]]:
    """Softmax weights of the global token attentions, in call order, each (B, nH, N, N) with the
    name of the module that computed it, from one pass in eval mode (the model's mode is
    restored after it).

    Raises:
        ValueError: a model that is not ViT-style: without a patch stride (``reduction``) and
            prefix-token count, or whose blocks attend over different token sets (CoAtNet's
            stages, Swin's windows).
    """
    if getattr(model, "reduction", None) is None or not hasattr(model, "num_prefix_tokens"):
        raise ValueError(f"{type(model).__name__}: attention rollout and distance are defined for ViT-style models "
                         "(every block one global attention over the patch tokens); capture_attention gives any model's maps")
    with evaluating(model), torch.no_grad(), capture_attention(model) as store:  # a model in training stays so, as gradcat leaves it
        model(images)
    maps = [(n, w) for n, ws in store.items() for w in ws if w.ndim == 4 and w.shape[0] == images.shape[0] and w.shape[-1] == w.shape[-2]]
    if not maps:
        raise ValueError(f"{type(model).__name__} computed no global token attention")
    sizes = {w.shape[-1] for _, w in maps}
    if len(sizes) > 1:
        raise ValueError(f"{type(model).__name__}: its blocks attend over different numbers of tokens "
                         f"({sorted(sizes, reverse=True)}); rollout and distance need the same tokens in every block")
    return maps


def _by_block(maps: list[tuple[str, Tensor]]) -> list[list[Tensor]]:
    """The maps grouped by block: the parallel branches of a block (``blocks.i.attns.j.attn``,
    :class:`~visionzoo.models.vit.ParallelBlock`) read the same input and form one group; any
    other attention is a group of its own."""
    groups: list[list[Tensor]] = []
    last = None
    for name, w in maps:
        m = re.fullmatch(r"(.*)\.attns\.\d+\.attn", name)
        key = m.group(1) if m else None
        if key is not None and key == last:
            groups[-1].append(w)
        else:
            groups.append([w])
        last = key
    return groups


def _grid(model: nn.Module, images: Tensor, n_patches: int) -> tuple[int, int]:
    r = model.reduction
    H, W = images.shape[-2:]
    gh, gw = -(-H // r), -(-W // r)
    if gh * gw != n_patches:
        raise ValueError(f"{n_patches} patch tokens do not form the {gh} x {gw} grid of a {H}x{W} input")
    return gh, gw


def attention_rollout(model: nn.Module, image: Tensor, *, head_fusion: str = "mean") -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020).

    Each layer's weights are fused over heads (``mean``, ``max`` or ``min``), the residual
    connection is modelled as 0.5 A + 0.5 I with rows renormalised, and the layers are
    multiplied from the first to the last; a block of k parallel attention branches
    (``num_parallel``), all reading its input, counts as one layer, (I + A_1 + ... + A_k) / (k + 1).
    The class token's row over the patch tokens (for a model without one, registers or not:
    the mean row of the patch tokens) is the map, upsampled bilinearly to the image and scaled
    to [0, 1] (min to max).

    Args:
        model: a ViT-style model (visionzoo ``VisionTransformer``; ``num_prefix_tokens``
            class / distillation / register tokens before the patch tokens, the class token
            first where ``cls_token`` is not None).
        image: (C, H, W) or (1, C, H, W), normalised as the model expects.

    Returns:
        (H, W) float array in [0, 1].
    """
    x = _as_batch(image)
    if x.shape[0] != 1:
        raise ValueError(f"attention_rollout draws the map of one image, got a batch of {x.shape[0]}; call it once per image")
    maps = _token_attention(model, x)
    fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion must be one of {sorted(fuse)}, got {head_fusion!r}")
    N = maps[0][1].shape[-1]
    eye = torch.eye(N)
    rollout = eye
    for group in _by_block(maps):
        a = (eye + sum(fuse[head_fusion](w.float().cpu())[0] for w in group)) / (len(group) + 1)  # N, N
        a = a / a.sum(-1, keepdim=True)
        rollout = a @ rollout
    P = int(getattr(model, "num_prefix_tokens", 0))
    class_token = P and getattr(model, "cls_token", True) is not None  # prefix tokens may be registers alone
    row = rollout[0, P:] if class_token else rollout[P:, P:].mean(0)  # over the patch tokens
    gh, gw = _grid(model, x, N - P)
    m = F.interpolate(row.reshape(1, 1, gh, gw), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
    m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
    return m.numpy()


def patch_distances(grid: tuple[int, int], patch_size: float) -> np.ndarray:
    """(N, N) Euclidean distances in pixels between the centres of the patches of a grid."""
    gh, gw = grid
    yy, xx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    pts = np.stack([yy.ravel(), xx.ravel()], 1) * patch_size  # N, 2
    return np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))


def mean_attention_distance(model: nn.Module, images: Tensor) -> np.ndarray:
    """Mean attention distance per layer and head (ViT paper, Fig. 7 right; Fig. 11).

    For each query patch, the distance in pixels to every key patch weighted by the
    attention weight, summed, then averaged over query patches and images. Only
    patch-to-patch attention counts: the weights of a patch on the class/distillation
    tokens are dropped and the rest renormalised to sum 1.

    Args:
        model: a ViT-style model.
        images: (B, C, H, W) or (C, H, W).

    Returns:
        (layers, heads) array of distances in pixels (a block of parallel branches: one row
        per branch).
    """
    x = _as_batch(images)
    maps = [w for _, w in _token_attention(model, x)]
    P = int(getattr(model, "num_prefix_tokens", 0))
    N = maps[0].shape[-1]
    grid = _grid(model, x, N - P)
    r = model.reduction
    dist = torch.from_numpy(patch_distances(grid, r)).float()  # Np, Np
    out = []
    for w in maps:
        a = w[:, :, P:, P:].float().cpu()  # B, nH, Np, Np
        a = a / a.sum(-1, keepdim=True)
        out.append((a * dist).sum(-1).mean(dim=(0, 2)))  # nH
    return torch.stack(out).numpy()


def position_embedding_similarity(model: nn.Module) -> np.ndarray:
    """Cosine similarity between the learned position embeddings of patches (ViT paper, Fig. 7 centre).

    Returns:
        (Gh, Gw, Gh, Gw) array: [i, j] is the similarity map of patch (i, j) with every patch.
    """
    grid = tuple(getattr(model, "grid_size", ()))
    if len(grid) != 2:
        raise ValueError(f"{type(model).__name__} has no patch grid")
    pe = None
    if hasattr(model, "_absolute_pos_embed"):  # visionzoo ViT: learned_1d or learned_2d
        pe = model._absolute_pos_embed(0, grid)
    elif isinstance(getattr(model, "pos_embed", None), Tensor):
        pe = model.pos_embed
    if pe is None:
        raise ValueError(f"{type(model).__name__} has no learned absolute position embeddings")
    gh, gw = grid
    e = pe.detach().float().cpu().reshape(-1, pe.shape[-1])
    prefix = e.shape[0] - gh * gw  # rows of the prefix tokens: none where only the patches take one (DeiT III)
    if prefix < 0:
        raise ValueError(f"{type(model).__name__}'s position embedding has {e.shape[0]} rows, fewer than its {gh}x{gw} patch grid")
    e = F.normalize(e[prefix:], dim=-1)  # Gh*Gw, D
    return (e @ e.T).reshape(gh, gw, gh, gw).numpy()


def shift_window_regions(H: int, W: int, window: int | Sequence[int], shift: int | Sequence[int]) -> np.ndarray:
    """Region labels of Swin's cyclically shifted map, (H, W) integers in 0..8.

    After ``torch.roll`` by (-shift_h, -shift_w), the last window row and column hold
    pixels that were not neighbours in the image. Cutting each axis at (-M, -s) gives
    3 x 3 regions; two tokens of one window attend to each other only if their labels
    agree. :func:`visionzoo.layers.window.shift_window_mask` is the same labelling turned
    into additive masks.
    """
    H, W, (Mh, Mw), (sh, sw) = _window_args(H, W, window, shift)

    def cuts(n: int, m: int, s: int) -> list[slice]:
        return [slice(0, n - m), slice(n - m, n - s), slice(n - s, n)]

    labels = np.zeros((H, W), dtype=np.int64)
    for i, hs in enumerate(cuts(H, Mh, sh)):
        for j, ws in enumerate(cuts(W, Mw, sw)):
            labels[hs, ws] = 3 * i + j
    return labels


def shift_window_masks(H: int, W: int, window: int | Sequence[int], shift: int | Sequence[int]) -> np.ndarray:
    """Swin's additive masks for the map, (nW, M*M, M*M), from :func:`visionzoo.layers.window.shift_window_mask`."""
    H, W, window, shift = _window_args(H, W, window, shift)
    return shift_window_mask(H, W, window, shift).numpy()


def _window_args(H: int, W: int, window: object, shift: object) -> tuple[int, int, tuple[int, int], tuple[int, int]]:
    """The checked arguments of :func:`shift_window_regions` / :func:`shift_window_masks`."""
    (H, W), (Mh, Mw), (sh, sw) = to_2tuple((H, W), "the map size"), to_2tuple(window, "window"), to_2tuple(shift, "shift")
    if min(H, W, Mh, Mw) < 1:
        raise ValueError(f"the map ({H}x{W}) and the window ({Mh}x{Mw}) must be at least 1 a side")
    if H % Mh or W % Mw:
        raise ValueError(f"map {H}x{W} is not a multiple of the window {Mh}x{Mw} (Swin pads it first)")
    if not (0 <= sh < Mh and 0 <= sw < Mw):
        raise ValueError(f"shift {(sh, sw)} must lie in [0, window)")
    return H, W, (Mh, Mw), (sh, sw)
