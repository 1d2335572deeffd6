"""The cost model on hand-built studies: it learns per-batch and per-parameter costs, and one bad run cannot poison it."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from sweep import costmodel

EXAMPLES = 54_000
PER_BATCH, PER_PARAM_EXAMPLE, PER_AUGMENTED, WARMUP = 2e-3, 4e-11, 8e-5, 1.5


def _seconds_per_epoch(params: int, batch: int, augmented: bool = False) -> float:
    return math.ceil(EXAMPLES / batch) * PER_BATCH + params * EXAMPLES * PER_PARAM_EXAMPLE + (EXAMPLES * PER_AUGMENTED if augmented else 0)


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
    expected = WARMUP + 10 * _seconds_per_epoch(2_000_000, 64)
    assert model.predict(2_000_000, EXAMPLES, 64, 10) == pytest.approx(expected, rel=1e-6)
    assert model.predict(2_000_000, EXAMPLES, 64, 10) > model.predict(2_000_000, EXAMPLES, 512, 10)


def test_it_learns_what_moving_the_training_images_costs_per_image():
    # Small nets with augmentation: most of their epoch is the moving of images, not the arithmetic.
    trials = [_trial(p, b) for p, b in SHAPES] + [_trial(p, b, augmented=True) for p, b in ((20_000, 512), (100_000, 128), (2_000_000, 64))]
    model = costmodel.fit(_study(*trials), EXAMPLES)
    assert model.trials == len(trials)
    assert model.per_augmented_example == pytest.approx(PER_AUGMENTED, rel=1e-6)
    augmented = model.predict(30_000, EXAMPLES, 256, 10, augmented=True)
    assert augmented == pytest.approx(WARMUP + 10 * _seconds_per_epoch(30_000, 256, augmented=True), rel=1e-6)
    assert augmented > 5 * model.predict(30_000, EXAMPLES, 256, 10)


def test_one_disturbed_run_does_not_poison_it():
    trials = [_trial(p, b) for p, b in SHAPES] + [_trial(9_500_000, 128, slow=10.0)]  # ten times too slow
    model = costmodel.fit(_study(*trials), EXAMPLES)
    assert model.trials == len(SHAPES)  # the outlier was left out of the refit
    assert model.predict(9_500_000, EXAMPLES, 128, 15) == pytest.approx(WARMUP + 15 * _seconds_per_epoch(9_500_000, 128), rel=1e-3)


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
    assert model.predict(4_000_000, EXAMPLES, 128, 3) == pytest.approx(3 * _seconds_per_epoch(4_000_000, 128))
    assert model.per_batch / model.per_param_example == pytest.approx(costmodel.PRIOR.per_batch / costmodel.PRIOR.per_param_example)
    assert model.per_augmented_example / model.per_batch == pytest.approx(costmodel.PRIOR.per_augmented_example / costmodel.PRIOR.per_batch)


def test_the_optimistic_end_comes_from_the_models_own_error():
    exact = costmodel.fit(_study(*(_trial(p, b) for p, b in SHAPES)), EXAMPLES)
    assert exact.low == pytest.approx(1.0)  # no error, no widening
    noisy = costmodel.fit(_study(*(_trial(p, b, slow=f) for (p, b), f in zip(SHAPES, (0.8, 1.2, 1.0, 0.9, 1.1)))), EXAMPLES)
    assert 0.7 < noisy.low < 0.95
    assert noisy.least(2_000_000, EXAMPLES, 64, 10) == pytest.approx(noisy.low * noisy.predict(2_000_000, EXAMPLES, 64, 10))
