"""Training under a wall-clock budget, with per-epoch records and timings.

`train` never raises for what can happen inside one run (budget spent, NaN loss, a caller's
stop request): the result says how and why the run ended, so a sweep can record it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

from mnist_core.augment import Augmentation, augment_batch
from mnist_core.data import Arrays, Splits, scale_pixels
from mnist_core.machine import MachineProfile, current, median_seconds
from mnist_core.model import MLPConfig, param_count
from mnist_core.schema import bounded, check_fields
from mnist_core.work import Work, work

if TYPE_CHECKING:  # Keras (and TensorFlow) come in when a run is built, not with this module
    import keras

# Wall clock; a module attribute so tests can replace it with a fake one.
clock = time.perf_counter
# Batches timed (after the first execution, which includes tracing) before projecting the run's time.
PROJECTION_BATCHES = 3
# One traced call (an "execution" of several batches) trains for about this long: the granularity of the
# deadline, NaN and projection checks, so a run stops within about this slack of its deadline. Sized from the
# machine's profile (`mnist_core/machine.py`): a slower machine gets longer executions, a faster one shorter.
EXECUTION_SECONDS = 0.25
# `measure_overheads`: a tiny net's batches on synthetic images, a call of one batch against one of CALLED.
OVERHEAD_EXAMPLES, OVERHEAD_BATCH, OVERHEAD_CALLED = 4096, 64, 48
# XLA compiles each model once, then runs its epochs faster (bench/results/backends.md): worth it when the
# run has at least this many seconds of matrix products on this machine.
XLA_MIN_SECONDS = 10.0


def use_xla(run: Work, epochs: int, profile: MachineProfile) -> bool:
    """Whether compiling with XLA repays itself over the whole run."""
    return profile.compute_seconds(run, epochs) >= XLA_MIN_SECONDS


def execution_steps(run: Work, profile: MachineProfile) -> int:
    """Batches per traced call: about EXECUTION_SECONDS of work on this machine, at most one epoch."""
    return max(1, min(run.steps_per_epoch, int(EXECUTION_SECONDS / profile.step_seconds(run))))


def epoch_terms(config: TrainConfig, n_train: int, profile: MachineProfile) -> tuple[float, float, float, float]:
    """Seconds of an epoch of `config` on `n_train` examples by the profile's terms (`MachineProfile.epoch_terms`),
    in the traced calls the trainer makes of it."""
    run = config.work(n_train)
    per_call = config.steps_per_execution or execution_steps(run, profile)
    return profile.epoch_terms(run, math.ceil(run.steps_per_epoch / per_call))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run besides the data: model, epochs, batch, seed, augmentation.

    `steps_per_execution` (None: sized by `execution_steps`) changes how often the run is checked, not its result.
    """

    model: MLPConfig
    epochs: int = bounded(10, int, 1)
    batch_size: int = bounded(100, int, 1)
    seed: int = 0
    steps_per_execution: int | None = None  # how often the run is checked: not a hyperparameter
    augmentation: Augmentation = Augmentation()

    def __post_init__(self) -> None:
        check_fields(self)
        spe = self.steps_per_execution
        if spe is not None and (isinstance(spe, bool) or not isinstance(spe, int) or spe < 1):
            raise ValueError(f"steps_per_execution must be an integer >= 1, got {spe!r}")
        if not isinstance(self.augmentation, Augmentation):
            raise ValueError(f"augmentation must be an Augmentation, got {self.augmentation!r}")

    @property
    def epochs_are_runs(self) -> bool:
        """Whether epoch k of this run is the k-epoch run of the same config, so a search may learn from it.

        True at a constant learning rate: each epoch's order, dropout and augmentation depend on the seed and
        the epoch alone, never on the planned length (up to XLA's rounding, which `use_xla` decides from the
        length). A schedule laid over the planned steps makes early epochs of a long run unlike a short run.
        """
        return self.model.lr_schedule == "constant" and not self.model.warmup_fraction

    def steps_per_epoch(self, n_train: int) -> int:
        """Batches in one epoch of `n_train` examples (the last one may be short)."""
        return math.ceil(n_train / self.batch_size)

    def work(self, n_train: int) -> Work:
        """What an epoch of this run on `n_train` examples asks of the machine (`mnist_core/work.py`)."""
        return work(self.model, n_train, self.batch_size, self.augmentation.enabled)


@dataclass(frozen=True)
class Budget:
    """Wall-clock seconds one training run may take (None: no limit), and the epochs it must be able to
    finish within them to be worth running (None: all planned). A run projected to miss those epochs is
    stopped early; one that will reach them runs until the deadline cuts it, keeping its finished epochs."""

    seconds: float | None = None
    min_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds > 0):
            raise ValueError(f"budget seconds must be a positive number, got {self.seconds!r}")
        if self.min_epochs is not None and (isinstance(self.min_epochs, bool) or not isinstance(self.min_epochs, int)
                                            or self.min_epochs < 1):
            raise ValueError(f"budget min_epochs must be an integer >= 1, got {self.min_epochs!r}")


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


@dataclass(frozen=True)
class Progress:
    """Where a run stands after one traced execution, or after an epoch's validation (`validated`): for
    whoever shows it. Built from what the loop already knows, so telling it costs no synchronisation."""

    epoch: int  # 1-based, the one running (or just validated)
    epochs: int  # planned
    steps: int  # batches done in this epoch
    steps_per_epoch: int
    seconds: float  # since the run started
    seconds_left: float | None  # to the planned end by the measured batches (within the budget), once timed
    val_accuracy: float | None  # of the latest validated epoch
    validated: bool = False


ProgressHook = Callable[[Progress], None]
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
    step_seconds: float | None = None  # measured seconds per batch after the first execution (tracing), if timed

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


class _Monitor:
    """Deadline, over-budget projection and NaN guard, checked after every execution (one or more batches).

    The projection asks only whether the budget's `min_epochs` can finish in time: epochs past them are a
    bonus the deadline may cut, not a reason to stop a run that will deliver what it was started for.
    """

    def __init__(self, budget: Budget, steps_per_epoch: int, epochs: int):
        self.budget = budget
        self.total_steps = steps_per_epoch * epochs
        self.needed_epochs = min(budget.min_epochs or epochs, epochs)
        self.needed_steps = steps_per_epoch * self.needed_epochs
        self.steps = 0
        self.deadline = math.inf if budget.seconds is None else clock() + budget.seconds
        self.timing_start: tuple[float, int] | None = None
        self.step_seconds: float | None = None

    def after_execution(self, steps: int, loss_sum: float) -> str | None:
        """Why the run must stop after `steps` more batches whose epoch's loss sums to `loss_sum`, if it must."""
        self.steps += steps
        now = clock()
        if not math.isfinite(loss_sum):
            return f"nan_loss: training loss became {loss_sum} at step {self.steps}"
        if now >= self.deadline:
            return f"budget: {self.budget.seconds:g} s spent at step {self.steps}/{self.total_steps}"
        if self.timing_start is None:  # the first execution pays for tracing: time the ones after it
            self.timing_start = (now, self.steps)
            return None
        start, start_steps = self.timing_start
        if self.steps - start_steps < PROJECTION_BATCHES:
            return None
        self.step_seconds = (now - start) / (self.steps - start_steps)
        if self.deadline < math.inf and self.steps < self.needed_steps:
            projected = self.budget.seconds - (self.deadline - now) + self.step_seconds * (self.needed_steps - self.steps)
            # Projected past its budget, the run cannot deliver its needed epochs: stop it now rather than
            # let it spend the whole budget and be cut at the deadline.
            if projected > self.budget.seconds:
                return (f"over_budget: projected {projected:.3g} s > budget {self.budget.seconds:g} s "
                        f"for {self.needed_epochs} epoch(s)")
        return None

    def seconds_left(self) -> float | None:
        """To the planned end at the measured batches' pace (validation passes aside), within the deadline."""
        if self.step_seconds is None:
            return None
        return max(min(self.step_seconds * (self.total_steps - self.steps), self.deadline - clock()), 0.0)


class _Loop:
    """The traced functions of one run, on tensors that stay resident: `run_batches(order, first, last, seed)`
    trains batches [first, last) of an epoch in the order `order`, adding to the epoch's sums; `evaluate`
    scores the validation set.

    A hand-written loop rather than `Model.fit`: it traces in about half the time and spends less per batch
    (bench/results/backends.md), which is most of a small net's run. Batches are gathered from the
    resident uint8 images by index, scaled and (training only) augmented with a stateless seed drawn from
    the run's seed and the batch's number, so a seed replays the same run. Only the step itself (forward,
    loss, gradients, update) is compiled with XLA when the run uses it: a whole loop compiled by XLA
    copies the resident images on every batch.
    """

    EVAL_BATCH = 1024

    def __init__(self, model: keras.Model, config: TrainConfig, data: Splits):
        import tensorflow as tf

        self.model, self.config = model, config
        self.images, self.labels = tf.constant(data.train.images), tf.constant(data.train.labels, tf.int32)
        self.val_images, self.val_labels = tf.constant(data.val.images), tf.constant(data.val.labels, tf.int32)
        self.sums = [tf.Variable(0.0), tf.Variable(0.0), tf.Variable(0.0)]  # loss x examples, correct, examples
        # Each run traces its own functions once. TensorFlow counts traces per Python code object, so the
        # runs of a sweep would count as retracing one method and it would warn; a partial has no code
        # object, so each run's function is counted on its own.
        traced = lambda method, **options: tf.function(functools.partial(method), autograph=False, **options)  # noqa: E731
        self.step = traced(self._step, jit_compile=bool(config.model.jit_compile))
        self.run_batches, self.evaluate = traced(self._run_batches), traced(self._evaluate)

    def _step(self, x, y):
        import tensorflow as tf

        model = self.model
        with tf.GradientTape() as tape:
            predicted = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=predicted, training=True)
        model.optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss, _correct(predicted, y)

    def _run_batches(self, order, first, last, seed):
        import tensorflow as tf

        batch, augmentation = self.config.batch_size, self.config.augmentation

        def body(i):
            index = order[i * batch : (i + 1) * batch]
            x, y = scale_pixels(tf.gather(self.images, index)), tf.gather(self.labels, index)
            if augmentation.enabled:
                x = augment_batch(x, tf.stack([seed, tf.cast(i, tf.int64)]), augmentation)
            loss, correct = self.step(x, y)
            n = tf.cast(tf.size(index), tf.float32)
            for total, value in zip(self.sums, (loss * n, correct, n), strict=True):
                total.assign_add(value)
            return (i + 1,)

        tf.while_loop(lambda i: i < last, body, (first,))
        return self.sums[0].read_value()

    def _evaluate(self):
        """Validation loss (mean over examples) and accuracy, in batches of EVAL_BATCH."""
        import tensorflow as tf

        n = tf.shape(self.val_labels)[0]

        def body(start, loss_sum, correct):
            x = scale_pixels(self.val_images[start : start + self.EVAL_BATCH])
            y = self.val_labels[start : start + self.EVAL_BATCH]
            predicted = self.model(x, training=False)
            size = tf.cast(tf.shape(y)[0], tf.float32)
            loss = self.model.compute_loss(x=x, y=y, y_pred=predicted, training=False)
            return start + self.EVAL_BATCH, loss_sum + loss * size, correct + _correct(predicted, y)

        _, loss_sum, correct = tf.while_loop(lambda start, *_: start < n, body, (0, 0.0, 0.0))
        examples = tf.cast(n, tf.float32)
        return loss_sum / examples, correct / examples

    def epoch_sums(self) -> tuple[float, float, float]:
        """(mean training loss, training accuracy, examples) of the epoch so far; then starts a new epoch."""
        loss_sum, correct, examples = (float(v.numpy()) for v in self.sums)
        for v in self.sums:
            v.assign(0.0)
        return (loss_sum / examples, correct / examples, examples) if examples else (math.nan, math.nan, 0.0)


def _correct(predicted, labels):
    """How many of a batch's predictions name the label."""
    import tensorflow as tf

    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(predicted, axis=-1, output_type=tf.int32), labels), tf.float32))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the training examples in `epoch` of a run seeded `seed`: a new shuffle each epoch, the same every run."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def build_run(config: TrainConfig, n_train: int) -> tuple[TrainConfig, keras.Model]:
    """The model of a run on the default path: XLA decided on this machine's profile (and kept in the returned
    config, so a retrain repeats it), the learning-rate schedule laid over the planned steps."""
    from mnist_core.network import build_mlp

    if config.model.jit_compile is None:
        xla = use_xla(config.work(n_train), config.epochs, current())
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, jit_compile=xla))
    return config, build_mlp(config.model, total_steps=config.steps_per_epoch(n_train) * config.epochs)


def train(
    config: TrainConfig,
    data: Splits,
    budget: Budget = Budget(),
    on_epoch: EpochHook | None = None,
    keep_model: bool = False,
    verbose: int = 0,
    on_progress: ProgressHook | None = None,
) -> TrainResult:
    """Train `config` on `data.train`, validating on `data.val` each epoch, within `budget`.

    The result's `config` is the one that ran: with `jit_compile` decided if it was left to the trainer.
    `on_epoch` sees each epoch's stats and may return a reason to stop (e.g. pruning); an epoch cut short
    by the budget is validated and recorded too (`partial`). The model is returned only with `keep_model`;
    otherwise its memory is released before returning. `verbose` prints a line per epoch. `on_progress` is told
    after every traced execution and every validation (`Progress`).
    """
    import keras

    profile = current()  # measured on the first run of a process: before the seed, as measuring draws numbers
    keras.backend.clear_session(free_memory=False)  # the previous run has collected its garbage
    keras.utils.set_random_seed(config.seed)
    config, model = build_run(config, len(data.train))
    steps_per_epoch = config.steps_per_epoch(len(data.train))
    per_call = config.steps_per_execution or execution_steps(config.work(len(data.train)), profile)
    loop = _Loop(model, config, data)
    epochs: list[EpochStats] = []
    reason: str | None = None
    started = clock()
    monitor = _Monitor(budget, steps_per_epoch, config.epochs)

    def tell(epoch: int, steps: int, validated: bool = False) -> None:
        if on_progress is not None:
            on_progress(Progress(epoch, config.epochs, steps, steps_per_epoch, clock() - started, monitor.seconds_left(),
                                 epochs[-1].val_accuracy if epochs else None, validated))

    try:
        for epoch in range(1, config.epochs + 1):
            stats, reason = _epoch(loop, monitor, config, epoch, per_call, len(data.train), tell)
            epochs.append(stats)
            tell(epoch, steps_per_epoch, validated=True)
            if verbose:
                print(f"epoch {epoch}/{config.epochs}: {stats.seconds:.1f} s, loss {stats.loss:.4f}, accuracy {stats.accuracy:.4f}, "
                      f"val_loss {stats.val_loss:.4f}, val_accuracy {stats.val_accuracy:.4f}", flush=True)
            if reason is None and on_epoch is not None:
                reason = on_epoch(stats) or None  # an empty reason is no reason to stop
            if reason:
                break
        outcome: Outcome = "completed" if reason is None else "failed" if reason.startswith("nan_loss") else "stopped"
        result = TrainResult(config=config, param_count=param_count(config.model), epochs=epochs, seconds=clock() - started,
                             outcome=outcome, reason=reason, model=model if keep_model else None, step_seconds=monitor.step_seconds)
    finally:  # also when training raises (out of memory): the model goes either way
        del model, loop
        if not keep_model:
            # One full garbage collection per run frees the model's reference cycles. Each one walks
            # the whole heap, which TensorFlow keeps large (bench/results/README.md), so nothing else collects.
            keras.backend.clear_session(free_memory=True)
    return result


def _epoch(loop: _Loop, monitor: _Monitor, config: TrainConfig, epoch: int, per_call: int, n_train: int,
           tell: Callable[[int, int], None]) -> tuple[EpochStats, str | None]:
    """Train one epoch in executions of `per_call` batches, checked (and told) after each, then validate: its
    stats (`partial` if the monitor stopped it) and why the run must stop, if it must."""
    import tensorflow as tf

    steps_per_epoch = config.steps_per_epoch(n_train)
    epoch_start, order = clock(), epoch_order(config.seed, epoch, n_train)
    seed = tf.constant(config.seed * 1_000_003 + epoch, tf.int64)  # augmentation seeds: (this, batch number)
    first, reason = 0, None
    while first < steps_per_epoch and reason is None:
        last = min(first + per_call, steps_per_epoch)
        loss_sum = float(loop.run_batches(order, *(tf.constant(v, tf.int32) for v in (first, last)), seed))
        reason = monitor.after_execution(last - first, loss_sum)
        first = last
        tell(epoch, first)
    loss, accuracy, examples = loop.epoch_sums()
    val_loss, val_accuracy = (float(v) for v in loop.evaluate())
    stats = EpochStats(epoch, loss, accuracy, val_loss, val_accuracy, clock() - epoch_start, int(examples), reason is not None)
    return stats, reason


def measure_overheads() -> dict[str, float]:
    """This machine's fixed costs on the trainer's own loop, in microseconds (`mnist_core/machine.py`): a traced
    call and a batch of a tiny one-layer net, each further layer (a four-layer net), and each image moved (the
    one-layer net augmented). One call of one batch and one of CALLED batches tell the call from the batch."""
    import keras
    import tensorflow as tf

    from mnist_core.network import build_mlp

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (OVERHEAD_EXAMPLES, 28, 28), dtype=np.uint8), rng.integers(0, 10, OVERHEAD_EXAMPLES, dtype=np.uint8)
    data = Splits(Arrays(images, labels), Arrays(images[:64], labels[:64]), "synthetic", "")
    order, seed = tf.constant(epoch_order(0, 1, OVERHEAD_EXAMPLES)), tf.constant(0, tf.int64)
    moves = Augmentation(translate=0.08, rotate=10.0, scale=0.1, elastic=19.0)

    def batches(depth: int, augmentation: Augmentation, last: int) -> float:
        """Seconds of one call of `last` batches of a `depth`-layer net."""
        config = TrainConfig(MLPConfig(depth=depth, width=8, jit_compile=False), epochs=1, batch_size=OVERHEAD_BATCH,
                             augmentation=augmentation)
        loop = _Loop(build_mlp(config.model), config, data)
        return median_seconds(lambda: float(loop.run_batches(order, tf.constant(0), tf.constant(last), seed)))

    try:
        one, many = batches(1, Augmentation(), 1), batches(1, Augmentation(), OVERHEAD_CALLED)
        batch = max(many - one, 0.0) / (OVERHEAD_CALLED - 1)
        call = max(one - batch, 0.0)
        # A deeper or augmenting net's call costs what the plain one's does; its batches cost more.
        deep, augmented = ((batches(depth, moved, OVERHEAD_CALLED) - call) / OVERHEAD_CALLED
                           for depth, moved in ((4, Augmentation()), (1, moves)))
    finally:
        keras.backend.clear_session(free_memory=True)
    return {"call_us": call * 1e6, "batch_us": batch * 1e6, "layer_us": max(deep - batch, 0.0) / 3 * 1e6,
            "augment_us": max(augmented - batch, 0.0) / OVERHEAD_BATCH * 1e6}


def warm_up(data: Splits) -> None:
    """Pay a fresh process's one-off costs (TensorFlow's thread pools, first kernels and traces) on a
    throwaway run of a tiny net on a few examples, so the run timed next measures what a trial measures
    in a sweep that is already running: `best` retrains a trial that was timed in a warm process."""
    few = lambda arrays, n: Arrays(arrays.images[:n], arrays.labels[:n])  # noqa: E731
    train(TrainConfig(MLPConfig(depth=1, width=8), epochs=1, batch_size=256),
          Splits(few(data.train, 512), few(data.val, 256), data.source, data.checksum))
