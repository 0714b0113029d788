"""Analysis tools: receptive fields, attention cost, FLOP breakdowns and attention pictures.

Pictures need matplotlib (``pip install visionzoo[analysis]``); it is imported only by
the functions that draw.
"""

from .complexity import attention_complexity, coatnet_attention_complexity, nest_attention_complexity
from .flops import LAYER_KINDS, flops_breakdown, flops_table
from .receptive import hdc_check, receptive_field, receptive_field_1d, suggest_rates

__all__ = [
    "LAYER_KINDS",
    "attention_complexity",
    "coatnet_attention_complexity",
    "flops_breakdown",
    "flops_table",
    "hdc_check",
    "nest_attention_complexity",
    "receptive_field",
    "receptive_field_1d",
    "suggest_rates",
]
