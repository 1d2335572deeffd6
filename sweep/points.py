"""Every epoch is a point: a trial's epoch k is a model that cost its cumulative training seconds
(warm-up included) and scored its validation accuracy. The front, `best --max-train-seconds` and dominance
pruning work on these (trial, epoch) points rather than on one point per trial.

A trial keeps its curve in the user attribute `curve`: [[cumulative seconds, validation accuracy], ...] for
its full epochs (an epoch cut short by the budget is no model a retrain can reproduce, so it is not a point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.record import FINISHED

CURVE_ATTR = "curve"


@dataclass(frozen=True)
class Point:
    trial: int
    epoch: int  # 1-based
    seconds: float  # training seconds up to the end of this epoch, warm-up included
    val_accuracy: float


def curve_of(trial: FrozenTrial) -> list[tuple[float, float]]:
    """(cumulative seconds, validation accuracy) per full epoch; empty for a trial stored without a curve."""
    if CURVE_ATTR in trial.user_attrs:
        return [(float(s), float(a)) for s, a in trial.user_attrs[CURVE_ATTR]]
    return []


def trial_points(trial: FrozenTrial) -> list[Point]:
    """The trial's points; a complete trial stored before curves were kept gives its scored epoch alone."""
    attrs = trial.user_attrs
    if CURVE_ATTR not in attrs:
        if trial.state == TrialState.COMPLETE and attrs.get("best_val_accuracy") is not None:
            return [Point(trial.number, int(attrs["best_epoch"]), float(attrs["train_seconds"]), float(attrs["best_val_accuracy"]))]
        return []
    return [Point(trial.number, epoch, s, a) for epoch, (s, a) in enumerate(curve_of(trial), start=1) if math.isfinite(a)]


def trained(trial: FrozenTrial) -> bool:
    """Whether a finished trial trained at least one full epoch, that is, has a point: what `--trials N` counts.
    One skipped before training, or cut inside its first epoch, is recorded but did not train."""
    return trial.state in FINISHED and bool(trial_points(trial))


def study_points(study: optuna.Study) -> list[Point]:
    """All (trial, epoch) points of the study's finished trials, complete or pruned."""
    return [p for t in study.get_trials(deepcopy=False, states=FINISHED) for p in trial_points(t)]


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether (seconds, accuracy) `a` is at least as fast and as accurate as `b`, and better in one."""
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def pareto_mask(accuracy: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """True where no other point `dominates` this one (exact copies dominate neither); NaN or infinite never.

    One sweep, fastest first and most accurate first among equals: a point is on the front when it beats
    every faster one's accuracy, or is a copy of the front point just before it.
    """
    accuracy, seconds = np.asarray(accuracy, float), np.asarray(seconds, float)
    on_front = np.zeros(len(accuracy), bool)
    best = (math.nan, -math.inf)  # (seconds, accuracy) of the last point put on the front
    for i in np.lexsort((-accuracy, seconds)):
        if not (math.isfinite(accuracy[i]) and math.isfinite(seconds[i])):
            continue
        if accuracy[i] > best[1] or (accuracy[i] == best[1] and seconds[i] == best[0]):
            on_front[i] = True
            best = (seconds[i], accuracy[i])
    return on_front


def front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated (seconds, accuracy) pairs, fastest first, each once."""
    seconds, accuracy = np.array(points, float).reshape(-1, 2).T
    mask = pareto_mask(accuracy, seconds)
    return sorted(set(zip(seconds[mask].tolist(), accuracy[mask].tolist())))
