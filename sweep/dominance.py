"""Pruning by dominance, for studies of accuracy against training seconds (Optuna cannot prune those).

After each epoch, a trial is stopped (PRUNED, reason `dominated`) when none of the epochs it has left could
reach a point that the study's current front of (trial, epoch) points does not dominate. What it could reach
is projected optimistically, so that a trial is stopped only when even its best case loses:
- seconds: each epoch left takes as long as its quickest epoch after the first (the first pays for
  tracing and compiling); epochs of one run do not get quicker than that, so the time errs low;
- accuracy: its error shrinks from epoch k to epoch j by the largest factor that any finished trial's error
  shrank over the same epochs: the best case this study has seen, so the accuracy errs high.
Until MIN_CURVES finished trials have reached epoch j, nothing is known of epoch j, and the trial goes on.

The trial's epochs stay points of the front. Optuna is told it PRUNED: TPE counts pruned trials of a
multi-objective study among its worse ones (`optuna/samplers/_tpe/sampler.py::_split_trials`), so the
sampler learns to avoid what was dominated; the trial's real points are in its `curve` attribute.
"""

from __future__ import annotations

from collections.abc import Sequence

from sweep.points import dominates

MIN_CURVES = 3


def best_error_ratio(curves: Sequence[Sequence[tuple[float, float]]], k: int, j: int) -> float | None:
    """The smallest error(epoch j) / error(epoch k) among `curves` (1-based epochs), or None from too few."""
    ratios = [(1.0 - c[j - 1][1]) / (1.0 - c[k - 1][1]) for c in curves if len(c) >= j and c[k - 1][1] < 1.0]
    return min(ratios) if len(ratios) >= MIN_CURVES else None


def projection(curve: Sequence[tuple[float, float]], planned_epochs: int,
               curves: Sequence[Sequence[tuple[float, float]]]) -> list[tuple[float, float]] | None:
    """Optimistic (seconds, accuracy) of each epoch left, or None where something cannot be projected."""
    k = len(curve)
    if k < 2:  # one epoch, warm-up included, says nothing about the speed of the next ones
        return None
    quickest = min(b[0] - a[0] for a, b in zip(curve, curve[1:]))
    seconds, accuracy = curve[-1]
    points = []
    for j in range(k + 1, planned_epochs + 1):
        ratio = best_error_ratio(curves, k, j)
        if ratio is None:
            return None
        points.append((seconds + (j - k) * quickest, 1.0 - (1.0 - accuracy) * ratio))
    return points


def dominated(curve: Sequence[tuple[float, float]], planned_epochs: int,
              curves: Sequence[Sequence[tuple[float, float]]], front: Sequence[tuple[float, float]]) -> str | None:
    """Why the trial cannot reach a point the front does not dominate; None if it still can (or cannot be told)."""
    if len(curve) >= planned_epochs:
        return None
    reachable = projection(curve, planned_epochs, curves)
    if reachable is None or any(not any(dominates(f, p) for f in front) for p in reachable):
        return None
    seconds, accuracy = reachable[-1]
    return (f"dominated: at best {accuracy:.4f} in {seconds:.1f} s by epoch {planned_epochs}, "
            f"and the front already does better at every epoch left")
