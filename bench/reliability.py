"""Faults injected into real sweeps on real MNIST: what survives, what is lost, what is left RUNNING.

Each scenario runs `python -m sweep run` as real processes on its own store, injects a fault (kill -9,
SIGTERM, four processes at once, a killed worker, a torn journal line), restarts with the same
command where needed, and then reads the Optuna journal and the MLflow runs back. A last scenario
records the resident memory of one sweep process over 50 small trials.
Writes bench/results/reliability.md and reliability.json.

Usage: python bench/reliability.py --data-dir ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import psutil
from common import RESULTS, ROOT
from optuna.trial import TrialState

from sweep.record import FINISHED, TrialRecord
from sweep.testing.stores import finished, load, runs, study_text, sweep_process, training_trial, wait_for

NAME = "faults"
# The tests' tiny study, sized for real MNIST.
STUDY = study_text(NAME, width="{ low = 32, high = 256, log = true }", epochs="{ low = 1, high = 3 }",
                   learning_rate="{ low = 3e-4, high = 3e-3, log = true }", batch_size="256")


class Store:
    """One scenario's store: start sweeps on it, and read back what Optuna and MLflow hold."""

    def __init__(self, root: Path, name: str, data_dir: str):
        self.path = root / name
        self.study_file = root / "faults.toml"
        self.data_dir = data_dir

    def argv(self, trials: int, *extra: str) -> list[str]:
        return ["run", "--study", str(self.study_file), "--store", str(self.path), "--data-dir", self.data_dir,
                "--trials", str(trials), *extra]

    def start(self, trials: int, *extra: str) -> subprocess.Popen:
        return sweep_process(*self.argv(trials, *extra))

    def run(self, trials: int, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sweep", *self.argv(trials, *extra)], cwd=ROOT, capture_output=True, text=True)

    def study(self) -> optuna.Study:
        return load(self.path, NAME)

    def finished(self) -> dict[int, tuple]:
        return finished(self.path, NAME)

    def training(self, not_pid: int | None = None):
        return training_trial(self.path, not_pid=not_pid, name=NAME)

    def left_running(self) -> tuple[int, int]:
        """(Optuna trials, MLflow runs) still RUNNING."""
        _, all_runs = runs(self.path, NAME)
        return len(self.study().get_trials(states=(TrialState.RUNNING,))), sum(r.info.status == "RUNNING" for r in all_runs)

    def retried(self) -> int:
        return sum(TrialRecord.load(t).retry_of is not None for t in self.study().trials)


def outcome(store: Store, fault: str, injected: int, asked: int, before: dict[int, tuple], **extra) -> dict:
    after = store.finished()
    trials_running, runs_running = store.left_running()
    return {
        "fault": fault, "injected": injected, "asked": asked, "finished": len(after),
        "survived": sum(after.get(n) == v for n, v in before.items()), "lost": sum(after.get(n) != v for n, v in before.items()),
        "trials_left_running": trials_running, "runs_left_running": runs_running, "retried": store.retried(), **extra,
    }


def kill_9_and_restart(store: Store) -> dict:
    before: dict[int, tuple] = {}
    for finished_at in (2, 5, 8):
        process = store.start(12)
        wait_for(lambda: len(store.finished()) >= finished_at and store.training(), process, seconds=600)
        before.update(store.finished())
        process.kill()
        process.wait()
    assert store.run(12).returncode == 0
    return outcome(store, "kill -9 mid-trial, then the same command", 3, 12, before)


def sigterm_and_resume(store: Store) -> dict:
    process = store.start(4)
    wait_for(lambda: len(store.finished()) >= 1 and store.training(), process, seconds=600)
    before = store.finished()
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate()
    said = "run the same command again to resume" in out
    interrupted = outcome(store, "SIGTERM mid-trial", 1, 4, before)
    assert store.run(4).returncode == 0
    return outcome(store, "SIGTERM mid-trial, then the same command", 1, 4, before, exit_code=process.returncode,
                   says_how_to_resume=said, runs_left_running_before_resume=interrupted["runs_left_running"])


def four_processes(store: Store) -> dict:
    processes = [store.start(12) for _ in range(4)]
    outputs = [p.communicate()[0] for p in processes]
    locked = sum("database is locked" in out for out in outputs)
    crashed = sum(p.returncode != 0 for p in processes)
    pids = {TrialRecord.load(t).pid for t in store.study().get_trials(states=FINISHED)}
    return outcome(store, "4 independent `sweep run` processes, one study", 0, 12, {}, crashed=crashed,
                   database_locked=locked, processes_that_trained=len(pids))


def killed_worker(store: Store) -> dict:
    process = store.start(8, "--workers", "2")
    victim = wait_for(lambda: len(store.finished()) >= 2 and store.training(not_pid=process.pid), process, seconds=600)
    before = store.finished()
    os.kill(TrialRecord.load(victim).pid, signal.SIGKILL)
    out, _ = process.communicate()
    return outcome(store, "`--workers 2`, one worker SIGKILLed (as the OOM killer does)", 1, 8, before,
                   exit_code=process.returncode, replaced="starting a new worker" in out)


def torn_journal(store: Store) -> dict:
    assert store.run(3).returncode == 0
    before = store.finished()
    journal = store.path / "optuna.journal"
    with journal.open("ab") as handle:
        handle.write(b'{"op_code": 5, "worker_id": "x", "trial_id": 1, "par')
    refused = store.run(4)
    subprocess.run(["sed", "-i", "$ d", str(journal)], check=True)  # the fix the message gives
    assert store.run(4).returncode == 0
    return outcome(store, "torn last journal line, fixed as the message says", 1, 4, before,
                   exit_code=refused.returncode, message=refused.stderr.strip().splitlines()[-1])


def memory(store: Store, trials: int) -> dict:
    process = store.start(trials)
    ps = psutil.Process(process.pid)
    samples: list[tuple[int, float]] = []  # (finished trials, RSS MiB)
    while process.poll() is None:
        try:
            rss = ps.memory_info().rss / 2**20
        except psutil.NoSuchProcess:  # it just ended
            break
        done = len(store.finished())
        samples.append((done, rss))
        time.sleep(0.5)
    rss_at = {done: rss for done, rss in samples}  # the last sample at each count
    at10, at_end = rss_at.get(10), rss_at.get(max(rss_at))
    return {"trials": trials, "finished": len(store.finished()), "peak_rss_mib": max(r for _, r in samples),
            "rss_after_10_mib": at10, "rss_at_end_mib": at_end,
            "growth_per_trial_mib": (at_end - at10) / max(max(rss_at) - 10, 1) if at10 else None}


def write(rows: list[dict], rss: dict, command: str, seconds: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps({"command": command, "faults": rows, "memory": rss}, indent=2) + "\n")
    lines = [
        "# Reliability: faults injected into real sweeps",
        "",
        f"Command: `{command}` ({seconds / 60:.1f} min)  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {os.cpu_count()} CPU cores, TensorFlow backend, real MNIST.",
        "",
        "Each scenario is real processes and real signals on its own store. *Survived* counts the trials "
        "finished before the fault that are still there, with the same values, after it; *lost* those that are not. "
        "*Left RUNNING* is read after the restart: Optuna trials / MLflow runs.",
        "",
        "| fault | injected | trials asked | finished | survived | lost | left RUNNING | configs retried | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        notes = ", ".join(f"{k}={v}" for k, v in row.items() if k not in {
            "fault", "injected", "asked", "finished", "survived", "lost", "trials_left_running", "runs_left_running", "retried"})
        lines.append(f"| {row['fault']} | {row['injected']} | {row['asked']} | {row['finished']} | {row['survived']} | "
                     f"{row['lost']} | {row['trials_left_running']} / {row['runs_left_running']} | {row['retried']} | {notes} |")
    lines += [
        "",
        f"## Memory of one sweep process over {rss['trials']} small trials",
        "",
        "| finished | RSS after 10 trials | RSS at the end | peak RSS | growth per trial after the 10th |",
        "|---|---|---|---|---|",
        f"| {rss['finished']} | {rss['rss_after_10_mib']:.0f} MiB | {rss['rss_at_end_mib']:.0f} MiB | "
        f"{rss['peak_rss_mib']:.0f} MiB | {rss['growth_per_trial_mib']:+.1f} MiB |",
        "",
        "The growth is TensorFlow keeping each model's traced step graph (see the README's known limits); "
        "`--workers` processes that die are replaced, and a sweep restarted now and then starts from the baseline.",
        "",
        "## Also injected by the test suite (`tests/test_faults.py`, `tests/test_distributed.py`)",
        "",
        "A real allocation failure under an 8 GiB address-space limit (the trial fails with "
        "`ResourceExhaustedError ... OOM`, the sweep goes on); a store on a full 16 MiB tmpfs and behind a read-only "
        "bind mount (exit 2, one line, no byte of the store changed, the same command resumes once fixed); "
        "two workers on PostgreSQL and an `mlflow server` on 127.0.0.1 (exact total, artifacts through the server).",
        "",
    ]
    (RESULTS / "reliability.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--memory-trials", type=int, default=50)
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "faults.toml").write_text(STUDY)
        rows = []
        for name, scenario in (("kill9", kill_9_and_restart), ("sigterm", sigterm_and_resume), ("four", four_processes),
                               ("worker", killed_worker), ("torn", torn_journal)):
            rows.append(scenario(Store(root, name, args.data_dir)))
            print(rows[-1], flush=True)
        rss = memory(Store(root, "memory", args.data_dir), args.memory_trials)
    write(rows, rss, f"python bench/reliability.py --data-dir {args.data_dir}", time.time() - started)


if __name__ == "__main__":
    main()
