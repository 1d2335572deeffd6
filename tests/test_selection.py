"""Choosing from results: the Pareto front and the winner `best` retrains, on hand-built studies."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from sweep.best import SelectionError, model_name, select_trial
from sweep.report import hypervolume, pareto_mask


def test_pareto_mask_on_a_known_front():
    accuracy = [0.90, 0.95, 0.95, 0.97, 0.90, 0.96, math.nan, 0.99]
    seconds = [1.0, 2.0, 2.0, 10.0, 5.0, 10.0, 0.5, math.inf]
    # 0.90@1, 0.95@2 (twice: a tie dominates neither copy) and 0.97@10 are the front; 0.90@5 is dominated
    # by 0.90@1, 0.96@10 by 0.97@10; a NaN or infinite point is never on it.
    expected = [True, True, True, True, False, False, False, False]
    assert pareto_mask(np.array(accuracy), np.array(seconds)).tolist() == expected


def _study(*trials: tuple[TrialState, float, float]) -> optuna.Study:
    """A study whose trial i has (state, best validation accuracy, training seconds)."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for number, (state, accuracy, seconds) in enumerate(trials):
        study.add_trial(optuna.trial.create_trial(
            state=state,
            values=[accuracy, seconds] if state == TrialState.COMPLETE else None,
            params={"n": number},
            distributions={"n": IntDistribution(0, 100)},
            user_attrs={"best_val_accuracy": accuracy, "train_seconds": seconds},
        ))
    return study


def test_select_trial_takes_the_most_accurate_and_breaks_ties_by_speed():
    study = _study(
        (TrialState.COMPLETE, 0.97, 30.0),
        (TrialState.COMPLETE, 0.98, 50.0),
        (TrialState.COMPLETE, 0.98, 40.0),  # as accurate as trial 1, faster: wins
        (TrialState.PRUNED, 0.99, 5.0),  # cut short: never selected
        (TrialState.COMPLETE, 0.96, 5.0),
    )
    assert select_trial(study).number == 2
    assert select_trial(study, max_train_seconds=35.0).number == 0
    assert select_trial(study, max_train_seconds=40.0).number == 2  # the limit is inclusive
    assert select_trial(study, max_train_seconds=5.0).number == 4
    with pytest.raises(SelectionError, match="the quickest took 5.0 s"):
        select_trial(study, max_train_seconds=4.0)


def test_each_selection_rule_has_its_own_model_file():
    assert model_name("tradeoff") == "tradeoff.keras"
    assert model_name("tradeoff", 5.0) == "tradeoff-under-5s.keras"
    assert model_name("tradeoff", 2.5) != model_name("tradeoff", 5.0) != model_name("tradeoff")


def test_hypervolume_of_a_known_front():
    accuracy = [0.90, 0.95, 0.97, 0.90, 0.99]
    seconds = [1.0, 2.0, 10.0, 5.0, 25.0]
    # Reference (accuracy 0, 20 s): 0.90 x 19 + 0.05 x 18 + 0.02 x 10; the dominated 0.90@5 and 0.99@25,
    # past the reference, add nothing.
    assert hypervolume(np.array(accuracy), np.array(seconds), 20.0) == pytest.approx(17.1 + 0.9 + 0.2)
    assert hypervolume(np.array([]), np.array([]), 20.0) == 0.0
