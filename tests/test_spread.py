"""The cost-spread start: the first trials of a study aim at levels of predicted cost, one decade after another."""

from __future__ import annotations

import math

import optuna

from mnist_core.model import param_count
from sweep import costmodel
from sweep.spread import CostSpread, level
from sweep.storage import make_sampler
from sweep.studyfile import STUDIES, load_study

EXAMPLES = 54_000  # real MNIST's training split


def predicted(spec, params: dict) -> float:
    config = spec.config_for(optuna.trial.FixedTrial(params), seed=0)
    return costmodel.PRIOR.predict(param_count(config.model), EXAMPLES, config.batch_size, config.epochs)


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
    config = spec.cheapest_config()
    cheapest = costmodel.PRIOR.predict(param_count(config.model), EXAMPLES, config.batch_size, config.epochs)
    for index, cost in enumerate(spread):
        assert abs(math.log(cost / level(spec, index, cheapest))) < math.log(2), (index, cost)
    assert spread == sorted(spread)
    assert spread[-1] / spread[0] > 100  # the start spans the decades from the cheapest net to the budget


def test_without_the_training_set_size_or_with_no_spread_the_sampler_is_the_studys_own():
    spec = load_study(STUDIES / "map.toml")
    assert not isinstance(make_sampler(spec)._factory(0), CostSpread)
    assert isinstance(make_sampler(spec, EXAMPLES)._factory(0), CostSpread)
    tradeoff = load_study(STUDIES / "tradeoff.toml")
    assert tradeoff.cost_spread_trials == 0 and not isinstance(make_sampler(tradeoff, EXAMPLES)._factory(0), CostSpread)
