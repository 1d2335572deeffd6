"""The default study on real MNIST under a wall-clock budget, next to the seed model, in one run.

Trains the seed model (studies/seed.toml), runs `python -m sweep run` on studies/tradeoff.toml for
--minutes, then retrains and tests the Pareto-front models that trained within 1/20 of the seed's
time. Writes bench/results/tradeoff.{json,md,csv,png}.

Usage: python bench/tradeoff.py --data-dir ../shared/datasets/mnist --minutes 20
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import keras
from seed import train_seed  # bench/seed.py: this script's folder is on sys.path

from mnist_core.data import load_splits, resolve_source
from mnist_core.evaluate import evaluate_test
from sweep.best import retrain
from sweep.cli import main as sweep_main
from sweep.record import TrialRecord
from sweep.report import plot_tradeoff, points_frame, trials_frame
from sweep.storage import load_existing, open_storage
from sweep.studyfile import load_study

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SEED_ACCURACY = 0.9772  # the student's test accuracy
SPEEDUP = 20


def markdown_table(frame) -> str:
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--store", type=Path, help="sweep store (default: a fresh temporary folder)")
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="tradeoff-bench-"))
    started = time.time()

    source = resolve_source(args.data_dir)
    seed, seed_test = train_seed(source)
    seed.model = None
    keras.backend.clear_session()
    limit = seed.seconds / SPEEDUP
    print(f"seed: {seed.seconds:.0f} s, test accuracy {seed_test['test_accuracy']:.4f}; target: >= {SEED_ACCURACY} in <= {limit:.1f} s", flush=True)

    spec_path = ROOT / "studies" / "tradeoff.toml"
    sweep_started = time.time()
    code = sweep_main(["run", "--study", str(spec_path), "--store", str(store), "--data-dir", args.data_dir,
                       "--timeout", str(args.minutes * 60), "--trials", "500"])
    sweep_seconds = time.time() - sweep_started
    if code != 0:
        sys.exit(f"sweep failed with exit code {code}")

    spec = load_study(spec_path)
    splits = load_splits(source, spec.validation_fraction, spec.split_seed)
    study = load_existing(open_storage(None, store), spec.name)
    frame = trials_frame(study)
    front = frame[frame["pareto"]].sort_values("train_seconds")
    checked = []
    for _, row in front[front["train_seconds"] <= limit].iterrows():
        trial = study.trials[int(row["trial"])]
        result = retrain(spec, trial, splits, TrialRecord.load(trial).best_epoch)
        test = evaluate_test(result.model, source)
        result.model = None
        keras.backend.clear_session()
        checked.append({"trial": trial.number, **trial.params, "val_accuracy": row["best_val_accuracy"],
                        "train_seconds": row["train_seconds"], "retrain_seconds": result.seconds, **test})
        print(f"front trial {trial.number}: test accuracy {test['test_accuracy']:.4f} in {row['train_seconds']:.1f} s", flush=True)
    winners = [c for c in checked if c["test_accuracy"] >= SEED_ACCURACY]

    RESULTS.mkdir(parents=True, exist_ok=True)
    frame.to_csv(RESULTS / "tradeoff.csv", index=False)
    plot_tradeoff(frame, points_frame(study), RESULTS / "tradeoff.png", f"tradeoff study, {args.minutes:g}-minute budget, real MNIST",
                  reference=("seed model 5x2000 (10 epochs)", seed.seconds, seed.best_epoch.val_accuracy))
    states = frame["state"].value_counts().to_dict()
    figures = {
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, 2 CPU cores, {keras.backend.backend()} backend, keras {keras.__version__}",
        "store": str(store),
        "seed": {"train_seconds": seed.seconds, "best_val_accuracy": seed.best_epoch.val_accuracy,
                 "seconds_per_epoch": seed.seconds_per_epoch, **seed_test},
        "sweep": {"budget_seconds": args.minutes * 60, "wall_seconds": sweep_seconds, "trials": len(frame), "states": states},
        "target": {"test_accuracy": SEED_ACCURACY, "max_train_seconds": limit},
        "front_checked": checked,
        "met": bool(winners),
        "total_seconds": time.time() - started,
    }
    (RESULTS / "tradeoff.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")

    columns = ["trial", "depth", "width", "epochs", "learning_rate", "batch_size", "dropout", "best_val_accuracy", "train_seconds", "param_count"]
    table = markdown_table(front[columns])
    checked_rows = "\n".join(
        f"| {c['trial']} | {c['depth']}x{c['width']}, {c['epochs']} ep, batch {c['batch_size']} | {c['val_accuracy']:.4f} | "
        f"{c['test_accuracy']:.4f} | {c['test_loss']:.4f} | {c['train_seconds']:.1f} |"
        for c in checked
    ) or "| - | none within the limit | | | | |"
    verdict = (
        f"**Met**: trial {winners[0]['trial']} reaches {winners[0]['test_accuracy']:.2%} test accuracy in "
        f"{winners[0]['train_seconds']:.1f} s of training, {seed.seconds / winners[0]['train_seconds']:.0f}x faster than the seed model "
        f"({seed.seconds:.0f} s, {seed_test['test_accuracy']:.2%})."
        if winners
        else f"**Not met**: no front model within {limit:.1f} s reached {SEED_ACCURACY:.2%} on the test set."
    )
    (RESULTS / "tradeoff.md").write_text(
        f"# Accuracy vs training time on real MNIST\n\nCommand: `{figures['command']}`  \nDate: {figures['date']}  \n"
        f"Machine: {figures['machine']}\n\n"
        f"Seed model (5 x 2000, 10 epochs, batch 100), trained in the same run: {seed.seconds:.0f} s, "
        f"{seed.seconds_per_epoch:.1f} s/epoch, test accuracy {seed_test['test_accuracy']:.4f}, loss {seed_test['test_loss']:.4f}.\n\n"
        f"Sweep: default study `studies/tradeoff.toml`, {args.minutes:g}-minute budget ({sweep_seconds:.0f} s wall), "
        f"{len(frame)} trials: {', '.join(f'{v} {k.lower()}' for k, v in states.items())}.\n\n"
        f"Target: a front model with test accuracy >= {SEED_ACCURACY:.2%} trained in <= 1/{SPEEDUP} of the seed's time "
        f"({limit:.1f} s).\n\n{verdict}\n\n![trade-off](tradeoff.png)\n\n## Pareto front (validation accuracy vs training seconds)\n\n{table}\n\n"
        f"## Front models within {limit:.1f} s, retrained with their seed and tested once\n\n"
        f"| trial | model | val accuracy | test accuracy | test loss | train s |\n|---|---|---|---|---|---|\n{checked_rows}\n\n"
        f"All trials: `tradeoff.csv`.\n"
    )
    print(verdict)


if __name__ == "__main__":
    main()
