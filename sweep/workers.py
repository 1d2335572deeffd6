"""Workers: which process runs which trial, recovery from workers that died, and `--workers N` processes.

A RUNNING trial proves it is alive by its worker's process id (same host) or by a heartbeat (any host).
Before each trial a worker closes the trials of workers that are gone and queues their configuration
once more; a supervisor replaces a worker process killed by a signal (kill -9, the out-of-memory killer).

A heartbeat is judged on one clock: the observer's. Hosts' clocks differ, so a heartbeat's value is only
ever compared with itself: a worker is gone once its trial's heartbeat has not changed for the stale
interval, as the observing process measures it (`Liveness`). A host whose clock runs minutes behind keeps
its trials, and one that is cut off or frozen loses them after the stale interval of whoever watches.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import optuna_private, record
from sweep.processes import alive, interruptible
from sweep.record import TrialRecord
from sweep.tracking import Tracker

# Seconds without a change of a trial's heartbeat, on the observer's clock, before its worker counts as gone;
# its workers beat STALE_BEATS times as often. SWEEP_STALE_SECONDS sets it (the same on every host), so that
# a test's hosts recover a trial in seconds rather than minutes.
STALE_ENV = "SWEEP_STALE_SECONDS"
STALE_SECONDS = 120.0
STALE_BEATS = 6
# Test only: seconds added to this host's wall clock where a heartbeat is stamped, to stand for a host
# whose clock is off (liveness must not depend on it).
CLOCK_OFFSET_ENV = "SWEEP_TEST_CLOCK_OFFSET"
HOST = socket.gethostname()


def stale_seconds() -> float:
    """The stale interval: SWEEP_STALE_SECONDS if set (a positive number), else STALE_SECONDS."""
    text = os.environ.get(STALE_ENV)
    if text is None:
        return STALE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{STALE_ENV}={text!r} is not a positive number of seconds; unset it or give e.g. {STALE_ENV}=120")
    return value


def wall_clock() -> float:
    """This host's wall clock, as a heartbeat stamps it (with the test-only offset)."""
    return time.time() + float(os.environ.get(CLOCK_OFFSET_ENV, "0"))


def own(trial: optuna.Trial) -> None:
    """Record which process runs `trial`, so a restart can tell a live trial from a dead one."""
    record.save(trial, host=HOST, pid=os.getpid(), heartbeat=wall_clock())


class Heartbeat:
    """While a trial trains, refresh its `heartbeat` attribute: how workers on other machines see it alive."""

    def __init__(self, trial: optuna.Trial, interval: float | None = None):
        interval = interval or stale_seconds() / STALE_BEATS
        self._trial, self._interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial.number}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                record.save(self._trial, heartbeat=wall_clock())
            except Exception:  # the storage is briefly unreachable: the next beat tries again
                pass

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


class Liveness:
    """Which RUNNING trials' workers are gone, as this process sees them. A trial whose worker ran on this
    host is gone as soon as its process is; any other is gone once its heartbeat has not changed for the stale
    interval of `clock` (this process's monotonic clock): the first sight of a heartbeat only starts the wait."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._seen: dict[int, tuple[float | None, float]] = {}  # trial number -> (heartbeat, when first seen)

    def stale_reason(self, trial: FrozenTrial) -> str | None:
        """Why `trial`'s worker is gone (its process died, or its heartbeat stopped), else None."""
        rec = TrialRecord.load(trial)
        if rec.host == HOST and rec.pid is not None:
            if rec.pid == os.getpid():  # only called between trials: this process runs none now
                return "abandoned by an earlier sweep in this process"
            if not alive(rec.pid):
                return f"worker died: process {rec.pid} on {HOST} is gone"
        now = self._clock()
        beat, since = self._seen.get(trial.number, (None, None))
        if since is None or beat != rec.heartbeat:
            self._seen[trial.number] = (rec.heartbeat, now)
            return None
        if now - since > stale_seconds():
            return f"worker died: no heartbeat from {rec.host or 'its host'} for {now - since:.0f} s"
        return None

    def forget_all_but(self, running: set[int]) -> None:
        """Drop what was seen of trials no longer running."""
        self._seen = {number: seen for number, seen in self._seen.items() if number in running}


# This process's observations, kept from one check to the next.
LIVENESS = Liveness()


def fail_stale(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark a dead worker's trial FAIL and queue its configuration once more; False if another worker did."""
    try:
        optuna_private.set_user_attrs(study, trial, record.attrs(reason=reason))
    except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
        return False
    if not optuna_private.set_state(study, trial, TrialState.FAIL):
        return False
    if trial.params and TrialRecord.load(trial).retry_of is None:
        study.enqueue_trial(trial.params, user_attrs=record.attrs(retry_of=trial.number))
    return True


def recover(study: optuna.Study, tracker: Tracker, write: Callable[[str], None]) -> None:
    """Close the trials of workers that died (kill -9, out of memory, a lost machine); each config is retried once."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    LIVENESS.forget_all_but({trial.number for trial in running})
    for trial in running:
        reason = LIVENESS.stale_reason(trial)
        if reason is None or not fail_stale(study, trial, reason):
            continue
        rec = TrialRecord.load(trial)
        if rec.mlflow_run_id:
            tracker.set_tags(rec.mlflow_run_id, {"optuna.state": TrialState.FAIL.name, "reason": reason})
            tracker.end_run(rec.mlflow_run_id, "FAILED")
        retried = "its configuration is queued again" if trial.params and rec.retry_of is None else "not retried again"
        write(f"trial {trial.number:4d} FAIL     ({reason}; {retried})")


# A worker's exit status when it stopped to be replaced by a fresh process (memory), not because of a failure.
RECYCLE_EXIT = 75


def _worker_main(work: Callable[[int], bool], number: int) -> None:
    try:
        with interruptible():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which sends SIGTERM
            recycle = work(number)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(RECYCLE_EXIT if recycle else 0)


def supervise(work: Callable[[int], bool], count: int, work_left: Callable[[], bool], bound: int) -> None:
    """Run `work(number)` in `count` spawned processes, each replaced while `work_left()` when it asks to be
    recycled (`work` returned True) or was killed by a signal (out of memory, kill -9).

    `work` must pickle (a module-level function or a partial of one). At most `bound` replacements of killed
    workers, in case every worker dies at start. Interrupted, each worker gets SIGTERM, closes its trial and exits.
    """
    context = multiprocessing.get_context("spawn")
    workers: dict[int, multiprocessing.Process] = {}

    def start(number: int) -> None:
        workers[number] = context.Process(target=functools.partial(_worker_main, work, number))
        workers[number].start()

    for number in range(count):
        start(number)
    try:
        while workers:
            for number, process in list(workers.items()):
                process.join(timeout=0.5)
                if process.exitcode is None:
                    continue
                del workers[number]
                if process.exitcode == RECYCLE_EXIT and work_left():
                    start(number)
                elif process.exitcode < 0 and bound > 0 and work_left():
                    bound -= 1
                    print(f"[worker {number}] killed by {signal.Signals(-process.exitcode).name}; starting a new worker", flush=True)
                    start(number)
    finally:
        for process in workers.values():
            process.terminate()
        for process in workers.values():
            process.join()
