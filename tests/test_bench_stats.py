"""The benches' own arithmetic (bench/stats.py): what their headline figures are computed with."""

from __future__ import annotations

import sys

import pytest

from sweep.testing.stores import ROOT

sys.path.insert(0, str(ROOT / "bench"))  # the benches run as scripts from bench/, importing each other by name
from stats import growth_slope, median_range, paired_ratio  # noqa: E402


def test_median_range_leaves_out_missing_figures():
    assert median_range([3.0, None, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}
    assert median_range([None]) is None


def test_a_paired_ratio_compares_seed_with_seed_and_takes_the_median():
    cells = {"ours": {"0": {"hv": 2.0}, "1": {"hv": 3.0}, "2": {"hv": 8.0}, "3": {"hv": 5.0}},
             "a": {"0": {"hv": 1.0}, "1": {"hv": 2.0}, "2": {"hv": 2.0}},
             "b": {"0": {"hv": 4.0}, "1": {}, "2": {"hv": 1.0}}}
    assert paired_ratio(cells, "ours", "a", "hv") == 2.0  # 2/1, 3/2, 8/2: seed 3 has no pair
    assert paired_ratio(cells, "ours", ("a", "b"), "hv") == 1.5  # against the better per seed: 2/4, 3/2, 8/2
    assert paired_ratio(cells, "ours", "missing", "hv") is None


def test_growth_slope_is_the_least_squares_line_with_its_standard_error():
    xs = list(range(10, 100))
    slope, stderr = growth_slope(xs, [1000 + 0.3 * x for x in xs])
    assert slope == pytest.approx(0.3) and stderr == pytest.approx(0.0, abs=1e-9)
    # A saw-tooth (memory released every 25 trials) has a slope near zero, whatever its last tooth.
    saw = [1000 + 2 * (x % 25) for x in xs]
    slope, stderr = growth_slope(xs, saw)
    assert abs(slope) < 3 * stderr and stderr > 0
    slope, stderr = growth_slope([0, 1, 2, 3], [0.0, 1.0, 1.0, 2.0])  # by hand: 0.6, sqrt(0.2 / 2 / 5)
    assert slope == pytest.approx(0.6) and stderr == pytest.approx(0.2 ** 0.5 / 10 ** 0.5)
    with pytest.raises(ValueError, match="at least 3"):
        growth_slope([1, 2], [1.0, 2.0])
    with pytest.raises(ValueError, match="distinct"):
        growth_slope([1, 1, 1], [1.0, 2.0, 3.0])
