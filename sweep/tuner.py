"""The running side: each Optuna trial trains one MLP through `mnist_core` under its budget, is
scored by its best validation epoch, and is tracked in MLflow as a child run of the sweep.

Trial states map to MLflow statuses: COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED.
A trial stopped at its deadline or projected to overrun it is PRUNED, with its partial result kept.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from mnist_core.data import Splits
from mnist_core.model import param_count
from mnist_core.trainer import OVERRUN_FACTOR, Budget, EpochStats, TrainResult, train
from sweep.hypermodel import StudySpec
from sweep.oracle import FINISHED, count_finished
from sweep.tracking import PARENT_ATTR, Tracker, config_params, manifest

# Stop a sweep whose last trials all failed: something is wrong beyond one configuration.
MAX_CONSECUTIVE_FAILURES = 5


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
    spec = ctx.spec
    seed = spec.seed + trial.number
    config = spec.config_for(trial, seed)
    trial.set_user_attr("seed", seed)
    run_id = ctx.tracker.start_run(
        f"trial-{trial.number}", ctx.parent_run_id, {"optuna.trial_number": str(trial.number), "optuna.study": trial.study.study_name}
    )
    trial.set_user_attr("mlflow_run_id", run_id)
    ctx.tracker.log_params(run_id, config_params(config))
    ctx.tracker.log_dict(
        run_id,
        manifest(seed, ctx.splits.source, ctx.splits.checksum, study_file=str(spec.path), trial_number=trial.number),
        "manifest.json",
    )

    def close(state: TrialState, reason: str | None, metrics: dict[str, float | None]) -> None:
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("reason", reason)
        ctx.tracker.log_metrics(run_id, metrics)
        ctx.tracker.set_tags(run_id, {"optuna.state": state.name, "reason": reason or ""})
        status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}.get(state, "FAILED")
        ctx.tracker.end_run(run_id, status)

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
        ctx.tracker.log_epoch(run_id, stats)
        if spec.multi_objective or spec.objectives[0] == "train_seconds":
            return None
        trial.report(getattr(stats, spec.objectives[0]), stats.epoch)
        return f"pruned by {spec.pruner} pruner at epoch {stats.epoch}" if trial.should_prune() else None

    try:
        result = train(config, ctx.splits, Budget(seconds), on_epoch=on_epoch)
    except Exception as exc:  # out of memory and other failures inside one trial
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        close(TrialState.FAIL, reason, {"param_count": n_params})
        raise TrialFailed(reason) from exc
    except BaseException:  # Ctrl-C, SIGTERM: never leave the MLflow run RUNNING
        close(TrialState.FAIL, "interrupted", {"param_count": n_params})
        raise

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


def run_trials(
    study: optuna.Study, ctx: SweepContext, trials: int, write: Callable[[str], None] = print_line, progress: bool = True
) -> int:
    """Run trials until `trials` have finished in the study (all workers together) or time is up."""
    done = count_finished(study)
    if done >= trials:
        return done
    failures = 0
    with tqdm(total=trials, initial=done, desc=study.study_name, unit="trial", dynamic_ncols=True, disable=not progress) as bar:

        def report(study: optuna.Study, trial: FrozenTrial) -> None:
            nonlocal failures
            write(describe(trial))
            bar.n = count_finished(study)
            bar.refresh()
            failures = failures + 1 if trial.state == TrialState.FAIL else 0
            if failures >= MAX_CONSECUTIVE_FAILURES:
                write(f"stopping: the last {failures} trials failed; see their reasons above")
                study.stop()

        timeout = None if ctx.deadline is None else max(ctx.deadline - time.time(), 0)
        study.optimize(
            lambda trial: objective(ctx, trial),
            timeout=timeout,
            catch=(TrialFailed,),
            callbacks=[MaxTrialsCallback(trials, states=FINISHED), report],
            gc_after_trial=True,
        )
    return count_finished(study)


def parent_run(study: optuna.Study, tracker: Tracker, spec: StudySpec) -> str:
    """The study's parent MLflow run: created on the first sweep, reopened when it resumes."""
    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        tracker.resume_run(run_id)
        return run_id
    run_id = tracker.start_run(f"sweep-{study.study_name}", tags={"optuna.study": study.study_name})
    study.set_user_attr(PARENT_ATTR, run_id)
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

