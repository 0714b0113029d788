"""Analysis tools: receptive fields, attention cost, FLOP breakdowns and attention pictures.

Pictures (``plot_*``) need matplotlib (``pip install 'visionzoo[analysis]'``); it is
imported only by the functions that draw.
"""

from .attention import (
    attention_rollout,
    capture_attention,
    mean_attention_distance,
    patch_distances,
    position_embedding_similarity,
    shift_window_masks,
    shift_window_regions,
)
from .complexity import attention_complexity, coatnet_attention_complexity, nest_attention_complexity
from .gradcat import gradcat
from .flops import LAYER_KINDS, flops_breakdown, flops_table
from .pictures import (
    plot_attention_distance,
    plot_attention_rollout,
    plot_position_embedding_similarity,
    plot_receptive_field,
    plot_shift_window_masks,
)
from .receptive import hdc_check, receptive_field, receptive_field_1d, suggest_rates

__all__ = [
    "LAYER_KINDS",
    "attention_complexity",
    "attention_rollout",
    "capture_attention",
    "coatnet_attention_complexity",
    "flops_breakdown",
    "flops_table",
    "gradcat",
    "hdc_check",
    "mean_attention_distance",
    "nest_attention_complexity",
    "patch_distances",
    "plot_attention_distance",
    "plot_attention_rollout",
    "plot_position_embedding_similarity",
    "plot_receptive_field",
    "plot_shift_window_masks",
    "position_embedding_similarity",
    "receptive_field",
    "receptive_field_1d",
    "shift_window_masks",
    "shift_window_regions",
    "suggest_rates",
]
