"""The study in a real browser: headless Chromium renders `sweep ui` (MLflow) and `sweep dashboard` (optuna-dashboard).

Nothing is mocked: a finished study in a real store, the real servers, the pages as Chromium builds them.
"""

from __future__ import annotations

import re
import signal
import subprocess

import pytest

from sweep.testing.servers import CHROMIUM, free_port, serving
from sweep.testing.stores import load, runs
from sweep.tracking import PARENT_ATTR

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs a headless Chromium (Debian's chromium package, which .ci/run installs)"
)


def render(url: str) -> str:
    """The page's DOM once its scripts have run, as headless Chromium sees it."""
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=2000,1100",
         "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_mlflow_ui_opens_on_the_study_with_its_metrics_summary_and_chart(cli):
    assert cli("run", "--trials", "3")[0] == 0
    study = load(cli.store)
    client, all_runs = runs(cli.store)
    experiment = client.get_experiment_by_name("tiny").experiment_id
    parent = study.user_attrs[PARENT_ATTR]
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    with serving("ui", "--store", cli.store, "--name", "tiny", "--port", port, ready=f"{server}/health") as (_, link):
        assert link.startswith(f"{server}/#/experiments/{experiment}/runs?workflowType=machine_learning")
        table = render(link)
        for trial in study.trials:  # every trial run, with its score, size and data set
            assert f"trial-{trial.number}" in table
            assert repr(trial.user_attrs["best_val_accuracy"]) in table or f"{trial.user_attrs['best_val_accuracy']:g}" in table
            assert str(trial.user_attrs["param_count"]) in table
        assert "best_val_accuracy" in table and "train_seconds" in table and "mnist (" in table
        # The chart view opens on the sweep's own section of three charts (the trade-off scatter, the scientific
        # parameters, the curves: tests/test_sweep.py checks the stored view), ahead of MLflow's one per metric.
        # Headless Chromium's DOM has the sections; the cards draw their plots lazily, as they scroll into view.
        charts = render(f"{link}&compareRunsMode=CHART")
        assert charts.index("Trade-off") < charts.index("Model metrics") and re.search(r"Trade-off.{0,200}\(3\)", charts, re.S)

        summary = render(f"{server}/#/experiments/{experiment}/runs/{parent}?workflowType=machine_learning")
        for metric in ("best_val_accuracy", "trials_complete", "front_size", "hypervolume", "total_train_seconds"):
            assert metric in summary, metric
        artifacts = render(f"{server}/#/experiments/{experiment}/runs/{parent}/artifacts?workflowType=machine_learning")
        assert "tradeoff.png" in artifacts and "trials.csv" in artifacts and "tiny.toml" in artifacts


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_dashboard_shows_the_study_and_stops_cleanly(cli, stop):
    assert cli("run", "--trials", "2")[0] == 0
    port = free_port()
    url = f"http://127.0.0.1:{port}/dashboard"
    with serving("dashboard", "--store", cli.store, "--name", "tiny", "--port", port, ready=url, stop=stop) as (_, link):
        assert link == f"{url}/studies/{load(cli.store)._study_id}"  # the study's own page, not the list
        page = render(link)
        assert "tiny" in page and "Pareto Front" in page
