"""Training under a wall-clock budget, with per-epoch records and timings.

`train` never raises for what can happen inside one run (budget spent, NaN loss, a caller's
stop request): the result says how and why the run ended, so a sweep can record it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Literal

import keras

from mnist_core.data import Splits, make_dataset
from mnist_core.model import MLPConfig, build_mlp, param_count

# A run whose projected time exceeds its budget by this factor cannot fit: stop it early.
OVERRUN_FACTOR = 1.5
# Wall clock; a module attribute so tests can replace it with a fake one.
clock = time.perf_counter
# Batches timed (after the first, which includes tracing) before projecting the run's time.
PROJECTION_BATCHES = 3


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run besides the data: model, epochs, batch, seed."""

    model: MLPConfig
    epochs: int = 10
    batch_size: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class Budget:
    """Wall-clock seconds one training run may take (None: no limit)."""

    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds > 0):
            raise ValueError(f"budget seconds must be a positive number, got {self.seconds!r}")


@dataclass(frozen=True)
class EpochStats:
    """One epoch (1-based); `seconds` includes its validation pass; `partial` if cut short."""

    epoch: int
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float
    examples: int
    partial: bool


EpochHook = Callable[[EpochStats], "str | None"]
Outcome = Literal["completed", "stopped", "failed"]


@dataclass
class TrainResult:
    """How a run went: `outcome` with its `reason`, epochs, timings; `model` only if asked for."""

    config: TrainConfig
    param_count: int
    epochs: list[EpochStats]
    seconds: float
    outcome: Outcome
    reason: str | None
    model: keras.Model | None = None

    @property
    def best_epoch(self) -> EpochStats | None:
        """The epoch with the highest validation accuracy (earliest on ties): the run's score."""
        scored = [e for e in self.epochs if math.isfinite(e.val_accuracy)]
        return max(scored, key=lambda e: e.val_accuracy) if scored else None

    @property
    def warmup_seconds(self) -> float | None:
        """The first epoch, which also pays for tracing and pipeline warm-up."""
        return self.epochs[0].seconds if self.epochs else None

    @property
    def _steady(self) -> list[EpochStats]:
        full = [e for e in self.epochs[1:] if not e.partial]
        return full or self.epochs

    @property
    def seconds_per_epoch(self) -> float | None:
        """Steady-state seconds per full epoch (after warm-up; the first epoch if it is all there is)."""
        steady = self._steady
        return sum(e.seconds for e in steady) / len(steady) if steady else None

    @property
    def examples_per_second(self) -> float | None:
        steady = self._steady
        seconds = sum(e.seconds for e in steady)
        return sum(e.examples for e in steady) / seconds if seconds > 0 else None


class _Monitor(keras.callbacks.Callback):
    """Deadline, over-budget projection, NaN guard and epoch records, checked every batch."""

    def __init__(self, budget: Budget, total_steps: int, batch_size: int, n_train: int, hook: EpochHook | None):
        super().__init__()
        self.budget, self.total_steps, self.hook = budget, total_steps, hook
        self.batch_size, self.n_train = batch_size, n_train
        self.epochs: list[EpochStats] = []
        self.reason: str | None = None
        self.steps = 0
        self.deadline = math.inf
        self.timing_start: tuple[float, int] | None = None

    def _stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.model.stop_training = True

    def on_train_begin(self, logs=None):
        if self.budget.seconds is not None:
            self.deadline = clock() + self.budget.seconds

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start, self.epoch_steps = clock(), 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.epoch_steps += 1
        now = clock()
        if not math.isfinite(float(logs["loss"])):
            return self._stop(f"nan_loss: training loss became {float(logs['loss'])} at step {self.steps}")
        if now >= self.deadline:
            return self._stop(f"budget: {self.budget.seconds:g} s spent at step {self.steps}/{self.total_steps}")
        if self.timing_start is None:
            self.timing_start = (now, self.steps)
            return
        start, start_steps = self.timing_start
        if self.deadline < math.inf and self.steps - start_steps >= PROJECTION_BATCHES:
            per_step = (now - start) / (self.steps - start_steps)
            projected = self.budget.seconds - (self.deadline - now) + per_step * (self.total_steps - self.steps)
            if projected > OVERRUN_FACTOR * self.budget.seconds:
                self._stop(f"over_budget: projected {projected:.0f} s > budget {self.budget.seconds:g} s")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        stats = EpochStats(
            epoch=epoch + 1,
            loss=float(logs.get("loss", math.nan)),
            accuracy=float(logs.get("accuracy", math.nan)),
            val_loss=float(logs.get("val_loss", math.nan)),
            val_accuracy=float(logs.get("val_accuracy", math.nan)),
            seconds=clock() - self.epoch_start,
            examples=min(self.epoch_steps * self.batch_size, self.n_train),
            partial=self.model.stop_training,
        )
        self.epochs.append(stats)
        if self.hook is not None and self.reason is None:
            reason = self.hook(stats)
            if reason:
                self._stop(reason)


def train(
    config: TrainConfig,
    data: Splits,
    budget: Budget = Budget(),
    on_epoch: EpochHook | None = None,
    keep_model: bool = False,
    verbose: int = 0,
) -> TrainResult:
    """Train `config` on `data.train`, validating on `data.val` each epoch, within `budget`.

    `on_epoch` sees each epoch's stats and may return a reason to stop (e.g. pruning). The model
    is returned only with `keep_model`; otherwise its memory is released before returning.
    """
    keras.backend.clear_session(free_memory=False)  # the previous run has collected its garbage
    keras.utils.set_random_seed(config.seed)
    model = build_mlp(config.model)
    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    monitor = _Monitor(budget, steps_per_epoch * config.epochs, config.batch_size, len(data.train), on_epoch)
    started = clock()
    try:
        model.fit(
            make_dataset(data.train, config.batch_size, shuffle_seed=config.seed),
            validation_data=make_dataset(data.val, config.batch_size),
            epochs=config.epochs,
            callbacks=[monitor],
            shuffle=False,  # the pipeline reshuffles each epoch with the run's seed
            verbose=verbose,
        )
        seconds = clock() - started
        reason = monitor.reason
        outcome: Outcome = "completed" if reason is None else "failed" if reason.startswith("nan_loss") else "stopped"
        result = TrainResult(
            config=config,
            param_count=param_count(config.model),
            epochs=monitor.epochs,
            seconds=seconds,
            outcome=outcome,
            reason=reason,
            model=model if keep_model else None,
        )
    finally:  # also when fit raises (out of memory): the model goes either way
        del model, monitor
        if not keep_model:
            # One full garbage collection per run frees the model's reference cycles. Each one walks
            # the whole heap, which TensorFlow keeps large (bench/results/README.md), so nothing else collects.
            keras.backend.clear_session(free_memory=True)
    return result
