"""What this tool does to Optuna studies that Optuna 5.0's public API has no form for, in one place.

- A trial that found no free slot goes back to WAITING, and the trial of a dead worker is marked FAIL
  from another process, with the storage's answer telling which worker won the race (`Study.tell` with
  `skip_if_finished` would hide it, and both racers would queue a retry).
- A PostgreSQL storage wrapped to wait out a restart keeps Optuna's cache in front of it.
- An RDB storage whose creation lost the schema race to another worker closes its connections at once.
- A worker asks the storage whether the trial it runs was closed by another worker meanwhile.
- The seed model's point on a chart comes from another study of the same storage; so does the claim on a new
  study's parent MLflow run (`sweep/context.py::parent_run`).
- The sampler's view of a study (`sweep/views.py`) must answer `Study._get_trials`, which Optuna's
  samplers call instead of `get_trials`.
Check these on an Optuna upgrade: they read `Study._storage`, `Trial._trial_id`, `Study._get_trials`, `_CachedStorage`
and `RDBStorage.__init__`'s `self.engine`.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


def set_state(study: optuna.Study, trial: optuna.Trial | FrozenTrial, state: TrialState) -> bool:
    """Set a trial's state; False if it had already finished (another worker got there first)."""
    try:
        return study._storage.set_trial_state_values(trial._trial_id, state)
    except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
        return False


def cached(storage: optuna.storages.RDBStorage) -> optuna.storages.BaseStorage:
    """An RDB storage with Optuna's own cache in front, as `create_study` wraps a bare one: a storage wrapped
    by the sweep (`storage.Reconnecting`) would not be."""
    from optuna.storages._cached_storage import _CachedStorage

    return _CachedStorage(storage)


def close_unmade(exc: BaseException) -> None:
    """Close the connections of an RDB storage whose `__init__` raised `exc` (another worker was creating the
    schema): the half-made storage is out of reach, but its engine's pool holds them open until a garbage
    collection, on a server that workers starting together fill (bench/results/cluster.json)."""
    frame = exc.__traceback__
    while frame is not None:
        unmade = frame.tb_frame.f_locals.get("self")
        if isinstance(unmade, optuna.storages.RDBStorage) and hasattr(unmade, "engine"):
            unmade.engine.dispose()
            return
        frame = frame.tb_next


def finished(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether the stored trial has finished: another worker may close a trial this process still runs."""
    return study._storage.get_trial(trial._trial_id).state.is_finished()


def set_user_attrs(study: optuna.Study, trial: FrozenTrial, values: dict[str, Any]) -> None:
    """Write user attributes of a trial that another process runs (or ran)."""
    for key, value in values.items():
        study._storage.set_trial_user_attr(trial._trial_id, key, value)


def get_trials(study: optuna.Study, deepcopy: bool, states: Any, use_cache: bool) -> list[FrozenTrial]:
    """`Study._get_trials`, as the samplers call it."""
    return study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)


def sibling(study: optuna.Study, name: str) -> optuna.Study | None:
    """The study called `name` in `study`'s storage, if there is one."""
    try:
        return optuna.load_study(study_name=name, storage=study._storage)
    except KeyError:
        return None


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study is in, to open or create another study there."""
    return study._storage
