"""The coverage bench's summary (bench/coverage.py): seconds from different machines are never compared."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from sweep.testing.stores import ROOT

sys.path.insert(0, str(ROOT / "bench"))  # the benches run as scripts from bench/, importing each other by name
# Loaded under a name of its own: `coverage` is also coverage.py's package name.
_spec = importlib.util.spec_from_file_location("bench_coverage", ROOT / "bench" / "coverage.py")
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)

FAST, SLOW = "CPU A, 2 CPUs, AVX2", "CPU B, 2 CPUs, AVX2"
HEAD = coverage.commit()


def sweep_cell(method: str, seed: int, on: str, points: list[list[float]]) -> dict:
    return {"method": method, "seed": seed, "machine": on, "points": points, "wall_seconds": 100.0 + seed,
            "commit": HEAD, "clean_tree": True}


def seed_model(on: str, seconds: float) -> dict:
    return {"method": "seed-model", "seed": 0, "machine": on, "train_seconds": seconds, "val_accuracy": 0.98,
            "commit": HEAD, "clean_tree": True}


@pytest.fixture
def bench(tmp_path, monkeypatch):
    monkeypatch.setattr(coverage, "RESULTS", tmp_path)
    monkeypatch.setattr(coverage, "CELLS", tmp_path / "coverage_cells.json")

    def summarise(cells: dict) -> dict:
        coverage.CELLS.write_text(json.dumps(cells))
        coverage.summary(None)
        return json.loads((tmp_path / "coverage.json").read_text())
    return summarise


def test_the_summary_compares_each_machines_cells_only_with_that_machines(bench, tmp_path):
    cells = {f"map/{s}": sweep_cell("map", s, FAST, [[0, 1, 0.5, 0.95], [1, 5, 50.0, 0.985 + s / 1000]]) for s in (12, 13, 14)}
    cells |= {f"plain-optuna/{s}": sweep_cell("plain-optuna", s, FAST, [[0, 1, 20.0, 0.98]]) for s in (6, 7, 8)}
    # The same method on a slower machine, with a point the fast machine's cells never reached: were seconds mixed,
    # it would raise the reference front and so every gap on the fast machine.
    cells |= {f"map-noaugstart/{s}": sweep_cell("map-noaugstart", s, SLOW, [[0, 3, 200.0, 0.995]]) for s in (9, 10, 11)}
    cells |= {coverage.seed_model_key(FAST): seed_model(FAST, 400.0), coverage.seed_model_key(SLOW): seed_model(SLOW, 900.0)}
    result = bench(cells)

    assert result["machine"] == FAST and all(c["current_code"] for c in result["cells"].values())
    assert max(a for _, a in result["reference_front"]) == pytest.approx(0.999)  # seed 14's, not the slow machine's 0.995
    assert result["seeds_run"] == {"map": [12, 13, 14], "plain-optuna": [6, 7, 8]}
    assert result["gap_by_decade"]["map"]["100-450"] == pytest.approx(0.1)  # the median seed, 13: 99.9% - 99.8%
    assert result["top_val_default"] == pytest.approx(0.998)
    assert result["seed_model"]["train_seconds"] == 400.0
    assert result["wall_in_seed_models"] == pytest.approx(113.0 / 400.0)
    assert result["log_hv_ratio_vs_plain_optuna"] > 1
    slow = result["other_machines"][SLOW]
    assert slow["seeds_run"] == {"map-noaugstart": [9, 10, 11]} and slow["seed_model"]["train_seconds"] == 900.0
    assert slow["max_gap_default"] is None and slow["log_hv_ratio_vs_plain_optuna"] is None
    assert (tmp_path / "coverage.png").exists() and (tmp_path / coverage.chart_name(SLOW, FAST)).exists()
    assert SLOW in (tmp_path / "coverage.md").read_text()


def test_the_summary_refuses_a_shipped_default_whose_seeds_ran_on_different_machines(bench):
    cells = {f"map/{s}": sweep_cell("map", s, on, [[0, 1, 0.5, 0.95]]) for s, on in ((12, FAST), (13, SLOW), (14, FAST))}
    with pytest.raises(SystemExit, match="2 machines"):
        bench(cells)
