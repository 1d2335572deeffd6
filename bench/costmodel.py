"""The cost model on a real sweep: how well does it predict a trial's seconds, and is budget still wasted?

Runs the default study on real MNIST for `--minutes` on a fresh store, then compares each trial's
`predicted_seconds` (made before it ran, by `sweep/costmodel.py` fitted on the trials before it) with
its measured `train_seconds`. Only trials that completed count for the error (a stopped trial's time is
not the time it would have taken). A trial counts as *cut after half its budget* when it was stopped
at its deadline, or by the projection after more than half of its budget was spent.
Writes bench/results/costmodel.{json,md}.

Usage: python bench/costmodel.py --data-dir ../shared/datasets/mnist [--minutes 20]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, commit, parse_args, publish
from optuna.trial import TrialState

from sweep.record import TrialRecord
from sweep.studyfile import DEFAULT_STUDY, load_study
from sweep.testing.stores import load


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], minutes=20.0)
    command = f"python bench/costmodel.py --data-dir {args.data_dir} --minutes {args.minutes:g}"
    budget = load_study(DEFAULT_STUDY).trial_seconds
    with tempfile.TemporaryDirectory() as store:
        subprocess.run([sys.executable, "-m", "sweep", "run", "--trials", "1000", "--timeout", str(args.minutes * 60),
                        "--data-dir", args.data_dir, "--store", store], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        trials = load(Path(store), "tradeoff").trials
    rows, cut = [], []
    for t in trials:
        rec = TrialRecord.load(t)
        reason, spent = rec.reason or "", rec.train_seconds
        if reason.startswith("budget:") or (reason.startswith("over_budget") and spent and spent > budget / 2):
            cut.append({"trial": t.number, "reason": reason, "train_seconds": spent})
        if t.state == TrialState.COMPLETE and rec.predicted_seconds:
            error = 100 * (rec.predicted_seconds - spent) / spent
            rows.append({"trial": t.number, "params": t.params, "param_count": rec.param_count,
                         "fitted_on": rec.cost_model_trials or 0, "predicted_seconds": rec.predicted_seconds,
                         "train_seconds": spent, "error_pct": error})
    fitted = [r for r in rows if r["fitted_on"] >= 2]  # before that, the nominal prior predicts
    errors = [abs(r["error_pct"]) for r in fitted]
    result = {
        "command": command, "commit": commit(), "machine": f"{os.cpu_count()} CPU cores, TensorFlow backend, real MNIST",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "trial_budget_seconds": budget, "trials": len(trials),
        "completed_with_prediction": len(fitted),
        "median_abs_error_pct": statistics.median(errors) if errors else None,
        "worst_abs_error_pct": max(errors) if errors else None,
        "cut_after_half_budget": len(cut), "cut": cut,
        "skipped": sum((TrialRecord.load(t).reason or "").startswith("skipped") for t in trials),
        "predictions": rows,
    }
    lines = [
        "# The cost model on a real sweep", "",
        f"Command: `{command}` (commit {result['commit']})  ",
        f"Date: {result['date']}; machine: {result['machine']}; per-trial budget {budget:g} s.", "",
        f"{len(trials)} trials in {args.minutes:g} minutes; {result['skipped']} skipped before training as predicted not to fit.", "",
        "| completed trials predicted by the fitted model | median absolute error | worst absolute error | trials cut after half their budget |",
        "|---|---|---|---|",
        f"| {len(fitted)} | {result['median_abs_error_pct']:.1f}% | {result['worst_abs_error_pct']:.1f}% | {len(cut)} |"
        if errors else f"| 0 | - | - | {len(cut)} |",
        "", "| trial | params | fitted on | predicted s | measured s | error |", "|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = f"{r['params'].get('depth')} x {r['params'].get('width')}, {r['params'].get('epochs')} ep, batch {r['params'].get('batch_size')}"
        lines.append(f"| {r['trial']} | {shape} | {r['fitted_on'] or 'prior'} | {r['predicted_seconds']:.1f} | "
                     f"{r['train_seconds']:.1f} | {r['error_pct']:+.0f}% |")
    publish("costmodel", result, lines)


if __name__ == "__main__":
    main()
