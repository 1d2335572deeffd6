"""What a command opens once, from its options: the study file, the storage and study, the data splits,
the MLflow tracker and, for a sweep, the parent run and the deadline. `run`, every worker process,
`report` and `best` open them here, one way.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage

from mnist_core.data import Source, Splits, load_splits, resolve_source
from mnist_core.machine import MachineProfile, current
from sweep import storage
from sweep.credentials import redact
from sweep.optuna_private import storage_of
from sweep.studyfile import StudySpec, load_study
from sweep.tracking import PARENT_ATTR, Tracker, default_tracking_uri, machine_tags

DEFAULT_STORE = Path("mlruns")
# Wall clock of sweep deadlines: absolute, so a recycled process keeps its sweep's; a module attribute so
# tests can replace it with a fake one (with `mnist_core.trainer.clock`).
clock = time.time
# How often and how long a worker polls for the parent run that another worker is creating (parent_run).
PARENT_POLL_SECONDS, PARENT_WAIT_SECONDS = 0.5, 120.0
# The claim on a new study's parent run: a study of this name, in the same storage, while its run is created.
PARENT_CLAIM_SUFFIX = ":parent-run-claim"
STORE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
STORE_MESSAGES = ("database or disk is full", "readonly database", "disk I/O error")


class CommandError(Exception):
    """A bad command-line value or store; the message says what and how to fix it."""


@dataclass(frozen=True)
class Options:
    """Where a command finds its study, storage, tracking and data (the command line's common flags)."""

    study: Path
    store: Path = DEFAULT_STORE
    name: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    data_dir: str | None = None
    trial_seconds: float | None = None  # overrides the study file's budget.trial_seconds

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        return cls(**{f.name: getattr(args, f.name, f.default) for f in dataclasses.fields(cls)})

    @property
    def tracking(self) -> str:
        return self.tracking_uri or default_tracking_uri(self.store)

    @property
    def report_dir(self) -> Path:
        return self.store / "reports"


def prepare_store(store: Path) -> None:
    """Fail before any work if the store cannot be written (a real write: root ignores permission bits)."""
    try:
        store.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=store) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise CommandError(f"store {store} is not writable ({exc.strerror}); free space, fix its permissions or pass --store DIR") from None


def store_failure(exc: BaseException | None) -> str | None:
    """Why writing the store failed mid-run (disk full, read-only, no permission), else None."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in STORE_ERRNOS:
            return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
        found = next((m for m in STORE_MESSAGES if m in str(exc)), None)
        if found:
            return found
        exc = exc.__cause__ or exc.__context__
    return None


# The study's user attribute holding the profile of the machine that started it.
STUDY_MACHINE_ATTR = "machine"


def study_spec(options: Options) -> StudySpec:
    """The study file, with `--trial-seconds` over its budget."""
    spec = load_study(options.study)
    return dataclasses.replace(spec, trial_seconds=options.trial_seconds) if options.trial_seconds else spec


def open_store(options: Options) -> BaseStorage:
    """The Optuna storage of `--storage`, or of the store folder."""
    prepare_store(options.store)
    return storage.open_storage(options.storage, options.store)


def open_study(options: Options, spec: StudySpec, opened: BaseStorage, create: bool, train_examples: int | None = None) -> optuna.Study:
    """`spec`'s study in `opened` (created when `create`, else it must exist and match). Its sampler predicts
    seconds, for the cost-spread start, once it is told the training set's size."""
    name = options.name or spec.name
    if create:
        return storage.open_study(spec, opened, name, train_examples)
    study = storage.load_existing(opened, name)
    storage.check_matches(study, spec)
    return study


def open_tracker(options: Options, study: optuna.Study) -> Tracker:
    """The MLflow experiment of `study` in this store (or on the tracking server)."""
    uri = options.tracking
    try:
        return Tracker(uri, study.study_name, options.store / "artifacts")
    except Exception as exc:  # an unreachable server, a bad URI, a broken database
        if store_failure(exc):
            raise
        raise CommandError(redact(f"cannot open MLflow tracking at {uri}: {str(exc).splitlines()[0]}", uri)) from None


def load_data(options: Options, spec: StudySpec) -> tuple[Source, Splits]:
    """The data source of `--data-dir` and the study's train/validation split of it."""
    source = resolve_source(options.data_dir)
    return source, load_splits(source, spec.validation_fraction, spec.split_seed)


def parent_run(study: optuna.Study, tracker: Tracker, spec: StudySpec, study_profile: MachineProfile | None) -> str:
    """The study's parent MLflow run: created by its first sweep, reopened by later ones and other workers."""
    if run_id := _resumed(study, tracker):
        return run_id
    # Workers starting together race to create it. Only one may (a loser would have to delete its own, which in
    # MLflow takes a permission a worker has not: MANAGE): the one that creates the claim study, as a study name
    # is unique in any Optuna storage. The others wait for the run.
    claim = study.study_name + PARENT_CLAIM_SUFFIX
    try:
        optuna.create_study(study_name=claim, storage=storage_of(study))
    except optuna.exceptions.DuplicatedStudyError:
        return _await_parent(study, tracker, claim)
    try:
        # A worker that read no run above may win only after the first winner created it and let go of its claim.
        return _resumed(study, tracker) or _create_parent(study, tracker, spec, study_profile)
    finally:
        with contextlib.suppress(KeyError):  # let go of the claim (unless a waiter gave up on it and did)
            optuna.delete_study(study_name=claim, storage=storage_of(study))


def _resumed(study: optuna.Study, tracker: Tracker) -> str | None:
    """The study's parent run, reopened, if it has been created."""
    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        tracker.resume_run(run_id)
    return run_id or None


def _create_parent(study: optuna.Study, tracker: Tracker, spec: StudySpec, study_profile: MachineProfile | None) -> str:
    """A new parent run for `study`, its id kept in the study, with the study file and the machine's profile."""
    run_id = tracker.start_run(f"sweep-{study.study_name}", tags={"optuna.study": study.study_name})
    study.set_user_attr(PARENT_ATTR, run_id)
    tracker.log_params(run_id, {"study_file": spec.label, "objectives": ",".join(spec.objectives), "sampler": spec.sampler,
                                "pruner": spec.pruner, "trial_seconds": spec.trial_seconds, "seed": spec.seed,
                                "front_scale": spec.front_scale, "cost_spread_trials": spec.cost_spread_trials})
    tracker.log_artifact(run_id, spec.path)
    tracker.describe(run_id, [p.name for p in spec.params], [p.name for p in spec.params if p.role == "scientific"])
    if study_profile is not None:
        tracker.set_tags(run_id, machine_tags(study_profile))
    return run_id


def _await_parent(study: optuna.Study, tracker: Tracker, claim: str) -> str:
    """The parent run another worker claimed, once it has created it."""
    deadline = time.monotonic() + PARENT_WAIT_SECONDS
    while not (run_id := _resumed(study, tracker)) and time.monotonic() < deadline:
        time.sleep(PARENT_POLL_SECONDS)
    if not run_id:
        with contextlib.suppress(KeyError):  # that worker is gone: let go of its claim, so the next try may win
            optuna.delete_study(study_name=claim, storage=storage_of(study))
        raise CommandError(f"another worker claimed study {study.study_name!r}'s parent MLflow run but did not create it "
                           f"within {PARENT_WAIT_SECONDS:g} s; run the same command again")
    return run_id


def study_machine(study: optuna.Study, create: bool = True) -> MachineProfile | None:
    """The profile of the machine that started `study` (this one, if none has and `create`); None for a study
    started before profiles were kept, whose seconds stay raw."""
    if STUDY_MACHINE_ATTR not in study.user_attrs:
        if study.trials or not create:
            return None
        study.set_user_attr(STUDY_MACHINE_ATTR, current().fields())
    try:
        return MachineProfile.from_fields(study.user_attrs[STUDY_MACHINE_ATTR])
    except ValueError:
        return None


@dataclass
class SweepContext:
    """What every trial of one sweep process shares."""

    spec: StudySpec
    study: optuna.Study
    splits: Splits
    tracker: Tracker
    parent_run_id: str
    deadline: float | None  # clock() after which no trial may run; None: no sweep budget
    report_dir: Path  # where the trade-off chart and CSV are refreshed as trials finish
    study_profile: MachineProfile | None  # the machine that started the study: study seconds are its seconds

    @classmethod
    def open(cls, options: Options, deadline: float | None) -> SweepContext:
        """Open the storage, load the data (missing or bad data fails here, before any run is opened), open the
        study (creating it), then the tracker and the study's parent run."""
        spec, opened = study_spec(options), open_store(options)
        splits = load_data(options, spec)[1]
        study = open_study(options, spec, opened, create=True, train_examples=len(splits.train))
        tracker, study_profile = open_tracker(options, study), study_machine(study)
        return cls(spec, study, splits, tracker, parent_run(study, tracker, spec, study_profile), deadline, options.report_dir,
                   study_profile)

    def seconds_left(self) -> float | None:
        """The sweep's time left, or None without a sweep budget."""
        return None if self.deadline is None else self.deadline - clock()
