"""The search side: Optuna storage, sampler and pruner built from a study file, and resume rules.

The default storage is an Optuna journal file under the store (`mlruns/optuna.journal`): safe for
several processes on one machine and readable by Optuna's own tools. Any Optuna RDB URL
(`sqlite:///...`, `postgresql://...`) works too.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from sweep.hypermodel import StudySpec

JOURNAL_NAME = "optuna.journal"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A RUNNING trial proves it is alive by its worker's pid (same host) or a heartbeat (any host).
HEARTBEAT_SECONDS = 20.0
STALE_SECONDS = 6 * HEARTBEAT_SECONDS
HOST = socket.gethostname()


class StorageError(Exception):
    """The Optuna storage cannot be opened, or holds a study that does not match the file."""


def _check_journal(path: Path) -> None:
    """Optuna reads an unparseable journal as empty; refuse it instead, so nothing is overwritten."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not line.endswith(b"\n"):
                raise StorageError(
                    f"{path}: line {number}, the last, was cut off mid-write (a crash or a full disk); the lines "
                    f"before it are intact: back the file up, delete that line (sed -i '$ d' {path}) and run again"
                )
            if not isinstance(record, dict) or "op_code" not in record:
                raise StorageError(
                    f"{path}: line {number} is not an Optuna journal record; the file is corrupt "
                    "(restore it from a backup or pass another --storage)"
                )


def open_storage(storage: str | None, store: Path) -> BaseStorage:
    """The storage named by `--storage` (URL or journal file path), else the store's journal file."""
    if storage and "://" in storage:
        for attempt in range(3):
            try:
                return RDBStorage(storage)
            except sqlalchemy.exc.IntegrityError:  # workers starting together each create the schema: one wins
                time.sleep(1.0 + attempt)
            except Exception as exc:  # SQLAlchemy/driver errors: not a database, unreachable server...
                raise StorageError(f"cannot open storage {storage}: {str(exc).splitlines()[0]}") from None
        raise StorageError(f"cannot open storage {storage}: its schema is still being created by another worker")
    path = Path(storage) if storage else store / JOURNAL_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            _check_journal(path)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise StorageError(f"cannot open storage {path}: {exc}") from None


def make_sampler(spec: StudySpec, offset: int) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded with seed + trials so far, so a resumed sweep explores new points."""
    seed = spec.seed + offset
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(spec: StudySpec, storage: BaseStorage, name: str | None = None) -> optuna.Study:
    """Create the study, or resume it if its stored directions and search space match the file."""
    name = name or spec.name
    existing = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=spec.directions,
        sampler=make_sampler(spec, existing.get(name, 0)),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    check_matches(study, spec)
    if "fingerprint" not in study.user_attrs:
        study.set_user_attr("fingerprint", spec.fingerprint())
        study.set_user_attr("study_file", str(spec.path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(spec.objectives))
    return study


def check_matches(study: optuna.Study, spec: StudySpec) -> None:
    """Refuse a stored study whose directions or search space differ from the study file."""
    name = study.study_name
    stored = [d.name.lower() for d in study.directions]
    if stored != spec.directions:
        raise StorageError(
            f"study {name!r} is stored with directions {stored}, but {spec.path} asks for {spec.directions}; "
            "use another --name or the original study file"
        )
    fingerprint = study.user_attrs.get("fingerprint")
    if fingerprint is not None and fingerprint != spec.fingerprint():
        raise StorageError(
            f"study {name!r} was run with a different search space, fixed values or objectives than "
            f"{spec.path} now holds; use another --name to start a new study"
        )


def load_existing(storage: BaseStorage, name: str) -> optuna.Study:
    """A study that must already exist (for report, best)."""
    if name not in optuna.get_all_study_names(storage):
        raise StorageError(f"no study named {name!r} in this storage; run `python -m sweep run` first")
    return optuna.load_study(study_name=name, storage=storage)


def count_finished(study: optuna.Study) -> int:
    """Finished trials (complete or pruned): what `--trials N` counts."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def own(trial: optuna.Trial) -> None:
    """Record which process runs `trial`, so a restart can tell a live trial from a dead one."""
    trial.set_user_attr("host", HOST)
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("heartbeat", time.time())


class Heartbeat:
    """While a trial trains, refresh its `heartbeat` attribute: how workers on other machines see it alive."""

    def __init__(self, trial: optuna.Trial, interval: float = HEARTBEAT_SECONDS):
        self._trial, self._interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial.number}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._trial.set_user_attr("heartbeat", time.time())
            except Exception:  # the storage is briefly unreachable: the next beat tries again
                pass

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def stale_reason(trial: FrozenTrial, now: float | None = None) -> str | None:
    """Why a RUNNING trial's worker is gone (its process died, or its heartbeat stopped), else None."""
    attrs = trial.user_attrs
    if attrs.get("host") == HOST and attrs.get("pid") is not None:
        if attrs["pid"] == os.getpid():  # only called between trials: this process runs none now
            return "abandoned by an earlier sweep in this process"
        if not _pid_alive(attrs["pid"]):
            return f"worker died: process {attrs['pid']} on {HOST} is gone"
    last = attrs.get("heartbeat") or (trial.datetime_start.timestamp() if trial.datetime_start else None)
    silent = (now or time.time()) - last if last else 0.0
    if silent > STALE_SECONDS:
        return f"worker died: no heartbeat from {attrs.get('host', 'its host')} for {silent:.0f} s"
    return None


def fail_stale(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark a dead worker's trial FAIL and queue its configuration once more; False if another worker did."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "reason", reason)
        if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
        return False
    if trial.params and "retry_of" not in trial.user_attrs:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return True


def count_busy(study: optuna.Study, before: int | None = None) -> int:
    """Finished trials plus those running (numbered below `before`): slots of `--trials N` taken."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    return sum(t.state != TrialState.RUNNING or before is None or t.number < before for t in trials)


def release(study: optuna.Study, trial: optuna.Trial) -> None:
    """Give back a trial that found no free slot: WAITING, it is the next one any worker asks for."""
    study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
