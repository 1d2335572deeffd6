"""Dominance pruning on synthetic curves: a trial that cannot win is stopped, one that can goes on."""

from __future__ import annotations

import pytest

from sweep.dominance import MIN_CURVES, best_error_ratio, dominated, projection
from sweep.points import dominates, front

# Finished trials: (cumulative seconds, validation accuracy) per epoch, 5 epochs each, 10 s an epoch.
FINISHED = [
    [(10, 0.90), (20, 0.94), (30, 0.95), (40, 0.955), (50, 0.96)],
    [(10, 0.92), (20, 0.95), (30, 0.96), (40, 0.965), (50, 0.97)],
    [(10, 0.80), (20, 0.90), (30, 0.93), (40, 0.94), (50, 0.945)],
]
FRONT = front([p for curve in FINISHED for p in curve])


def test_the_front_of_points():
    assert FRONT == [(10, 0.92), (20, 0.95), (30, 0.96), (40, 0.965), (50, 0.97)]
    assert dominates((10, 0.92), (10, 0.90)) and not dominates((10, 0.92), (10, 0.92)) and not dominates((10, 0.9), (5, 0.8))


def test_projection_takes_the_best_error_ratio_seen_and_the_quickest_epoch():
    # Error from epoch 2 to 3: 0.06 -> 0.05, 0.05 -> 0.04, 0.10 -> 0.07: the best ratio is 0.7.
    assert best_error_ratio(FINISHED, 2, 3) == pytest.approx(0.7)
    assert best_error_ratio(FINISHED[:MIN_CURVES - 1], 2, 3) is None  # too few curves to learn from
    reach = projection([(12, 0.90), (20, 0.93)], 5, FINISHED)
    assert [s for s, _ in reach] == [28, 36, 44]  # 8 s an epoch: its quickest so far
    assert reach[0][1] == pytest.approx(1 - 0.07 * 0.7)


def test_a_slow_weak_trial_is_stopped_and_keeps_its_points():
    slow = [(30, 0.85), (60, 0.88)]  # 30 s an epoch, far below the front
    kept = list(slow)
    reason = dominated(slow, 5, FINISHED, FRONT)
    # Its best case by epoch 5: 90 s more, the error shrinking by the best ratio seen from epoch 2 to 5.
    best_case = (60 + 3 * 30, 1 - 0.12 * best_error_ratio(FINISHED, 2, 5))
    assert reason == f"dominated: at best {best_case[1]:.4f} in {best_case[0]:.1f} s by epoch 5, and the front already does better at every epoch left"
    assert all(any(dominates(f, p) for f in FRONT) for p in projection(slow, 5, FINISHED))
    assert slow == kept  # its epochs are left as they are: they stay points of the front


def test_a_trial_that_can_still_reach_the_front_goes_on():
    fast = [(4, 0.90), (8, 0.93)]  # 4 s an epoch: its next epochs would be the quickest of their accuracy
    assert dominated(fast, 5, FINISHED, FRONT) is None
    strong = [(10, 0.95), (20, 0.965)]  # as slow as the others but ahead of the front
    assert dominated(strong, 5, FINISHED, FRONT) is None


def test_nothing_is_decided_without_enough_knowledge():
    slow = [(30, 0.85), (60, 0.88)]
    assert dominated(slow[:1], 5, FINISHED, FRONT) is None  # one epoch: its speed is not known yet
    assert dominated(slow, 5, FINISHED[:2], FRONT) is None  # two finished curves: too few to project from
    assert dominated(slow, 7, FINISHED, FRONT) is None  # no finished trial has run 7 epochs
    assert dominated(slow, 2, FINISHED, FRONT) is None  # all its epochs are run
