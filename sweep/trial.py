"""One trial: it trains one MLP through `mnist_core` under its budget, is scored by its best validation
epoch, and is tracked in MLflow as a child run of the sweep.

Trial states map to MLflow statuses: COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED.
A trial starts only when the cost model predicts that the epochs the study needs of it
(`StudySpec.epochs_needed`) fit the time it has. One that cannot fit its own per-trial budget is PRUNED
before training, so the sampler learns it is too slow; one that only lacks the sweep's time left is
FAIL `skipped: sweep time`, which the samplers ignore: being late says nothing about it. Neither has an
MLflow run. A trial stopped at its deadline or projected to miss its needed epochs is PRUNED, with its
finished epochs kept. Only a trial with a full epoch counts towards `--trials`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from mnist_core.machine import current
from mnist_core.model import param_count
from mnist_core.trainer import Budget, EpochStats, ProgressHook, TrainConfig, epoch_terms, train
from sweep import costmodel, dominance, optuna_private, record
from sweep.context import SweepContext
from sweep.points import front
from sweep.processes import as_interrupt, check_stop
from sweep.record import FINISHED, SWEEP_TIME_SKIP
from sweep.studyfile import StudySpec
from sweep.tracking import machine_tags, summary_metrics
from sweep.workers import Heartbeat, own

if TYPE_CHECKING:
    from sweep.callbacks import Watch

# A run tag: the trial was cut inside its first epoch, so it has no point and does not count as trained.
CUT_TAG = "cut_before_first_epoch"
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


class TakenOver(Exception):
    """Another worker closed this trial while this one still ran it: this host was cut off or frozen past the
    stale interval (sweep/workers.py), and its trial was recovered. Its late result must not be told."""

    def __init__(self, number: int):
        super().__init__(f"trial {number:4d} dropped   (another worker closed it while this one was cut off or frozen, "
                         "and queued its configuration again; this late result is not recorded)")


@dataclass(frozen=True)
class Outcome:
    """How a trial ended: its state, why, what it measured, and its objective values when COMPLETE."""

    state: TrialState
    reason: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    values: list[float] | None = None


class Pruning:
    """Whether a trial should stop after an epoch, chosen once per study: this base prunes nothing."""

    def after_epoch(self, trial: optuna.Trial, stats: EpochStats, curve: list[tuple[float, float]], planned: int) -> str | None:
        return None


class DominancePruning(Pruning):
    """Accuracy against seconds: stop a trial the study's front already beats at every epoch it has left."""

    def after_epoch(self, trial, stats, curve, planned):
        if stats.partial:
            return None
        # Read afresh each epoch: other workers finish trials meanwhile, and each one sharpens the front.
        finished = record.records(trial.study, FINISHED)
        points = [(p.seconds, p.val_accuracy) for r in finished for p in r.points]
        return dominance.dominated(curve, planned, [r.curve or () for r in finished], front(points))


class OptunaPruning(Pruning):
    """One objective: Optuna's pruner (median, Hyperband) judges the reported epoch."""

    def __init__(self, spec: StudySpec):
        self.objective, self.name = spec.objectives[0], spec.pruner

    def after_epoch(self, trial, stats, curve, planned):
        trial.report(getattr(stats, self.objective), stats.epoch)
        return f"pruned by {self.name} pruner at epoch {stats.epoch}" if trial.should_prune() else None


def pruning_for(spec: StudySpec) -> Pruning:
    if spec.pruner == "dominance":
        return DominancePruning()
    if spec.multi_objective or spec.objectives[0] == "train_seconds":
        return Pruning()
    return OptunaPruning(spec)


def run_trial(ctx: SweepContext, trial: optuna.Trial, pruning: Pruning, watch: Watch | None = None) -> FrozenTrial:
    """Run one asked trial: the one place that decides how it ends, closes its MLflow run and tells Optuna.
    `watch` shows its progress while it trains.

    As in Optuna's `_run_trial`, every exception becomes a trial state. A trial that cannot fit is skipped
    before training (no MLflow run; it does not count towards `--trials`). Failures inside training (NaN
    loss, out of memory) end it FAIL and the sweep goes on; Ctrl-C, SIGTERM and errors of the store end it
    FAIL too, and are raised again once it is closed. A trial another worker closed meanwhile (`TakenOver`)
    is left as that worker closed it, its MLflow run too.
    """
    try:
        return _run_trial(ctx, trial, pruning, watch)
    except optuna.exceptions.UpdateFinishedTrialError:
        raise TakenOver(trial.number) from None


def _run_trial(ctx: SweepContext, trial: optuna.Trial, pruning: Pruning, watch: Watch | None) -> FrozenTrial:
    error: BaseException | None = None
    run_id = None
    try:
        own(trial)
        seed = ctx.spec.seed + trial.number
        config = ctx.spec.config_for(trial, seed)
        examples, profile = len(ctx.splits.train), current()
        scale = costmodel.seconds_scale(config, examples, profile, ctx.study_profile)
        # The cost model's inputs (searched or fixed), and what converts this machine's seconds to the study's.
        record.save(trial, seed=seed, batch_size=config.batch_size, epochs=config.epochs, augmented=config.augmentation.enabled,
                    machine=profile.fields(), epoch_terms=epoch_terms(config, examples, profile), seconds_scale=scale)
        seconds = ctx.spec.trial_seconds if ctx.deadline is None else min(ctx.spec.trial_seconds, ctx.seconds_left())
        outcome, predicted = _skip(ctx, trial, config, seconds)
        if outcome is None:
            # The run id is kept the moment the run exists, so an interrupt while it is described still closes it.
            run_id = ctx.tracker.start_run(f"trial-{trial.number}", ctx.parent_run_id,
                                           {"optuna.trial_number": str(trial.number), "optuna.study": trial.study.study_name})
            _describe_run(ctx, trial, config, run_id)
            ctx.tracker.set_tags(run_id, machine_tags(profile))
            outcome = _train(ctx, trial, config, seconds, run_id, pruning, scale, watch and watch.trial(trial.number, predicted))
    except (TakenOver, optuna.exceptions.UpdateFinishedTrialError):
        raise
    except BaseException as exc:  # Ctrl-C, SIGTERM, a tracking or storage error
        error = as_interrupt(exc)
        outcome = Outcome(TrialState.FAIL, "interrupted" if isinstance(error, KeyboardInterrupt) else _reason(error))
    try:
        _close(ctx, trial, run_id, outcome)
    except optuna.exceptions.UpdateFinishedTrialError:
        raise
    except BaseException as exc:
        error = error or exc
        outcome = Outcome(TrialState.FAIL, _reason(exc))
    frozen = _tell(ctx, trial, outcome)
    if error is not None:
        raise error
    if frozen is None:
        raise TakenOver(trial.number)
    return frozen


def _tell(ctx: SweepContext, trial: optuna.Trial, outcome: Outcome) -> FrozenTrial | None:
    """Tell Optuna how the trial ended; None if another worker closed it first: its stale check can land
    between `_close` and here, and Optuna refuses to tell a finished trial with a ValueError."""
    try:
        return ctx.study.tell(trial, outcome.values, state=outcome.state)
    except ValueError:
        if optuna_private.finished(ctx.study, trial):
            return None
        raise


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _skip(ctx: SweepContext, trial: optuna.Trial, config: TrainConfig, left: float) -> tuple[Outcome | None, float]:
    """Why the trial is not run, if its needed epochs cannot fit in `left` seconds (and its predicted seconds,
    to the end of its epochs): PRUNED when they exceed its
    own budget (the sampler learns the config is too slow), FAIL `skipped: sweep time` when only the sweep's
    time left is too short. Judged on the cost model's optimistic end once a trial of the study has corrected the
    machine profile (a profile alone may be off for this trainer: the run's own projection judges it then)."""
    n_params, examples = param_count(config.model), len(ctx.splits.train)
    needed = ctx.spec.epochs_needed(config.epochs)
    model = costmodel.fit(ctx.study, examples)
    least = model.least(config, examples, needed)
    predicted = model.predict(config, examples)
    record.save(trial, predicted_seconds=predicted, cost_model_trials=model.trials, min_epochs=needed)
    need = f"predicted at least {least:.0f} s for {needed} epoch(s) of {n_params:,} parameters at batch {config.batch_size}"
    if model.trials and least > ctx.spec.trial_seconds:
        return Outcome(TrialState.PRUNED, f"skipped: {need} > trial budget {ctx.spec.trial_seconds:g} s", {"param_count": n_params}), predicted
    if left <= 0 or (model.trials and least > left):
        return Outcome(TrialState.FAIL, f"{SWEEP_TIME_SKIP}: {need} > {max(left, 0):.0f} s left", {"param_count": n_params}), predicted
    return None, predicted


def _describe_run(ctx: SweepContext, trial: optuna.Trial, config: TrainConfig, run_id: str) -> None:
    """The trial's MLflow child run gets its params, dataset and manifest."""
    record.save(trial, mlflow_run_id=run_id)
    ctx.tracker.describe_run(run_id, config, ctx.splits, study_file=ctx.spec.label, trial_number=trial.number)


def _train(ctx: SweepContext, trial: optuna.Trial, config: TrainConfig, seconds: float, run_id: str, pruning: Pruning,
           scale: float, on_progress: ProgressHook | None = None) -> Outcome:
    """Train within `seconds`, logging each epoch, keeping its point in study seconds (`scale` per second
    here), asking `pruning` after each one, and telling `on_progress` as it goes."""
    curve: list[tuple[float, float]] = []
    elapsed, epochs_done = 0.0, 0.0
    run = config.work(len(ctx.splits.train))

    def on_epoch(stats: EpochStats) -> str | None:
        nonlocal elapsed, epochs_done
        check_stop()
        if optuna_private.finished(ctx.study, trial):  # recovered by another worker while this one was away
            raise TakenOver(trial.number)
        elapsed += stats.seconds
        epochs_done += stats.examples / run.examples
        ctx.tracker.log_epoch(run_id, stats, {"study_seconds": elapsed * scale, "flops": run.flops(epochs_done),
                                              "optimizer_bytes": run.optimizer_bytes(epochs_done)})
        if not stats.partial:
            curve.append((elapsed * scale, stats.val_accuracy))
            record.save(trial, curve=curve)
        return pruning.after_epoch(trial, stats, curve, config.epochs)

    try:
        with Heartbeat(trial):
            result = train(config, ctx.splits, Budget(seconds, ctx.spec.epochs_needed(config.epochs)), on_epoch=on_epoch,
                           on_progress=on_progress)
    except TakenOver:
        raise
    except Exception as exc:  # out of memory and other failures inside one trial, unless a signal caused it
        if isinstance(interrupt := as_interrupt(exc), KeyboardInterrupt):
            raise interrupt
        return Outcome(TrialState.FAIL, _reason(exc), {"param_count": param_count(config.model)})
    # As decided for this run, `best` repeats it; the cost model learns from a run cut in its first epoch too.
    record.save(trial, jit_compile=result.config.model.jit_compile, step_seconds=result.step_seconds)
    state = {"completed": TrialState.COMPLETE, "stopped": TrialState.PRUNED, "failed": TrialState.FAIL}[result.outcome]
    ctx.tracker.set_tags(run_id, {"jit_compile": result.config.model.jit_compile, CUT_TAG: state == TrialState.PRUNED and not curve})
    metrics = summary_metrics(result, scale)
    values = [metrics[m] for m in ctx.spec.objective_metrics] if state == TrialState.COMPLETE else None
    return Outcome(state, result.reason, metrics, values)


def _close(ctx: SweepContext, trial: optuna.Trial, run_id: str | None, outcome: Outcome) -> None:
    """Record the outcome on the trial, and end its MLflow run (if it has one) with the matching status."""
    record.save(trial, reason=outcome.reason, **outcome.metrics)
    if run_id is None:
        return
    ctx.tracker.log_metrics(run_id, outcome.metrics)
    ctx.tracker.set_tags(run_id, {"optuna.state": outcome.state.name, "reason": outcome.reason or ""})
    ctx.tracker.end_run(run_id, RUN_STATUS[outcome.state])
