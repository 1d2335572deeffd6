"""The cost-spread start: the first trials of a study aim at levels of predicted cost, one decade after another."""

from __future__ import annotations

import math

import optuna
import pytest

from mnist_core.machine import current
from sweep import costmodel
from sweep.spread import AUGMENT_FROM_EPOCHS, FAST_END_EPOCHS, FAST_END_RATE, FAST_END_WIDTH, START_WIDTH, CostSpread, fast_end, level, start_learning_rate
from sweep.storage import make_sampler
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
    # Trial 0 is the fast end: a one-layer net FAST_END_WIDTH wide, the cheapest values otherwise, trained for
    # FAST_END_EPOCHS so that its epochs climb the first decade.
    cheapest = costmodel.CostModel(current()).predict(spec.cheapest_config(), EXAMPLES)
    fast_end = study.trials[0].params
    assert (fast_end["depth"], fast_end["width"], fast_end["epochs"]) == (1, FAST_END_WIDTH, FAST_END_EPOCHS)
    assert {k: v for k, v in fast_end.items() if k not in ("width", "epochs", "learning_rate")} == {
        k: v for k, v in spec.cheapest_params(fast_end).items() if k not in ("width", "epochs", "learning_rate")}
    # The others each aim at their own level, cheapest first: within a factor of two of it, and so in order.
    for index, cost in enumerate(costs[1:], start=1):
        assert abs(math.log(cost / level(spec, index, cheapest))) < math.log(2), (index, cost)
    assert costs[1:] == sorted(costs[1:])
    # Each is trained with the study file's start recipe, the first too (not at the low ends of the ranges,
    # which train worst), except where the cheapest net takes the cheap end (no dropout, no augmentation) and
    # a run shorter than AUGMENT_FROM_EPOCHS trains without augmentation; the learning rate is the start's for
    # the net's width (FAST_END_RATE times it for the fast end, a short run).
    starts = {p.name: p.start for p in spec.params if p.start is not None}
    assert starts["dropout"] > 0 and starts["strength"] > 0
    rate = spec.param("learning_rate")
    assert starts["learning_rate"] > rate.low
    for trial in study.trials:
        short = trial.params["epochs"] < AUGMENT_FROM_EPOCHS
        expected = {**starts, **({"dropout": 0.0} if trial.number == 0 else {}), **({"strength": 0.0} if short else {})}
        taken = {name: value for name, value in expected.items() if name != "learning_rate"}
        assert {name: trial.params[name] for name in taken} == taken, trial.number
        factor = FAST_END_RATE if trial.number == 0 else 1.0
        assert trial.params["learning_rate"] == min(factor * start_learning_rate(rate, trial.params["width"]), rate.high), trial.number
    assert study.trials[0].params["epochs"] < AUGMENT_FROM_EPOCHS
    assert {t.params["strength"] for t in study.trials[1:]} == {0.0, starts["strength"]}  # short and long runs
    # The fast end's rate is raised above the start, and narrow levels' are; the wide nets keep it.
    assert study.trials[0].params["learning_rate"] > FAST_END_RATE * starts["learning_rate"]
    assert any(t.number > 0 and t.params["width"] < START_WIDTH and t.params["learning_rate"] > starts["learning_rate"]
               for t in study.trials)
    assert any(t.params["width"] >= START_WIDTH and t.params["learning_rate"] == starts["learning_rate"] for t in study.trials)
    assert costs[-1] / cheapest > 100  # the start spans the decades from the cheapest net to the budget


def test_the_start_learning_rate_is_raised_for_narrow_nets_within_the_range():
    rate = load_study(STUDIES / "map.toml").param("learning_rate")
    assert start_learning_rate(rate, START_WIDTH) == start_learning_rate(rate, 2048) == rate.start
    assert start_learning_rate(rate, START_WIDTH // 4) == pytest.approx(2 * rate.start)
    assert start_learning_rate(rate, 1) == rate.high


def test_the_fast_end_takes_the_searched_values_nearest_its_width_and_epochs(tmp_path):
    path = tmp_path / "choices.toml"
    path.write_text(study_text(width="{ choices = [8, 100, 4096] }", epochs="{ low = 6, high = 9 }"))
    cheapest = {"depth": 1, "width": 8, "epochs": 6, "learning_rate": 1e-3}
    assert 28 < FAST_END_WIDTH < 640 and FAST_END_EPOCHS < 6  # between the log midpoints of 8, 100 and 4096; below the range
    assert fast_end(load_study(path), cheapest) == {**cheapest, "width": 100, "epochs": 6}


def test_without_the_training_set_size_or_with_no_spread_the_sampler_is_the_studys_own():
    spec = load_study(STUDIES / "map.toml")
    assert not isinstance(make_sampler(spec)._factory(0), CostSpread)
    assert isinstance(make_sampler(spec, EXAMPLES)._factory(0), CostSpread)
    tradeoff = load_study(STUDIES / "tradeoff.toml")
    assert tradeoff.cost_spread_trials == 0 and not isinstance(make_sampler(tradeoff, EXAMPLES)._factory(0), CostSpread)


def test_a_sweep_starts_at_the_fast_end(cli, tmp_path):
    # The sweep knows its training set's size only once the data is loaded; its sampler must be told.
    path = tmp_path / "spread.toml"
    path.write_text(study_text("spread", width="{ low = 8, high = 1024, log = true }", epochs="{ low = 1, high = 8 }")
                    .replace("seed = 0", "seed = 0\ncost_spread_trials = 4"))
    code, _, err = cli("run", "--trials", "1", study=path)
    assert code == 0, err
    spec = load_study(path)
    study = load(cli.store, "spread")
    first = study.trials[0].params
    assert (first["depth"], first["width"], first["epochs"]) == (spec.param("depth").low, FAST_END_WIDTH, FAST_END_EPOCHS)
