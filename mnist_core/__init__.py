"""MNIST data pipeline, parametric MLP and budgeted trainer: the core the sweep stands on.

Importing it imports no TensorFlow: Keras comes in when a net is built or trained (`mnist_core.network`).
"""

from mnist_core.data import Arrays, DataError, Splits, load_splits, resolve_source
from mnist_core.model import MLPConfig, param_count
from mnist_core.trainer import Budget, EpochStats, TrainConfig, TrainResult, train

__all__ = [
    "Arrays",
    "Budget",
    "DataError",
    "EpochStats",
    "MLPConfig",
    "Splits",
    "TrainConfig",
    "TrainResult",
    "load_splits",
    "param_count",
    "resolve_source",
    "train",
]
