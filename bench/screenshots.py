"""Screenshots of a real-MNIST study in the browser: `sweep ui` (MLflow) and `sweep dashboard` (optuna-dashboard).

Runs the default study on a fresh store, retrains the winner with `best`, then starts both servers as a
user would, opens the links they print, and has headless Chromium take the pictures. Writes docs/*.png and
docs/screenshots.md.

Usage: python bench/screenshots.py --data-dir ../shared/datasets/mnist [--trials 20] [--trial-seconds 30]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, parse_args

from sweep.studyfile import DEFAULT_STUDY, load_study
from sweep.testing.servers import CHROMIUM, free_port, serving
from sweep.testing.stores import load, runs
from sweep.tracking import PARENT_ATTR

DOCS = ROOT / "docs"


def screenshot(url: str, path: Path, size: str = "1800,1000", budget_ms: int = 20000) -> None:
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={size}",
                    f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url], capture_output=True, check=True, timeout=300)
    print(f"wrote {path}", flush=True)


def sweep(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "sweep", *argv], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], trials=20, trial_seconds=30.0)
    if CHROMIUM is None:
        sys.exit("needs Debian's chromium package")
    command = f"python bench/screenshots.py --data-dir {args.data_dir} --trials {args.trials} --trial-seconds {args.trial_seconds:g}"
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "mlruns"
        common = ["--store", str(store), "--data-dir", args.data_dir]
        sweep("run", "--trials", str(args.trials), "--trial-seconds", str(args.trial_seconds), *common)
        sweep("best", *common)
        name = load_study(DEFAULT_STUDY).name
        study = load(store, name)
        client, _ = runs(store, name)
        experiment = client.get_experiment_by_name(name).experiment_id
        parent = study.user_attrs[PARENT_ATTR]
        port = free_port()
        server = f"http://127.0.0.1:{port}"
        with serving("ui", "--store", store, "--port", port, ready=f"{server}/health") as (_, link):
            screenshot(link, DOCS / "mlflow-runs.png")
            # The chart view draws its charts one by one after the runs load: in 20 s of virtual time they still spin.
            screenshot(f"{link}&compareRunsMode=CHART", DOCS / "mlflow-charts.png", "1800,1400", budget_ms=90000)
            screenshot(f"{server}/#/experiments/{experiment}/runs/{parent}?workflowType=machine_learning", DOCS / "mlflow-sweep-run.png",
                       "1800,1400")
            screenshot(f"{server}/#/models/mnist-{name}/versions/1?workflowType=machine_learning", DOCS / "mlflow-model.png")
        port = free_port()
        with serving("dashboard", "--store", store, "--port", port, ready=f"http://127.0.0.1:{port}/dashboard") as (_, link):
            screenshot(link, DOCS / "dashboard-study.png", "1800,1400")
    (DOCS / "screenshots.md").write_text(
        "# The study in the browser\n\n"
        f"Made by `{command}` on {time.strftime('%Y-%m-%d')} (real MNIST, {args.trials} trials of the default study, then `best`).\n\n"
        "| page | picture |\n|---|---|\n"
        "| `sweep ui`: the study's runs, best first, in MLflow's model-training view | ![runs](mlflow-runs.png) |\n"
        "| the same runs in MLflow's chart view: the trade-off, the scientific parameters, the curves | ![charts](mlflow-charts.png) |\n"
        "| the sweep's parent run: its description, summary metrics stepped by trials, the study file, chart and CSV | "
        "![parent](mlflow-sweep-run.png) |\n"
        "| the model registered by `best`, linked to its trial's run | ![model](mlflow-model.png) |\n"
        "| `sweep dashboard`: optuna-dashboard on the same study, at the page it prints | ![dashboard](dashboard-study.png) |\n"
    )


if __name__ == "__main__":
    main()
