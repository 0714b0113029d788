"""Multi-head self-attention shared by every family.

One implementation serves ViT, Swin, CoAtNet, NesT and the rest. Positional biases
(relative position tables, Swin's shift mask, CoAtNet's static w[i-j]) are passed as one
additive ``attn_bias`` that goes to :func:`torch.nn.functional.scaled_dot_product_attention`
as ``attn_mask``. A plain matmul/softmax path computes the same thing step by step; it is
kept for tests, for attention-map analysis and for hardware where the fused kernel is
unavailable.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .helpers import no_hooks, trunc_normal_
from .linear import add_projection, linear
from .mlp import Mlp

__all__ = ["Attention", "AttentionPoolLatent", "ProjectedAttention", "attention", "record_attention_weights", "sdpa_biased_short", "set_fused_attention"]

# functions that receive the softmax weights of every attention() call (see below)
_WEIGHT_RECORDERS: list[Callable[[Tensor], None]] = []


def set_fused_attention(model: nn.Module, enable: bool) -> int:
    """Turn the fused attention kernel on or off in every attention module of ``model`` (their
    ``fused`` flag; on by default), as timm's ``TIMM_FUSED_ATTN``; returns how many there are.

    Off, attention runs as matmul + softmax + matmul: slower, but twice differentiable.
    PyTorch's fused CPU kernel has no second derivative, so gradient penalties
    (``create_graph=True``) on ViT, DeiT or NesT need it off (Swin and CoAtNet, whose learned
    biases send training to PyTorch's differentiable path, work either way). ValueError for a
    model without attention."""
    found = [m for m in model.modules() if isinstance(m.__dict__.get("fused"), bool)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no attention module to switch")
    for m in found:
        m.fused = bool(enable)
    return len(found)


@contextmanager
def record_attention_weights(fn: Callable[[Tensor], None]) -> Iterator[None]:
    """Pass the softmax weights of every :func:`attention` call in the block to ``fn``.

    Inside the block attention takes the matmul/softmax path (the fused kernel never
    forms the weights) and calls ``fn(weights)`` with the (..., N, L) probabilities,
    biases and masks included. For analysis (attention rollout, attention distances);
    :func:`visionzoo.analysis.capture_attention` names the weights by module.
    """
    _WEIGHT_RECORDERS.append(fn)
    try:
        yield
    finally:
        _WEIGHT_RECORDERS.remove(fn)


# memory-efficient kernel first, the rest in torch's own order (sdpa_kernel's set_priority: torch >= 2.6)
_EFFICIENT_FIRST = [getattr(SDPBackend, b) for b in ("EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "FLASH_ATTENTION", "MATH") if hasattr(SDPBackend, b)]
_CAN_PRIORITISE = "set_priority" in inspect.signature(sdpa_kernel).parameters


def sdpa_biased_short(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, *, dropout_p: float = 0.0, scale: float | None = None) -> Tensor:
    """``F.scaled_dot_product_attention`` for many short sequences with an additive bias (windows).

    On a GPU, torch asks cuDNN's kernel first; for Swin's 49-token windows (hd 32, bias
    (1, nH, 49, 49), bf16, H100) the memory-efficient kernel ran 3.7x faster (0.34 vs 1.25 ms
    for 8192 windows x 3 heads), so it is asked first here, the others still taken where it
    declines. The bias should be contiguous in its last dimension: a strided one is refused
    by both kernels, and the math fallback then works in fp32. On a CPU this is plain SDPA.
    Inside :func:`record_attention_weights` it is :func:`attention`'s softmax path, whose
    weights the recorders see. ``scale``: the logits' (``hd ** -0.5`` by default).
    """
    if _WEIGHT_RECORDERS:
        return attention(q, k, v, attn_mask, dropout_p=dropout_p, fused=False, scale=scale)
    if q.is_cuda and _CAN_PRIORITISE and not torch.compiler.is_compiling():
        with sdpa_kernel(_EFFICIENT_FIRST, set_priority=True):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_bias: Tensor | None = None,
    *,
    dropout_p: float = 0.0,
    fused: bool = True,
    scale: float | None = None,
) -> Tensor:
    """Scaled dot-product attention with an optional additive bias.

    Args:
        q, k, v: queries (..., N, hd), keys and values (..., L, hd).
        attn_bias: added to the logits before softmax; broadcastable to (..., N, L).
            A boolean mask is not accepted: use ``-inf`` where attention is forbidden.
        dropout_p: attention dropout (applied only when > 0).
        fused: use ``F.scaled_dot_product_attention``; otherwise matmul + softmax (also
            taken inside :func:`record_attention_weights`).
        scale: logit scale, ``hd ** -0.5`` by default.

    Returns:
        (..., N, hd_v) attended values.
    """
    if fused and not _WEIGHT_RECORDERS:
        if attn_bias is not None and attn_bias.ndim < q.ndim:
            # a mask with as many dims as q lets SDPA pick its flash kernel on CPU; a
            # lower-rank one (broadcast all the same) sends it down the ~2x slower math path
            attn_bias = attn_bias[(None,) * (q.ndim - attn_bias.ndim)]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q * scale) @ k.transpose(-2, -1)  # ..., N, L
    if attn_bias is not None:
        attn = attn + attn_bias
    attn = attn.softmax(dim=-1)
    for record in _WEIGHT_RECORDERS:
        record(attn)
    if dropout_p > 0.0:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ v


class ProjectedAttention(nn.Module):
    """Base of attention modules that end in ``proj_drop(proj(...))``: subclasses define
    ``attend(x, *args)``, the heads' output before the projection, and hold ``proj`` and
    ``proj_drop``."""

    proj: nn.Module
    proj_drop: nn.Module

    def attend(self, x: Tensor, *args) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, *args) -> Tensor:
        return self.proj_drop(linear(self.proj, self.attend(x, *args)))

    def add_to(self, residual: Tensor, x: Tensor, *args, drop_path: nn.Module | None = None) -> Tensor:
        """``residual + drop_path(self(x, *args))``, the first half of a pre-norm transformer block;
        in inference the output projection accumulates into the residual
        (:func:`~visionzoo.layers.linear.add_projection`)."""
        if type(self).forward is not ProjectedAttention.forward or not no_hooks(self):
            y = self(x, *args)
            return residual + (y if drop_path is None else drop_path(y))
        return add_projection(residual, self.attend(x, *args), self.proj, self.proj_drop, drop_path)


class Attention(ProjectedAttention):
    """Multi-head self-attention (Vaswani et al., 2017) over a token sequence.

    Args:
        dim: token width C.
        num_heads: number of heads nH; ``dim`` must divide by it unless ``head_dim`` is given.
        qkv_bias: bias on the joint query/key/value projection.
        head_dim: width of one head (default ``dim // num_heads``).
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        fused: default path; ``False`` selects the matmul/softmax path.

    Shapes:
        x: (B, N, C) -> (B, N, C). ``attn_bias`` broadcasts to (B, nH, N, N).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        qkv_bias: bool = True,
        head_dim: int | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused: bool = True,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
            head_dim = dim // num_heads
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.fused = fused
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project tokens to per-head queries, keys and values, each (B, nH, N, hd)."""
        B, N, _ = x.shape
        qkv = linear(self.qkv, x).reshape(B, N, 3, self.num_heads, self.head_dim)  # B, N, 3, nH, hd
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nH, N, hd)
        return q, k, v

    def attend(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """The heads' attended values, concatenated: (B, N, C) -> (B, N, nH*hd), before ``proj``."""
        B, N, _ = x.shape
        q, k, v = self.qkv_heads(x)
        x = attention(
            q, k, v, attn_bias,
            dropout_p=self.attn_drop if self.training else 0.0,
            fused=self.fused,
            scale=self.scale,
        )  # B, nH, N, hd
        return x.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)  # B, N, nH*hd

    def attention_map(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """Softmax attention weights (B, nH, N, N), for analysis (rollout, distances)."""
        q, k, _ = self.qkv_heads(x)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if attn_bias is not None:
            logits = logits + attn_bias
        return logits.softmax(dim=-1)


class AttentionPoolLatent(nn.Module):
    """Attention pooling with a learned query (SigLIP's "MAP" head; Lee et al., "Set
    Transformer", ICML 2019; timm's ``AttentionPoolLatent``, whose keys it keeps).

    One learned latent token queries the sequence (multi-head attention: the latent projected by
    ``q``, the tokens by ``kv`` into keys and values), the result is projected, and a pre-norm
    MLP is added to it: ``y = proj(attn(q(latent), kv(x))); y + mlp(norm(y))``.

    Args:
        dim: token width C.
        num_heads: heads of the pooling attention.
        mlp_ratio: hidden width of the MLP over ``dim``.
        norm_layer: the norm before the MLP.
        act_layer: the MLP's activation.

    Shapes:
        (B, N, C) -> (B, C).
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 act_layer: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.fused = True
        trunc_normal_(self.latent, std=dim**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        nH = self.num_heads
        q = linear(self.q, self.latent).view(1, nH, 1, C // nH).expand(B, -1, -1, -1)  # B, nH, 1, hd
        k, v = linear(self.kv, x).view(B, N, 2, nH, C // nH).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, nH, N, hd)
        y = attention(q, k, v, fused=self.fused).transpose(1, 2).reshape(B, 1, C)  # B, 1, C
        y = linear(self.proj, y)
        return (y + self.mlp(self.norm(y)))[:, 0]  # B, C
