"""Choosing from results: the Pareto front and the winner `best` retrains, on hand-built studies."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from sweep.best import SelectionError, model_name, select_point
from sweep.points import Scale, front, hypervolume, pareto_mask


def test_pareto_mask_on_a_known_front():
    accuracy = [0.90, 0.95, 0.95, 0.97, 0.90, 0.96, math.nan, 0.99]
    seconds = [1.0, 2.0, 2.0, 10.0, 5.0, 10.0, 0.5, math.inf]
    # 0.90@1, 0.95@2 (twice: a tie dominates neither copy) and 0.97@10 are the front; 0.90@5 is dominated
    # by 0.90@1, 0.96@10 by 0.97@10; a NaN or infinite point is never on it.
    expected = [True, True, True, True, False, False, False, False]
    assert pareto_mask(np.array(accuracy), np.array(seconds)).tolist() == expected
    assert front(list(zip(seconds, accuracy))) == [(1.0, 0.90), (2.0, 0.95), (10.0, 0.97)]


def _study(*trials: tuple[TrialState, list[tuple[float, float]]]) -> optuna.Study:
    """A study whose trial i has (state, curve: [(cumulative seconds, validation accuracy)] per epoch)."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for number, (state, curve) in enumerate(trials):
        best = max(range(len(curve)), key=lambda i: curve[i][1]) if curve else None
        study.add_trial(optuna.trial.create_trial(
            state=state,
            values=[curve[best][1], curve[-1][0]] if state == TrialState.COMPLETE else None,
            params={"n": number},
            distributions={"n": IntDistribution(0, 100)},
            user_attrs={"curve": [list(p) for p in curve], "epochs_run": len(curve)},
        ))
    return study


def test_select_point_takes_the_most_accurate_epoch_of_any_trial_and_breaks_ties_by_speed():
    study = _study(
        (TrialState.COMPLETE, [(10.0, 0.95), (20.0, 0.97), (30.0, 0.965)]),
        (TrialState.COMPLETE, [(25.0, 0.96), (45.0, 0.98)]),
        (TrialState.PRUNED, [(3.0, 0.93), (5.0, 0.955)]),  # pruned after two epochs: both are models
        (TrialState.COMPLETE, [(32.0, 0.98)]),  # as accurate as trial 1's epoch 2, faster: wins
        (TrialState.FAIL, [(1.0, 0.99)]),  # failed trials give no point
        (TrialState.PRUNED, []),  # skipped before training
    )
    pick = lambda limit=None: (lambda t, p: (t.number, p.epoch))(*select_point(study, limit))  # noqa: E731
    assert pick() == (3, 1)
    assert pick(25.0) == (0, 2)  # trial 0's middle epoch
    assert pick(20.0) == (0, 2)  # the limit is inclusive
    assert pick(11.0) == (2, 2)  # a pruned trial's epoch
    assert pick(4.0) == (2, 1)
    with pytest.raises(SelectionError, match="the quickest took 3.0 s"):
        select_point(study, 2.0)
    with pytest.raises(SelectionError, match="no trained trial"):
        select_point(_study((TrialState.PRUNED, [])))


def test_a_complete_trial_stored_without_a_curve_is_its_scored_epoch():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=[0.97, 40.0], params={}, distributions={},
        user_attrs={"best_val_accuracy": 0.97, "train_seconds": 40.0, "best_epoch": 3},
    ))
    trial, point = select_point(study)
    assert (trial.number, point.epoch, point.seconds, point.val_accuracy) == (0, 3, 40.0, 0.97)


def test_each_selection_rule_has_its_own_model_file():
    assert model_name("tradeoff") == "tradeoff.keras"
    assert model_name("tradeoff", 5.0) == "tradeoff-under-5s.keras"
    assert model_name("tradeoff", 2.5) != model_name("tradeoff", 5.0) != model_name("tradeoff")
    assert model_name("tradeoff", seed=1) == "tradeoff-seed-1.keras" != model_name("tradeoff", seed=2)
    assert model_name("tradeoff", 5.0, seed=1) == "tradeoff-under-5s-seed-1.keras"


def test_hypervolume_of_a_known_front():
    accuracy = [0.90, 0.95, 0.97, 0.90, 0.99]
    seconds = [1.0, 2.0, 10.0, 5.0, 25.0]
    # Reference (accuracy 0, 20 s): 0.90 x 19 + 0.05 x 18 + 0.02 x 10; the dominated 0.90@5 and 0.99@25,
    # past the reference, add nothing.
    assert hypervolume(np.array(accuracy), np.array(seconds), 20.0) == pytest.approx(17.1 + 0.9 + 0.2)
    assert hypervolume(np.array([]), np.array([]), 20.0) == 0.0
    # From accuracy 0.95 up, only what lies above it counts: 0.02 x 10 (the 0.95 point itself adds nothing).
    assert hypervolume(np.array(accuracy), np.array(seconds), 20.0, Scale("linear", 0.95)) == pytest.approx(0.2)


def test_log_hypervolume_counts_decades_of_time_and_of_error():
    # Reference: error 0.1 (90%) and 100 s. Error 0.01 in 1 s spans 1 decade of error over 2 decades of time.
    assert hypervolume(np.array([0.99]), np.array([1.0]), 100.0, Scale("log")) == pytest.approx(1.0 * 2.0)
    # Halving the error counts alike at either end of the accuracy range: 90% -> 95% as 99% -> 99.5%.
    gains = [hypervolume(np.array([a]), np.array([1.0]), 100.0, Scale("log")) for a in (0.95, 0.99, 0.995)]
    assert gains[0] == pytest.approx(gains[2] - gains[1])
    # 0.1 s -> 1 s is worth as much as 10 s -> 100 s: the fast point gains a decade over the same error.
    fast = hypervolume(np.array([0.99, 0.99]), np.array([0.1, 50.0]), 100.0, Scale("log"))
    assert fast == pytest.approx(3.0)
    # Clamped, not infinite: accuracy 1 and 0 s.
    assert np.isfinite(hypervolume(np.array([1.0]), np.array([0.0]), 100.0, Scale("log")))
    # On the linear scale the same fast point adds next to nothing.
    assert hypervolume(np.array([0.99, 0.99]), np.array([0.1, 50.0]), 100.0) == pytest.approx(0.99 * 99.9)


