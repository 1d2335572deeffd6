"""The search side: Optuna storage, sampler and pruner built from a study file, and resume rules.

The default storage is an Optuna journal file under the store (`mlruns/optuna.journal`): safe for
several processes on one machine and readable by Optuna's own tools. Any Optuna RDB URL
(`sqlite:///...`, `postgresql://...`) works too.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from sweep import optuna_private
from sweep.credentials import mask_url, redact
from sweep.record import FINISHED, records
from sweep.spread import CostSpread
from sweep.studyfile import StudySpec
from sweep.views import CurveView, ScaledView

JOURNAL_NAME = "optuna.journal"
# Workers starting together on a new database each try to create Optuna's schema: one wins, the others
# try again (after 1 s, then 2 s) and find it.
SCHEMA_ATTEMPTS = 3
# The median pruner judges no trial before this many have finished: a median of fewer says little.
MEDIAN_STARTUP_TRIALS = 5
# Hyperband keeps a third of the trials at each rung: Optuna's default, and Li et al.'s.
HYPERBAND_REDUCTION = 3
# A database restarted (or a network blip) under running workers: each storage call waits it out, trying
# again after 0.5, 1, 2, 4, 8, 8, ... s, for up to RECONNECT_SECONDS; its connections are checked before use.
RECONNECT_SECONDS = 90.0
# A study attribute: its trials are counted by `points.trained` (a full epoch), and a resumed study said so.
COUNT_RULE_ATTR = "count_rule"
COUNT_RULE = "full_epoch"


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


# A worker's threads that use the database (its trial loop and a trial's heartbeat) hold one connection each, one
# call at a time; SQLAlchemy's default pool would keep open as many as ever ran at once (up to 5). Two are kept,
# and a third caller waits for one rather than opening more. (Connections outside this pool are not bounded by
# it: docs/several-machines.md.)
ENGINE = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 0}


def engine_options(url: str) -> dict[str, Any]:
    """SQLAlchemy's options for the RDB storage at `url`: ENGINE, and on PostgreSQL a name on each connection,
    `sweep PID HOST` (`application_name`, unless the URL names one), so that pg_stat_activity shows which worker
    holds it."""
    if not url.startswith("postgresql") or "application_name=" in url:
        return ENGINE
    return {**ENGINE, "connect_args": {"application_name": f"sweep {os.getpid()} {socket.gethostname()}"}}


def open_storage(storage: str | None, store: Path) -> BaseStorage:
    """The storage named by `--storage` (URL or journal file path), else the store's journal file.

    Messages show the URL with its password masked (`sweep.credentials`).
    """
    if storage and "://" in storage:
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                return Reconnecting(optuna_private.cached(RDBStorage(storage, engine_kwargs=engine_options(storage))))
            except ImportError:  # Optuna's word for a database driver (psycopg for PostgreSQL) that is not installed
                raise StorageError(
                    f"cannot open storage {mask_url(storage)}: its database driver is not installed; install it with "
                    "pip install 'mnist-sweep[distributed]' (from a checkout: pip install -e '.[distributed]')"
                ) from None
            except Exception as exc:  # SQLAlchemy/driver errors: not a database, unreachable server...
                if not _schema_race(exc):
                    raise StorageError(redact(f"cannot open storage {storage}: {str(exc).splitlines()[0]}", storage)) from None
                optuna_private.close_unmade(exc)
                time.sleep(1.0 + attempt)
        raise StorageError(f"cannot open storage {mask_url(storage)}: its schema is still being created by another worker")
    path = Path(storage) if storage else store / JOURNAL_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            _check_journal(path)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise StorageError(f"cannot open storage {path}: {exc}") from None


def _schema_race(exc: BaseException) -> bool:
    """Whether creating the schema failed because another worker was creating it too: PostgreSQL refuses the
    losers' tables (duplicate_table), types (duplicate_object) or catalog rows (a unique violation)."""
    if isinstance(exc, sqlalchemy.exc.IntegrityError):
        return True
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and getattr(exc.orig, "sqlstate", None) in ("42P07", "42710")


def lost_connection(exc: BaseException) -> bool:
    """Whether a storage error is a lost or refused database connection (worth trying again), as SQLAlchemy
    reports it, or wrapped in Optuna's `StorageInternalError`."""
    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
        return True
    return isinstance(cause, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))


class Reconnecting(BaseStorage):
    """An RDB storage whose every call waits out a lost database connection (`lost_connection`) for up to
    RECONNECT_SECONDS, then lets the error stand. A call whose commit landed just before its connection broke
    runs twice: harmless for Optuna's writes but `create_new_trial`, whose extra trial (RUNNING, no worker,
    no parameters) the workers' liveness check closes (sweep/workers.py)."""

    def __init__(self, inner: BaseStorage, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self._inner, self._clock, self._sleep = inner, clock, sleep

    def _call(self, name: str, args: tuple, kwargs: dict) -> Any:
        deadline, pause = self._clock() + RECONNECT_SECONDS, 0.5
        while True:
            try:
                return getattr(self._inner, name)(*args, **kwargs)
            except Exception as exc:
                if not lost_connection(exc) or self._clock() + pause > deadline:
                    raise
            self._sleep(pause)
            pause = min(2 * pause, 8.0)


def _reconnecting(name: str) -> Callable[..., Any]:
    def call(self: Reconnecting, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, args, kwargs)

    call.__name__ = call.__qualname__ = name
    return call


# Every public method of Optuna's storage interface, passed on through `Reconnecting._call`.
for _name, _method in vars(BaseStorage).items():
    if callable(_method) and not _name.startswith("_"):
        setattr(Reconnecting, _name, _reconnecting(_name))
Reconnecting.__abstractmethods__ = frozenset()


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """The study's sampler, made anew for each trial with the seed `seed + trial number`.

    Trial numbers are unique across every worker, process and machine sharing the storage, so each
    trial draws from its own random stream: parallel workers explore different points (with one seed
    per sampler, workers that start together would propose the same ones), a resumed sweep explores new
    ones, and a single-process sweep stays reproducible.
    """

    def __init__(self, factory: Callable[[int], optuna.samplers.BaseSampler], seed: int,
                 view: Callable[[optuna.Study], Any] | None = None):
        self._factory, self._seed, self._view = factory, seed, view
        self._sampler = factory(seed)
        self._seen: tuple[optuna.Study, Any] | None = None  # the study, and what the sampler sees of it this trial

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._sampler = self._factory(self._seed + trial.number)
        self._seen = (study, self._view(study)) if self._view else None
        self._sampler.before_trial(study, trial)

    def _sees(self, study: optuna.Study) -> Any:
        return self._seen[1] if self._seen is not None and self._seen[0] is study else study

    def infer_relative_search_space(self, study, trial):
        return self._sampler.infer_relative_search_space(self._sees(study), trial)

    def sample_relative(self, study, trial, search_space):
        return self._sampler.sample_relative(self._sees(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._sampler.sample_independent(self._sees(study), trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed),
    # constant_liar: a running trial counts as a bad result, so parallel workers avoid its region.
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
}


def make_sampler(spec: StudySpec, train_examples: int | None = None) -> TrialSeededSampler:
    """The study file's sampler, seeded per trial, seeing the study through `sweep/views.py`: the objectives on
    the front's scale (log: decades of seconds and of error), and with `learn_from_epochs` every epoch as a
    trial. With `cost_spread_trials` and the training set's size, its first trials are spread over cost."""
    base = SAMPLERS[spec.sampler]
    factory = base
    if spec.cost_spread_trials and train_examples:
        factory = lambda seed: CostSpread(base(seed), spec, train_examples, seed)  # noqa: E731
    views: list[Callable[[Any], Any]] = []
    if spec.learn_from_epochs:
        views.append(lambda study: CurveView(study, spec))
    if spec.multi_objective and spec.front_scale != "linear":
        views.append(lambda study: ScaledView(study, spec.objectives, spec.scale))
    if not views:
        return TrialSeededSampler(factory, spec.seed)

    def view(study: optuna.Study) -> Any:
        for make in views:
            study = make(study)
        return study

    return TrialSeededSampler(factory, spec.seed, view)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """Optuna's pruner; none decides before `pruner_warmup_epochs` (epochs are the reported steps, from 1)."""
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=spec.pruner_warmup_epochs)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.pruner_warmup_epochs, reduction_factor=HYPERBAND_REDUCTION)
    return optuna.pruners.NopPruner()


def open_study(spec: StudySpec, storage: BaseStorage, name: str | None = None, train_examples: int | None = None) -> optuna.Study:
    """Create the study, or resume it if its stored directions and search space match the file; its sampler
    is `make_sampler(spec, train_examples)`."""
    study = optuna.create_study(
        study_name=name or spec.name,
        storage=storage,
        directions=spec.directions,
        sampler=make_sampler(spec, train_examples),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    check_matches(study, spec)
    if "fingerprint" not in study.user_attrs:
        study.set_user_attr("fingerprint", spec.fingerprint())
        study.set_user_attr("study_file", spec.label)
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
    """Finished trials that trained a full epoch (complete, or pruned after one): what `--trials N` counts."""
    return sum(r.trained for r in records(study, FINISHED))


@dataclass(frozen=True)
class Tally:
    """A study's trials by outcome, as the final line and the parent run tell them."""

    complete: int
    pruned: int  # trained at least one full epoch, then stopped
    skipped: int  # not run (no fit), or cut inside their first epoch: recorded, not counted
    failed: int

    @property
    def trained(self) -> int:
        return self.complete + self.pruned

    def line(self, wanted: int) -> str:
        return (f"{self.trained}/{wanted} trials trained ({self.complete} complete, {self.pruned} pruned), "
                f"{self.skipped} skipped or cut before their first epoch, {self.failed} failed")


def tally(study: optuna.Study) -> Tally:
    all_ = records(study)
    return Tally(
        complete=sum(r.state == TrialState.COMPLETE and r.trained for r in all_),
        pruned=sum(r.state == TrialState.PRUNED and r.trained for r in all_),
        skipped=sum(r.skipped for r in all_),
        failed=sum(r.state == TrialState.FAIL and not r.skipped_for_sweep_time for r in all_),
    )


def recount(study: optuna.Study) -> str | None:
    """Once per study: what changed when a study started before trials were counted by full epochs is resumed.
    Its trials were counted once they had trained any batch (`epochs_run` > 0)."""
    if study.user_attrs.get(COUNT_RULE_ATTR) == COUNT_RULE:
        return None
    study.set_user_attr(COUNT_RULE_ATTR, COUNT_RULE)
    finished = records(study, FINISHED)
    before = sum((r.epochs_run or 0) > 0 for r in finished)
    now = sum(r.trained for r in finished)
    if before == now:
        return None
    return (f"recounted: {now} trials trained a full epoch ({before} were counted before); "
            f"{before - now} cut inside their first epoch no longer count towards --trials")


def count_busy(study: optuna.Study, before: int | None = None) -> int:
    """Trained trials plus those running (numbered below `before`): slots of `--trials N` taken."""
    taken = records(study, (*FINISHED, TrialState.RUNNING))
    return sum(r.trained if r.state != TrialState.RUNNING else before is None or r.number < before for r in taken)


def release(study: optuna.Study, trial: optuna.Trial) -> None:
    """Give back a trial that found no free slot: WAITING, it is the next one any worker asks for."""
    optuna_private.set_state(study, trial, TrialState.WAITING)
