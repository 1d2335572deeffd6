"""What the benches share: where results go and which commit measured them.

Benches run as scripts from the project root (`python bench/NAME.py`), so this folder is on `sys.path`; the
project is installed (`pip install -e ".[test,bench]"`), and its `sweep.testing` helpers serve them as the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mnist_core.data import Splits

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


# What a result depends on: the code that trains and searches (the study files are in sweep/), the benches, and
# the pinned dependencies; not the results themselves.
CODE, NOT_CODE = ("mnist_core", "sweep", "bench", "pyproject.toml"), "bench/results/"


def commit(root: Path = ROOT) -> str:
    """The short commit being measured."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()


def clean_tree(root: Path = ROOT) -> bool:
    """Whether every tracked file outside bench/results/ matches the commit (results written by earlier cells
    do not count)."""
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"],
                             cwd=root, capture_output=True, text=True).stdout
    return not changed.strip()


def code_hash(root: Path = ROOT, revision: str = "HEAD") -> str:
    """A hash of the contents of CODE at `revision`: equal for two commits exactly when a result measured at one
    still stands for the other."""
    listed = subprocess.run(["git", "ls-tree", "-r", revision, "--", *CODE], cwd=root, capture_output=True, text=True, check=True).stdout
    kept = [line for line in listed.splitlines() if not line.split("\t", 1)[1].startswith(NOT_CODE)]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()[:16]


def machine() -> str:
    """The CPU a bench ran on: its model, how many CPUs, and its widest vector instructions."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), platform.processor())
    vectors = "AVX-512" if "avx512f" in info else "AVX2" if "avx2" in info else "no AVX2"
    return f"{model}, {os.cpu_count()} CPUs, {vectors}"


def parse_args(description: str, **defaults: float) -> argparse.Namespace:
    """A bench's command line: `--data-dir` (real MNIST, required) and a `--NAME` flag for each of `defaults`,
    of its default's type."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", required=True)
    for name, default in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    return parser.parse_args()


def warm_splits(description: str) -> tuple[str, Splits]:
    """A per-epoch bench's command line (`--data-dir`, real MNIST): the directory and its splits, the process
    warmed up first as a sweep's is, so every run it times is timed warm."""
    data_dir = parse_args(description).data_dir
    from mnist_core.data import load_splits, resolve_source
    from mnist_core.trainer import warm_up

    splits = load_splits(resolve_source(data_dir))
    warm_up(splits)
    return data_dir, splits


def publish(name: str, result: dict, lines: list[str]) -> None:
    """bench/results/NAME.json (the figures) and NAME.md (`lines`), and the markdown on stdout."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def train_with_fit(config, splits):
    """The old path, for side-by-side timings: Keras `Model.fit` on the tf.data pipeline (`make_dataset`), one
    batch per traced call, no XLA: how the Keras examples train, and how every trial trained before
    `mnist_core.trainer` got its own loop. Returns a `TrainResult` with the model kept."""
    import dataclasses
    import time

    import keras

    from mnist_core.data import make_dataset
    from mnist_core.model import param_count
    from mnist_core.trainer import EpochStats, TrainResult, build_run

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, jit_compile=False))
    config, model = build_run(config, len(splits.train))
    epochs: list[EpochStats] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epochs.append(EpochStats(epoch + 1, logs["loss"], logs["accuracy"], logs["val_loss"], logs["val_accuracy"],
                                     time.perf_counter() - self.started, len(splits.train), False))

    started = time.perf_counter()
    model.fit(make_dataset(splits.train, config.batch_size, shuffle_seed=config.seed, augmentation=config.augmentation),
              validation_data=make_dataset(splits.val, config.batch_size), epochs=config.epochs, callbacks=[Timer()],
              shuffle=False, verbose=0)
    return TrainResult(config, param_count(config.model), epochs, time.perf_counter() - started, "completed", None, model)
