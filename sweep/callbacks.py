"""What a sweep shows as its trials finish, hung on the loop as Optuna hangs callbacks on `optimize`:
`callback(study, frozen_trial)` after each trial, and `callback.end(study)` once when the loop returns.
The console line, the parent run's metrics and the chart refresh are three of them; the loop knows none.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from mnist_core.trainer import Progress, ProgressHook
from sweep import report
from sweep.context import SweepContext
from sweep.points import Scale, hypervolume, most_accurate, pareto_mask, study_points
from sweep.record import FINISHED, TrialRecord, records
from sweep.storage import tally
from sweep.studyfile import StudySpec

# The trade-off chart and CSV are refreshed at most this often while trials finish (each costs a plot), and at the end.
CHART_SECONDS = 30.0
# Outside a terminal, trials predicted to train longer than this print a line per epoch (`--epoch-lines`).
EPOCH_LINES_AFTER = 30.0
# A terminal's live line is redrawn at most this often.
LIVE_SECONDS = 0.25


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


def epoch_line(number: int, progress: Progress) -> str:
    """Where a training trial stands: its epoch of its planned epochs, the latest validation accuracy, the time
    it has left by its projection."""
    score = f", val_acc {progress.val_accuracy:.4f}" if progress.val_accuracy is not None else ""
    left = f", {progress.seconds_left:.0f} s left" if progress.seconds_left is not None else ""
    return f"trial {number} epoch {progress.epoch}/{progress.epochs}{score}{left}"


class Watch:
    """A trial's progress while it trains. On a terminal: the progress bar's line (`epoch_line`), redrawn at
    most every LIVE_SECONDS. Elsewhere (a log file, CI, a worker): one line per epoch, for trials predicted
    to train longer than `epoch_lines_after` seconds, so short trials stay one line each."""

    def __init__(self, write: Callable[[str], None], bar: tqdm | None = None, epoch_lines_after: float = EPOCH_LINES_AFTER):
        self.write, self.bar, self.after = write, bar, epoch_lines_after
        self.drawn = -math.inf

    def trial(self, number: int, predicted: float) -> ProgressHook | None:
        """What trial `number`, predicted to take `predicted` seconds, tells of its progress (None: nothing)."""
        if self.bar is not None:
            return lambda progress: self._draw(number, progress)
        if predicted > self.after:
            return lambda progress: self.write(epoch_line(number, progress)) if progress.validated else None
        return None

    def _draw(self, number: int, progress: Progress) -> None:
        if time.monotonic() - self.drawn >= LIVE_SECONDS:
            self.bar.set_postfix_str(epoch_line(number, progress))
            self.drawn = time.monotonic()

    def done(self) -> None:
        """The trial ended: its line goes (its summary line follows)."""
        if self.bar is not None:
            self.bar.set_postfix_str("", refresh=False)


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


def description(study: optuna.Study, spec: StudySpec) -> str:
    """The parent run's description (Markdown, on its page in MLflow): the study, its objectives, how many
    trials trained, its best point and the front's fast end."""
    counts = tally(study)
    lines = [f"Study **{study.study_name}** ({spec.label}){': ' + spec.description if spec.description else ''}",
             f"Objectives: {', '.join(spec.objectives)}; per-trial budget {spec.trial_seconds:g} s.",
             f"Trials: {counts.trained} trained ({counts.complete} complete, {counts.pruned} pruned), "
             f"{counts.skipped} skipped, {counts.failed} failed."]
    points = study_points(study)
    if points:
        best = most_accurate(points)  # what `best` would retrain
        front = [p for p, on in zip(points, pareto_mask([p.val_accuracy for p in points], [p.seconds for p in points]), strict=True) if on]
        fastest = min(front, key=lambda p: p.seconds)
        lines += [f"Best point: validation accuracy {best.val_accuracy:.4f} after {best.seconds:.1f} s (trial {best.trial}, epoch {best.epoch}).",
                  f"The front's fast end: {fastest.val_accuracy:.4f} after {fastest.seconds:.2f} s (trial {fastest.trial}, "
                  f"epoch {fastest.epoch}); {len(front)} points on the front. Chart: `tradeoff.png` below."]
    return "\n\n".join(lines)


class ParentRunMetrics(Callback):
    """The parent run tells the story as trials finish: summary metrics stepped by trials finished."""

    def __init__(self, ctx: SweepContext):
        self.ctx = ctx

    def __call__(self, study, trial):
        step = len(study.get_trials(deepcopy=False, states=FINISHED))
        self.ctx.tracker.log_metrics(self.ctx.parent_run_id, progress(study, self.ctx.spec.trial_seconds, self.ctx.spec.scale), step=step)


class ChartRefresh(Callback):
    """The trade-off chart, CSVs and the parent run's description, refreshed at most every `seconds` as trials
    finish, and once at the end."""

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
            self.ctx.tracker.set_description(self.ctx.parent_run_id, description(study, self.ctx.spec))
            self.unreported, self.charted = False, time.monotonic()


def standard(ctx: SweepContext, write: Callable[[str], None] = print_line) -> list[Callback]:
    """The callbacks of every sweep: a console line per trial, the parent run's metrics, the chart."""
    return [ConsoleLine(write), ParentRunMetrics(ctx), ChartRefresh(ctx)]
