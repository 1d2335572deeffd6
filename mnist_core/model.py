"""A parametric MLP for 28x28 digits: a pure function of a frozen `MLPConfig`.

Plain Keras 3 (`import keras`), so `KERAS_BACKEND=jax` runs the same code; nothing here knows
about search or tracking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras

from mnist_core.data import IMAGE_SHAPE, NUM_CLASSES

OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}
ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "elu", "sigmoid")


@dataclass(frozen=True)
class MLPConfig:
    """Architecture and optimiser of one MLP. `width` is one width for all layers or one per layer."""

    depth: int = 5
    width: int | tuple[int, ...] = 2000
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    # XLA: True or False; None lets the trainer decide per run (on where the run is long enough to repay
    # compiling, bench/results/backends.md). `build_mlp` builds None as plain TensorFlow.
    jit_compile: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {self.depth!r}")
        if isinstance(self.width, list):
            object.__setattr__(self, "width", tuple(self.width))  # lists from TOML/JSON hash too
        if not isinstance(self.width, (int, tuple)):
            raise ValueError(f"width must be an integer or a list of integers, got {self.width!r}")
        widths = self.widths
        if len(widths) != self.depth:
            raise ValueError(f"width lists {len(widths)} layers but depth is {self.depth}")
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be integers >= 1, got {self.width!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate!r}")

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.width,) * self.depth if isinstance(self.width, int) else self.width


def param_count(config: MLPConfig) -> int:
    """Parameters of `build_mlp(config)` without building it (the cost model uses this)."""
    sizes = [math.prod(IMAGE_SHAPE), *config.widths, NUM_CLASSES]
    dense = sum(n_in * n_out + n_out for n_in, n_out in zip(sizes, sizes[1:], strict=False))
    batch_norm = 4 * sum(config.widths) if config.batch_norm else 0
    return dense + batch_norm


def build_mlp(config: MLPConfig, steps_per_execution: int = 1) -> keras.Model:
    """Flatten -> [Dense -> (BatchNorm) -> activation -> (Dropout)] x depth -> softmax, compiled.

    `steps_per_execution` batches run in one traced call: how a trainer trades per-batch overhead
    against how often it can look at the run (it changes no result).
    """
    layers: list[keras.Layer] = [keras.Input(shape=IMAGE_SHAPE), keras.layers.Flatten()]
    for width in config.widths:
        layers.append(keras.layers.Dense(width))
        if config.batch_norm:
            layers.append(keras.layers.BatchNormalization())
        layers.append(keras.layers.Activation(config.activation))
        if config.dropout:
            layers.append(keras.layers.Dropout(config.dropout))
    layers.append(keras.layers.Dense(NUM_CLASSES, activation="softmax"))
    model = keras.Sequential(layers, name="mlp")
    model.compile(
        optimizer=OPTIMIZERS[config.optimizer](learning_rate=config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=bool(config.jit_compile),
        steps_per_execution=steps_per_execution,
    )
    # Create the optimizer's slot variables now, eagerly: created inside the first traced train
    # step, each leaves initializer graphs that TensorFlow never frees (bench/results/memory.md).
    model.optimizer.build(model.trainable_variables)
    return model
