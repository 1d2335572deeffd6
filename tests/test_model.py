"""The MLP builder: shapes, parameter counts (analytic == Keras), config validation."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist_core.model import OPTIMIZER_NAMES, MLPConfig, param_count
from mnist_core.network import OPTIMIZERS, Dropout, LearningRate, SmoothedSparseCrossentropy, build_mlp


@pytest.mark.parametrize(
    "config",
    [
        MLPConfig(depth=1, width=16),
        MLPConfig(depth=3, width=[32, 16, 8], dropout=0.2),
        MLPConfig(depth=2, width=24, batch_norm=True, activation="gelu", optimizer="sgd"),
        MLPConfig(depth=2, width=12, input_crop=2),
    ],
)
def test_shapes_and_parameter_counts(config):
    model = build_mlp(config)
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert [layer.units for layer in dense] == [*config.widths, 10]
    assert model.count_params() == param_count(config)
    probs = model.predict(np.zeros((4, 28, 28), np.float32), verbose=0)
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_a_cropped_model_sees_only_the_inner_pixels():
    model = build_mlp(MLPConfig(depth=1, width=8, input_crop=3))
    first = next(layer for layer in model.layers if layer.__class__.__name__ == "Dense")
    assert first.kernel.shape == (22 * 22, 8)
    images = np.random.default_rng(0).random((4, 28, 28), np.float32)
    border = images.copy()
    border[:, :3], border[:, -3:], border[:, :, :3], border[:, :, -3:] = 1.0, 0.0, 1.0, 0.5
    inner = images.copy()
    inner[:, 10, 10] += 1.0
    predict = lambda x: model.predict(x, verbose=0)  # noqa: E731
    np.testing.assert_array_equal(predict(border), predict(images))
    assert not np.allclose(predict(inner), predict(images))


def test_seed_model_size():
    # 784*2000+2000 + 4*(2000*2000+2000) + 2000*10+10: the student's 5 x 2000 network.
    assert param_count(MLPConfig(depth=5, width=2000)) == 17_598_010


def test_per_layer_widths_from_a_list_are_hashable():
    assert hash(MLPConfig(depth=2, width=[4, 8])) == hash(MLPConfig(depth=2, width=(4, 8)))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_dropout_draws_the_masks_keras_draws_on_both_paths(jit_compile):
    x = tf.ones([64, 300])
    masks = []
    for layer in (Dropout(0.3, seed=5), keras.layers.Dropout(0.3, seed=5)):
        call = tf.function(lambda x, layer=layer: layer(x, training=True), jit_compile=jit_compile)
        masks.append([call(x).numpy() for _ in range(3)])
    ours, theirs = masks
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert not np.array_equal(ours[0], ours[1])  # a new mask each step
    assert np.array_equal(Dropout(0.3)(x, training=False), x)


@pytest.mark.parametrize("name, jit_compile, schedule", [("adam", False, False), ("adamw", False, False), ("adamw", True, False),
                                                    ("adamw", False, True)])
def test_the_fused_adam_update_is_keras_update(name, jit_compile, schedule):
    # The same steps through Keras' optimizer and ours: equal up to float rounding. Two variables, one of them
    # exempt from AdamW's decay, and (schedule) a decaying rate.
    kind = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW}[name]
    grads = [[tf.constant(np.random.default_rng([i, j]).normal(size=(5, 3)), tf.float32) for j in range(2)] for i in range(4)]
    rate = lambda: LearningRate(0.01, total_steps=4, kind="cosine") if schedule else 0.01  # noqa: E731
    weights = []
    for optimizer in (kind(learning_rate=rate()), OPTIMIZERS[name](learning_rate=rate())):
        variables = [tf.Variable(np.ones((5, 3), np.float32), name="kernel"), tf.Variable(np.ones((5, 3), np.float32), name="bias")]
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        optimizer.build(variables)
        step = tf.function(lambda g, optimizer=optimizer, variables=variables: optimizer.apply(g, variables), jit_compile=jit_compile)
        for g in grads:
            step(g)
        weights.append([v.numpy() for v in variables])
    assert not np.allclose(weights[0][0], 1.0)
    for ours, theirs in zip(weights[1], weights[0], strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    if name == "adamw":  # the decay reached the kernel and spared the bias
        assert not np.allclose(weights[0][0], weights[0][1])


def test_a_training_step_evaluates_the_schedule_once_for_the_decay():
    # Keras' TensorFlow path evaluated the schedule again for every decayed variable, each time traced into
    # the step: tracing time that a small net's first epoch pays.
    calls = []

    class Counted(LearningRate):
        def __call__(self, step):
            calls.append(step)
            return super().__call__(step)

    model = build_mlp(MLPConfig(depth=3, width=8, optimizer="adamw", weight_decay=0.01, lr_schedule="cosine"), total_steps=10)
    optimizer = model.optimizer
    optimizer._learning_rate = Counted(**optimizer._learning_rate.get_config())
    variables = model.trainable_variables
    tf.function(lambda: optimizer.apply([tf.ones_like(v) for v in variables], variables)).get_concrete_function()
    assert len(calls) == 2  # once for the decay of the four kernels, once for the updates


def test_the_smoothed_loss_is_keras_smoothed_crossentropy():
    logits = tf.constant(np.random.default_rng(0).normal(size=(16, 10)) * 5, tf.float32)
    labels = tf.constant(np.random.default_rng(1).integers(0, 10, 16))
    theirs = keras.losses.CategoricalCrossentropy(label_smoothing=0.1, from_logits=True)
    results = []
    for loss in (SmoothedSparseCrossentropy(0.1), lambda y, p: theirs(tf.one_hot(y, 10), p._keras_logits)):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = tf.function(lambda z, loss=loss: loss(labels, keras.layers.Activation("softmax")(z)))(logits)
        results.append((value.numpy(), tape.gradient(value, logits).numpy()))
    (ours, our_gradient), (expected, gradient) = results
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    np.testing.assert_allclose(our_gradient, gradient, rtol=1e-5, atol=1e-8)


def test_a_saved_model_with_dropout_loads_and_predicts_alike(tmp_path):
    model = build_mlp(MLPConfig(depth=1, width=8, dropout=0.2, input_dropout=0.1, optimizer="adamw", weight_decay=1e-3))
    model.save(tmp_path / "m.keras")
    images = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is type(model.optimizer)
    assert np.allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"depth": 0}, "depth"),
        ({"depth": 2, "width": [4]}, "lists 1 layers"),
        ({"width": 0}, "widths"),
        ({"width": 2.5}, "width must be"),
        ({"activation": "nope"}, "activation"),
        ({"dropout": 1.0}, "dropout"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"input_crop": 5}, "input_crop"),
        ({"input_crop": True}, "input_crop"),
    ],
)
def test_bad_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLPConfig(**kwargs)


def test_a_sweeps_bookkeeping_imports_no_tensorflow():
    # The configs, the trainer's types and the sweep's command line describe and count nets: Keras comes in
    # only when one is built, so a bookkeeping-only worker (bench/cluster.py) fits 32 to a machine.
    code = "import sys, mnist_core, mnist_core.trainer, sweep.cli, sweep.trial; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
