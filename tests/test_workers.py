"""Several workers on one study: each explores its own points, slots are shared exactly, dead workers are found."""

from __future__ import annotations

import os
import subprocess
import time

import optuna
import pytest
from optuna.trial import TrialState

from sweep.storage import count_busy, open_storage, open_study, release
from sweep.studyfile import load_study
from sweep.tracking import Tracker, default_tracking_uri
from sweep.workers import HOST, STALE_SECONDS, stale_reason


@pytest.fixture
def spec(study_file):
    return load_study(study_file)


def _ask(study: optuna.Study, spec) -> optuna.Trial:
    trial = study.ask()
    spec.config_for(trial, seed=0)  # suggests every searched value
    return trial


def test_workers_that_start_together_propose_different_points(tmp_path, spec):
    # Two processes (or machines) open the same new study at once and each asks for a trial.
    storage = open_storage(None, tmp_path)
    first, second = open_study(spec, storage), open_study(spec, storage)
    a, b = _ask(first, spec), _ask(second, spec)
    assert a.number != b.number and a.params != b.params
    # ...and once they have results, a model-based proposal differs between them too.
    for study, trial in ((first, a), (second, b)):
        study.tell(trial, [0.5, 1.0])
    for i in range(12):  # past TPE's random start-up trials
        study = first if i % 2 else second
        trial = _ask(study, spec)
        study.tell(trial, [trial.params["width"] / 32, float(trial.params["epochs"])])
    c, d = _ask(first, spec), _ask(second, spec)
    assert c.params != d.params


def _sequence(store, spec, n: int) -> list[dict]:
    study = open_study(spec, open_storage(None, store))
    params = []
    for _ in range(n):
        trial = _ask(study, spec)
        study.tell(trial, [trial.params["width"] / 32, float(trial.params["epochs"])])
        params.append(trial.params)
    return params


def test_a_single_process_sweep_is_reproducible_and_a_resumed_one_explores_new_points(tmp_path, spec):
    first = _sequence(tmp_path / "a", spec, 13)
    assert _sequence(tmp_path / "b", spec, 13) == first  # same study file, same seed: same trials
    resumed = _sequence(tmp_path / "a", spec, 3)  # the same study, opened again by a new process
    assert not [p for p in resumed if p in first]


def test_a_worker_that_loses_the_race_for_the_last_slot_gives_its_trial_back(tmp_path, spec):
    storage = open_storage(None, tmp_path)
    first, second = open_study(spec, storage), open_study(spec, storage)
    a = _ask(first, spec)
    b = second.ask()  # both asked while one slot (--trials 1) looked free
    assert count_busy(second, before=b.number) == 1  # a, numbered lower, holds the slot
    assert count_busy(first, before=a.number) == 0  # a itself had it free
    release(second, b)
    assert count_busy(first) == 1
    assert first.trials[b.number].state == TrialState.WAITING
    assert first.ask().number == b.number  # the released trial is the next one handed out
    first.tell(a, [0.5, 1.0])


def test_workers_that_log_the_same_dataset_at_once_both_record_it(tmp_path, splits, monkeypatch):
    # MLflow looks a dataset up, then inserts it. Replay the race: the second worker's look-up misses the row
    # the first worker is about to commit, so its insert breaks the unique key (seen failing CI with 4 workers).
    from mlflow.store.tracking.dbmodels.models import SqlDataset
    from sqlalchemy.orm import Query

    uri = default_tracking_uri(tmp_path)
    first, second = (Tracker(uri, "race", tmp_path / "artifacts") for _ in range(2))
    runs = [tracker.start_run(f"trial {i}") for i, tracker in enumerate((first, second))]
    first.log_dataset(runs[0], splits)
    real_all, missed = Query.all, []

    def look_up(query):
        if not missed and query.column_descriptions[0]["entity"] is SqlDataset:
            missed.append(query)
            return []
        return real_all(query)

    monkeypatch.setattr(Query, "all", look_up)
    second.log_dataset(runs[1], splits)
    assert missed
    recorded = [first.client.get_run(run).inputs.dataset_inputs for run in runs]
    assert [[d.dataset.digest for d in inputs] for inputs in recorded] == [[splits.checksum[:12]]] * 2


def _running(user_attrs: dict) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=user_attrs)


def test_a_trial_on_another_host_is_alive_while_its_heartbeat_is_recent():
    now = time.time()
    beating = _running({"host": "other-machine", "pid": 1, "heartbeat": now - STALE_SECONDS / 2})
    assert stale_reason(beating, now=now) is None
    silent = _running({"host": "other-machine", "pid": 1, "heartbeat": now - STALE_SECONDS - 5})
    assert stale_reason(silent, now=now) == f"worker died: no heartbeat from other-machine for {STALE_SECONDS + 5:.0f} s"


def test_a_trial_on_this_host_is_dead_as_soon_as_its_process_is():
    process = subprocess.Popen(["true"])
    process.wait()
    gone, now = process.pid, time.time()
    assert stale_reason(_running({"host": HOST, "pid": gone, "heartbeat": now}), now=now) == (
        f"worker died: process {gone} on {HOST} is gone"
    )
    assert stale_reason(_running({"host": HOST, "pid": os.getppid(), "heartbeat": now}), now=now) is None
