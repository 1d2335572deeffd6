"""The cost model on hand-built studies: the machine profile's terms, corrected by the trials of any machine;
one bad run cannot poison it; study seconds convert between machines."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from mnist_core.augment import Augmentation
from mnist_core.machine import current
from mnist_core.model import MLPConfig
from mnist_core.trainer import TrainConfig, epoch_terms
from sweep import costmodel

EXAMPLES = 54_000
TRUE = np.array([1.6, 0.7, 1.3, 1.1])  # what the profile gets wrong, term by term, on the "real" trainer
WARMUP = 1.5
PROFILE = current()  # the pinned one (tests/fixtures/machine.json)
# A machine unlike it: four times the arithmetic, twice the bandwidth, a third cheaper fixed costs.
OTHER = dataclasses.replace(PROFILE, gflops=4 * PROFILE.gflops, gbps=2 * PROFILE.gbps, batch_us=PROFILE.batch_us * 2 / 3,
                            call_us=PROFILE.call_us * 2 / 3, layer_us=PROFILE.layer_us * 2 / 3, host="other-host")


def _config(depth: int, width: int, batch: int, epochs: int = 10, augmented: bool = False) -> TrainConfig:
    moves = Augmentation(translate=0.1) if augmented else Augmentation()
    return TrainConfig(MLPConfig(depth=depth, width=width), epochs=epochs, batch_size=batch, augmentation=moves)


def _measured(config: TrainConfig, profile=PROFILE) -> float:
    """Seconds per epoch the "real" trainer takes: the profile's terms times TRUE."""
    return float(np.dot(epoch_terms(config, EXAMPLES, profile), TRUE))


def _trial(config: TrainConfig, profile=PROFILE, slow: float = 1.0, steady_epochs: int = 3) -> dict:
    per_epoch = _measured(config, profile) * slow
    return {"epoch_terms": list(epoch_terms(config, EXAMPLES, profile)), "batch_size": config.batch_size,
            "steady_epochs": steady_epochs, "seconds_per_epoch": per_epoch, "warmup_seconds": per_epoch + WARMUP}


def _study(*trials: dict) -> optuna.Study:
    study = optuna.create_study()
    for attrs in trials:
        study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.9, user_attrs=attrs))
    return study


SHAPES = [_config(1, 64, 512), _config(1, 64, 64), _config(2, 512, 128), _config(3, 1024, 128), _config(5, 2000, 100),
          _config(1, 128, 256, augmented=True), _config(2, 256, 64, augmented=True)]


def _close(model: costmodel.CostModel, config: TrainConfig, profile=PROFILE) -> bool:
    return model.predict(config, EXAMPLES) == pytest.approx(WARMUP + config.epochs * _measured(config, profile), rel=0.01)


def test_with_no_trial_the_profile_alone_predicts():
    model = costmodel.fit(_study(), EXAMPLES)
    assert model.trials == 0 and model.factors == (1.0, 1.0, 1.0, 1.0) and model.warmup == 0.0
    config = _config(2, 512, 128)
    assert model.predict(config, EXAMPLES) == pytest.approx(10 * sum(epoch_terms(config, EXAMPLES, PROFILE)))
    assert model.predict(config, EXAMPLES, epochs=3) == pytest.approx(3 * sum(epoch_terms(config, EXAMPLES, PROFILE)))


def test_trials_correct_the_profile_term_by_term():
    model = costmodel.fit(_study(*(_trial(c) for c in SHAPES)), EXAMPLES)
    assert model.trials == len(SHAPES) and model.warmup == pytest.approx(WARMUP)
    assert np.allclose(model.factors, TRUE, rtol=0.02)
    for config in (_config(4, 1500, 64), _config(1, 32, 512, epochs=2), _config(3, 300, 256, augmented=True)):
        assert _close(model, config), config
    assert model.predict(_config(2, 1000, 64), EXAMPLES) > model.predict(_config(2, 1000, 512), EXAMPLES)  # batch matters


def test_trials_from_two_machines_teach_the_same_factors_and_predict_for_either():
    trials = [_trial(c, PROFILE if i % 2 else OTHER) for i, c in enumerate(SHAPES)]
    study = _study(*trials)
    here, there = costmodel.fit(study, EXAMPLES, PROFILE), costmodel.fit(study, EXAMPLES, OTHER)
    assert np.allclose(here.factors, TRUE, rtol=0.02) and here.factors == there.factors
    assert _close(here, _config(4, 1500, 64)) and _close(there, _config(4, 1500, 64), OTHER)


def test_one_disturbed_run_does_not_poison_it():
    trials = [_trial(c) for c in SHAPES] + [_trial(_config(3, 2000, 128), slow=10.0)]  # ten times too slow
    model = costmodel.fit(_study(*trials), EXAMPLES)
    assert model.trials == len(SHAPES)  # the outlier was left out of the refit
    assert _close(model, _config(3, 2000, 128, epochs=15))


def test_runs_without_terms_or_a_steady_epoch_are_not_used():
    stored_before_profiles = {"param_count": 50_000, "batch_size": 128, "steady_epochs": 3, "seconds_per_epoch": 2.0}
    first_epoch_only = _trial(_config(2, 512, 128), steady_epochs=0, slow=10.0)  # warm-up dominated, nothing to learn
    model = costmodel.fit(_study(stored_before_profiles, first_epoch_only), EXAMPLES)
    assert model.trials == 0 and model.factors == (1.0, 1.0, 1.0, 1.0)


def test_a_run_cut_in_its_first_epoch_counts_by_its_timed_batches():
    config = _config(3, 1024, 128)
    cut = {**_trial(config, steady_epochs=0), "step_seconds": _measured(config) / math.ceil(EXAMPLES / 128)}
    model = costmodel.fit(_study(cut), EXAMPLES)
    assert model.trials == 1 and model.warmup == 0.0
    assert model.predict(config, EXAMPLES, epochs=1) == pytest.approx(_measured(config), rel=0.01)


@pytest.mark.parametrize("slower", [1.01, 1.05, 1.1, 1.2, 0.95, 0.9, 0.8, 1.3])
def test_trials_too_alike_to_tell_the_terms_apart_do_not_make_a_big_net_cheap(slower):
    # Two runs of one small net, timed a little apart: the terms that did not show in them keep the profile's
    # word, so a net far larger is predicted far slower, as the profile says.
    small, big = _config(1, 8, 64), _config(3, 4096, 64)
    first = _trial(small)
    model = costmodel.fit(_study(first, {**first, "seconds_per_epoch": first["seconds_per_epoch"] * slower}), EXAMPLES)
    assert model.predict(big, EXAMPLES) / model.predict(small, EXAMPLES) > 0.3 * sum(epoch_terms(big, EXAMPLES, PROFILE)) / sum(
        epoch_terms(small, EXAMPLES, PROFILE))


def test_the_optimistic_and_pessimistic_ends_come_from_the_models_own_error():
    exact = costmodel.fit(_study(*(_trial(c) for c in SHAPES)), EXAMPLES)
    assert exact.low == pytest.approx(1.0, abs=0.02) and exact.high == pytest.approx(1.0, abs=0.02)
    # Each net timed twice, once fast and once slow: noise no factor can absorb.
    slow = (0.8, 1.2, 1.0, 0.9, 1.1, 0.85, 1.15)
    noisy = costmodel.fit(_study(*(_trial(c, slow=f) for c, f in [*zip(SHAPES, slow), *zip(SHAPES, reversed(slow))])), EXAMPLES)
    assert 0.7 < noisy.low < 0.95 and 1.05 < noisy.high < 1.3
    config = _config(2, 1000, 64)
    assert noisy.least(config, EXAMPLES) == pytest.approx(noisy.low * noisy.predict(config, EXAMPLES))


def test_study_seconds_convert_each_net_by_its_own_terms():
    big, tiny = _config(5, 2000, 100), _config(1, 16, 64)
    assert costmodel.seconds_scale(big, EXAMPLES, PROFILE, dataclasses.replace(PROFILE, source="cached")) == 1.0  # one machine
    assert costmodel.seconds_scale(big, EXAMPLES, PROFILE, None) == 1.0  # a study started before profiles
    # A run on OTHER in the seconds of PROFILE's machine: predicted there over predicted here.
    for config in (big, tiny):
        assert costmodel.seconds_scale(config, EXAMPLES, OTHER, PROFILE) == pytest.approx(
            sum(epoch_terms(config, EXAMPLES, PROFILE)) / sum(epoch_terms(config, EXAMPLES, OTHER)))
    # The big net is bound by arithmetic (four times faster there), the tiny one by fixed costs (a third cheaper):
    # no single factor converts both.
    assert costmodel.seconds_scale(big, EXAMPLES, OTHER, PROFILE) > 2.5
    assert costmodel.seconds_scale(tiny, EXAMPLES, OTHER, PROFILE) < 2.0
