"""Layers that two or more families share."""

from .attention import Attention, AttentionPoolLatent, ProjectedAttention, attention, set_fused_attention
from .conv import Conv2d, ConvNormAct, StdConv2d, apply_bn_act, apply_conv_bn, apply_conv_bn_seq, bn_affine, bn_tensors, conv2d, depthwise_weight_grad, set_bn_folding, set_conv_packing, uses_running_stats
from .drop_path import DropPath, drop_path_rates, skippable
from .helpers import check_int, check_output_stride, classifier, clear_derived_caches, dilate_strides, he_normal_fan_out_, make_divisible, pad_same, pad_to_fit, to_2tuple, trunc_normal_
from .linear import add_projection, linear, linear_act, linear_add
from .mlp import GluMlp, Mlp, SwiGLU, residual_mlp
from .norms import LayerNorm2d
from .patch_embed import PatchEmbed, resample_patch_kernel
from .pooling import NORM_POOL_TYPES, POOL_TYPES, MaxPool2d, global_pool_2d, max_pool2d
from .pos_embed import apply_rope, mixed_rope, mixed_rope_freqs, relative_position_index, resample_abs_pos_embed, resize_rel_pos_bias_table, rope_2d
from .se import SqueezeExcite

__all__ = [
    "Attention",
    "AttentionPoolLatent",
    "Conv2d",
    "ConvNormAct",
    "DropPath",
    "LayerNorm2d",
    "MaxPool2d",
    "GluMlp",
    "Mlp",
    "NORM_POOL_TYPES",
    "POOL_TYPES",
    "PatchEmbed",
    "ProjectedAttention",
    "SqueezeExcite",
    "SwiGLU",
    "StdConv2d",
    "add_projection",
    "apply_rope",
    "apply_bn_act",
    "apply_conv_bn",
    "apply_conv_bn_seq",
    "attention",
    "bn_affine",
    "bn_tensors",
    "classifier",
    "clear_derived_caches",
    "conv2d",
    "depthwise_weight_grad",
    "drop_path_rates",
    "global_pool_2d",
    "he_normal_fan_out_",
    "linear",
    "linear_act",
    "linear_add",
    "make_divisible",
    "max_pool2d",
    "mixed_rope",
    "mixed_rope_freqs",
    "pad_same",
    "pad_to_fit",
    "check_int",
    "check_output_stride",
    "dilate_strides",
    "relative_position_index",
    "resample_abs_pos_embed",
    "resample_patch_kernel",
    "residual_mlp",
    "resize_rel_pos_bias_table",
    "rope_2d",
    "set_bn_folding",
    "set_conv_packing",
    "set_fused_attention",
    "skippable",
    "to_2tuple",
    "trunc_normal_",
    "uses_running_stats",
]
from .window import shift_window_mask, window_partition, window_reverse  # noqa: E402

__all__ += ["shift_window_mask", "window_partition", "window_reverse"]
