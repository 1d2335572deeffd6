"""The running side: each Optuna trial trains one MLP through `mnist_core` under its budget, is
scored by its best validation epoch, and is tracked in MLflow as a child run of the sweep.

Trial states map to MLflow statuses: COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED.
A trial stopped at its deadline or projected to overrun it is PRUNED, with its partial result kept.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from mnist_core.data import Splits
from mnist_core.model import param_count
from mnist_core.trainer import OVERRUN_FACTOR, Budget, EpochStats, TrainResult, train
from sweep.hypermodel import StudySpec
from sweep.oracle import FINISHED, Heartbeat, count_busy, count_finished, fail_stale, own, release, stale_reason
from sweep.tracking import PARENT_ATTR, Tracker, config_params, manifest

# Stop a sweep whose last trials all failed: something is wrong beyond one configuration.
MAX_CONSECUTIVE_FAILURES = 5
# How often a worker with no free slot looks again (another worker's trial may fail and free one).
POLL_SECONDS = 2.0
# How long a worker that opened a new study's parent MLflow run waits to see if another one did too.
PARENT_SETTLE_SECONDS = 0.5


# Set by Ctrl-C or SIGTERM. The KeyboardInterrupt raised with it can be swallowed when the signal lands
# in a finalizer ("Exception ignored in ..."), so trials check the flag too, at each epoch.
STOP = threading.Event()


def _stop(signum, frame) -> None:
    STOP.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM stop the sweep: the trial in progress is closed FAIL and its run FAILED."""
    STOP.clear()
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_stop() -> None:
    if STOP.is_set():
        raise KeyboardInterrupt


class TrialFailed(Exception):
    """A trial that ended without a usable result (NaN loss, out of memory...): FAIL, sweep goes on."""


@dataclass
class SweepContext:
    """What every trial of one sweep process shares."""

    spec: StudySpec
    splits: Splits
    tracker: Tracker
    parent_run_id: str
    deadline: float | None  # time.time() after which no trial may run; None: no sweep budget


def summary_metrics(result: TrainResult) -> dict[str, float | None]:
    """A trial's score (its best validation epoch) and costs: what the report and MLflow show."""
    best = result.best_epoch
    return {
        "best_val_accuracy": best.val_accuracy if best else None,
        "best_val_loss": best.val_loss if best else None,
        "best_epoch": best.epoch if best else None,
        "epochs_run": len(result.epochs),
        "train_seconds": result.seconds,
        "warmup_seconds": result.warmup_seconds,
        "seconds_per_epoch": result.seconds_per_epoch,
        "examples_per_second": result.examples_per_second,
        "param_count": result.param_count,
    }


def throughput(study: optuna.Study) -> float | None:
    """Fastest measured parameter-examples per second: an optimistic rate, so estimates err low."""
    rates = [
        t.user_attrs["param_count"] * t.user_attrs["examples_per_second"]
        for t in study.get_trials(deepcopy=False, states=FINISHED)
        if t.user_attrs.get("examples_per_second")
    ]
    return max(rates) if rates else None


def estimate_seconds(param_count: int, examples: int, epochs: int, rate: float | None) -> float | None:
    """Training time predicted from size and measured throughput, before building the model."""
    return param_count * examples * epochs / rate if rate else None


def objective(ctx: SweepContext, trial: optuna.Trial) -> float | list[float]:
    """Open the trial's MLflow run, train, and close the run with the status its trial ends in."""
    seed = ctx.spec.seed + trial.number
    own(trial)
    trial.set_user_attr("seed", seed)
    run_id = ctx.tracker.start_run(
        f"trial-{trial.number}", ctx.parent_run_id, {"optuna.trial_number": str(trial.number), "optuna.study": trial.study.study_name}
    )
    trial.set_user_attr("mlflow_run_id", run_id)
    closed = False

    def close(state: TrialState, reason: str | None, metrics: dict[str, float | None]) -> None:
        nonlocal closed
        closed = True
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("reason", reason)
        ctx.tracker.log_metrics(run_id, metrics)
        ctx.tracker.set_tags(run_id, {"optuna.state": state.name, "reason": reason or ""})
        status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}.get(state, "FAILED")
        ctx.tracker.end_run(run_id, status)

    try:
        return _fit(ctx, trial, seed, run_id, close)
    except BaseException as exc:  # Ctrl-C, SIGTERM, a tracking error: never leave the MLflow run RUNNING
        if not closed:
            close(TrialState.FAIL, "interrupted" if isinstance(exc, KeyboardInterrupt) else _reason(exc), {})
        raise


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _fit(ctx: SweepContext, trial: optuna.Trial, seed: int, run_id: str, close: Callable) -> float | list[float]:
    """Train the trial's config within its budget; close its run as COMPLETE, PRUNED or FAIL."""
    spec = ctx.spec
    config = spec.config_for(trial, seed)
    ctx.tracker.log_params(run_id, config_params(config))
    ctx.tracker.log_dict(
        run_id,
        manifest(seed, ctx.splits.source, ctx.splits.checksum, study_file=str(spec.path), trial_number=trial.number),
        "manifest.json",
    )
    seconds = spec.trial_seconds
    if ctx.deadline is not None:
        seconds = min(seconds, ctx.deadline - time.time())
    n_params = param_count(config.model)
    estimate = estimate_seconds(n_params, len(ctx.splits.train), config.epochs, throughput(trial.study))
    if seconds <= 0 or (estimate is not None and estimate > OVERRUN_FACTOR * seconds):
        reason = (
            "sweep budget spent"
            if seconds <= 0
            else f"over_budget: estimated {estimate:.0f} s from {n_params:,} parameters > budget {seconds:.0f} s"
        )
        close(TrialState.PRUNED, reason, {"param_count": n_params})
        raise optuna.TrialPruned(reason)

    def on_epoch(stats: EpochStats) -> str | None:
        check_stop()
        ctx.tracker.log_epoch(run_id, stats)
        if spec.multi_objective or spec.objectives[0] == "train_seconds":
            return None
        trial.report(getattr(stats, spec.objectives[0]), stats.epoch)
        return f"pruned by {spec.pruner} pruner at epoch {stats.epoch}" if trial.should_prune() else None

    try:
        with Heartbeat(trial):
            result = train(config, ctx.splits, Budget(seconds), on_epoch=on_epoch)
    except Exception as exc:  # out of memory and other failures inside one trial
        reason = _reason(exc)
        close(TrialState.FAIL, reason, {"param_count": n_params})
        raise TrialFailed(reason) from exc

    metrics = summary_metrics(result)
    if result.outcome == "failed":
        close(TrialState.FAIL, result.reason, metrics)
        raise TrialFailed(result.reason)
    if result.outcome == "stopped":
        close(TrialState.PRUNED, result.reason, metrics)
        raise optuna.TrialPruned(result.reason)
    close(TrialState.COMPLETE, None, metrics)
    values = [metrics[m] for m in spec.objective_metrics]
    return values if spec.multi_objective else values[0]


def describe(trial: FrozenTrial) -> str:
    """One line per finished trial: number, state, score, seconds, params."""
    attrs = trial.user_attrs
    accuracy = attrs.get("best_val_accuracy")
    score = f"val_acc {accuracy:.4f}" if accuracy is not None else "val_acc   -   "
    seconds = attrs.get("train_seconds")
    took = f"{seconds:7.1f} s" if seconds is not None else "      - s"
    params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    reason = f"  ({attrs['reason']})" if attrs.get("reason") else ""
    return f"trial {trial.number:4d} {trial.state.name:8s} {score} {took}  {params}{reason}"


def print_line(line: str) -> None:
    """One line above the progress bar, flushed: logs redirected to a file show each trial as it ends."""
    tqdm.write(line)
    sys.stdout.flush()


def recover(study: optuna.Study, tracker: Tracker, write: Callable[[str], None]) -> None:
    """Close the trials of workers that died (kill -9, out of memory, a lost machine); each config is retried once."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(trial)
        if reason is None or not fail_stale(study, trial, reason):
            continue
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            tracker.set_tags(run_id, {"optuna.state": TrialState.FAIL.name, "reason": reason})
            tracker.end_run(run_id, "FAILED")
        retried = "its configuration is queued again" if trial.params and "retry_of" not in trial.user_attrs else "not retried again"
        write(f"trial {trial.number:4d} FAIL     ({reason}; {retried})")


def run_one(study: optuna.Study, ctx: SweepContext, trial: optuna.Trial) -> FrozenTrial:
    """Train one asked trial and tell Optuna how it ended; Ctrl-C and SIGTERM leave it FAIL, never RUNNING."""
    try:
        value = objective(ctx, trial)
    except optuna.TrialPruned:
        return study.tell(trial, state=TrialState.PRUNED)
    except TrialFailed:
        return study.tell(trial, state=TrialState.FAIL)
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    return study.tell(trial, value)


def run_trials(
    study: optuna.Study, ctx: SweepContext, trials: int, write: Callable[[str], None] = print_line, progress: bool = True
) -> int:
    """Run trials until exactly `trials` have finished in the study (all workers together) or time is up.

    A trial starts only while finished + running trials fall short of `trials`, so parallel workers
    never overshoot; a worker with no free slot waits, since a running trial may still fail.
    """
    # Everything alive now (modules, TensorFlow, MLflow, the data) lives as long as the sweep: keep it out
    # of the garbage collector's sight, so each trial's collection walks only what trials create
    # (0.6 s -> a few ms a trial here; bench/results/README.md). Collect first: frozen garbage stays.
    gc.collect()
    gc.freeze()
    failures = 0
    with tqdm(total=trials, initial=count_finished(study), desc=study.study_name, unit="trial", dynamic_ncols=True, disable=not progress) as bar:
        while True:
            check_stop()
            recover(study, ctx.tracker, write)
            bar.n = count_finished(study)
            bar.refresh()
            if bar.n >= trials or (ctx.deadline is not None and time.time() >= ctx.deadline):
                break
            if failures >= MAX_CONSECUTIVE_FAILURES:
                write(f"stopping: the last {failures} trials failed; see their reasons above")
                break
            if count_busy(study) >= trials:
                time.sleep(POLL_SECONDS)
                continue
            trial = study.ask()
            if count_busy(study, before=trial.number) >= trials:  # another worker took the last slot first
                release(study, trial)
                time.sleep(POLL_SECONDS)
                continue
            frozen = run_one(study, ctx, trial)
            write(describe(frozen))
            failures = failures + 1 if frozen.state == TrialState.FAIL else 0
    return count_finished(study)


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
    return run_id
