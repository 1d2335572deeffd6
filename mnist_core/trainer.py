"""Training under a wall-clock budget, with per-epoch records and timings.

`train` never raises for what can happen inside one run (budget spent, NaN loss, a caller's
stop request): the result says how and why the run ended, so a sweep can record it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Literal

import keras

from mnist_core.augment import Augmentation
from mnist_core.data import Splits, make_dataset
from mnist_core.model import MLPConfig, build_mlp, param_count

# Wall clock; a module attribute so tests can replace it with a fake one.
clock = time.perf_counter
# Batches timed (after the first execution, which includes tracing) before projecting the run's time.
PROJECTION_BATCHES = 3
# One traced call (an "execution" of several batches) trains for about this long: the granularity of the
# deadline, NaN and projection checks, so a run stops within about this slack of its deadline. Sized from
# NOMINAL_RATE (parameter-examples per second on 2 CPU cores, bench/results/backends.md) plus a per-batch
# overhead; a slower machine gets longer executions, a faster one shorter.
EXECUTION_SECONDS = 0.25
NOMINAL_RATE = 2e10
STEP_OVERHEAD_SECONDS = 1e-3


# XLA compiles each model once, then runs its epochs faster (bench/results/backends.md): worth it when
# the run has at least this many seconds of arithmetic at NOMINAL_RATE.
XLA_MIN_SECONDS = 10.0


def use_xla(n_params: int, examples: int, epochs: int) -> bool:
    """Whether compiling with XLA repays itself over the whole run."""
    return n_params * examples * epochs / NOMINAL_RATE >= XLA_MIN_SECONDS


def execution_steps(n_params: int, batch_size: int, steps_per_epoch: int) -> int:
    """Batches per traced call: about EXECUTION_SECONDS of work, at most one epoch."""
    step_seconds = n_params * batch_size / NOMINAL_RATE + STEP_OVERHEAD_SECONDS
    return max(1, min(steps_per_epoch, int(EXECUTION_SECONDS / step_seconds)))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run besides the data: model, epochs, batch, seed, augmentation.

    `steps_per_execution` (None: sized by `execution_steps`) changes how often the run is checked, not its result.
    """

    model: MLPConfig
    epochs: int = 10
    batch_size: int = 100
    seed: int = 0
    steps_per_execution: int | None = None
    augmentation: Augmentation = Augmentation()

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "steps_per_execution"):
            value = getattr(self, name)
            if value is None and name == "steps_per_execution":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.augmentation, Augmentation):
            raise ValueError(f"augmentation must be an Augmentation, got {self.augmentation!r}")

    def steps_per_epoch(self, n_train: int) -> int:
        """Batches in one epoch of `n_train` examples (the last one may be short)."""
        return math.ceil(n_train / self.batch_size)


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
    def steady_epochs(self) -> int:
        """Full epochs after the first: the ones `seconds_per_epoch` is measured on, when there are any."""
        return sum(not e.partial for e in self.epochs[1:])

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
    """Deadline, over-budget projection, NaN guard and epoch records, checked after every execution
    (one or more batches: Keras reports the last batch of each)."""

    def __init__(self, budget: Budget, steps_per_epoch: int, epochs: int, batch_size: int, n_train: int, hook: EpochHook | None):
        super().__init__()
        self.budget, self.steps_per_epoch, self.total_steps, self.hook = budget, steps_per_epoch, steps_per_epoch * epochs, hook
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
        # `batch`: the execution's last batch, 0-based within the epoch; Keras counts an epoch's last,
        # shorter execution as a full one, so the epoch's length caps it.
        done = min(batch + 1, self.steps_per_epoch)
        self.steps += done - self.epoch_steps
        self.epoch_steps = done
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
            # Projected past its budget, the run cannot finish: stop it now rather than let it spend
            # the whole budget and be cut at the deadline.
            if projected > self.budget.seconds:
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


def build_run(config: TrainConfig, n_train: int) -> tuple[TrainConfig, keras.Model]:
    """The model of a run on the default path: XLA decided (and kept in the returned config, so a retrain
    repeats it), batches per traced call sized, the learning-rate schedule laid over the planned steps."""
    steps_per_epoch = config.steps_per_epoch(n_train)
    n_params = param_count(config.model)
    if config.model.jit_compile is None:
        xla = use_xla(n_params, n_train, config.epochs)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, jit_compile=xla))
    steps = config.steps_per_execution or execution_steps(n_params, config.batch_size, steps_per_epoch)
    return config, build_mlp(config.model, steps_per_execution=steps, total_steps=steps_per_epoch * config.epochs)


def train(
    config: TrainConfig,
    data: Splits,
    budget: Budget = Budget(),
    on_epoch: EpochHook | None = None,
    keep_model: bool = False,
    verbose: int = 0,
) -> TrainResult:
    """Train `config` on `data.train`, validating on `data.val` each epoch, within `budget`.

    The result's `config` is the one that ran: with `jit_compile` decided if it was left to the trainer.
    `on_epoch` sees each epoch's stats and may return a reason to stop (e.g. pruning). The model
    is returned only with `keep_model`; otherwise its memory is released before returning.
    """
    keras.backend.clear_session(free_memory=False)  # the previous run has collected its garbage
    keras.utils.set_random_seed(config.seed)
    config, model = build_run(config, len(data.train))
    monitor = _Monitor(budget, config.steps_per_epoch(len(data.train)), config.epochs, config.batch_size, len(data.train), on_epoch)
    started = clock()
    try:
        model.fit(
            make_dataset(data.train, config.batch_size, shuffle_seed=config.seed, augmentation=config.augmentation),
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
