"""The search side: Optuna storage, sampler and pruner built from a study file, and resume rules.

The default storage is an Optuna journal file under the store (`mlruns/optuna.journal`): safe for
several processes on one machine and readable by Optuna's own tools. Any Optuna RDB URL
(`sqlite:///...`, `postgresql://...`) works too.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sweep.hypermodel import StudySpec

JOURNAL_NAME = "optuna.journal"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


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
            if not isinstance(record, dict) or "op_code" not in record:
                raise StorageError(
                    f"{path}: line {number} is not an Optuna journal record; the file is corrupt "
                    "(restore it from a backup or pass another --storage)"
                )


def open_storage(storage: str | None, store: Path) -> BaseStorage:
    """The storage named by `--storage` (URL or journal file path), else the store's journal file."""
    if storage and "://" in storage:
        try:
            return RDBStorage(storage)
        except Exception as exc:  # SQLAlchemy/driver errors: not a database, unreachable server...
            raise StorageError(f"cannot open storage {storage}: {str(exc).splitlines()[0]}") from None
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
