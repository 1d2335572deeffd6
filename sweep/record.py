"""What the tool keeps on an Optuna trial: one typed record, the only code that knows the attribute keys.

Each field of `TrialRecord` is stored as the Optuna user attribute of the same name; `save` writes some of
them while the trial runs, `load` reads them all back from a finished (or running) trial. Stores written
before a field existed load with its default. The rules that read a record live here too: which states
are finished, which trials trained (have a point), and which were skipped for lack of sweep time.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# The reason of a configuration not run because the sweep's time left was too short for it. Recorded as FAIL,
# which TPE, NSGA-II and random sampling ignore: being late says nothing about a configuration.
SWEEP_TIME_SKIP = "skipped: sweep time"


@dataclass(frozen=True)
class Point:
    """A trial's epoch as a model: what it cost (training seconds to its end, warm-up included) and scored."""

    trial: int
    epoch: int  # 1-based
    seconds: float
    val_accuracy: float


@dataclass(frozen=True)
class TrialRecord:
    """Everything the tool keeps on a trial; `state` and `number` are Optuna's own."""

    state: TrialState = TrialState.RUNNING
    number: int = -1
    # Who runs it (sweep/workers.py): a restart tells a live trial from a dead one.
    host: str | None = None
    pid: int | None = None
    heartbeat: float | None = None  # its worker's wall clock at its last sign of life: compared only with itself
    retry_of: int | None = None  # the trial of a dead worker this one runs again
    # The run it stands for, beyond its params: what `best` repeats and the cost model reads.
    seed: int | None = None
    batch_size: int | None = None
    epochs: int | None = None
    augmented: bool | None = None  # whether its training images were moved
    jit_compile: bool | None = None  # as the trainer decided for this run
    # The machine that ran it (`mnist_core/machine.py`, the profile's fields) and what its epoch costs there by
    # the profile's terms (`sweep/costmodel.py`). Its seconds are that machine's; `seconds_scale` converts them
    # to study seconds, the seconds of the machine that started the study (`study_profile`): its curve, its
    # points and its objective are in study seconds. Stored before profiles: None, its seconds are raw.
    machine: dict[str, Any] | None = None
    epoch_terms: tuple[float, ...] | None = None
    seconds_scale: float | None = None
    # The cost gate (sweep/trial.py).
    predicted_seconds: float | None = None
    cost_model_trials: int | None = None  # 0: the machine profile alone predicted it
    min_epochs: int | None = None
    mlflow_run_id: str | None = None
    # What it measured: every full epoch's (cumulative study seconds, validation accuracy), written after each one.
    curve: tuple[tuple[float, float], ...] | None = None
    step_seconds: float | None = None  # seconds per batch after tracing, timed by the trainer
    # Summary metrics (sweep/tracking.SUMMARY_METRICS), written when it ends.
    best_val_accuracy: float | None = None
    best_val_loss: float | None = None
    best_epoch: int | None = None
    epochs_run: int | None = None  # epochs it entered, the last perhaps cut short
    train_seconds: float | None = None  # measured on its machine
    study_seconds: float | None = None  # train_seconds x seconds_scale
    warmup_seconds: float | None = None
    seconds_per_epoch: float | None = None
    steady_epochs: int | None = None
    examples_per_second: float | None = None
    param_count: int | None = None
    reason: str | None = None  # why it ended as it did, if not by completing

    @classmethod
    def load(cls, trial: FrozenTrial) -> TrialRecord:
        attrs = trial.user_attrs
        values: dict[str, Any] = {name: attrs[name] for name in _KEYS if name in attrs}
        if values.get("curve") is not None:
            values["curve"] = tuple((float(s), float(a)) for s, a in values["curve"])
        if values.get("epoch_terms") is not None:
            values["epoch_terms"] = tuple(float(t) for t in values["epoch_terms"])
        return cls(state=trial.state, number=trial.number, **values)

    @property
    def points(self) -> list[Point]:
        """The trial's epochs as points, in study seconds; a complete trial stored before curves were kept gives
        its scored epoch alone."""
        if self.curve is None:
            if self.state == TrialState.COMPLETE and self.best_val_accuracy is not None:
                return [Point(self.number, int(self.best_epoch), float(self.train_seconds), float(self.best_val_accuracy))]
            return []
        return [Point(self.number, epoch, s, a) for epoch, (s, a) in enumerate(self.curve, start=1) if math.isfinite(a)]

    @property
    def trained(self) -> bool:
        """Whether a finished trial trained at least one full epoch, that is, has a point: what `--trials N`
        counts. One skipped before training, or cut inside its first epoch, is recorded but did not train."""
        return self.state in FINISHED and bool(self.points)

    @property
    def skipped_for_sweep_time(self) -> bool:
        return self.state == TrialState.FAIL and (self.reason or "").startswith(SWEEP_TIME_SKIP)

    @property
    def skipped(self) -> bool:
        """Not run, or cut inside its first epoch: recorded, neither counted nor a failure."""
        return (self.state in FINISHED and not self.trained) or self.skipped_for_sweep_time


_KEYS = tuple(f.name for f in dataclasses.fields(TrialRecord) if f.name not in ("state", "number"))


def attrs(**values: Any) -> dict[str, Any]:
    """Fields of a record as Optuna user attributes (a name that is no field is an error)."""
    for name in values:
        if name not in _KEYS:
            raise KeyError(f"{name!r} is not a field of TrialRecord")
    return {name: [list(p) for p in value] if name == "curve" else list(value) if name == "epoch_terms" else value
            for name, value in values.items()}


def save(trial: optuna.Trial, **values: Any) -> None:
    """Write some fields of the trial's record."""
    for key, value in attrs(**values).items():
        trial.set_user_attr(key, value)


def records(study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> list[TrialRecord]:
    """The study's trials (in `states`) as records."""
    return [TrialRecord.load(t) for t in study.get_trials(deepcopy=False, states=states)]
