"""The cost-spread start: the first trials of a study aim at levels of predicted cost, one decade after another."""

from __future__ import annotations

import math

import optuna
import pytest

from mnist_core.machine import current
from sweep import costmodel
from sweep.spread import CostSpread, level
from sweep.storage import make_sampler
from sweep.record import records
from sweep.studyfile import STUDIES, load_study
from sweep.testing.stores import load, study_text

EXAMPLES = 54_000  # real MNIST's training split


def predicted(spec, params: dict) -> float:
    config = spec.config_for(optuna.trial.FixedTrial(params), seed=0)
    return costmodel.CostModel(current()).predict(config, EXAMPLES)


def test_the_first_trials_of_the_map_climb_the_decades_of_cost():
    spec = load_study(STUDIES / "map.toml")
    n = spec.cost_spread_trials
    study = optuna.create_study(directions=spec.directions, sampler=make_sampler(spec, EXAMPLES))
    costs = []
    for _ in range(n):
        trial = study.ask()
        costs.append(predicted(spec, {p.name: p.suggest(trial) for p in spec.params}))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # nothing trained: the cost model stays the prior
    spread = costs[:n]
    # Each aims at its own level, cheapest first: within a factor of two of it, and so in order.
    cheapest = costmodel.CostModel(current()).predict(spec.cheapest_config(), EXAMPLES)
    for index, cost in enumerate(spread):
        assert abs(math.log(cost / level(spec, index, cheapest))) < math.log(2), (index, cost)
    assert spread == sorted(spread)
    assert spread[0] == pytest.approx(cheapest)  # the first is the fastest net: the map's fast end
    # Each is trained with the study file's start recipe, the first too (not at the low ends of the ranges,
    # which train worst), except where the cheapest net takes the cheap end (no dropout).
    starts = {p.name: p.start for p in spec.params if p.start is not None}
    assert starts["learning_rate"] > min(p.low for p in spec.params if p.name == "learning_rate")
    for trial in study.trials:
        taken = {name: value for name, value in starts.items() if not (trial.number == 0 and name == "dropout")}
        assert {name: trial.params[name] for name in taken} == taken, trial.number
    assert study.trials[0].params["dropout"] == 0.0
    assert spread[-1] / spread[0] > 100  # the start spans the decades from the cheapest net to the budget


def test_without_the_training_set_size_or_with_no_spread_the_sampler_is_the_studys_own():
    spec = load_study(STUDIES / "map.toml")
    assert not isinstance(make_sampler(spec)._factory(0), CostSpread)
    assert isinstance(make_sampler(spec, EXAMPLES)._factory(0), CostSpread)
    tradeoff = load_study(STUDIES / "tradeoff.toml")
    assert tradeoff.cost_spread_trials == 0 and not isinstance(make_sampler(tradeoff, EXAMPLES)._factory(0), CostSpread)


def test_a_sweep_places_its_first_trial_at_the_first_level_of_cost(cli, tmp_path):
    # The sweep knows its training set's size only once the data is loaded; its sampler must be told.
    path = tmp_path / "spread.toml"
    path.write_text(study_text("spread", width="{ low = 8, high = 1024, log = true }", epochs="{ low = 1, high = 8 }")
                    .replace("seed = 0", "seed = 0\ncost_spread_trials = 4"))
    code, _, err = cli("run", "--trials", "1", study=path)
    assert code == 0, err
    spec = load_study(path)
    (first,) = [r for r in records(load(cli.store, "spread")) if r.number == 0]
    examples = round(600 * (1 - spec.validation_fraction))  # the synthetic training set, less validation
    cheapest = costmodel.CostModel(current()).predict(spec.cheapest_config(), examples)
    assert abs(math.log(first.predicted_seconds / level(spec, 0, cheapest))) < math.log(2), (first.predicted_seconds, cheapest)
