"""Several workers on one study: each explores its own points, slots are shared exactly, dead workers are found."""

from __future__ import annotations

import gc
import os
import subprocess
import threading
import time

import optuna
import pytest
import sqlalchemy.exc
from optuna.trial import TrialState

from sweep.storage import RECONNECT_SECONDS, Reconnecting, count_busy, lost_connection, open_storage, open_study, release
from sweep.studyfile import load_study
from sweep.testing.stores import study_text
from sweep.tracking import Tracker, default_tracking_uri
from sweep.workers import HOST, STALE_ENV, STALE_SECONDS, Liveness, stale_seconds


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


def test_workers_describing_the_parent_run_together_both_succeed(tmp_path, monkeypatch):
    # Workers ending together all write the parent run's description: MLflow's SQL store looks the tag up,
    # then inserts it, so a worker that looked before another's insert committed breaks the unique key (seen
    # in CI with two hosts on one server: the worker exited 1).
    from mlflow.store.tracking.dbmodels.models import SqlTag
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
    from sqlalchemy.orm import Session

    uri = default_tracking_uri(tmp_path)
    first, second = (Tracker(uri, "race", tmp_path / "artifacts") for _ in range(2))
    run = first.start_run("study")
    first.set_description(run, "one")
    real_merge, missed = Session.merge, []

    def merge(session, instance, **kwargs):
        if not missed and isinstance(instance, SqlTag):
            missed.append(instance)
            session.add(instance)  # as if its look-up ran before the first worker's insert committed
            return instance
        return real_merge(session, instance, **kwargs)

    monkeypatch.setattr(Session, "merge", merge)
    second.set_description(run, "two")
    assert missed
    assert first.client.get_run(run).data.tags[MLFLOW_RUN_NOTE] == "two"


def test_workers_creating_the_schema_together_wait_for_the_one_that_won(tmp_path, monkeypatch):
    # Workers starting together on a fresh PostgreSQL each create Optuna's tables, and the losers' CREATE TABLE
    # fails with duplicate_table (bench/cluster.py, 16 workers: two exited with "relation studies already exists").
    psycopg = pytest.importorskip("psycopg")
    from sweep import storage

    real, calls = storage.RDBStorage, []

    def racing(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise sqlalchemy.exc.ProgrammingError("CREATE TABLE studies", {}, psycopg.errors.DuplicateTable('relation "studies" already exists'))
        return real(url, **kwargs)

    monkeypatch.setattr(storage, "RDBStorage", racing)
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    opened = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path)
    assert len(calls) == 2
    optuna.create_study(storage=opened, study_name="after-the-race")
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'optuna.db'}")] == ["after-the-race"]


def test_a_worker_that_loses_the_schema_race_keeps_no_connection_of_its_failed_storage(tmp_path, monkeypatch):
    # The loser's half-made storage held its pool's connections until a garbage collection: 3 connections per
    # loser where a worker keeps 2 (bench/cluster.py, 16 workers on a fresh PostgreSQL: 45 connections).
    psycopg = pytest.importorskip("psycopg")
    from sweep import storage

    database, tries = tmp_path / "optuna.db", []

    class Losing(storage.RDBStorage):
        def __init__(self, url, **kwargs):
            tries.append(url)
            super().__init__(url, **kwargs)  # connected, as a racer is when its CREATE TABLE fails
            if len(tries) == 1:
                raise sqlalchemy.exc.ProgrammingError("CREATE TABLE studies", {}, psycopg.errors.DuplicateTable('relation "studies" already exists'))

    def open_files() -> int:
        links = [os.path.join("/proc/self/fd", fd) for fd in os.listdir("/proc/self/fd")]
        return sum(os.path.realpath(link) == os.path.realpath(database) for link in links)

    monkeypatch.setattr(storage, "RDBStorage", Losing)
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    gc.disable()  # what a collection would close must be closed already
    try:
        opened = open_storage(f"sqlite:///{database}", tmp_path)
        left = open_files()
        gc.collect()
        assert len(tries) == 2 and left == open_files() > 0
    finally:
        gc.enable()
    optuna.create_study(storage=opened, study_name="after-the-race")


def _running(user_attrs: dict, number: int = 0) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=user_attrs)
    trial.number = number
    return trial


class FakeClock:
    """A monotonic clock that moves only when told to, or when `sleep` is called (which it records)."""

    def __init__(self):
        self.now, self.pauses = 1000.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def test_a_trial_on_another_host_is_alive_while_its_heartbeat_changes_whatever_that_hosts_clock_says():
    clock = FakeClock()
    watcher = Liveness(clock)
    behind = time.time() - 10 * STALE_SECONDS  # its host's clock runs far behind this one's
    for beat in range(3):  # a new heartbeat at every look, each a stale interval after the last
        assert watcher.stale_reason(_running({"host": "other-machine", "pid": 1, "heartbeat": behind + beat})) is None
        clock.now += STALE_SECONDS + 1
    # Its heartbeat stops: gone once it has not changed for the stale interval of this observer's clock.
    silent = _running({"host": "other-machine", "pid": 1, "heartbeat": behind + 2})
    clock.now -= STALE_SECONDS + 1
    assert watcher.stale_reason(silent) is None
    clock.now += STALE_SECONDS / 2
    assert watcher.stale_reason(silent) is None
    clock.now += STALE_SECONDS / 2 + 5
    assert watcher.stale_reason(silent) == f"worker died: no heartbeat from other-machine for {STALE_SECONDS + 5:.0f} s"


def test_a_new_observer_waits_a_stale_interval_before_calling_a_worker_gone():
    clock = FakeClock()
    watcher = Liveness(clock)
    old = _running({"host": "other-machine", "pid": 1, "heartbeat": time.time() - 3600})  # silent for an hour by its stamp
    assert watcher.stale_reason(old) is None  # first sight: the wait starts now
    clock.now += STALE_SECONDS + 1
    assert watcher.stale_reason(old).startswith("worker died: no heartbeat from other-machine")
    watcher.forget_all_but(set())
    assert watcher.stale_reason(old) is None  # forgotten once no longer running: seen afresh


def test_a_trial_on_this_host_is_dead_as_soon_as_its_process_is():
    process = subprocess.Popen(["true"])
    process.wait()
    gone, watcher = process.pid, Liveness()
    assert watcher.stale_reason(_running({"host": HOST, "pid": gone, "heartbeat": time.time()})) == (
        f"worker died: process {gone} on {HOST} is gone"
    )
    assert watcher.stale_reason(_running({"host": HOST, "pid": os.getppid(), "heartbeat": time.time()}, number=1)) is None


@pytest.mark.parametrize("text", ["soon", "0", "-5", "nan"])
def test_a_bad_stale_interval_is_refused_in_one_line(monkeypatch, cli, text):
    monkeypatch.setenv(STALE_ENV, text)
    with pytest.raises(ValueError, match=f"{STALE_ENV}="):
        stale_seconds()
    code, _, err = cli("run", "--trials", "1")
    assert code == 2 and f"{STALE_ENV}={text!r} is not a positive number of seconds" in err and err.count("\n") == 1
    monkeypatch.setenv(STALE_ENV, "7.5")
    assert stale_seconds() == 7.5


class Flaky:
    """A storage stand-in whose calls fail `failures` times with `error`, then answer."""

    def __init__(self, failures: int, error: Exception):
        self.failures, self.error, self.calls = failures, error, 0

    def get_all_studies(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return ["answered"]


def _lost() -> Exception:
    # What Optuna's RDB storage raises when the database went away mid-session.
    try:
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    except sqlalchemy.exc.OperationalError as cause:
        try:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from cause
        except optuna.exceptions.StorageInternalError as exc:
            return exc


def test_a_storage_call_waits_out_a_database_restart_with_backoff():
    clock = FakeClock()
    inner = Flaky(5, _lost())
    assert Reconnecting(inner, clock, clock.sleep).get_all_studies() == ["answered"]
    assert inner.calls == 6 and clock.pauses == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_a_storage_call_gives_up_after_the_reconnect_time_and_never_retries_other_errors():
    clock = FakeClock()
    down = Flaky(10**6, _lost())
    with pytest.raises(optuna.exceptions.StorageInternalError):
        Reconnecting(down, clock, clock.sleep).get_all_studies()
    assert sum(clock.pauses) <= RECONNECT_SECONDS and sum(clock.pauses) > RECONNECT_SECONDS - 8.0
    wrong = Flaky(1, ValueError("not a connection problem"))
    with pytest.raises(ValueError):
        Reconnecting(wrong, clock, clock.sleep).get_all_studies()
    assert wrong.calls == 1 and not lost_connection(ValueError())


def _race_parts(tmp_path):
    """Two workers' views of one new study (SQLite) and one MLflow store, and the study file."""
    path = tmp_path / "race.toml"
    path.write_text(study_text("race"))
    spec, url = load_study(path), f"sqlite:///{tmp_path / 'optuna.db'}"
    studies = [optuna.create_study(study_name="race", storage=url, directions=spec.directions, load_if_exists=True) for _ in range(2)]
    uri = default_tracking_uri(tmp_path)
    return spec, url, studies, [Tracker(uri, "race", tmp_path / "artifacts") for _ in range(2)]


def test_a_worker_arriving_while_another_creates_the_parent_run_waits_for_it(tmp_path, monkeypatch):
    # CI's clean-clone run of the README host test found two parent runs for one study: a worker that started
    # later claimed the run after the first had checked its own claim, while the first was creating the run.
    from sweep import context

    spec, url, studies, trackers = _race_parts(tmp_path)
    real_start, late, found = Tracker.start_run, [], []

    def start_run(self, name, *args, **kwargs):
        if name.startswith("sweep-") and not late:  # the first worker is creating the run: the late one arrives
            late.append(threading.Thread(target=lambda: found.append(context.parent_run(studies[1], trackers[1], spec, None))))
            late[0].start()
            late[0].join(timeout=3)
        return real_start(self, name, *args, **kwargs)

    monkeypatch.setattr(Tracker, "start_run", start_run)
    first = context.parent_run(studies[0], trackers[0], spec, None)
    late[0].join()
    runs = trackers[0].client.search_runs([trackers[0].experiment_id])
    assert [r.info.run_id for r in runs] == [first] and found == [first]
    assert optuna.get_all_study_names(url) == ["race"]  # the claim is let go


def test_a_claim_whose_worker_died_is_let_go_when_its_waiter_gives_up(tmp_path, monkeypatch):
    from sweep import context
    from sweep.context import CommandError

    spec, url, studies, trackers = _race_parts(tmp_path)
    optuna.create_study(study_name="race" + context.PARENT_CLAIM_SUFFIX, storage=url)  # a worker claimed, then died
    monkeypatch.setattr(context, "PARENT_WAIT_SECONDS", 0.2)
    monkeypatch.setattr(context, "PARENT_POLL_SECONDS", 0.05)
    with pytest.raises(CommandError, match="run the same command again"):
        context.parent_run(studies[0], trackers[0], spec, None)
    run = context.parent_run(studies[0], trackers[0], spec, None)  # the same command again
    assert [r.info.run_id for r in trackers[0].client.search_runs([trackers[0].experiment_id])] == [run]
    assert optuna.get_all_study_names(url) == ["race"]


def test_a_workers_storage_keeps_at_most_two_database_connections_whatever_calls_at_once(tmp_path):
    # A worker's trial loop and a trial's heartbeat each hold a connection; SQLAlchemy's default pool kept open
    # as many as had ever been taken at once (up to 5), where a worker needs two.
    from sqlalchemy import event

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path)
    optuna.create_study(study_name="pool", storage=storage)
    engine = storage._inner._backend.engine
    opened, answers = [], []
    event.listen(engine, "connect", lambda *_: opened.append(1))
    event.listen(engine, "before_cursor_execute", lambda *_: time.sleep(0.1))  # calls that overlap
    threads = [threading.Thread(target=lambda: answers.append(storage.get_all_studies())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 4 and all(len(studies) == 1 for studies in answers)
    assert engine.pool.checkedin() + engine.pool.checkedout() <= 2 and len(opened) <= 2
