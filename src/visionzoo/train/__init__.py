"""Training, evaluation and prediction (``visionzoo train | eval | predict``).

Only torch, torchvision, numpy, pillow, tqdm and safetensors are required; scikit-learn
(the digits data), matplotlib (PNG curves) and tensorboard (event files) are optional and
imported when used.
"""

from .data import DataBundle, DataError, build_data
from .engine import TrainConfig, TrainingStopped, evaluate, train

__all__ = ["DataBundle", "DataError", "TrainConfig", "TrainingStopped", "build_data", "evaluate", "train"]
