"""A tiny study file, a sweep as a real process, and checks on what it stored in Optuna and MLflow.

Plain helpers (no pytest): `bench/reliability.py` injects its faults with them too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sweep.record import FINISHED, TrialRecord
from sweep.tracking import default_tracking_uri

ROOT = Path(__file__).resolve().parents[2]

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


def study_text(name: str = "tiny", **values: str) -> str:
    """TINY under another name, with some of its `key = value` lines given other values (TOML text)."""
    text = TINY.replace('name = "tiny"', f'name = "{name}"')
    for key, value in values.items():
        text, found = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.MULTILINE)
        assert found == 1, key
    return text


def load(store: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(store / "optuna.journal"))))


def runs(store: Path, experiment: str = "tiny"):
    client = MlflowClient(default_tracking_uri(store))
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client, client.search_runs([experiment_id], max_results=1000)


def finished(store: Path, name: str = "tiny") -> dict[int, tuple]:
    """Finished trials' values by number; empty while nothing is stored yet."""
    try:
        study = load(store, name)
    except Exception:  # the journal is not written yet
        return {}
    return {t.number: tuple(t.values or ()) for t in study.get_trials(states=FINISHED)}


def training_trial(store: Path, after: int = 0, not_pid: int | None = None, name: str = "tiny"):
    """A trial that is training now (its MLflow run is open), once `after` trials have finished."""
    if len(finished(store, name)) < after:
        return None
    running = [t for t in load(store, name).get_trials(states=(TrialState.RUNNING,)) if "mlflow_run_id" in t.user_attrs]
    return next((t for t in running if t.user_attrs["pid"] != not_pid), None)


def wait_for(condition, process: subprocess.Popen | None = None, seconds: float = 240):
    """Poll `condition()` until it returns something truthy; fail if `process` ends first or time runs out."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            found = condition()
        except Exception:  # the store is not written yet
            found = None
        if found:
            return found
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the sweep ended before the fault was injected:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.2)
    if process is not None:
        process.kill()
    raise AssertionError(f"timed out after {seconds} s waiting for the sweep")


def sweep_process(*argv, **options) -> subprocess.Popen:
    """`python -m sweep ARGV` as a real child process, output captured as text (unless `options` say otherwise)."""
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, **options}
    return subprocess.Popen(
        [sys.executable, "-m", "sweep", *map(str, argv)],
        cwd=ROOT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **options,
    )


def check_consistent(study: optuna.Study, all_runs, finished: int) -> None:
    """Exactly `finished` trials trained, numbers unique, one parent run, and nothing left RUNNING."""
    numbers = [t.number for t in study.trials]
    assert len(set(numbers)) == len(numbers)
    assert sum(TrialRecord.load(t).trained for t in study.trials) == finished
    assert not study.get_trials(states=(TrialState.RUNNING,))
    by_id = {r.info.run_id: r for r in all_runs}
    assert not [r for r in all_runs if r.info.status == "RUNNING"]
    assert sum("mlflow.parentRunId" not in r.data.tags for r in all_runs) == 1
    for trial in (t for t in study.trials if TrialRecord.load(t).trained):
        expected = "FINISHED" if trial.state == TrialState.COMPLETE else "KILLED"
        assert by_id[trial.user_attrs["mlflow_run_id"]].info.status == expected
