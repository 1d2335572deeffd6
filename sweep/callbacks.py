"""What a sweep shows as its trials finish, hung on the loop as Optuna hangs callbacks on `optimize`:
`callback(study, frozen_trial)` after each trial, and `callback.end(study)` once when the loop returns.
The console line, the parent run's metrics and the chart refresh are three of them; the loop knows none.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from sweep import report
from sweep.context import SweepContext
from sweep.points import Scale, hypervolume, pareto_mask, study_points
from sweep.record import FINISHED, TrialRecord, records
from sweep.storage import tally

# The trade-off chart and CSV are refreshed at most this often while trials finish (each costs a plot), and at the end.
CHART_SECONDS = 30.0


class Callback:
    """Told of each trial the loop ran, then of the loop's end."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        raise NotImplementedError

    def end(self, study: optuna.Study) -> None:
        pass


def print_line(line: str) -> None:
    """One line above the progress bar, flushed: logs redirected to a file show each trial as it ends."""
    tqdm.write(line)
    sys.stdout.flush()


def describe(trial: FrozenTrial) -> str:
    """One line per finished trial: number, state, score, seconds, params, and why it ended so."""
    rec = TrialRecord.load(trial)
    score = f"val_acc {rec.best_val_accuracy:.4f}" if rec.best_val_accuracy is not None else "val_acc   -   "
    took = f"{rec.train_seconds:7.1f} s" if rec.train_seconds is not None else "      - s"
    params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    reason = f"  ({rec.reason})" if rec.reason else ""
    uncounted = "  [not counted: no full epoch]" if rec.state == TrialState.PRUNED and not rec.trained and rec.mlflow_run_id else ""
    return f"trial {trial.number:4d} {trial.state.name:8s} {score} {took}  {params}{reason}{uncounted}"


class ConsoleLine(Callback):
    def __init__(self, write: Callable[[str], None] = print_line):
        self.write = write

    def __call__(self, study, trial):
        self.write(describe(trial))


def progress(study: optuna.Study, max_seconds: float, scale: Scale) -> dict[str, float | None]:
    """How a study stands: best score so far, trials by outcome, the accuracy-vs-time front (its hypervolume on
    the study's front scale, within the per-trial budget `max_seconds`) and its cost."""
    points = study_points(study)  # every epoch of every finished trial
    accuracy = np.array([p.val_accuracy for p in points])
    seconds = np.array([p.seconds for p in points])
    counts = tally(study)  # as the sweep's final line counts them
    return {
        "best_val_accuracy": float(accuracy.max()) if len(points) else None,
        "trials_complete": counts.complete,
        "trials_pruned": counts.pruned,
        "trials_skipped": counts.skipped,
        "trials_failed": counts.failed,
        "front_size": int(pareto_mask(accuracy, seconds).sum()),
        "hypervolume": hypervolume(accuracy, seconds, max_seconds, scale),
        "total_train_seconds": sum(r.train_seconds or 0.0 for r in records(study)),
    }


class ParentRunMetrics(Callback):
    """The parent run tells the story as trials finish: summary metrics stepped by trials finished."""

    def __init__(self, ctx: SweepContext):
        self.ctx = ctx

    def __call__(self, study, trial):
        step = len(study.get_trials(deepcopy=False, states=FINISHED))
        self.ctx.tracker.log_metrics(self.ctx.parent_run_id, progress(study, self.ctx.spec.trial_seconds, self.ctx.spec.scale), step=step)


class ChartRefresh(Callback):
    """The trade-off chart and CSVs, refreshed at most every `seconds` as trials finish, and once at the end."""

    def __init__(self, ctx: SweepContext, seconds: float = CHART_SECONDS):
        self.ctx, self.seconds = ctx, seconds
        self.charted = time.monotonic()
        self.unreported = False  # trials finished since the chart and CSV were last written

    def __call__(self, study, trial):
        self.unreported = True
        if time.monotonic() - self.charted >= self.seconds:
            self.end(study)

    def end(self, study):
        if self.unreported:
            report.write_report(study, self.ctx.report_dir / study.study_name, self.ctx.tracker, self.ctx.spec.scale)
            self.unreported, self.charted = False, time.monotonic()


def standard(ctx: SweepContext, write: Callable[[str], None] = print_line) -> list[Callback]:
    """The callbacks of every sweep: a console line per trial, the parent run's metrics, the chart."""
    return [ConsoleLine(write), ParentRunMetrics(ctx), ChartRefresh(ctx)]
