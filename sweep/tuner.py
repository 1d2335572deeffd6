"""The running side: each Optuna trial trains one MLP through `mnist_core` under its budget, is
scored by its best validation epoch, and is tracked in MLflow as a child run of the sweep.

Trial states map to MLflow statuses: COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED.
A trial starts only when the cost model predicts that the epochs the study needs of it
(`StudySpec.epochs_needed`) fit the time it has. One that cannot fit its own per-trial budget is PRUNED
before training, so the sampler learns it is too slow; one that only lacks the sweep's time left is
FAIL `skipped: sweep time`, which the samplers ignore: being late says nothing about it. Neither has an
MLflow run. A trial stopped at its deadline or projected to miss its needed epochs is PRUNED, with its
finished epochs kept. Only a trial with a full epoch counts towards `--trials`.
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from mnist_core.data import Splits
from mnist_core.model import param_count
from mnist_core.trainer import Budget, EpochStats, TrainConfig, train, warm_up
from sweep import costmodel, dominance
from sweep.hypermodel import StudySpec
from sweep.oracle import count_busy, count_finished, release
from sweep.points import CURVE_ATTR, curve_of, front, trained, trial_points
from sweep.processes import as_interrupt, check_stop
from sweep.record import FINISHED, SWEEP_TIME_SKIP, skipped_for_sweep_time
from sweep.report import progress, write_report
from sweep.tracking import PARENT_ATTR, Tracker, config_params, manifest, summary_metrics
from sweep.workers import Heartbeat, own, recover

# Wall clock of sweep deadlines: absolute, so a recycled process keeps its sweep's; a module attribute so
# tests can replace it with a fake one (with `mnist_core.trainer.clock`).
clock = time.time
# Stop a sweep whose last trials all failed: something is wrong beyond one configuration.
MAX_CONSECUTIVE_FAILURES = 5
# Stop asking when this many trials in a row could not fit their budget (skipped before training).
MAX_CONSECUTIVE_SKIPS = 10
# How often a worker with no free slot looks again (another worker's trial may fail and free one).
POLL_SECONDS = 2.0
# The trade-off chart and CSV are refreshed at most this often while trials finish (each costs a plot), and at the end.
CHART_SECONDS = 30.0
# How long a worker that opened a new study's parent MLflow run waits to see if another one did too.
PARENT_SETTLE_SECONDS = 0.5
# A run tag: the trial was cut inside its first epoch, so it has no point and does not count as trained.
CUT_TAG = "cut_before_first_epoch"
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


@dataclass
class SweepContext:
    """What every trial of one sweep process shares."""

    spec: StudySpec
    splits: Splits
    tracker: Tracker
    parent_run_id: str
    deadline: float | None  # clock() after which no trial may run; None: no sweep budget
    report_dir: Path  # where the trade-off chart and CSV are refreshed as trials finish


def quickest_epoch(study: optuna.Study) -> float | None:
    """The shortest complete first epoch (warm-up included) of any trial so far: no trial scores in less."""
    seconds = [curve[0][0] for t in study.get_trials(deepcopy=False, states=FINISHED) if (curve := curve_of(t))]
    return min(seconds) if seconds else None


@dataclass(frozen=True)
class Outcome:
    """How a trial ended: its state, why, what it measured, and its objective values when COMPLETE."""

    state: TrialState
    reason: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    values: list[float] | None = None


def run_trial(study: optuna.Study, ctx: SweepContext, trial: optuna.Trial) -> FrozenTrial:
    """Run one asked trial: the one place that decides how it ends, closes its MLflow run and tells Optuna.

    As in Optuna's `_run_trial`, every exception becomes a trial state. A trial that cannot fit its budget
    is PRUNED before training (no MLflow run; it does not count towards `--trials`). Failures inside
    training (NaN loss, out of memory) end it FAIL and the sweep goes on; Ctrl-C, SIGTERM and errors of
    the store end it FAIL too, and are raised again once it is closed.
    """
    error: BaseException | None = None
    run_id = None
    try:
        seed = ctx.spec.seed + trial.number
        own(trial)
        trial.set_user_attr("seed", seed)
        config = ctx.spec.config_for(trial, seed)
        trial.set_user_attr("batch_size", config.batch_size)  # what the cost model needs, searched or fixed
        trial.set_user_attr("epochs", config.epochs)
        seconds = _seconds_left(ctx)
        outcome = _skip(ctx, trial, config, seconds)
        if outcome is None:
            # The run id is kept the moment the run exists, so an interrupt while it is described still closes it.
            run_id = ctx.tracker.start_run(f"trial-{trial.number}", ctx.parent_run_id,
                                           {"optuna.trial_number": str(trial.number), "optuna.study": trial.study.study_name})
            _describe_run(ctx, trial, config, run_id)
            outcome = _train(ctx, trial, config, seconds, run_id)
    except BaseException as exc:  # Ctrl-C, SIGTERM, a tracking or storage error
        error = as_interrupt(exc)
        outcome = Outcome(TrialState.FAIL, "interrupted" if isinstance(error, KeyboardInterrupt) else _reason(error))
    try:
        _close(ctx, trial, run_id, outcome)
    except BaseException as exc:
        error = error or exc
        outcome = Outcome(TrialState.FAIL, _reason(exc))
    frozen = study.tell(trial, outcome.values, state=outcome.state)
    if error is not None:
        raise error
    return frozen


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _seconds_left(ctx: SweepContext) -> float:
    """What a trial starting now may take: its own budget, or the sweep's time left if shorter."""
    return ctx.spec.trial_seconds if ctx.deadline is None else min(ctx.spec.trial_seconds, ctx.deadline - clock())


def _skip(ctx: SweepContext, trial: optuna.Trial, config: TrainConfig, left: float) -> Outcome | None:
    """Why the trial is not run, if its needed epochs cannot fit in `left` seconds: PRUNED when they exceed its own budget (the
    sampler learns the config is too slow), FAIL `skipped: sweep time` when only the sweep's time left is too
    short. Judged on the cost model's optimistic end once it has a measurement (the prior errs low anyway)."""
    n_params, examples = param_count(config.model), len(ctx.splits.train)
    needed = ctx.spec.epochs_needed(config.epochs)
    model = costmodel.fit(trial.study, examples)
    least = model.least(n_params, examples, config.batch_size, needed)
    trial.set_user_attr("predicted_seconds", model.predict(n_params, examples, config.batch_size, config.epochs))
    trial.set_user_attr("cost_model_trials", model.trials)  # 0: the nominal prior, not yet fitted
    trial.set_user_attr("min_epochs", needed)
    need = f"predicted at least {least:.0f} s for {needed} epoch(s) of {n_params:,} parameters at batch {config.batch_size}"
    if model.trials and least > ctx.spec.trial_seconds:
        return Outcome(TrialState.PRUNED, f"skipped: {need} > trial budget {ctx.spec.trial_seconds:g} s", {"param_count": n_params})
    if left <= 0 or (model.trials and least > left):
        return Outcome(TrialState.FAIL, f"{SWEEP_TIME_SKIP}: {need} > {max(left, 0):.0f} s left", {"param_count": n_params})
    return None


def _describe_run(ctx: SweepContext, trial: optuna.Trial, config: TrainConfig, run_id: str) -> None:
    """The trial's MLflow child run gets its params, dataset and manifest."""
    trial.set_user_attr("mlflow_run_id", run_id)
    ctx.tracker.log_params(run_id, config_params(config))
    ctx.tracker.log_dataset(run_id, ctx.splits)
    splits, spec = ctx.splits, ctx.spec
    ctx.tracker.log_dict(
        run_id,
        manifest(config.seed, splits.source, splits.checksum, study_file=str(spec.path), trial_number=trial.number),
        "manifest.json",
    )


def _train(ctx: SweepContext, trial: optuna.Trial, config: TrainConfig, seconds: float, run_id: str) -> Outcome:
    """Train within `seconds`, logging each epoch, keeping its point, and pruning: Optuna's pruner on a
    single objective, dominance on accuracy against time."""
    spec = ctx.spec
    curve: list[list[float]] = []
    elapsed = 0.0

    def on_epoch(stats: EpochStats) -> str | None:
        nonlocal elapsed
        check_stop()
        ctx.tracker.log_epoch(run_id, stats)
        elapsed += stats.seconds
        if not stats.partial:
            curve.append([elapsed, stats.val_accuracy])
            trial.set_user_attr(CURVE_ATTR, curve)
        if spec.pruner == "dominance":
            if stats.partial:
                return None
            # Read afresh each epoch: other workers finish trials meanwhile, and each one sharpens the front.
            finished = trial.study.get_trials(deepcopy=False, states=FINISHED)
            points = [(p.seconds, p.val_accuracy) for t in finished for p in trial_points(t)]
            return dominance.dominated(curve, config.epochs, [curve_of(t) for t in finished], front(points))
        if spec.multi_objective or spec.objectives[0] == "train_seconds":
            return None
        trial.report(getattr(stats, spec.objectives[0]), stats.epoch)
        return f"pruned by {spec.pruner} pruner at epoch {stats.epoch}" if trial.should_prune() else None

    try:
        with Heartbeat(trial):
            result = train(config, ctx.splits, Budget(seconds, spec.epochs_needed(config.epochs)), on_epoch=on_epoch)
    except Exception as exc:  # out of memory and other failures inside one trial, unless a signal caused it
        if isinstance(interrupt := as_interrupt(exc), KeyboardInterrupt):
            raise interrupt
        return Outcome(TrialState.FAIL, _reason(exc), {"param_count": param_count(config.model)})
    trial.set_user_attr("jit_compile", result.config.model.jit_compile)  # as decided for this run: `best` repeats it
    trial.set_user_attr("step_seconds", result.step_seconds)  # the cost model learns from a run cut in its first epoch too
    state = {"completed": TrialState.COMPLETE, "stopped": TrialState.PRUNED, "failed": TrialState.FAIL}[result.outcome]
    cut = state == TrialState.PRUNED and not curve
    ctx.tracker.set_tags(run_id, {"jit_compile": result.config.model.jit_compile, CUT_TAG: cut})
    metrics = summary_metrics(result)
    values = [metrics[m] for m in spec.objective_metrics] if state == TrialState.COMPLETE else None
    return Outcome(state, result.reason, metrics, values)


def _close(ctx: SweepContext, trial: optuna.Trial, run_id: str | None, outcome: Outcome) -> None:
    """Record the outcome on the trial, and end its MLflow run (if it has one) with the matching status."""
    for key, value in outcome.metrics.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("reason", outcome.reason)
    if run_id is None:
        return
    ctx.tracker.log_metrics(run_id, outcome.metrics)
    ctx.tracker.set_tags(run_id, {"optuna.state": outcome.state.name, "reason": outcome.reason or ""})
    ctx.tracker.end_run(run_id, RUN_STATUS[outcome.state])


def describe(trial: FrozenTrial) -> str:
    """One line per finished trial: number, state, score, seconds, params."""
    attrs = trial.user_attrs
    accuracy = attrs.get("best_val_accuracy")
    score = f"val_acc {accuracy:.4f}" if accuracy is not None else "val_acc   -   "
    seconds = attrs.get("train_seconds")
    took = f"{seconds:7.1f} s" if seconds is not None else "      - s"
    params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    reason = f"  ({attrs['reason']})" if attrs.get("reason") else ""
    uncounted = "  [not counted: no full epoch]" if trial.state == TrialState.PRUNED and not trained(trial) and "mlflow_run_id" in attrs else ""
    return f"trial {trial.number:4d} {trial.state.name:8s} {score} {took}  {params}{reason}{uncounted}"


def print_line(line: str) -> None:
    """One line above the progress bar, flushed: logs redirected to a file show each trial as it ends."""
    tqdm.write(line)
    sys.stdout.flush()


def _why_stop(study: optuna.Study, ctx: SweepContext, failures: int, skips: int, last_skip: str) -> str | None:
    """Why no further trial should be asked for, if there is a reason."""
    if failures >= MAX_CONSECUTIVE_FAILURES:
        return f"the last {failures} trials failed; see their reasons above"
    if skips >= MAX_CONSECUTIVE_SKIPS and last_skip.startswith(SWEEP_TIME_SKIP):
        return f"the last {skips} configurations proposed did not fit the sweep's time left (see above)"
    if skips >= MAX_CONSECUTIVE_SKIPS:
        return (f"the last {skips} configurations could not fit their budget (see above); "
                "raise budget.trial_seconds or --timeout, or narrow the search space")
    if ctx.deadline is None:
        return None
    left = ctx.deadline - clock()
    if left <= 0:
        return "the sweep budget is spent"
    quickest = quickest_epoch(study)
    if quickest is not None and left < quickest:
        return f"{left:.1f} s of the sweep budget left, less than the quickest first epoch so far ({quickest:.1f} s)"
    return _nothing_fits(study, ctx, left)


def _nothing_fits(study: optuna.Study, ctx: SweepContext, left: float) -> str | None:
    """Why not even the cheapest configuration of the search space fits `left` seconds, by the cost model's
    optimistic end (once it has a measurement), if it does not."""
    examples = len(ctx.splits.train)
    model = costmodel.fit(study, examples)
    cheapest = ctx.spec.cheapest_config()
    needed = ctx.spec.epochs_needed(cheapest.epochs)
    least = model.least(param_count(cheapest.model), examples, cheapest.batch_size, needed)
    if not model.trials or least <= left:
        return None
    shape = " x ".join(map(str, (cheapest.model.depth, cheapest.model.width)))
    return (f"nothing can fit: {left:.0f} s of the sweep budget left, and the cheapest configuration ({shape}, "
            f"{needed} epoch(s) at batch {cheapest.batch_size}) needs at least {least:.0f} s by the cost model")


@dataclass(frozen=True)
class Ended:
    """Why `run_trials` returned; `recycle`: it ran its share with work left, and a fresh process should go on."""

    reason: str
    recycle: bool = False


def run_trials(
    study: optuna.Study, ctx: SweepContext, trials: int, write: Callable[[str], None] = print_line, progress: bool = True,
    max_trials: int | None = None,
) -> Ended:
    """Run trials until `trials` have trained in the study (all workers together), or nothing more can.

    A trial starts only while trained + running trials fall short of `trials`, so parallel workers
    never overshoot; a worker with no free slot waits, since a running trial may still fail. Asking
    stops when the sweep budget left is shorter than any complete first epoch seen or than the cheapest
    configuration needs, or after MAX_CONSECUTIVE_SKIPS trials in a row did not run (or
    MAX_CONSECUTIVE_FAILURES failed). After `max_trials` of its own with work left, it returns asking to
    be recycled (TensorFlow keeps memory of every model it traced).
    """
    # A fresh process's first run pays one-off costs (thread pools, first kernels): paid here, untimed, so
    # every trial is timed warm, the first of each recycled process too, and as `best` times its retrain.
    warm_up(ctx.splits)
    # Everything alive now (modules, TensorFlow, MLflow, the data) lives as long as the sweep: keep it out
    # of the garbage collector's sight, so each trial's collection walks only what trials create
    # (bench/results/README.md). Collect first: frozen garbage stays.
    gc.collect()
    gc.freeze()
    failures = skips = ran = 0
    last_skip = ""
    ended = Ended(f"the study has its {trials} trained trials")
    charted = time.monotonic()
    unreported = False  # trials finished since the chart and CSV were last written
    with tqdm(total=trials, initial=count_finished(study), desc=study.study_name, unit="trial", dynamic_ncols=True, disable=not progress) as bar:
        while True:
            check_stop()
            recover(study, ctx.tracker, write)
            bar.n = count_finished(study)
            bar.refresh()
            if bar.n >= trials:
                break
            if max_trials is not None and ran >= max_trials:
                ended = Ended(f"this process ran its {max_trials} trials", recycle=True)
                break
            why = _why_stop(study, ctx, failures, skips, last_skip)
            if why:
                write(f"stopping: {why}")
                ended = Ended(why)
                break
            if count_busy(study) >= trials:
                time.sleep(POLL_SECONDS)
                continue
            trial = study.ask()
            if count_busy(study, before=trial.number) >= trials:  # another worker took the last slot first
                release(study, trial)
                time.sleep(POLL_SECONDS)
                continue
            frozen = run_trial(study, ctx, trial)
            ran += 1
            write(describe(frozen))
            skipped = not trained(frozen) and (frozen.state == TrialState.PRUNED or skipped_for_sweep_time(frozen))
            failures = failures + 1 if frozen.state == TrialState.FAIL and not skipped else 0
            skips = skips + 1 if skipped else 0
            last_skip = (frozen.user_attrs.get("reason") or "") if skipped else last_skip
            report_progress(study, ctx)
            unreported = True
            if time.monotonic() - charted >= CHART_SECONDS:
                write_report(study, ctx.report_dir / study.study_name, ctx.tracker)
                unreported, charted = False, time.monotonic()
    if unreported:  # the chart and CSV show every trial once the sweep ends
        write_report(study, ctx.report_dir / study.study_name, ctx.tracker)
    return ended


def parent_run(study: optuna.Study, tracker: Tracker, spec: StudySpec) -> str:
    """The study's parent MLflow run: created by its first sweep, reopened by later ones and other workers."""
    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        tracker.resume_run(run_id)
        return run_id
    mine = tracker.start_run(f"sweep-{study.study_name}", tags={"optuna.study": study.study_name})
    study.set_user_attr(PARENT_ATTR, mine)
    time.sleep(PARENT_SETTLE_SECONDS)  # workers starting together each wrote one: the last write holds for all
    run_id = study.user_attrs[PARENT_ATTR]
    if run_id != mine:
        tracker.client.delete_run(mine)
        return run_id
    tracker.log_params(
        run_id,
        {
            "study_file": spec.path,
            "objectives": ",".join(spec.objectives),
            "sampler": spec.sampler,
            "pruner": spec.pruner,
            "trial_seconds": spec.trial_seconds,
            "seed": spec.seed,
        },
    )
    tracker.log_artifact(run_id, spec.path)
    tracker.describe(run_id, [p.name for p in spec.params])
    return run_id


def report_progress(study: optuna.Study, ctx: SweepContext) -> None:
    """The parent run tells the story as trials finish: summary metrics stepped by trials finished."""
    step = len(study.get_trials(deepcopy=False, states=FINISHED))
    ctx.tracker.log_metrics(ctx.parent_run_id, progress(study, ctx.spec.trial_seconds), step=step)
