"""The work of training an MLP, counted from its configuration alone: arithmetic and the optimizer's memory traffic.

Per example, a dense layer of n_in x n_out weights costs 2 n_in n_out FLOPs forward (a multiply and an add
per weight), as much again for its weights' gradient, and as much again for its input's gradient, which the
first layer does not need (the pixels have none). Biases, activations, dropout, batch norm and the loss are a
few operations per unit, not per weight: left out, as they are under 1% of the matrix products at the
widths a study searches.

The optimizer touches every parameter once per step, whatever the batch: it reads the weight, its gradient
and its slots, and writes the weight and its slots, 4 bytes each (float32). That stream, not arithmetic, is
what a large net's step waits on at small batches (`mnist_core/machine.py` measures both rates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mnist_core.digits import NUM_CLASSES
from mnist_core.model import MLPConfig, param_count

BYTES_PER_VALUE = 4  # float32
# Values read or written per parameter and step: the weight, its gradient and the weight again, plus each
# slot read and written (Adam: two moments; RMSprop: one), plus AdamW's decay, a read and a write of the weight.
OPTIMIZER_ACCESSES = {"adam": 7, "adamw": 9, "sgd": 3, "rmsprop": 5}


def layer_shapes(config: MLPConfig) -> list[tuple[int, int]]:
    """(inputs, outputs) of each dense layer, the (cropped) pixels first and the 10 classes last."""
    sizes = [config.inputs, *config.widths, NUM_CLASSES]
    return list(zip(sizes, sizes[1:], strict=False))


@dataclass(frozen=True)
class Work:
    """What one training run of a configuration asks of the machine."""

    layer_flops: tuple[int, ...]  # forward and backward FLOPs of one example through each dense layer
    product_sizes: tuple[int, ...]  # multiply-adds of one of each layer's products over a batch (batch x in x out)
    optimizer_bytes_per_step: int
    steps_per_epoch: int
    examples: int  # training images per epoch
    layers: int  # hidden layers: each adds fixed costs to a step
    augmented: bool  # whether each training image is moved afresh (a per-image cost, not FLOPs)

    @property
    def flops_per_example(self) -> int:
        return sum(self.layer_flops)

    @property
    def flops_per_step(self) -> float:
        return self.flops_per_example * self.examples / self.steps_per_epoch

    def flops(self, epochs: float) -> float:
        """FLOPs of `epochs` epochs (cumulative)."""
        return self.flops_per_example * self.examples * epochs

    def optimizer_bytes(self, epochs: float) -> float:
        """Bytes the optimizer moves in `epochs` epochs (cumulative)."""
        return self.optimizer_bytes_per_step * self.steps_per_epoch * epochs


def layer_flops(shapes: list[tuple[int, int]]) -> tuple[int, ...]:
    """Forward and backward FLOPs of one training example through each dense layer (`layer_shapes`): the
    forward product and the weights' gradient, and the input's gradient but for the first layer."""
    return tuple(2 * n_in * n_out * (2 if i == 0 else 3) for i, (n_in, n_out) in enumerate(shapes))


def work(config: MLPConfig, examples: int, batch_size: int, augmented: bool = False) -> Work:
    """The work of training `config` over `examples` training images at `batch_size` (moving each image when
    `augmented`)."""
    accesses = OPTIMIZER_ACCESSES[config.optimizer]
    batch, shapes = min(batch_size, examples), layer_shapes(config)
    return Work(layer_flops=layer_flops(shapes), product_sizes=tuple(batch * n_in * n_out for n_in, n_out in shapes),
                optimizer_bytes_per_step=accesses * BYTES_PER_VALUE * param_count(config),
                steps_per_epoch=math.ceil(examples / batch_size), examples=examples, layers=config.depth, augmented=augmented)
