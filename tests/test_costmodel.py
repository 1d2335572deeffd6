"""The cost model on hand-built studies: it learns per-batch and per-parameter costs, and one bad run cannot poison it."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from mnist_core.augment import Augmentation
from mnist_core.model import MLPConfig, param_count
from mnist_core.trainer import TrainConfig
from sweep import costmodel

EXAMPLES = 54_000
PER_BATCH, PER_PARAM_EXAMPLE, PER_AUGMENTED, WARMUP = 2e-3, 4e-11, 8e-5, 1.5


def _seconds_per_epoch(params: int, batch: int, augmented: bool = False) -> float:
    return math.ceil(EXAMPLES / batch) * PER_BATCH + params * EXAMPLES * PER_PARAM_EXAMPLE + (EXAMPLES * PER_AUGMENTED if augmented else 0)


def _config(width: int, batch: int, epochs: int, augmented: bool = False) -> TrainConfig:
    """A one-layer net `width` wide: 795 x width + 10 parameters."""
    moves = Augmentation(translate=0.1) if augmented else Augmentation()
    return TrainConfig(MLPConfig(depth=1, width=width), epochs=epochs, batch_size=batch, augmentation=moves)


def _study(*trials: dict) -> optuna.Study:
    study = optuna.create_study()
    for attrs in trials:
        study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.9, user_attrs=attrs))
    return study


def _trial(params: int, batch: int, steady_epochs: int = 3, slow: float = 1.0, augmented: bool = False) -> dict:
    per_epoch = _seconds_per_epoch(params, batch, augmented) * slow
    return {"param_count": params, "batch_size": batch, "steady_epochs": steady_epochs, "augmented": augmented,
            "seconds_per_epoch": per_epoch, "warmup_seconds": per_epoch + WARMUP}


SHAPES = [(50_000, 512), (50_000, 64), (670_000, 128), (4_000_000, 128), (17_600_000, 100)]


def test_it_recovers_per_batch_and_per_parameter_costs():
    model = costmodel.fit(_study(*(_trial(p, b) for p, b in SHAPES)), EXAMPLES)
    assert model.trials == len(SHAPES)
    assert model.per_batch == pytest.approx(PER_BATCH, rel=1e-6)
    assert model.per_param_example == pytest.approx(PER_PARAM_EXAMPLE, rel=1e-6)
    assert model.warmup == pytest.approx(WARMUP)
    # Batch size matters: the same net at batch 64 costs more per epoch than at 512.
    net = _config(2500, 64, 10)
    expected = WARMUP + 10 * _seconds_per_epoch(param_count(net.model), 64)
    assert model.predict(net, EXAMPLES) == pytest.approx(expected, rel=1e-6)
    assert model.predict(net, EXAMPLES) > model.predict(_config(2500, 512, 10), EXAMPLES)
    assert model.predict(net, EXAMPLES, epochs=3) == pytest.approx(WARMUP + 3 * _seconds_per_epoch(param_count(net.model), 64), rel=1e-6)


def test_it_learns_what_moving_the_training_images_costs_per_image():
    # Small nets with augmentation: most of their epoch is the moving of images, not the arithmetic.
    trials = [_trial(p, b) for p, b in SHAPES] + [_trial(p, b, augmented=True) for p, b in ((20_000, 512), (100_000, 128), (2_000_000, 64))]
    model = costmodel.fit(_study(*trials), EXAMPLES)
    assert model.trials == len(trials)
    assert model.per_augmented_example == pytest.approx(PER_AUGMENTED, rel=1e-6)
    augmented = model.predict(_config(40, 256, 10, augmented=True), EXAMPLES)
    assert augmented == pytest.approx(WARMUP + 10 * _seconds_per_epoch(795 * 40 + 10, 256, augmented=True), rel=1e-6)
    assert augmented > 5 * model.predict(_config(40, 256, 10), EXAMPLES)


def test_one_disturbed_run_does_not_poison_it():
    trials = [_trial(p, b) for p, b in SHAPES] + [_trial(9_500_000, 128, slow=10.0)]  # ten times too slow
    model = costmodel.fit(_study(*trials), EXAMPLES)
    assert model.trials == len(SHAPES)  # the outlier was left out of the refit
    assert model.predict(_config(12_000, 128, 15), EXAMPLES) == pytest.approx(WARMUP + 15 * _seconds_per_epoch(795 * 12_000 + 10, 128), rel=1e-3)


def test_runs_without_a_steady_epoch_or_timed_batches_are_not_used_and_the_prior_stands_in():
    # Stopped during the first epoch before its batches were timed: warm-up dominated, nothing to learn from.
    model = costmodel.fit(_study(_trial(4_000_000, 128, steady_epochs=0, slow=10.0)), EXAMPLES)
    assert model == costmodel.PRIOR and model.trials == 0


def test_one_measurement_scales_the_prior_and_a_run_cut_in_its_first_epoch_is_one():
    batches = math.ceil(EXAMPLES / 128)
    cut = {"param_count": 4_000_000, "batch_size": 128, "steady_epochs": 0,
           "step_seconds": _seconds_per_epoch(4_000_000, 128) / batches}  # its timed batches, no full epoch
    model = costmodel.fit(_study(cut), EXAMPLES)
    assert model.trials == 1 and model.warmup == 0.0 and model.low == 1.0
    assert model.predict(_config(5000, 128, 3), EXAMPLES) == pytest.approx(3 * _seconds_per_epoch(795 * 5000 + 10, 128), rel=1e-3)
    assert model.per_batch / model.per_param_example == pytest.approx(costmodel.PRIOR.per_batch / costmodel.PRIOR.per_param_example)
    assert model.per_augmented_example / model.per_batch == pytest.approx(costmodel.PRIOR.per_augmented_example / costmodel.PRIOR.per_batch)


def test_the_optimistic_end_comes_from_the_models_own_error():
    exact = costmodel.fit(_study(*(_trial(p, b) for p, b in SHAPES)), EXAMPLES)
    assert exact.low == pytest.approx(1.0)  # no error, no widening
    noisy = costmodel.fit(_study(*(_trial(p, b, slow=f) for (p, b), f in zip(SHAPES, (0.8, 1.2, 1.0, 0.9, 1.1)))), EXAMPLES)
    assert 0.7 < noisy.low < 0.95
    assert noisy.least(_config(2500, 64, 10), EXAMPLES) == pytest.approx(noisy.low * noisy.predict(_config(2500, 64, 10), EXAMPLES))


@pytest.mark.parametrize("slower", [1.01, 1.05, 1.1, 1.2, 0.95, 0.9, 0.8, 1.3])
def test_trials_too_alike_to_tell_the_terms_apart_do_not_make_a_big_net_cheap(slower):
    # Two runs of one small net, timed a little apart: every subset of terms fits them equally well, up to
    # rounding. The fit must keep all the terms, so that a net far larger is predicted far slower.
    small = _trial(795 * 8 + 10, 64)
    model = costmodel.fit(_study(small, {**small, "seconds_per_epoch": small["seconds_per_epoch"] * slower}), EXAMPLES)
    assert model.per_batch > 0 and model.per_param_example > 0
    assert model.predict(_config(20_000, 64, 10), EXAMPLES) > 10 * model.predict(_config(8, 64, 10), EXAMPLES)
