"""Every epoch is a point: a trial's epoch k is a model that cost its cumulative training seconds
(warm-up included) and scored its validation accuracy. The front, `best --max-train-seconds` and dominance
pruning work on these (trial, epoch) points rather than on one point per trial.

A trial keeps its curve in its record (`sweep/record.py`): [[cumulative seconds, validation accuracy], ...] for
its full epochs (an epoch cut short by the budget is no model a retrain can reproduce, so it is not a point).
"""

from __future__ import annotations

import math

import numpy as np
import optuna

from sweep.record import FINISHED, Point, records


def study_points(study: optuna.Study) -> list[Point]:
    """All (trial, epoch) points of the study's finished trials, complete or pruned."""
    return [p for r in records(study, FINISHED) for p in r.points]


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


def hypervolume(accuracy: np.ndarray, seconds: np.ndarray, max_seconds: float, min_accuracy: float = 0.0) -> float:
    """Area dominated by the (accuracy, seconds) points within the reference point (`min_accuracy`, `max_seconds`).

    One number for a whole front that grows when any point moves up (more accurate) or left (faster).
    """
    accuracy, seconds = np.asarray(accuracy, float), np.asarray(seconds, float)
    inside = pareto_mask(accuracy, seconds) & (seconds < max_seconds) & (accuracy > min_accuracy)
    area, below = 0.0, min_accuracy
    for a, s in sorted(zip(accuracy[inside], seconds[inside])):  # along the front: slower as it gets more accurate
        area += (a - below) * (max_seconds - s)
        below = a
    return area
