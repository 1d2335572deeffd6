"""Reproduce the seed study on real MNIST and write its figures to bench/results/seed.{json,md}.

With `--old-path`, the same model is also trained on the old path (Keras `Model.fit`, one batch per traced
call, no XLA: `common.train_with_fit`) in the same run, and bench/results/seed_paths.{json,md} set the two side by side.

Usage: python bench/seed.py --data-dir ../shared/datasets/mnist [--old-path]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import keras
import optuna
from common import RESULTS, train_with_fit

from mnist_core.data import Source, load_splits, resolve_source
from mnist_core.evaluate import evaluate_test
from mnist_core.trainer import Budget, TrainResult, train
from sweep.studyfile import STUDIES, load_study

SEED_STUDY = STUDIES / "seed.toml"


def train_seed(source: Source, study: Path = SEED_STUDY, old: bool = False) -> tuple[TrainResult, dict[str, float]]:
    """The seed study's model trained on `source` (model kept), and its figures on the test set."""
    spec = load_study(study)
    splits = load_splits(source, spec.validation_fraction, spec.split_seed)
    config = spec.config_for(optuna.trial.FixedTrial({}), seed=spec.seed)
    print(f"training {config} on {len(splits.train)} examples{' with Model.fit' if old else ''}", flush=True)
    result = train_with_fit(config, splits) if old else train(config, splits, Budget(spec.trial_seconds), keep_model=True, verbose=1)
    return result, evaluate_test(result.model, source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True, help="folder with the four MNIST IDX files")
    parser.add_argument("--study", type=Path, default=SEED_STUDY)
    parser.add_argument("--old-path", action="store_true", help="also train on the old path, in the same run")
    args = parser.parse_args()

    source = resolve_source(args.data_dir)
    result, test = train_seed(source, args.study)
    config = result.config
    figures = {
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.processor() or platform.machine()}, {keras.backend.backend()} backend, "
        f"keras {keras.__version__}, python {platform.python_version()}",
        "config": repr(config),
        "outcome": result.outcome,
        "param_count": result.param_count,
        **test,
        "best_val_accuracy": result.best_epoch.val_accuracy,
        "train_seconds": result.seconds,
        "warmup_seconds": result.warmup_seconds,
        "seconds_per_epoch": result.seconds_per_epoch,
        "examples_per_second": result.examples_per_second,
        "epochs": [vars(e) for e in result.epochs],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "seed.json").write_text(json.dumps(figures, indent=2) + "\n")
    rows = "\n".join(
        f"| {e.epoch} | {e.loss:.4f} | {e.accuracy:.4f} | {e.val_loss:.4f} | {e.val_accuracy:.4f} | {e.seconds:.1f} |"
        for e in result.epochs
    )
    (RESULTS / "seed.md").write_text(
        f"# Seed study on real MNIST\n\nCommand: `{figures['command']}`  \nDate: {figures['date']}  \n"
        f"Machine: {figures['machine']}\n\n"
        f"| test accuracy | test loss | train s | warm-up s | s/epoch (steady) | examples/s | params |\n"
        f"|---|---|---|---|---|---|---|\n"
        f"| {test['test_accuracy']:.4f} | {test['test_loss']:.4f} | {result.seconds:.0f} | "
        f"{result.warmup_seconds:.1f} | {result.seconds_per_epoch:.1f} | {result.examples_per_second:.0f} | "
        f"{result.param_count:,} |\n\nThe student's result: 97.72% test accuracy, loss 0.11, ~20 minutes.\n\n"
        f"| epoch | loss | accuracy | val loss | val accuracy | seconds |\n|---|---|---|---|---|---|\n{rows}\n"
    )
    print(json.dumps({k: v for k, v in figures.items() if k != "epochs"}, indent=2))
    if args.old_path:
        del result
        old, old_test = train_seed(source, args.study, old=True)
        compare(figures, old, old_test)


def compare(default: dict, old: TrainResult, old_test: dict[str, float]) -> None:
    """bench/results/seed_paths.{json,md}: the default path (just measured) next to the old one."""
    rows = {
        "default": {k: default[k] for k in ("config", "train_seconds", "warmup_seconds", "seconds_per_epoch", "test_accuracy", "best_val_accuracy")},
        "old": {"config": repr(old.config), "train_seconds": old.seconds, "warmup_seconds": old.warmup_seconds,
                "seconds_per_epoch": old.seconds_per_epoch, "test_accuracy": old_test["test_accuracy"],
                "best_val_accuracy": old.best_epoch.val_accuracy},
    }
    speedup = rows["old"]["train_seconds"] / rows["default"]["train_seconds"]
    (RESULTS / "seed_paths.json").write_text(json.dumps({"command": default["command"], "date": default["date"],
                                                          "machine": default["machine"], "paths": rows, "speedup": speedup}, indent=2) + "\n")
    lines = [f"# The seed model on the default path vs the old one (one run)\n\nCommand: `{default['command']}`  \n"
             f"Date: {default['date']}  \nMachine: {default['machine']}\n",
             "| path | train s | warm-up s | steady s/epoch | test accuracy | best val accuracy |", "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['train_seconds']:.0f} | {row['warmup_seconds']:.1f} | {row['seconds_per_epoch']:.1f} | "
                     f"{row['test_accuracy']:.4f} | {row['best_val_accuracy']:.4f} |")
    lines.append(f"\nSpeed-up of the default path: {speedup:.2f}x.")
    (RESULTS / "seed_paths.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
