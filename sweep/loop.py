"""The sweep loop: asking for trials, slots of `--trials`, the rules that stop asking, and process recycling,
in one place. What the sweep shows as trials finish hangs on it as callbacks (`sweep/callbacks.py`).

A trial starts only while trained + running trials fall short of `--trials`, so parallel workers never
overshoot; a worker with no free slot waits, since a running trial may still fail. TensorFlow keeps a few
MiB of every model it traced, so a process makes way for a fresh one after `--recycle-every` trials
(bench/results/memory.md): the single process replaces its own image, a worker exits and is replaced.
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from mnist_core import machine
from mnist_core.trainer import warm_up
from sweep import callbacks as shown
from sweep import context, costmodel, storage, workers
from sweep.context import Options, SweepContext
from sweep.processes import check_stop, interruptible, restart
from sweep.record import FINISHED, SWEEP_TIME_SKIP, TrialRecord, records
from sweep.trial import TakenOver, pruning_for, run_trial

# Stop a sweep whose last trials all failed: something is wrong beyond one configuration.
MAX_CONSECUTIVE_FAILURES = 5
# Stop asking when this many trials in a row did not run (no fit) or were cut inside their first epoch.
MAX_CONSECUTIVE_SKIPS = 10
# How often a worker with no free slot looks again (another worker's trial may fail and free one).
POLL_SECONDS = 2.0
# TensorFlow keeps a few MiB of every model it traced: a sweep process makes way for a fresh one after this
# many trials (`--recycle-every`), so its memory stays flat (bench/results/memory.md).
RECYCLE_EVERY = 25
# Set by a sweep for the fresh process that replaces it: the sweep's deadline (context.clock(); 0: none).
DEADLINE_ENV = "SWEEP_DEADLINE"


def quickest_epoch(study: optuna.Study) -> float | None:
    """The shortest complete first epoch (warm-up included) of any trial so far: no trial scores in less."""
    seconds = [r.curve[0][0] for r in records(study, FINISHED) if r.curve]
    return min(seconds) if seconds else None


@dataclass
class Streaks:
    """The last trials in a row that failed, or that did not run (or were cut in their first epoch)."""

    failures: int = 0
    skips: int = 0
    last_skip: str = ""

    def update(self, trial: FrozenTrial) -> None:
        rec = TrialRecord.load(trial)
        self.failures = self.failures + 1 if rec.state == TrialState.FAIL and not rec.skipped else 0
        self.skips = self.skips + 1 if rec.skipped else 0
        self.last_skip = (rec.reason or "") if rec.skipped else self.last_skip

    def why(self) -> str | None:
        if self.failures >= MAX_CONSECUTIVE_FAILURES:
            return f"the last {self.failures} trials failed; see their reasons above"
        if self.skips >= MAX_CONSECUTIVE_SKIPS and self.last_skip.startswith(SWEEP_TIME_SKIP):
            return f"the last {self.skips} configurations proposed did not fit the sweep's time left (see above)"
        if self.skips >= MAX_CONSECUTIVE_SKIPS:
            return (f"the last {self.skips} configurations could not fit their budget (see above); "
                    "raise budget.trial_seconds or --timeout, or narrow the search space")
        return None


def why_stop(ctx: SweepContext, streaks: Streaks) -> str | None:
    """Why no further trial should be asked for, if there is a reason."""
    why, left = streaks.why(), ctx.seconds_left()
    if why or left is None:
        return why
    if left <= 0:
        return "the sweep budget is spent"
    quickest = quickest_epoch(ctx.study)
    if quickest is not None and left < quickest:
        return f"{left:.1f} s of the sweep budget left, less than the quickest first epoch so far ({quickest:.1f} s)"
    return _nothing_fits(ctx, left)


def _nothing_fits(ctx: SweepContext, left: float) -> str | None:
    """Why not even the cheapest configuration of the search space fits `left` seconds, by the cost model's
    optimistic end (once it has a measurement), if it does not."""
    examples = len(ctx.splits.train)
    model = costmodel.fit(ctx.study, examples)
    cheapest = ctx.spec.cheapest_config()
    needed = ctx.spec.epochs_needed(cheapest.epochs)
    least = model.least(cheapest, examples, needed)
    if not model.trials or least <= left:
        return None
    return (f"nothing can fit: {left:.1f} s of the sweep budget left, and the cheapest configuration "
            f"({cheapest.model.depth} x {cheapest.model.width}, {needed} epoch(s) at batch {cheapest.batch_size}) "
            f"needs at least {least:.1f} s by the cost model")


@dataclass(frozen=True)
class Ended:
    """Why `run_trials` returned; `recycle`: it ran its share with work left, and a fresh process should go on."""

    reason: str
    recycle: bool = False


def _ask(ctx: SweepContext, trials: int) -> optuna.Trial | None:
    """A new trial if a slot of `trials` is free, else None (after waiting a little for one)."""
    if storage.count_busy(ctx.study) < trials:
        trial = ctx.study.ask()
        if storage.count_busy(ctx.study, before=trial.number) < trials:
            return trial
        storage.release(ctx.study, trial)  # another worker took the last slot first
    time.sleep(POLL_SECONDS)
    return None


def run_trials(ctx: SweepContext, trials: int, hooks: Sequence[shown.Callback], write: Callable[[str], None] = shown.print_line,
               progress: bool = True, max_trials: int | None = None, epoch_lines_after: float = shown.EPOCH_LINES_AFTER) -> Ended:
    """Run trials until `trials` have trained in the study (all workers together), or nothing more can, or
    this process has run `max_trials` of its own (then it asks to be recycled). With `progress`, a bar counts
    the trials, and on a terminal its line follows the training trial's epochs; otherwise trials predicted
    longer than `epoch_lines_after` seconds `write` a line per epoch."""
    # A fresh process's first run pays one-off costs (thread pools, first kernels): paid here, untimed, so
    # every trial is timed warm, the first of each recycled process too, and as `best` times its retrain.
    warm_up(ctx.splits)
    # Everything alive now (modules, TensorFlow, MLflow, the data) lives as long as the sweep: keep it out
    # of the garbage collector's sight, so each trial's collection walks only what trials create
    # (bench/results/README.md). Collect first: frozen garbage stays.
    gc.collect()
    gc.freeze()
    study, pruning, streaks, ran = ctx.study, pruning_for(ctx.spec), Streaks(), 0
    ended = Ended(f"the study has its {trials} trained trials")
    with tqdm(total=trials, initial=storage.count_finished(study), desc=study.study_name, unit="trial",
              dynamic_ncols=True, disable=not progress) as bar:
        watch = shown.Watch(write, bar if progress and sys.stderr.isatty() else None, epoch_lines_after)
        while True:
            check_stop()
            workers.recover(study, ctx.tracker, write)
            bar.n = storage.count_finished(study)
            bar.refresh()
            if bar.n >= trials:
                break
            if max_trials is not None and ran >= max_trials:
                ended = Ended(f"this process ran its {max_trials} trials", recycle=True)
                break
            if why := why_stop(ctx, streaks):
                write(f"stopping: {why}")
                ended = Ended(why)
                break
            if (trial := _ask(ctx, trials)) is None:
                continue
            try:
                frozen = run_trial(ctx, trial, pruning, watch)
            except TakenOver as late:
                watch.done()
                write(str(late))
                continue
            watch.done()
            ran += 1
            streaks.update(frozen)
            for hook in hooks:
                hook(study, frozen)
    for hook in hooks:
        hook.end(study)
    return ended


def worker(options: Options, trials: int, deadline: float | None, recycle_every: int, count: int, threads: int | None,
           epoch_lines_after: float, number: int) -> bool:
    """Worker `number` of `count` processes, on its share of the cores (`threads` each, if given): run trials
    until enough (True: it ran `recycle_every` of them with work left, and the supervisor starts a fresh one)."""
    machine.pin(machine.share(number, count, threads), threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a spawned process starts with Optuna's defaults
    ctx = SweepContext.open(options, deadline)
    write = lambda line: print(f"[worker {number}] {line}", flush=True)  # noqa: E731
    return run_trials(ctx, trials, shown.standard(ctx, write), write, progress=False, max_trials=recycle_every or None,
                      epoch_lines_after=epoch_lines_after).recycle


def run_sweep(options: Options, trials: int | None, timeout: float | None, processes: int, recycle_every: int,
              restartable: bool, threads: int | None = None, epoch_lines_after: float = shown.EPOCH_LINES_AFTER) -> int:
    """`sweep run`: open the study and run it to `trials` trained trials, in this process or in `processes`
    workers (each on its share of the cores, or `threads` of them); its last line counts the study's trials
    and says why it stopped."""
    if processes == 1 and threads:
        machine.pin(machine.share(0, 1, threads), threads)
    with interruptible():
        ctx = SweepContext.open(options, None)
        trials = trials or ctx.spec.trials
        timeout = timeout or ctx.spec.sweep_seconds
        ctx.deadline = context.clock() + timeout if timeout else None
        if DEADLINE_ENV in os.environ:  # this process is a recycled one: the sweep's deadline stands
            ctx.deadline = float(os.environ.pop(DEADLINE_ENV)) or None
        if recounted := storage.recount(ctx.study):
            print(recounted, flush=True)
        print(f"study {ctx.study.study_name!r}: {storage.count_finished(ctx.study)}/{trials} trials trained, per-trial budget "
              f"{ctx.spec.trial_seconds:g} s" + (f", sweep budget {timeout:g} s" if timeout else ""), flush=True)
        status = "FAILED"
        try:
            why = _in_processes(options, ctx, trials, processes, recycle_every, restartable, threads, epoch_lines_after)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            print(f"interrupted: run the same command again to resume study {ctx.study.study_name!r}", file=sys.stderr)
            raise
        finally:
            ctx.tracker.end_run(ctx.parent_run_id, status)
    print(f"{storage.tally(ctx.study).line(trials)}; stopped: {why}. See `python -m sweep report` and `python -m sweep ui`.")
    return 0


def _in_processes(options: Options, ctx: SweepContext, trials: int, processes: int, recycle_every: int, restartable: bool,
                  threads: int | None, epoch_lines_after: float) -> str:
    """Run the trials in this process (replacing its image every `recycle_every` trials when `restartable`),
    or in `processes` supervised workers; why they stopped."""
    if processes == 1:
        while (ended := run_trials(ctx, trials, shown.standard(ctx), max_trials=recycle_every or None,
                                   epoch_lines_after=epoch_lines_after)).recycle:
            if restartable:  # the parent run stays RUNNING: the fresh process resumes it
                print(f"{recycle_every} trials run: starting a fresh process to release their memory", flush=True)
                restart({DEADLINE_ENV: repr(ctx.deadline or 0.0)})
        return ended.reason
    deadline = ctx.deadline
    workers.supervise(
        functools.partial(worker, options, trials, deadline, recycle_every, processes, threads, epoch_lines_after), processes,
        bound=trials,
        work_left=lambda: storage.count_finished(ctx.study) < trials and (deadline is None or context.clock() < deadline),
    )
    return f"the study has its {trials} trained trials" if storage.count_finished(ctx.study) >= trials else "see the workers' lines above"
