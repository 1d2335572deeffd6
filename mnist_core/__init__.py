"""MNIST data pipeline, parametric MLP and budgeted trainer: the core the sweep stands on."""

from mnist_core.data import Arrays, DataError, Splits, load_splits, resolve_source
from mnist_core.model import MLPConfig, build_mlp, param_count
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
    "build_mlp",
    "load_splits",
    "param_count",
    "resolve_source",
    "train",
]
