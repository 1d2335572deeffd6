"""Every epoch is a point: a trial's epoch k is a model that cost its cumulative training seconds
(warm-up included) and scored its validation accuracy. The front, `best --max-train-seconds` and dominance
pruning work on these (trial, epoch) points rather than on one point per trial.

A trial keeps its curve in its record (`sweep/record.py`): [[cumulative seconds, validation accuracy], ...] for
its full epochs (an epoch cut short by the budget is no model a retrain can reproduce, so it is not a point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optuna

from sweep.record import FINISHED, Point, records


def study_points(study: optuna.Study) -> list[Point]:
    """All (trial, epoch) points of the study's finished trials, complete or pruned."""
    return [p for r in records(study, FINISHED) for p in r.points]


def most_accurate(points: list[Point]) -> Point:
    """The most accurate point, the faster on ties: the rule `best` selects by."""
    return max(points, key=lambda p: (p.val_accuracy, -p.seconds))


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


# Where the log scale clamps: an error of 0 (accuracy 1) and 0 seconds have no logarithm. Both floors lie
# beyond anything measured: a validation split of 6,000 images moves the error by 1.7e-4 per image.
MIN_ERROR = 1e-5
MIN_SECONDS = 1e-3
# The log hypervolume's reference accuracy: 90%, which a one-epoch 1 x 32 net passes. Its reference time is
# the study's per-trial budget.
LOG_REFERENCE_ACCURACY = 0.9


@dataclass(frozen=True)
class Scale:
    """How the front's two axes are compared: "log" (training seconds and the error 1 - accuracy, each in
    decades, so 0.3 s -> 3 s counts as 30 s -> 300 s, and 99.0% -> 99.5% as 96% -> 98%) or "linear".

    Both map onto (cost to minimise, score to maximise) in the same order as the raw values, so the front,
    dominance and `best` are the same on either scale; areas (hypervolume) and what a sampler weighs differ.
    """

    name: str = "log"
    reference_accuracy: float | None = None  # None: LOG_REFERENCE_ACCURACY on the log scale, 0 on the linear one

    def cost(self, seconds: np.ndarray | float) -> np.ndarray:
        seconds = np.asarray(seconds, float)
        return np.log10(np.maximum(seconds, MIN_SECONDS)) if self.name == "log" else seconds

    def score(self, accuracy: np.ndarray | float) -> np.ndarray:
        accuracy = np.asarray(accuracy, float)
        return -np.log10(np.maximum(1.0 - accuracy, MIN_ERROR)) if self.name == "log" else accuracy

    def reference(self, max_seconds: float) -> tuple[float, float]:
        """The hypervolume's (cost, score) reference point: the per-trial budget, and the reference accuracy."""
        accuracy = self.reference_accuracy
        if accuracy is None:
            accuracy = LOG_REFERENCE_ACCURACY if self.name == "log" else 0.0
        return float(self.cost(max_seconds)), float(self.score(accuracy))


SCALES = ("log", "linear")


def hypervolume(accuracy: np.ndarray, seconds: np.ndarray, max_seconds: float, scale: Scale = Scale("linear")) -> float:
    """Area dominated by the (accuracy, seconds) points on `scale`, within its reference point for `max_seconds`.

    One number for a whole front that grows when any point moves up (more accurate) or left (faster).
    """
    cost, score = scale.cost(seconds), scale.score(accuracy)
    max_cost, min_score = scale.reference(max_seconds)
    inside = pareto_mask(score, cost) & (cost < max_cost) & (score > min_score)
    area, below = 0.0, min_score
    for a, s in sorted(zip(score[inside], cost[inside])):  # along the front: slower as it gets more accurate
        area += (a - below) * (max_cost - s)
        below = a
    return area
