"""A parametric MLP for 28x28 digits, as a frozen `MLPConfig`: its architecture and optimiser, and its size.

No Keras here, so what only describes or counts a net (study files, the cost model, a sweep's bookkeeping)
imports no TensorFlow; `mnist_core/network.py` builds the Keras model from a config.
"""

from __future__ import annotations

from dataclasses import dataclass

from mnist_core.digits import IMAGE_SHAPE, NUM_CLASSES
from mnist_core.schema import bounded, bounds, check_fields

OPTIMIZER_NAMES = ("adam", "adamw", "sgd", "rmsprop")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "elu", "sigmoid")
# Learning rate over the planned steps: the seed's constant rate, or a decay to `final_lr_fraction` of it.
SCHEDULES = ("constant", "cosine", "linear")
# At most this many pixels cut from each border: the digits' 20 x 20 box stays whole.
MAX_CROP = 4


@dataclass(frozen=True)
class MLPConfig:
    """Architecture and optimiser of one MLP. `width` is one width for all layers or one per layer.
    Each field's bound is its metadata (`mnist_core/schema.py`): the study files' ranges come from there."""

    depth: int = bounded(5, int, 1, 64)
    width: int | tuple[int, ...] = bounded(2000, int, 1, 65_536)  # per layer
    activation: str = bounded("relu", str, choices=ACTIVATIONS)
    dropout: float = bounded(0.0, float, 0.0, 1.0, high_open=True)
    batch_norm: bool = bounded(False, bool, choices=(False, True))
    optimizer: str = bounded("adam", str, choices=OPTIMIZER_NAMES)
    learning_rate: float = bounded(1e-3, float, 0.0, None, low_open=True)
    # The recipe: a schedule (with a linear warm-up over `warmup_fraction` of the planned steps), decoupled
    # weight decay (AdamW's; biases and batch-norm scales are exempt), label smoothing, and dropout on the
    # input pixels apart from `dropout` on the hidden layers.
    lr_schedule: str = bounded("constant", str, choices=SCHEDULES)
    warmup_fraction: float = bounded(0.0, float, 0.0, 0.5)
    final_lr_fraction: float = bounded(0.0, float, 0.0, 1.0)
    weight_decay: float = bounded(0.0, float, 0.0, 1.0)
    label_smoothing: float = bounded(0.0, float, 0.0, 0.5)
    input_dropout: float = bounded(0.0, float, 0.0, 0.9)
    # Pixels cut from each border of the 28 x 28 image before the first layer. MNIST's digits are centred in
    # a 20 x 20 box, so a 2-pixel border holds a fraction of a percent of the ink but a quarter of the first
    # layer's weights: the first layer, most of a shallow net's arithmetic, shrinks by that much.
    input_crop: int = bounded(0, int, 0, MAX_CROP)
    # XLA: True or False; None lets the trainer decide per run (on where the run is long enough to repay
    # compiling, bench/results/backends.md). `build_mlp` builds None as plain TensorFlow.
    jit_compile: bool | None = bounded(None, bool, choices=(False, True), optional=True)

    def __post_init__(self) -> None:
        check_fields(self, skip=("width",))
        if isinstance(self.width, list):
            object.__setattr__(self, "width", tuple(self.width))  # lists from TOML/JSON hash too
        if isinstance(self.width, bool) or not isinstance(self.width, (int, tuple)):
            raise ValueError(f"width must be an integer or a list of integers, got {self.width!r}")
        widths = self.widths
        if len(widths) != self.depth:
            raise ValueError(f"width lists {len(widths)} layers but depth is {self.depth}")
        for width in widths:
            bounds(MLPConfig)["width"].check("widths", width)

    @property
    def inputs(self) -> int:
        """Pixels the first layer sees."""
        return (IMAGE_SHAPE[0] - 2 * self.input_crop) * (IMAGE_SHAPE[1] - 2 * self.input_crop)

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.width,) * self.depth if isinstance(self.width, int) else self.width


def param_count(config: MLPConfig) -> int:
    """Parameters of `build_mlp(config)` without building it (the cost model uses this)."""
    sizes = [config.inputs, *config.widths, NUM_CLASSES]
    dense = sum(n_in * n_out + n_out for n_in, n_out in zip(sizes, sizes[1:], strict=False))
    batch_norm = 4 * sum(config.widths) if config.batch_norm else 0
    return dense + batch_norm
