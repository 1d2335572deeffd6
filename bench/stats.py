"""The benches' own arithmetic, in one place and tested (tests/test_bench_stats.py): medians with ranges, paired
ratios over seeds, and a least-squares growth rate."""

from __future__ import annotations

import math
import statistics
from typing import Callable, Sequence


def median_range(values: Sequence[float | None]) -> dict | None:
    """Median, min, max and count of the values given (None: a cell without the figure); None if there are none."""
    present = [v for v in values if v is not None]
    return {"median": statistics.median(present), "min": min(present), "max": max(present), "n": len(present)} if present else None


def paired_ratio(cells: dict, ours: str, theirs: str | tuple[str, ...], measure: str,
                 best: Callable[[list[float]], float] = max) -> float | None:
    """Median over the seeds both ran of ours / theirs: `cells[method][seed][measure]`; with several methods in
    `theirs`, the `best` of them per seed. Seeds where either side lacks the measure (or theirs is 0) are left out."""
    theirs = (theirs,) if isinstance(theirs, str) else theirs
    ratios = []
    for seed, mine in cells.get(ours, {}).items():
        other = [cells[t][seed].get(measure) for t in theirs if seed in cells.get(t, {})]
        other = [o for o in other if o]
        if mine.get(measure) is not None and other:
            ratios.append(mine[measure] / best(other))
    return statistics.median(ratios) if ratios else None


def growth_slope(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """The slope of the least-squares line through (xs, ys) and its standard error: a growth rate read from
    every sample, not from two end points (at least 3 points, 2 distinct xs)."""
    n = len(xs)
    if n < 3 or len(ys) != n:
        raise ValueError(f"a slope with a standard error needs at least 3 (x, y) pairs, got {n} x and {len(ys)} y")
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("a slope needs at least 2 distinct x values")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    residuals = sum((y - mean_y - slope * (x - mean_x)) ** 2 for x, y in zip(xs, ys))
    return slope, math.sqrt(residuals / (n - 2) / sxx)
