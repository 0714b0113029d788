"""CoAtNet: depthwise convolution and relative self-attention, stacked vertically.

Paper: Dai, Liu, Le & Tan, "CoAtNet: Marrying Convolution and Attention for All Data
Sizes", NeurIPS 2021.

Five stages at strides 2/4/8/16/32:

* S0, the stem: 3x3 stride-2 conv -> BN -> GELU -> 3x3 conv;
* S1, S2: MBConv blocks (pre-norm BN, 1x1 expand 4x, depthwise 3x3, squeeze-excitation,
  1x1 project), residual;
* S3, S4: Transformer blocks with *relative attention* (pre-norm LayerNorm, residual):
  the logits of query i and key j get a static, learned bias w[i - j], one table entry
  per 2-D offset and head, ((2H-1)(2W-1), nH) -- the paper's "pre-normalised relative
  attention" (Eq. 3), where attention covers the whole H x W map of the stage;
* global average pooling, LayerNorm, a tanh pre-logits layer and the classifier (as timm's
  ``coatnet_*_224``; the paper does not spell out its head).

Every stage opens with a stride-2 block: in its shortcut a 2x2 average pool and a 1x1
convolution widen the channels; its residual branch strides the depthwise convolution
(MBConv) or pools after the norm (Transformer, Eq. 5 of the paper).

The layout (the paper's Sec. 2.3 compares C-C-C-C, C-C-C-T, C-C-T-T, C-T-T-T and
ViT_REL) is a configuration field: ``create_model("coatnet_0_224", layout="C-T-T-T")``.
``"ViT_REL"`` is our reading of the paper's ViT baseline with relative attention: the
conv stem, then an 8x8 stride-8 patch embedding to stride 16 and ``sum(depths)``
Transformer blocks of width ``embed_dim[2]`` (the paper gives no exact configuration).

Implementation notes.

* State-dict keys and shapes equal timm's ``coatnet_*_224`` (1x1 convolutions keep their
  (O, I, 1, 1) kernels), so timm checkpoints load as they are. As in timm, the first MBConv
  of a stage strides its depthwise convolution (the 1x1 expansion runs at the input
  resolution); the paper strides before the expansion, which is why the counted GMACs
  exceed the paper's FLOPs by 3-8 % (see ``published``).
* Speed (CPU, fp32, batch 4, 2 AVX-512 cores; BENCHMARKS.md): 2.37x timm's coatnet_0_224 with
  glibc's default malloc and 1.60x with freed memory kept on an AMD EPYC host, 1.99x and 1.44x on
  an Intel Xeon host. Every 1x1 convolution is a
  matmul over a channels-last view (PyTorch's CPU conv takes a slow path for 1x1 kernels);
  in inference the BatchNorms are folded into the adjacent convolutions at forward time and
  the SE gate into the projection weights; GELU and residual sums run in place where
  autograd does not need their inputs. The input is put in channels-last memory once;
  Transformer stages keep tokens as (B, H, W, C) and return an NCHW *view*, so no layout
  copies are made between stages.
* The bias w[i - j] is gathered from the table once per block and forward, as a
  (1, nH, N, N) tensor handed to ``scaled_dot_product_attention`` as ``attn_mask`` (4-D:
  a 3-D mask sends CPU SDPA to its slow math path).
* Any input size. The bias tables are sized for the feature maps of ``img_size`` (as
  timm's, whose tables only fit that size). For another input size the table is resized
  *at forward time* (:func:`visionzoo.layers.resize_rel_pos_bias_table`: a smaller map
  reads the sub-table of its offsets, a larger one a bicubic interpolation; the index for
  the new size is cached); a checkpoint trained at another ``img_size`` is resized the
  same way once when loaded (:meth:`CoAtNet.adapt_state_dict`). Both give the same logits.
  Odd sides work: the stride-2 average pools use ``ceil_mode`` (identical to timm's pools
  on even sides).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import FeatureInfo, VisionModel, tap_outputs
from ..checkpoints import register_converter
from ..layers import NORM_POOL_TYPES, DropPath, SqueezeExcite, apply_conv_bn, bn_affine, bn_tensors, classifier, drop_path_rates, global_pool_2d, he_normal_fan_out_, linear, linear_act, make_divisible, relative_position_index, resize_rel_pos_bias_table, trunc_normal_, uses_running_stats
from ..layers.activations import gelu
from ..layers.attention import attention
from ..layers.helpers import DerivedCache, autograd_off, needs_grad, no_hooks, plain_cpu_eager, to_channels_last
from ..layers.linear import register_linear_type
from ..registry import INCEPTION_MEAN, INCEPTION_STD, default_cfg, register_family
from ..runtime import retains

__all__ = ["CoAtNet", "CoAtNetConfig", "MBConvBlock", "RelativeAttention", "TransformerBlock", "parse_layout"]

VIT_REL = "ViT_REL"


# --------------------------------------------------------------------------- helpers
def parse_layout(layout: str, num_stages: int) -> tuple[str, ...]:
    """``"C-C-T-T"`` -> ``("C", "C", "T", "T")``; ``"ViT_REL"`` -> ``("ViT_REL",)``.

    Raises:
        ValueError: for anything but ``num_stages`` dash-separated ``C`` / ``T`` letters or
            ViT_REL (any case, ``-`` or ``_``).
    """
    if not isinstance(layout, str):
        raise ValueError(f"layout must be a string such as 'C-C-T-T' or 'ViT_REL', got {layout!r}")
    if layout.replace("-", "_").upper() == VIT_REL.upper():
        return (VIT_REL,)
    kinds = tuple(s.strip().upper() for s in layout.split("-"))
    if len(kinds) != num_stages or any(k not in ("C", "T") for k in kinds):
        raise ValueError(
            f"layout {layout!r} is not understood: give one letter per stage ({num_stages} stages), C (MBConv) "
            f"or T (Transformer) joined by '-', e.g. 'C-C-T-T' (CoAtNet), 'C-C-C-C', 'C-C-C-T', 'C-T-T-T', "
            f"or 'ViT_REL'"
        )
    return kinds


def avg_pool2(x: Tensor) -> Tensor:
    """2x2 stride-2 average pool of an NCHW map; odd sides keep their last row/column (ceil)."""
    return F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)


def pool_cl(x: Tensor) -> Tensor:
    """:func:`avg_pool2` of a channels-last (B, H, W, C) map, through a permuted view (no copy)."""
    return avg_pool2(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # B, H/2, W/2, C


@register_linear_type  # layers.linear may run it as one fused oneDNN call
class PointwiseConv(nn.Conv2d):
    """1x1 convolution applied to channels-last tokens (..., C) as a matmul.

    The kernel keeps ``nn.Conv2d``'s (O, I, 1, 1) shape (timm's NCHW layout), so checkpoints
    load unchanged; ``forward`` is ``F.linear`` on the last axis.
    """

    def __init__(self, in_chs: int, out_chs: int, bias: bool = True) -> None:
        super().__init__(in_chs, out_chs, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # (..., I) -> (..., O)
        return linear_act(x, self.weight.flatten(1), self.bias)


def pointwise(x: Tensor, weight: Tensor, bias: Tensor | None, act: nn.Module | None = None) -> Tensor:
    """A 1x1 convolution of an NCHW map (then ``act``) as a matmul over its (B, H, W, C) view.

    On CPU this is about twice as fast as ``conv2d`` (which takes a slow path for 1x1
    kernels in channels-last memory); with channels-last input both permutes are views.
    In CPU inference the activation is fused into the matmul (:func:`layers.linear_act`).
    """
    return linear_act(x.permute(0, 2, 3, 1), weight.flatten(1), bias, act).permute(0, 3, 1, 2)  # B, O, H, W


_GELU = nn.GELU()
_BIASES = DerivedCache()  # RelativePositionBias -> its gathered (1, nH, N, N) bias
_FOLDED_EXPANSION = DerivedCache()  # MBConvBlock -> its 1x1 expansion with both BatchNorms folded in


# --------------------------------------------------------------------------- convolution blocks
class Stem(nn.Module):
    """S0: 3x3 stride-2 conv -> BN -> GELU -> 3x3 conv (no norm: the next block pre-normalises).

    In CPU inference the BN is folded into the first convolution and the GELU applied as its
    post-op, and both convolutions run on cached prepacked weights (:func:`layers.apply_conv_bn`;
    the weights stay as they are).
    """

    def __init__(self, in_chans: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return apply_conv_bn(self.conv2, None, apply_conv_bn(self.conv1, self.norm1, x, _GELU))


class PoolShortcut(nn.Module):
    """The shortcut of a stride-2 block: 2x2 average pool, then a 1x1 conv to the new width.

    NCHW maps, or (B, H, W, C) tokens with ``channels_last=True``.
    """

    def __init__(self, in_chs: int, out_chs: int, *, channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.expand = PointwiseConv(in_chs, out_chs) if in_chs != out_chs else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            return self.expand(pool_cl(x))
        x = avg_pool2(x)
        return x if isinstance(self.expand, nn.Identity) else self.expand(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MBConvBlock(nn.Module):
    """Pre-norm inverted bottleneck with squeeze-excitation (the paper's MBConv).

    BN -> 1x1 expand (``expand_ratio`` x out) -> BN -> GELU -> depthwise 3x3 (stride) -> BN
    -> GELU -> SE (SiLU, ``se_ratio`` x out) -> 1x1 project, plus the shortcut.

    In inference the three BatchNorms are folded, at forward time, into the convolutions
    next to them (pre-norm and norm1 into the 1x1 expansion, norm2 into the depthwise
    convolution): the same function with three fewer passes over the largest maps of the
    network. 1x1 convolutions run as matmuls (see :func:`pointwise`), and the SE gate is
    applied to the projection's weights (per sample) rather than to the map when autograd is on.
    Where any part has a forward hook, every part is called as a module instead.

    Args:
        in_chs, out_chs: widths; a stride-2 block pools and widens its shortcut.
        stride: 1 or 2 (on the depthwise convolution).
        expand_ratio: hidden width over ``out_chs``.
        se_ratio: squeeze-excitation width over ``out_chs``.
        drop_path: stochastic-depth rate of the residual branch.

    Shapes:
        (B, in_chs, H, W) -> (B, out_chs, ceil(H/stride), ceil(W/stride)).
    """

    def __init__(self, in_chs: int, out_chs: int, *, stride: int = 1, expand_ratio: float = 4.0, se_ratio: float = 0.25, drop_path: float = 0.0) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and in_chs != out_chs:
            raise ValueError(f"a stride-1 MBConv block keeps its width, got {in_chs} -> {out_chs}")
        mid = make_divisible(out_chs * expand_ratio)
        self.stride = stride
        self.shortcut = PoolShortcut(in_chs, out_chs) if stride == 2 else nn.Identity()
        self.pre_norm = nn.BatchNorm2d(in_chs)
        self.conv1_1x1 = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(mid)
        self.conv2_kxk = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.se = SqueezeExcite(mid, int(se_ratio * out_chs), act_layer=nn.SiLU)
        self.conv3_1x1 = nn.Conv2d(mid, out_chs, 1)
        self.drop_path = DropPath(drop_path)

    #: in CPU inference without autograd, the batch is run in chunks whose expanded (widest) map stays
    #: under this many elements (32 MB in fp32): larger buffers are fresh memory on every call
    #: (glibc serves them by mmap), and first-touch page faults then cost more than the GELU.
    #: A GPU's caching allocator reuses its blocks, and small chunks would only starve its kernels;
    #: where freed memory is kept for reuse (visionzoo.runtime.retain_freed_memory, as the
    #: visionzoo command does) the batch runs whole too. Paired A/B at batch 4 (CoAtNet-0, 2-core
    #: AMD EPYC, chunked over whole): 0.811 with glibc's defaults, 1.065 with memory kept.
    chunk_elements: int = 1 << 23

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling() or needs_grad(x) or x.device.type != "cpu" or any(m.training for m in self.modules()):
            # traced graphs get no shape-dependent branches; batch statistics need the whole batch
            # (also where only the BatchNorms train, as in test-time adaptation of an eval model)
            return self._forward(x)
        B, _, H, W = x.shape
        per_sample = self.conv1_1x1.out_channels * H * W
        # a forward hook on a part would see each chunk as a call of its own: the batch runs whole
        if B > 1 and per_sample * B > self.chunk_elements and not retains(per_sample * B * x.element_size()) and no_hooks(*(m for m in self.modules() if m is not self)):
            chunk = max(1, self.chunk_elements // per_sample)
            return torch.cat([self._forward(c) for c in x.split(chunk)])
        return self._forward(x)

    def _folded_expansion(self) -> tuple[Tensor, Tensor] | None:
        """The 1x1 expansion with the BatchNorms before and after it folded in, as (weight,
        bias): norm1(W (s0 x + t0)) = s1 W s0 x + s1 W t0 + t1; None while either norm trains.

        Without autograd the pair is kept until a weight or statistic changes: the linear
        kernel keeps its blocked copy of a weight it sees again (:func:`layers.linear_act`),
        and reorders a fresh one on every call. With a weight folded anew per forward, CoAtNet-0's
        expansions of 64-96 channels ran at 155-220 GFLOP/s (batch 4, 2 AVX-512 cores), against
        ~450 for the other 1x1 convolutions."""
        pre, n1 = self.pre_norm, self.norm1
        if not (uses_running_stats(pre) and uses_running_stats(n1)):
            return None

        def fold() -> tuple[Tensor, Tensor]:
            (s0, t0), (s1, t1) = bn_affine(pre), bn_affine(n1)
            w = self.conv1_1x1.weight.flatten(1)  # mid, in
            return s1[:, None] * w * s0[None, :], s1 * (w @ t0) + t1

        if not autograd_off():
            return fold()
        sources = (self.conv1_1x1.weight, *bn_tensors(pre), *bn_tensors(n1))
        return _FOLDED_EXPANSION.get(self, sources, fold, (pre.eps, n1.eps)) or fold()  # (fold() per call if untrackable)

    def _forward(self, x: Tensor) -> Tensor:
        shortcut = self.shortcut(x)
        parts = (self.pre_norm, self.conv1_1x1, self.norm1, self.conv2_kxk, self.norm2, *self.se.modules(), self.conv3_1x1)
        if not no_hooks(*parts):  # each part called as a module: its hooks see what they expect
            x = gelu(self.norm1(self.conv1_1x1(self.pre_norm(x))))
            x = self.conv3_1x1(self.se(gelu(self.norm2(self.conv2_kxk(x)))))
            return self.drop_path(x) + shortcut
        folded = self._folded_expansion()
        if folded is not None:
            x = pointwise(x, *folded, _GELU)
        else:
            x = gelu(self.norm1(pointwise(self.pre_norm(x), self.conv1_1x1.weight, None)))
        # in CPU inference one oneDNN call on a cached prepacked weight with norm2 folded in and
        # the GELU as its post-op (layers.apply_conv_bn): CoAtNet-0 at batch 4 0.966x the time of
        # folding per call and a separate GELU pass (2-core Xeon, 20 pairs)
        x = apply_conv_bn(self.conv2_kxk, self.norm2, x, _GELU)
        B, C, H, W = x.shape
        # SE: the gate scales the input channels of the 1x1 projection: (x * g) W^T = x (g W^T).
        # With autograd it goes into a per-sample weight (a batched matmul), which saves a pass
        # over the widest map. Without, it scales the map in place (it is this block's own), and
        # the projection is one oneDNN call on the unchanged, cached blocked weight: 1.02-1.03x
        # for CoAtNet-0 at batch 4 on a 2-core AVX-512 CPU, the batched matmul reaching only
        # 105-130 GFLOP/s on these shapes.
        se = self.se
        gate = se.gate(se.fc2(se.act(se.fc1(x.mean((2, 3), keepdim=True))))).view(B, 1, C)  # B, 1, mid
        w = self.conv3_1x1.weight.flatten(1)  # out, mid
        tokens = x.permute(0, 2, 3, 1).reshape(B, H * W, C)  # B, HW, mid (a view in channels-last memory)
        if autograd_off():
            x = linear_act(tokens.mul_(gate), w, self.conv3_1x1.bias)
        else:
            x = torch.bmm(tokens, (w * gate).transpose(1, 2))  # B, HW, out
            if self.conv3_1x1.bias is not None:
                x += self.conv3_1x1.bias  # in place: bmm's backward does not need its output
        x = x.view(B, H, W, w.shape[0]).permute(0, 3, 1, 2)  # B, out, H, W (sizes given: an empty batch has none to infer)
        return self.drop_path(x).add_(shortcut)  # in place on a fresh tensor (no extra 1-map allocation)


# --------------------------------------------------------------------------- relative attention
class RelativePositionBias(nn.Module):
    """The static bias w[i - j]: a ((2H-1)(2W-1), nH) table over 2-D offsets of an H x W map.

    ``size`` is the feature size the table is configured for. :meth:`bias` returns the
    (1, nH, N, N) bias of an H' x W' map; for another size than ``size`` the table is first
    resized (see the module docstring).
    """

    def __init__(self, size: tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.size = size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * size[0] - 1) * (2 * size[1] - 1), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(size).view(-1), persistent=False)
        self._index_cache: dict[tuple, Tensor] = {}

    def _index(self, size: tuple[int, int], device: torch.device) -> Tensor:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return relative_position_index(size).view(-1).to(device)
        key = (size, device)
        if key not in self._index_cache:
            self._index_cache[key] = relative_position_index(size).view(-1).to(device)
        return self._index_cache[key]

    def bias(self, size: tuple[int, int]) -> Tensor:
        """(1, nH, N, N) additive attention bias for an H x W map of N = H*W tokens; in CPU
        inference a cached tensor (kept until the table changes) that callers only read."""
        table = self.relative_position_bias_table
        if autograd_off() and plain_cpu_eager(table.detach()):  # (a Parameter is a subclass)
            cached = _BIASES.get(self, (table,), lambda: (self._gather(size),), (size,))
            if cached is not None:
                return cached[0]
        return self._gather(size)

    def _gather(self, size: tuple[int, int]) -> Tensor:
        table = self.relative_position_bias_table
        if size == self.size:
            idx = self.relative_position_index
        else:
            table = resize_rel_pos_bias_table(table, size, self.size)
            idx = self._index(size, table.device)
        N = size[0] * size[1]
        # gather along the offsets of the (tiny) transposed table: (nH, N*N), contiguous, no permute
        return table.t().contiguous().index_select(1, idx).view(1, -1, N, N)  # 1, nH, N, N


class RelativeAttention(nn.Module):
    """Multi-head self-attention over a whole H x W map with the relative bias w[i - j].

    ``qkv`` is timm's head-first layout: output channel h*3*hd + t*hd + d holds component
    t (q, k, v) of head h.

    Args:
        dim: input width.
        dim_out: output (and attention) width; heads = dim_out / dim_head.
        size: feature size of the bias table.
        dim_head: width of a head.
        attn_drop, proj_drop: dropout rates.

    Shapes:
        (B, H, W, dim) -> (B, H, W, dim_out).
    """

    def __init__(self, dim: int, dim_out: int, size: tuple[int, int], *, dim_head: int = 32, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim_out % dim_head:
            raise ValueError(f"width {dim_out} is not divisible by the head width {dim_head}")
        self.num_heads, self.dim_head = dim_out // dim_head, dim_head
        self.qkv = PointwiseConv(dim, 3 * dim_out)
        self.rel_pos = RelativePositionBias(size, self.num_heads)
        self.attn_drop = attn_drop
        self.proj = PointwiseConv(dim_out, dim_out)
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused = True

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, _ = x.shape
        N, nH, hd = H * W, self.num_heads, self.dim_head
        qkv = self.qkv(x).view(B, N, nH, 3, hd)  # B, N, nH, 3, hd (head-first channels)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # 3 x (B, nH, N, hd), views
        # 4-D (1, nH, N, N): a 3-D mask sends CPU SDPA to its slow math path
        bias = self.rel_pos.bias((H, W)).to(q.dtype)  # 1, nH, N, N
        x = attention(q, k, v, bias, dropout_p=self.attn_drop if self.training else 0.0, fused=self.fused)  # B, nH, N, hd
        x = x.transpose(1, 2)  # B, N, nH, hd
        if torch.compiler.is_compiling():
            # export/compile may later decompose SDPA into kernels with another output layout,
            # which would invalidate the view that reshape records at trace time
            x = x.clone(memory_format=torch.contiguous_format)
        x = x.reshape(B, N, nH * hd)  # B, N, C (a view in eager: CPU SDPA writes B, N, nH, hd)
        x = self.proj(x)  # B, N, C
        return self.proj_drop(x.view(B, H, W, x.shape[-1]))  # B, H, W, C


class NormPool(nn.Module):
    """LayerNorm, then 2x2 average pool of a (B, H, W, C) map (the stride-2 block's pre-norm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return pool_cl(self.norm(x))


class ConvMlp(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv on channels-last tokens (keys ``fc1`` / ``fc2`` as timm's)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = PointwiseConv(dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fc2 = PointwiseConv(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(linear(self.fc1, x, self.act))))


class TransformerBlock(nn.Module):
    """Pre-norm Transformer block with relative attention (Eq. 3 and 5 of the paper).

    x = shortcut(x) + Attn(Pool(LN(x))); x = x + MLP(LN(x)). A stride-2 block pools its
    shortcut (and widens it with a 1x1 conv) and pools after its first LayerNorm.

    Args:
        dim, dim_out: widths.
        size: feature size (after striding) the bias table is made for.
        stride: 1 or 2.
        dim_head: head width.
        mlp_ratio: MLP hidden width over ``dim_out``.
        attn_drop, proj_drop, drop_path: regularisation.

    Shapes:
        (B, H, W, dim) -> (B, ceil(H/stride), ceil(W/stride), dim_out), channels last.
    """

    def __init__(self, dim: int, dim_out: int, size: tuple[int, int], *, stride: int = 1, dim_head: int = 32, mlp_ratio: float = 4.0, attn_drop: float = 0.0, proj_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and dim != dim_out:
            raise ValueError(f"a stride-1 Transformer block keeps its width, got {dim} -> {dim_out}")
        if stride == 2:
            self.shortcut = PoolShortcut(dim, dim_out, channels_last=True)
            self.norm1 = NormPool(dim)
        else:
            self.shortcut = nn.Identity()
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RelativeAttention(dim, dim_out, size, dim_head=dim_head, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = ConvMlp(dim_out, int(dim_out * mlp_ratio), proj_drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        # residual sums in place on the branch outputs (fresh tensors whose producers' backward
        # does not need them)
        x = self.drop_path1(self.attn(self.norm1(x))).add_(self.shortcut(x))
        return self.drop_path2(self.mlp(self.norm2(x))).add_(x)


# --------------------------------------------------------------------------- stages
class ConvStage(nn.Module):
    """MBConv blocks on NCHW maps, the first with stride 2. (B, C, H, W) -> (B, C', H/2, W/2)."""

    kind = "C"

    def __init__(self, in_chs: int, out_chs: int, depth: int, *, drop_paths: Sequence[float], **kwargs) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[
            MBConvBlock(in_chs if i == 0 else out_chs, out_chs, stride=2 if i == 0 else 1, drop_path=drop_paths[i], **kwargs)
            for i in range(depth)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class TransformerStage(nn.Module):
    """Transformer blocks on channels-last tokens, the first with stride 2 (or after a patch embedding).

    Takes and returns NCHW maps; inside, tokens are (B, H, W, C), and the permutes at both
    ends are views (no copy when the maps are in channels-last memory).

    Args:
        patch_size: 0 for CoAtNet's stride-2 first block; > 0 embeds p x p patches with a
            strided convolution first (the ViT_REL baseline) and keeps stride 1 after it.
    """

    kind = "T"

    def __init__(self, in_chs: int, out_chs: int, depth: int, size: tuple[int, int], *, drop_paths: Sequence[float], patch_size: int = 0, **kwargs) -> None:
        super().__init__()
        self.patch_size = patch_size
        if patch_size:
            self.patch_embed = nn.Conv2d(in_chs, out_chs, patch_size, stride=patch_size)
        self.blocks = nn.Sequential(*[
            TransformerBlock(out_chs if i or patch_size else in_chs, out_chs, size, stride=1 if i or patch_size else 2, drop_path=drop_paths[i], **kwargs)
            for i in range(depth)
        ])

    def forward(self, x: Tensor) -> Tensor:
        if self.patch_size:
            p = self.patch_size
            if x.shape[-2] % p or x.shape[-1] % p:
                x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
            x = self.patch_embed(x)
        x = self.blocks(x.permute(0, 2, 3, 1))  # B, H, W, C
        return x.permute(0, 3, 1, 2)  # B, C, H, W (channels-last memory)


class NormMlpHead(nn.Module):
    """Global pool (average by default) -> LayerNorm -> Linear + tanh (pre-logits) -> dropout -> classifier."""

    def __init__(self, dim: int, num_classes: int, hidden: int | None, drop: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.num_features = hidden or dim
        if hidden:
            self.pre_logits = nn.Sequential()
            self.pre_logits.add_module("fc", nn.Linear(dim, hidden))
            self.pre_logits.add_module("act", nn.Tanh())
        else:
            self.pre_logits = nn.Identity()
        self.drop = nn.Dropout(drop)
        self.fc = classifier(self.num_features, num_classes)

    def forward(self, x: Tensor, pre_logits: bool = False, pool_type: str = "avg") -> Tensor:
        x = self.drop(self.pre_logits(self.norm(global_pool_2d(x, pool_type))))  # B, C
        return x if pre_logits else self.fc(x)


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class CoAtNetConfig:
    """A CoAtNet: widths and depths of S1-S4, stem width, block type per stage.

    ``layout``: "C-C-T-T" (CoAtNet), any other dash-joined C/T string with one letter per
    stage, or "ViT_REL" (see the module docstring).
    """

    embed_dim: tuple[int, ...] = (96, 192, 384, 768)
    depths: tuple[int, ...] = (2, 3, 5, 2)
    stem_width: int = 64
    layout: str = "C-C-T-T"
    head_hidden_size: int | None = 768
    dim_head: int = 32
    expand_ratio: float = 4.0
    se_ratio: float = 0.25
    mlp_ratio: float = 4.0
    vit_patch_size: int = 8
    #: dropout before the classifier (timm's meaning); after the transformer blocks'
    #: projections and MLP layers; on the attention weights
    drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0


class CoAtNet(VisionModel):
    """CoAtNet classifier.

    Shapes:
        (B, in_chans, H, W) -> (B, num_classes); any H, W.
        ``forward_features``: (B, C4, H/32, W/32), NCHW (channels-last memory), before the head.
        ``forward_intermediates``: the stem's and each stage's NCHW output, as timm's
        (index 0 is the stem, stride 2).
    """

    family = "coatnet"
    size_dependent = True
    pool_types = NORM_POOL_TYPES
    grad_checkpoint_units = (r"stages\.\d+\.blocks\.\d+",)

    def __init__(self, cfg: CoAtNetConfig, *, num_classes: int = 1000, in_chans: int = 3, img_size: tuple[int, int] = (224, 224), drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if len(cfg.embed_dim) != len(cfg.depths):
            raise ValueError(f"embed_dim {cfg.embed_dim} and depths {cfg.depths} must have one entry per stage")
        self.cfg = cfg
        self.layout = parse_layout(cfg.layout, len(cfg.depths))
        if self.layout != (VIT_REL,) and cfg.vit_patch_size != CoAtNetConfig.vit_patch_size:
            raise ValueError(f"vit_patch_size is the patch of layout 'ViT_REL' only; layout {cfg.layout!r} has no such patch, got vit_patch_size={cfg.vit_patch_size}")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.img_size = tuple(img_size)
        self.stem = Stem(in_chans, cfg.stem_width)
        size = tuple(math.ceil(s / 2) for s in img_size)
        self.feature_info = [FeatureInfo(cfg.stem_width, 2, "stem")]
        tkw = dict(dim_head=cfg.dim_head, mlp_ratio=cfg.mlp_ratio, attn_drop=cfg.attn_drop_rate, proj_drop=cfg.proj_drop_rate)
        stages: list[nn.Module] = []
        if self.layout == (VIT_REL,):
            p, dim, depth = cfg.vit_patch_size, cfg.embed_dim[min(2, len(cfg.embed_dim) - 1)], sum(cfg.depths)
            size = tuple(math.ceil(s / p) for s in size)
            stages.append(TransformerStage(cfg.stem_width, dim, depth, size, patch_size=p, drop_paths=drop_path_rates(drop_path_rate, depth), **tkw))
            self.feature_info.append(FeatureInfo(dim, 2 * p, "stages.0"))
        else:
            dpr = drop_path_rates(drop_path_rate, sum(cfg.depths))
            in_chs, start, stride = cfg.stem_width, 0, 2
            for i, (kind, dim, depth) in enumerate(zip(self.layout, cfg.embed_dim, cfg.depths)):
                size, stride = tuple(math.ceil(s / 2) for s in size), stride * 2
                dp = dpr[start : start + depth]
                if kind == "C":
                    stages.append(ConvStage(in_chs, dim, depth, drop_paths=dp, expand_ratio=cfg.expand_ratio, se_ratio=cfg.se_ratio))
                else:
                    stages.append(TransformerStage(in_chs, dim, depth, size, drop_paths=dp, **tkw))
                self.feature_info.append(FeatureInfo(dim, stride, f"stages.{i}"))
                in_chs, start = dim, start + depth
        self.stages = nn.Sequential(*stages)
        last = self.feature_info[-1].num_chs
        self.head = NormMlpHead(last, num_classes, cfg.head_hidden_size, cfg.drop_rate)
        # timm's: num_features the last stage's width (forward_features'), head_hidden_size the pre-logits'
        self.num_features, self.head_hidden_size = last, self.head.num_features
        self._init_weights()

    def reset_head(self, num_classes: int) -> None:
        self.head.fc = classifier(self.head.num_features, num_classes)  # after the pre-logits layer, where there is one

    @torch.no_grad()
    def _init_weights(self) -> None:
        """EfficientNet-style normal init for convolutions, Xavier in Transformer blocks (timm's 'vit_eff')."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                he_normal_fan_out_(m)
        for blk in self.modules():
            if isinstance(blk, TransformerBlock):
                for m in blk.modules():
                    if isinstance(m, PointwiseConv):
                        nn.init.xavier_uniform_(m.weight)
                        if m.bias is not None:
                            nn.init.zeros_(m.bias)
                trunc_normal_(blk.attn.rel_pos.relative_position_bias_table)

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        # NHWC memory from here on: the convolutions run without layout reorders and the
        # Transformer stages' (B, H, W, C) views need no copy
        x = self.stem(to_channels_last(x))
        return self.stages(x)

    def unpooled_head(self, x: Tensor) -> Tensor:
        """timm's ``global_pool=''``: the head's LayerNorm and tanh pre-logits layer applied to
        every position of the map (B, hidden, H, W)."""
        head = self.head
        return head.pre_logits(head.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)

    def intermediate_maps(self, x: Tensor, indices: Sequence[int], *, with_features: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        self.check_input(x)
        return tap_outputs(to_channels_last(x), [self.stem, *self.stages], indices, to_end=with_features)

    def prune_for_features(self, indices: Sequence[int]) -> None:
        self.stages = self.stages[: max(indices)]
        self.head = nn.Identity()  # type: ignore[assignment]
        self.num_classes = 0

    def group_matcher(self, coarse: bool = False) -> dict:
        """Group 0 is the stem; then one group per stage, fine or ``coarse`` alike (as timm
        groups CoAtNet); the head (its norm and pre-logits included) last."""
        return dict(stem=r"^stem\.", blocks=r"^stages\.(\d+)\.")

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    def adapt_state_dict(self, state_dict: dict[str, Tensor], source: VisionModel | None = None) -> dict[str, Tensor]:
        """Resize relative-position tables trained at another image size to this model's
        (:func:`~visionzoo.layers.resize_rel_pos_bias_table`).

        The source table is the ``source`` model's size where given, else taken as square
        (timm's and the paper's checkpoints are).
        """
        def sizes(model: nn.Module | None) -> dict[str, tuple[int, int]]:
            mods = model.named_modules() if model is not None else ()
            return {f"{n}.relative_position_bias_table": m.size for n, m in mods if isinstance(m, RelativePositionBias)}

        ours, theirs = sizes(self), sizes(source)
        out = dict(state_dict)
        for k, v in state_dict.items():
            if k in ours and v.ndim == 2 and (v.shape[0] != (2 * ours[k][0] - 1) * (2 * ours[k][1] - 1) or theirs.get(k, ours[k]) != ours[k]):
                out[k] = resize_rel_pos_bias_table(v, ours[k], theirs.get(k))
        return out


@register_converter("coatnet", "timm")
def _from_timm(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """timm's keys are ours; a timm model built with ``global_pool=''`` holds its pre-logits
    layer as a 1x1 convolution, whose kernel is flattened to the linear weight."""
    return {k: v.flatten(1) if k.startswith("head.pre_logits.") and v.ndim == 4 else v for k, v in sd.items()}

VARIANTS = {
    "coatnet_0_224": CoAtNetConfig(embed_dim=(96, 192, 384, 768), depths=(2, 3, 5, 2), stem_width=64, head_hidden_size=768),
    "coatnet_1_224": CoAtNetConfig(embed_dim=(96, 192, 384, 768), depths=(2, 6, 14, 2), stem_width=64, head_hidden_size=768),
    "coatnet_2_224": CoAtNetConfig(embed_dim=(128, 256, 512, 1024), depths=(2, 6, 14, 2), stem_width=128, head_hidden_size=1024),
    "coatnet_3_224": CoAtNetConfig(embed_dim=(192, 384, 768, 1536), depths=(2, 6, 14, 2), stem_width=192, head_hidden_size=1536),
    "coatnet_4_224": CoAtNetConfig(embed_dim=(192, 384, 768, 1536), depths=(2, 12, 28, 2), stem_width=192, head_hidden_size=1536),
}

register_family(
    "coatnet",
    CoAtNet,
    VARIANTS,
    default_cfgs=lambda name, cfg: default_cfg(
        224, mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=0.95, first_conv="stem.conv1", classifier="head.fc"
    ),
    # The paper strides the first MBConv of S1/S2 before its 1x1 expansion; timm (and visionzoo,
    # to load its weights) strides the depthwise conv, so that expansion runs at 4x the pixels:
    # + in*4*out*(HW_in - HW_out) multiply-adds (0.41 G for CoAtNet-0). Counted minus that
    # term is within 2 % of the paper for all four (tests/reference/test_coatnet.py).
    published={  # paper Table 4 (ImageNet-1k only, 224); CoAtNet-4 has no 224/1k entry
        "coatnet_0_224": dict(params=25.0, top1=81.6, note="paper: 4.2 GFLOPs; counted 4.55 GMACs: timm's S1/S2 opening blocks expand before striding (4.14 if strided first, as the paper)"),
        "coatnet_1_224": dict(params=42.0, gmacs=8.4, top1=83.3, note="counted 8.64 GMACs (timm's expansion before the stride; 8.24 if strided first)"),
        "coatnet_2_224": dict(params=75.0, top1=84.1, note="paper: 15.7 GFLOPs; counted 16.43 GMACs (timm's expansion before the stride; 15.50 if strided first)"),
        "coatnet_3_224": dict(params=168.0, top1=84.5, note="paper: 34.7 GFLOPs; counted 36.45 GMACs (timm's expansion before the stride; 34.37 if strided first)"),
        "coatnet_4_224": dict(params=275.0, note="paper: 275M, ImageNet-21k/JFT pre-training only (no 224 ImageNet-1k figures); counted 62.3 GMACs"),
    },
    paper="Dai et al., CoAtNet: Marrying Convolution and Attention for All Data Sizes, NeurIPS 2021",
)
