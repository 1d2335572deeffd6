"""`sweep run --workers 2` on real MNIST: do parallel workers explore different configurations?

Runs the default study with two worker processes on a fresh store, then reads the trials back from
the Optuna journal. Writes bench/results/workers.md and workers.json.

Usage: python bench/workers.py --data-dir ../shared/datasets/mnist [--trials 10] [--trial-seconds 30]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, commit, parse_args, publish

from sweep.record import TrialRecord
from sweep.testing.stores import load


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], trials=10, trial_seconds=30.0)
    command = f"python bench/workers.py --data-dir {args.data_dir} --trials {args.trials} --trial-seconds {args.trial_seconds:g}"
    started = time.time()
    with tempfile.TemporaryDirectory() as store:
        done = subprocess.run(
            [sys.executable, "-m", "sweep", "run", "--workers", "2", "--trials", str(args.trials),
             "--trial-seconds", str(args.trial_seconds), "--data-dir", args.data_dir, "--store", store],
            cwd=ROOT, capture_output=True, text=True,
        )
        if done.returncode:
            sys.exit(f"sweep failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        trials = sorted(load(Path(store), "tradeoff").trials, key=lambda t: t.number)
    first = [t for t in trials if TrialRecord.load(t).retry_of is None][: args.trials]
    seen: dict[tuple, int] = {}
    duplicates = []
    for trial in first:
        key = tuple(sorted(trial.params.items()))
        if key in seen:
            duplicates.append([seen[key], trial.number])
        seen.setdefault(key, trial.number)
    rows = [
        {"number": t.number, "state": t.state.name, "worker_pid": r.pid, "params": t.params,
         "best_val_accuracy": r.best_val_accuracy, "train_seconds": r.train_seconds}
        for t, r in ((t, TrialRecord.load(t)) for t in first)
    ]
    result = {
        "command": command, "commit": commit(), "machine": f"{os.cpu_count()} CPU cores, TensorFlow backend, real MNIST",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "seconds": round(time.time() - started, 1),
        "workers": len({r["worker_pid"] for r in rows}), "trials": rows,
        "duplicate_pairs": duplicates, "first_trials_distinct": not duplicates,
    }
    lines = [
        "# Parallel workers explore different configurations",
        "",
        f"Command: `{command}` (commit {result['commit']}, {result['seconds'] / 60:.1f} min)  ",
        f"Date: {result['date']}; machine: {result['machine']}.",
        "",
        f"The first {len(rows)} trials of the default study, run by {result['workers']} worker processes: "
        f"**{len(duplicates)} pairs share parameters**"
        + (" (before the fix, trials 0 and 1, 2 and 3, ... were identical)." if not duplicates else f": {duplicates}."),
        "",
        "| trial | worker pid | state | depth | width | epochs | learning rate | batch | dropout | best val acc | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["params"]
        accuracy = f"{r['best_val_accuracy']:.4f}" if r["best_val_accuracy"] is not None else "-"
        seconds = f"{r['train_seconds']:.1f}" if r["train_seconds"] is not None else "-"
        lines.append(f"| {r['number']} | {r['worker_pid']} | {r['state']} | {p.get('depth')} | {p.get('width')} | {p.get('epochs')} | "
                     f"{p.get('learning_rate', 0):.2e} | {p.get('batch_size')} | {p.get('dropout', 0):.3f} | {accuracy} | {seconds} |")
    publish("workers", result, lines)


if __name__ == "__main__":
    main()
