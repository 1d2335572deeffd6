"""The Keras side of an MLP: `build_mlp(config)` is a pure function of a frozen `MLPConfig` (`mnist_core/model.py`).

Plain Keras 3 (`import keras`), so `KERAS_BACKEND=jax` runs the same code; nothing here knows
about search or tracking. Importing it registers the optimizers, schedule, layer and loss that saved
models name.
"""

from __future__ import annotations

import math

import keras

from mnist_core.digits import IMAGE_SHAPE, NUM_CLASSES
from mnist_core.model import MLPConfig


class _FusedAdamUpdate:
    """Adam's update as TensorFlow's one fused kernel per variable (`ResourceApplyAdam`) instead of Keras'
    dozen element-wise ops: the same formula (Keras' Adam is the epsilon-hat form too), rounded differently in
    the last bits. Without XLA, a small net's step spent about a quarter of its time on those ops
    (bench/results/backends.md); under XLA they were fused anyway.

    Outside a distribution strategy, the updates and AdamW's decay (applied before them, as Keras does) are
    traced directly: Keras' TensorFlow path sends each variable through the strategy's update, which converts
    the update with AutoGraph, all-reduces the gradients over the one replica, and evaluates the learning-rate
    schedule again for every decayed variable. That is no work when the step runs, but tracing time when a run
    starts, most of what a small net's first epoch costs."""

    def _direct(self) -> bool:
        import tensorflow as tf

        return keras.backend.backend() == "tensorflow" and not tf.distribute.has_strategy()

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None or not self._direct():
            return super()._apply_weight_decay(variables)
        rate = None
        for variable in variables:
            if self._use_weight_decay(variable):
                if rate is None:  # the schedule once per step
                    rate = keras.ops.cast(self.learning_rate * self.weight_decay, variable.dtype)
                variable.assign_sub(variable * rate)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not self._direct() or self.amsgrad:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        shared: dict = {}  # the step's scalars, once per dtype
        for grad, variable in zip(grads, trainable_variables, strict=True):
            if variable.dtype not in shared:
                shared[variable.dtype] = self._scalars(variable.dtype, learning_rate)
            self._fused(grad, variable, shared[variable.dtype])

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow" or self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        self._fused(gradient, variable, self._scalars(variable.dtype, learning_rate))

    def _scalars(self, dtype, learning_rate) -> dict:
        ops = keras.ops
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        return {"beta1_power": ops.power(beta_1, step), "beta2_power": ops.power(beta_2, step), "lr": ops.cast(learning_rate, dtype),
                "beta1": beta_1, "beta2": beta_2, "epsilon": ops.cast(self.epsilon, dtype)}

    def _fused(self, gradient, variable, scalars: dict) -> None:
        import tensorflow as tf

        index = self._get_variable_index(variable)
        handle = lambda v: v.handle if hasattr(v, "handle") else v.value.handle  # noqa: E731  a tf.Variable or Keras' wrapper
        tf.raw_ops.ResourceApplyAdam(var=handle(variable), m=handle(self._momentums[index]), v=handle(self._velocities[index]),
                                     grad=keras.ops.cast(gradient, variable.dtype), **scalars)


@keras.saving.register_keras_serializable(package="mnist_core")
class Adam(_FusedAdamUpdate, keras.optimizers.Adam):
    """keras.optimizers.Adam, updating through the fused kernel."""


@keras.saving.register_keras_serializable(package="mnist_core")
class AdamW(_FusedAdamUpdate, keras.optimizers.AdamW):
    """keras.optimizers.AdamW, updating through the fused kernel."""


OPTIMIZERS = {
    "adam": Adam,
    "adamw": AdamW,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}


@keras.saving.register_keras_serializable(package="mnist_core")
class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """`peak` after a linear warm-up of `warmup_steps`, then constant or decaying (cosine, linear) to
    `end` at the last of `total_steps` and staying there."""

    def __init__(self, peak: float, total_steps: int, kind: str = "constant", warmup_steps: int = 0, end: float = 0.0):
        self.peak, self.total_steps, self.kind, self.warmup_steps, self.end = peak, total_steps, kind, warmup_steps, end

    def __call__(self, step):
        # Only the ops this schedule needs: they are traced into every training step.
        ops = keras.ops
        step = ops.cast(step, "float32")
        if self.kind == "constant":
            decayed = ops.convert_to_tensor(self.peak, "float32")
        else:
            progress = ops.clip((step - self.warmup_steps) / max(self.total_steps - 1 - self.warmup_steps, 1), 0.0, 1.0)
            if self.kind == "cosine":
                decayed = self.end + (self.peak - self.end) * 0.5 * (1.0 + ops.cos(math.pi * progress))
            else:
                decayed = self.peak + (self.end - self.peak) * progress
        if not self.warmup_steps:
            return decayed
        warm = self.peak * ops.minimum(1.0, (step + 1.0) / self.warmup_steps)
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self) -> dict:
        return {"peak": self.peak, "total_steps": self.total_steps, "kind": self.kind, "warmup_steps": self.warmup_steps, "end": self.end}


@keras.saving.register_keras_serializable(package="mnist_core")
class Dropout(keras.layers.Dropout):
    """Keras' Dropout with the same masks, drawn by naming TensorFlow's Philox generator instead of letting
    TensorFlow pick one: compiled by XLA on a CPU, the picked one drew them many times slower, more than
    a small net's matmuls cost (bench/results/dropout.md)."""

    def call(self, inputs, training=False):
        if not (training and self.rate > 0) or keras.backend.backend() != "tensorflow":
            return super().call(inputs, training=training)
        import tensorflow as tf

        # As Keras' TensorFlow backend turns the layer's seed into an int32 pair.
        seed = tf.cast(tf.math.floormod(self.seed_generator.next(), tf.int32.max - 1), tf.int32)
        return tf.nn.experimental.stateless_dropout(inputs, self.rate, noise_shape=self.noise_shape, seed=seed, rng_alg="philox")


@keras.saving.register_keras_serializable(package="mnist_core")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy against integer labels smoothed towards uniform (Keras' sparse loss has no smoothing)."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        labels = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), NUM_CLASSES)
        logits = getattr(y_pred, "_keras_logits", None)  # kept by Keras' TensorFlow softmax, for its own losses
        if logits is None:
            return keras.losses.categorical_crossentropy(labels, y_pred, label_smoothing=self.label_smoothing)
        # Keras' own path for these logits, as one kernel: its wrapper's shape handling is traced into every step.
        import tensorflow as tf

        smoothed = labels * (1.0 - self.label_smoothing) + self.label_smoothing / NUM_CLASSES
        return tf.raw_ops.SoftmaxCrossEntropyWithLogits(features=logits, labels=tf.cast(smoothed, logits.dtype))[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def learning_rate(config: MLPConfig, total_steps: int | None) -> float | LearningRate:
    """The optimizer's learning rate: a number for the seed's constant rate, else a schedule over `total_steps`."""
    if config.lr_schedule == "constant" and not config.warmup_fraction:
        return config.learning_rate
    if total_steps is None:
        raise ValueError(f"a {config.lr_schedule} schedule with warm-up needs the planned number of steps")
    return LearningRate(
        config.learning_rate, total_steps, config.lr_schedule, round(config.warmup_fraction * total_steps),
        config.learning_rate * (1.0 if config.lr_schedule == "constant" else config.final_lr_fraction),
    )


def _optimizer(config: MLPConfig, total_steps: int | None) -> keras.optimizers.Optimizer:
    kind = OPTIMIZERS[config.optimizer]
    # AdamW insists on a number; the others take None for "no decay".
    decay = config.weight_decay if issubclass(kind, keras.optimizers.AdamW) else (config.weight_decay or None)
    optimizer = kind(learning_rate=learning_rate(config, total_steps), weight_decay=decay)
    if decay:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def build_mlp(config: MLPConfig, total_steps: int | None = None) -> keras.Model:
    """(Crop) -> Flatten -> (Dropout) -> [Dense -> (BatchNorm) -> activation -> (Dropout)] x depth -> softmax, compiled.

    `total_steps`, the planned training steps, sets the length of a learning-rate schedule.
    """
    layers: list[keras.Layer] = [keras.Input(shape=IMAGE_SHAPE)]
    if config.input_crop:
        layers += [keras.layers.Reshape((*IMAGE_SHAPE, 1)), keras.layers.Cropping2D(config.input_crop)]
    layers.append(keras.layers.Flatten())
    if config.input_dropout:
        layers.append(Dropout(config.input_dropout))
    for width in config.widths:
        layers.append(keras.layers.Dense(width))
        if config.batch_norm:
            layers.append(keras.layers.BatchNormalization())
        layers.append(keras.layers.Activation(config.activation))
        if config.dropout:
            layers.append(Dropout(config.dropout))
    layers.append(keras.layers.Dense(NUM_CLASSES, activation="softmax"))
    model = keras.Sequential(layers, name="mlp")
    model.compile(
        optimizer=_optimizer(config, total_steps),
        loss=SmoothedSparseCrossentropy(config.label_smoothing) if config.label_smoothing else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=bool(config.jit_compile),
    )
    # Create the optimizer's slot variables now, eagerly: created inside the first traced train
    # step, each leaves initializer graphs that TensorFlow never frees (bench/results/memory.md).
    model.optimizer.build(model.trainable_variables)
    return model
