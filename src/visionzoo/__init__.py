"""visionzoo: vision architectures of the last decade in one readable, verified codebase."""

from .base import FeatureInfo, InputError, VisionModel
from .checkpoints import CheckpointError, load_checkpoint, save_state_dict
from .factory import create_model, model_info
from .registry import UnknownModelError, is_model, list_models

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "FeatureInfo",
    "InputError",
    "UnknownModelError",
    "VisionModel",
    "create_model",
    "is_model",
    "list_models",
    "load_checkpoint",
    "model_info",
    "save_state_dict",
]
