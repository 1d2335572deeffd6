"""Faults injected for real: kill -9 and SIGTERM of real processes, four processes on one study, a
worker killed the way the out-of-memory killer does it, a worker frozen past the stale interval, a trial
failed as stale just as its worker ends it, a real allocation failure, a torn journal, and a store on a
file system that is full or read-only.

Each test checks what a user relies on afterwards: no finished trial lost, no MLflow run left
RUNNING, and the same command resumes the study.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from sweep.cli import main
from sweep.record import FINISHED
from sweep.testing.stores import TINY, check_consistent, load, runs, sweep_process, training_trial, wait_for
from sweep.workers import STALE_ENV

# Trials of a few seconds each, so a signal can land while one trains.
SLOW = TINY.replace("epochs = { low = 1, high = 2 }", "epochs = { low = 150, high = 160 }")


def assert_consistent(store: Path, finished: int) -> None:
    _, all_runs = runs(store)
    check_consistent(load(store), all_runs, finished)


def assert_retried_once(store: Path, victim_number: int, reason: str) -> None:
    """The killed trial is FAIL with `reason`, its run FAILED, and its configuration ran once more."""
    study = load(store)
    victim = study.trials[victim_number]
    assert victim.state == TrialState.FAIL and victim.user_attrs["reason"].startswith(reason), victim.user_attrs
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == victim_number]
    assert retry.params == victim.params and retry.state in FINISHED
    _, all_runs = runs(store)
    (run,) = [r for r in all_runs if r.info.run_id == victim.user_attrs["mlflow_run_id"]]
    assert run.info.status == "FAILED" and run.data.tags["reason"].startswith(reason)


@pytest.fixture
def slow_study(tmp_path):
    path = tmp_path / "slow.toml"
    path.write_text(SLOW)
    return path


def test_kill_9_mid_trial_then_the_same_command_resumes(tmp_path, idx_dir, slow_study, capsys):
    store = tmp_path / "store"
    argv = ["run", "--study", slow_study, "--store", store, "--data-dir", idx_dir, "--trials", "3"]
    process = sweep_process(*argv)
    victim = wait_for(lambda: training_trial(store, after=1), process)
    process.kill()  # SIGKILL: nothing in the process gets to clean up
    process.wait()
    before = load(store)
    assert before.trials[victim.number].state == TrialState.RUNNING  # the fault left it dangling
    kept = {t.number: t.values for t in before.get_trials(states=FINISHED)}

    assert main([str(a) for a in argv]) == 0  # the same command, run again
    out = capsys.readouterr().out
    assert f"trial {victim.number:4d} FAIL" in out and "queued again" in out
    assert_retried_once(store, victim.number, "worker died: process")
    assert {n: load(store).trials[n].values for n in kept} == kept
    assert_consistent(store, finished=3)


def test_sigterm_closes_the_trial_and_runs_and_says_how_to_resume(tmp_path, idx_dir, slow_study):
    store = tmp_path / "store"
    process = sweep_process("run", "--study", slow_study, "--store", store, "--data-dir", idx_dir, "--trials", "3")
    victim = wait_for(lambda: training_trial(store), process)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 130 and "run the same command again to resume" in out, out
    trial = load(store).trials[victim.number]
    assert trial.state == TrialState.FAIL and trial.user_attrs["reason"] == "interrupted"
    _, all_runs = runs(store)
    statuses = {r.data.tags["mlflow.runName"]: r.info.status for r in all_runs}
    assert statuses[f"trial-{victim.number}"] == "FAILED" and statuses["sweep-tiny"] == "KILLED"
    assert "RUNNING" not in statuses.values()


def test_four_independent_processes_finish_exactly_the_requested_total(tmp_path, idx_dir, study_file):
    store = tmp_path / "store"
    processes = [
        sweep_process("run", "--study", study_file, "--store", store, "--data-dir", idx_dir, "--trials", "6")
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, out in zip(processes, outputs):
        assert process.returncode == 0, out
        assert "database is locked" not in out
    assert_consistent(store, finished=6)
    done = load(store).get_trials(states=FINISHED)
    assert len({t.user_attrs["pid"] for t in done}) >= 2  # the work was shared, not done by one process while the others waited
    assert len({tuple(sorted(t.params.items())) for t in done}) == len(done)  # and each process explored its own points


def test_a_killed_worker_is_replaced_and_its_trial_retried(tmp_path, idx_dir, slow_study):
    # SIGKILL is what the kernel's out-of-memory killer sends: no Python handler runs.
    store = tmp_path / "store"
    process = sweep_process("run", "--study", slow_study, "--store", store, "--data-dir", idx_dir, "--trials", "4", "--workers", "2")
    victim = wait_for(lambda: training_trial(store, after=1, not_pid=process.pid), process)
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    assert "killed by SIGKILL; starting a new worker" in out
    assert_retried_once(store, victim.number, "worker died")
    assert_consistent(store, finished=4)


def test_a_frozen_worker_loses_its_trial_and_its_late_result_is_dropped(tmp_path, idx_dir, slow_study, monkeypatch):
    # SIGSTOP is what a frozen host looks like from outside: its process lives, its heartbeat stops. Another
    # worker recovers its trial after the stale interval; thawed, the frozen one is told in one line that its
    # trial was taken over, and goes on.
    monkeypatch.setenv(STALE_ENV, "4")
    store = tmp_path / "store"
    argv = ("run", "--study", slow_study, "--store", store, "--data-dir", idx_dir, "--trials", "3")
    frozen = sweep_process(*argv)
    victim = wait_for(lambda: training_trial(store), frozen)
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        other = sweep_process(*argv)
        out, _ = other.communicate(timeout=600)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert other.returncode == 0, out
    assert f"trial {victim.number:4d} FAIL     (worker died: no heartbeat" in out, out
    late, _ = frozen.communicate(timeout=600)
    assert frozen.returncode == 0 and "Traceback" not in late, late
    assert late.count(f"trial {victim.number:4d} dropped") == 1, late
    assert_retried_once(store, victim.number, "worker died: no heartbeat")
    assert_consistent(store, finished=3)


def test_a_trial_failed_as_stale_just_before_its_worker_tells_it_is_dropped_and_the_sweep_goes_on(cli, monkeypatch):
    # Another worker's stale check can close a trial after its own worker ended the trial's run and before it
    # told Optuna (bench/cluster.py, 32 workers on 2 cores: two workers exited on "Cannot tell a FAIL trial.").
    from sweep import trial as trial_module
    from sweep import workers

    reason, close = "worker died: no heartbeat", trial_module._close
    monkeypatch.setattr(workers.LIVENESS, "stale_reason", lambda trial: reason if trial.number == 0 else None)

    def close_then_recovered_elsewhere(ctx, trial, run_id, outcome):
        close(ctx, trial, run_id, outcome)
        if trial.number == 0:
            workers.recover(trial.study, ctx.tracker, print)  # what the other worker does

    monkeypatch.setattr(trial_module, "_close", close_then_recovered_elsewhere)
    code, out, err = cli("run", "--trials", "2")
    assert code == 0, err
    assert out.count("trial    0 FAIL     (worker died: no heartbeat; its configuration is queued again)") == 1, out
    assert out.count("trial    0 dropped") == 1, out
    assert_retried_once(cli.store, 0, reason)
    assert_consistent(cli.store, finished=2)


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))


def test_a_trial_that_runs_out_of_memory_fails_with_its_reason_and_the_sweep_goes_on(tmp_path, idx_dir, study_file):
    from sweep.storage import open_storage, open_study
    from sweep.studyfile import load_study

    store = tmp_path / "store"
    study_file.write_text(TINY.replace("width = { low = 8, high = 32, log = true }", "width = { choices = [8, 16, 60000] }"))
    study = open_study(load_study(study_file), open_storage(None, store))
    study.enqueue_trial({"depth": 2, "width": 60000, "epochs": 1, "learning_rate": 0.005})  # 14 GiB of weights
    process = sweep_process("run", "--study", study_file, "--store", store, "--data-dir", idx_dir, "--trials", "2",
                            preexec_fn=_limit_address_space)
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    oom = load(store).trials[0]
    assert oom.state == TrialState.FAIL and "ResourceExhaustedError" in oom.user_attrs["reason"], oom.user_attrs
    assert "OOM" in oom.user_attrs["reason"]
    assert_consistent(store, finished=2)


def test_torn_journal_line_is_refused_with_the_fix_and_the_fix_works(cli):
    assert cli("run", "--trials", "1")[0] == 0
    journal = cli.store / "optuna.journal"
    intact = journal.read_bytes()
    journal.write_bytes(intact + b'{"op_code": 5, "worker_id": "x", "trial_id": 1, "par')  # a write cut short
    code, _, err = cli("run", "--trials", "2")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cut off mid-write" in err and "sed -i '$ d'" in err
    assert journal.read_bytes().startswith(intact)  # untouched
    subprocess.run(["sed", "-i", "$ d", str(journal)], check=True)  # the fix the message gives
    assert cli("run", "--trials", "2")[0] == 0
    assert_consistent(cli.store, finished=2)


def _mount(*argv: str) -> None:
    """Run `mount ARGV`; skip the test where this user may not mount (CI and the dev machines run as root)."""
    if subprocess.run(["mount", *argv], capture_output=True).returncode:
        pytest.skip("cannot mount here (not root)")


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MiB tmpfs to fill up."""
    mount = tmp_path / "fs"
    mount.mkdir()
    _mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount))
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def read_only_view(tmp_path):
    """`read_only_view(folder)`: the folder seen through a read-only bind mount, as a read-only volume would be."""
    views = []

    def view(folder: Path) -> Path:
        target = tmp_path / f"read-only-{len(views)}"
        target.mkdir()
        _mount("--bind", str(folder), str(target))
        views.append(target)
        _mount("-o", "remount,bind,ro", str(target))
        return target

    yield view
    for target in views:
        subprocess.run(["umount", "-l", str(target)], check=True)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def _snapshot(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()}


def test_full_store_is_refused_before_any_trial_and_nothing_is_damaged(cli, small_fs, monkeypatch):
    monkeypatch.setattr(cli, "store", small_fs / "store")
    assert cli("run", "--trials", "1")[0] == 0
    filler = _fill(small_fs)
    stored = _snapshot(cli.store)
    code, _, err = cli("run", "--trials", "2")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "No space left on device" in err, err
    assert _snapshot(cli.store) == stored
    filler.unlink()
    assert cli("run", "--trials", "2")[0] == 0
    assert_consistent(cli.store, finished=2)


def test_read_only_store_is_refused_and_left_as_it_was(cli, read_only_view, monkeypatch):
    assert cli("run", "--trials", "1")[0] == 0
    writable = cli.store
    stored = _snapshot(writable)
    monkeypatch.setattr(cli, "store", read_only_view(writable))
    code, _, err = cli("run", "--trials", "2")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Read-only file system" in err, err
    assert _snapshot(writable) == stored
    monkeypatch.setattr(cli, "store", writable)
    assert cli("run", "--trials", "2")[0] == 0
    assert_consistent(writable, finished=2)


def test_a_long_sweep_recycles_its_process_and_keeps_its_pid(tmp_path, idx_dir, study_file):
    # After every 2 trials the sweep replaces its own process image (memory back to a fresh start):
    # same pid, same command, nothing lost, one parent run.
    store = tmp_path / "store"
    process = sweep_process("run", "--study", study_file, "--store", store, "--data-dir", idx_dir, "--trials", "5",
                            "--recycle-every", "2")
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    assert out.count("starting a fresh process") == 2 and "5/5 trials trained" in out
    done = load(store).get_trials(states=FINISHED)
    assert {t.user_attrs["pid"] for t in done} == {process.pid}
    assert_consistent(store, finished=5)


def test_recycled_workers_are_replaced_until_the_total_is_reached(tmp_path, idx_dir, study_file):
    store = tmp_path / "store"
    process = sweep_process("run", "--study", study_file, "--store", store, "--data-dir", idx_dir, "--trials", "4",
                            "--workers", "2", "--recycle-every", "1")
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    assert "killed by" not in out  # a recycled worker is not a failure
    assert len({t.user_attrs["pid"] for t in load(store).get_trials(states=FINISHED)}) == 4  # one fresh process a trial
    assert_consistent(store, finished=4)


def test_a_recycled_process_keeps_the_sweeps_deadline(cli, monkeypatch):
    import os

    monkeypatch.setenv("SWEEP_DEADLINE", repr(time.time() - 1))  # what a sweep hands the process replacing it
    code, out, _ = cli("run", "--trials", "3", "--timeout", "3600")
    assert code == 0 and "stopping: the sweep budget is spent" in out and "0/3 trials trained" in out
    assert "SWEEP_DEADLINE" not in os.environ  # consumed, not passed on to workers
