"""A cost-spread start: the study's first trials, each placed at its own level of predicted training time.

A sampler left to itself starts with random configurations, and a random draw of depth, width and epochs
lands mostly in the middle decades of cost; the model-based search that follows refines what it was shown.
Here trial i of the first n targets the cost level i / n of the way, in decades, from the cheapest
configuration the space allows to the per-trial budget, so the search starts from every decade of the map.
Trial 0 is the map's fast end: a one-layer net FAST_END_WIDTH wide with the cheapest values otherwise,
trained for FAST_END_EPOCHS at a rate FAST_END_RATE times its width's start, so that its epochs are the map's
first points. The levels are taken cheapest first, so that the
cost model (`sweep/costmodel.py`) is fitted on measured trials before it places the expensive ones. Each
trial draws CANDIDATES configurations at random, with its own seed, and runs the one whose predicted time is
nearest its level. A value the study file gives a `start` for (a recipe that trains well at any length) is
taken as given rather than drawn, so that each level's trial shows what its size and length can do rather
than what a random learning rate does to it; the start learning rate is raised for narrow nets
(`start_learning_rate`), and a run shorter than AUGMENT_FROM_EPOCHS trains without augmentation
(`candidate`). After the first n trials the study's own sampler (TPE) takes over.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from sweep import costmodel
from sweep.studyfile import HYPERPARAMETERS, Param, StudySpec

# Random configurations drawn per spread trial: enough that some lie near any level of cost.
CANDIDATES = 256
# A one-layer net's first epoch is mostly tracing and each further epoch costs a fraction of it, so the fast end
# trains for this many epochs: points from its first epoch up the first decade. Its width: the first epochs of a
# net this wide cost about what the narrowest's do and learn more, and a run this short trains best at a rate
# this many times its width's start (bench/results/fast_end.md).
FAST_END_EPOCHS = 4
FAST_END_WIDTH = 128
FAST_END_RATE = 2.0
# The study file's start learning rate is for nets this wide or wider; narrower nets train best at a larger one
# (bench/results/fast_end.md).
START_WIDTH = 256
# Augmentation pays off from this many epochs: in the earlier maps' runs of 5 to 9 epochs half strength trained
# better than none, and a shorter run spends on it what it could spend on a larger net (bench/results/coverage.md).
AUGMENT_FROM_EPOCHS = 5


def draw(param: Param, rng: np.random.Generator) -> Any:
    """A value of `param` for a spread trial: its `start` value if the study file gives one, else drawn as a
    random sampler would (uniform, or log-uniform on a log range)."""
    if param.start is not None:
        return param.start
    if param.choices is not None:
        return param.choices[int(rng.integers(len(param.choices)))]
    integer = HYPERPARAMETERS[param.name].kind is int
    low, high = param.low, param.high + 1 if integer else param.high  # an integer range includes its high end
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if param.log else rng.uniform(low, high)
    return int(min(math.floor(value), param.high)) if integer else float(min(value, param.high))


def candidate(spec: StudySpec, rng: np.random.Generator) -> dict[str, Any]:
    """A spread trial's candidate values (`draw`), with no augmentation if it trains for fewer than
    AUGMENT_FROM_EPOCHS epochs."""
    values = {p.name: draw(p, rng) for p in spec.params}
    strength = spec.param("strength")
    if strength is not None and spec.config_for(optuna.trial.FixedTrial(values), seed=0).epochs < AUGMENT_FROM_EPOCHS:
        values["strength"] = min(strength.choices or (strength.low, strength.high))
    return values


def start_learning_rate(param: Param, width: int) -> float:
    """The spread trials' learning rate for a net `width` units wide: `param`'s start, raised by
    sqrt(START_WIDTH / width) for a net narrower than START_WIDTH, within the range."""
    return min(param.start * math.sqrt(max(START_WIDTH / width, 1.0)), param.high)


def fast_end(spec: StudySpec, values: dict[str, Any]) -> dict[str, Any]:
    """Trial 0's values: `values` (the cheapest) with FAST_END_WIDTH and FAST_END_EPOCHS, or the searched values
    nearest them."""
    chosen = dict(values)
    for name, value in (("width", FAST_END_WIDTH), ("epochs", FAST_END_EPOCHS)):
        param = spec.param(name)
        if param is None:
            continue
        if param.choices is not None:
            chosen[name] = min(param.choices, key=lambda choice: abs(math.log(choice / value)))
        else:
            chosen[name] = int(min(max(value, param.low), param.high))
    return chosen


def level(spec: StudySpec, index: int, cheapest: float) -> float:
    """The predicted seconds spread trial `index` aims at: evenly spaced in decades from `cheapest` (the cheapest
    configuration's) towards the budget, one step short of it."""
    top = max(spec.trial_seconds, cheapest)
    return math.exp(math.log(cheapest) + index / spec.cost_spread_trials * (math.log(top) - math.log(cheapest)))


class CostSpread(optuna.samplers.BaseSampler):
    """`inner`, except for the study's first `cost_spread_trials` trials: those are placed on levels of cost."""

    def __init__(self, inner: optuna.samplers.BaseSampler, spec: StudySpec, examples: int, seed: int):
        self._inner, self._spec, self._examples = inner, spec, examples
        self._rng = np.random.default_rng(seed)

    def _spread(self, trial: FrozenTrial) -> bool:
        return trial.number < self._spec.cost_spread_trials

    def infer_relative_search_space(self, study, trial):
        if self._spread(trial):
            return {p.name: p.distribution for p in self._spec.params}
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        if not self._spread(trial):
            return self._inner.sample_relative(study, trial, search_space)
        return self.place(study, trial.number)

    def place(self, study: optuna.Study, index: int) -> dict[str, Any]:
        """Spread trial `index`'s values: the fast end (index 0), else the candidate whose predicted seconds (on the
        cost model of the trials so far) are nearest level `index`; with the start learning rate for its width
        (FAST_END_RATE times it for the fast end)."""
        spec = self._spec
        drawn = [candidate(spec, self._rng) for _ in range(1 if index == 0 else CANDIDATES)]
        # The values that do not set the cheapest net's cost (the learning rate, ...) come from a candidate (the
        # start recipe, or drawn), not from the low ends of their ranges, which train worst.
        cheapest = spec.cheapest_params(drawn[0])
        if index == 0:
            chosen = fast_end(spec, cheapest)
        else:
            model = costmodel.fit(study, self._examples)

            def seconds(config) -> float:
                return model.predict(config, self._examples)

            # The cheapest configuration is a candidate too, as random draws rarely reach the first levels.
            target = math.log(level(spec, index, seconds(spec.cheapest_config())))
            candidates = [cheapest, *drawn]
            cost = [math.log(seconds(spec.config_for(optuna.trial.FixedTrial(c), seed=0))) for c in candidates]
            chosen = candidates[int(np.argmin(np.abs(np.array(cost) - target)))]
        rate = spec.param("learning_rate")
        if rate is not None and rate.start is not None:
            width = spec.config_for(optuna.trial.FixedTrial(chosen), seed=0).model.width
            lr = start_learning_rate(rate, min(np.atleast_1d(width))) * (FAST_END_RATE if index == 0 else 1.0)
            chosen = {**chosen, "learning_rate": min(lr, rate.high)}
        return chosen

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
