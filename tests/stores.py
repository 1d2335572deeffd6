"""A tiny study file, a sweep as a real process, and checks on what it stored in Optuna and MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sweep.oracle import FINISHED
from sweep.tracking import default_tracking_uri

ROOT = Path(__file__).resolve().parents[1]

TINY = """
[study]
name = "tiny"
objectives = ["val_accuracy", "train_seconds"]
trials = 4
seed = 0

[budget]
trial_seconds = 120

[scientific]
depth = { low = 1, high = 2 }
width = { low = 8, high = 32, log = true }
epochs = { low = 1, high = 2 }

[nuisance]
learning_rate = { low = 1e-3, high = 1e-2, log = true }

[fixed]
batch_size = 64
"""


def load(store: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(store / "optuna.journal"))))


def runs(store: Path, experiment: str = "tiny"):
    client = MlflowClient(default_tracking_uri(store))
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client, client.search_runs([experiment_id], max_results=1000)


def sweep_process(*argv, **options) -> subprocess.Popen:
    """`python -m sweep ARGV` as a real child process, output captured as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "sweep", *map(str, argv)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, **options,
    )


def check_consistent(study: optuna.Study, all_runs, finished: int) -> None:
    """Exactly `finished` trials finished, numbers unique, one parent run, and nothing left RUNNING."""
    numbers = [t.number for t in study.trials]
    assert len(set(numbers)) == len(numbers)
    assert len(study.get_trials(states=FINISHED)) == finished
    assert not study.get_trials(states=(TrialState.RUNNING,))
    by_id = {r.info.run_id: r for r in all_runs}
    assert not [r for r in all_runs if r.info.status == "RUNNING"]
    assert sum("mlflow.parentRunId" not in r.data.tags for r in all_runs) == 1
    for trial in study.get_trials(states=FINISHED):
        expected = "FINISHED" if trial.state == TrialState.COMPLETE else "KILLED"
        assert by_id[trial.user_attrs["mlflow_run_id"]].info.status == expected
