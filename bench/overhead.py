"""What tracking, budgeting and data handling cost: one trial through `sweep` vs a plain `model.fit`.

Same configuration (2 x 512 ReLU, Adam, 5 epochs, batch 128), same data, same process, alternating
plain / sweep `--repeats` times after one warm-up of each. The plain run is what the Keras examples
write: float32 pixels / 255 as numpy arrays, a `keras.Sequential` compiled with Keras' defaults, and
`model.fit(..., validation_data=...)`. The sweep trial is timed from Optuna's trial start to its end;
its bookkeeping (MLflow run, params, manifest, dataset, Optuna) is the trial minus its `train` call, the
headline. The whole `sweep run` command is timed too: it adds the parent run's summary and chart, written
after the trial is told, opening the stores and loading the data.
Writes bench/results/overhead.{json,md}.

Usage: python bench/overhead.py --data-dir ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import keras

from mnist_core.data import load_splits, resolve_source
from sweep.cli import main as sweep_main
from sweep.record import TrialRecord
from sweep.storage import load_existing, open_storage

RESULTS = Path(__file__).resolve().parent / "results"
STUDY = """
[study]
name = "overhead"
objectives = ["val_accuracy"]
seed = 0

[budget]
trial_seconds = 3600

[fixed]
depth = 2
width = 512
epochs = 5
batch_size = 128
learning_rate = 0.001
"""


def plain_fit(x, y, xv, yv) -> float:
    """The Keras examples' way: a Sequential model, default compile, numpy arrays into fit."""
    started = time.perf_counter()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(shape=(28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=128, epochs=5, validation_data=(xv, yv), verbose=0)
    seconds = time.perf_counter() - started
    del model
    keras.backend.clear_session()
    return seconds


def sweep_trial(store: Path, study_file: Path, data_dir: str, number: int) -> tuple[float, float, float]:
    """Seconds of the study's trial `number`: the whole trial, its `train` call, and the whole `sweep run` command."""
    started = time.perf_counter()
    code = sweep_main(["run", "--study", str(study_file), "--store", str(store), "--data-dir", data_dir, "--trials", str(number + 1)])
    command = time.perf_counter() - started
    assert code == 0
    trial = load_existing(open_storage(None, store), "overhead").trials[number]
    return (trial.datetime_complete - trial.datetime_start).total_seconds(), TrialRecord.load(trial).train_seconds, command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    splits = load_splits(resolve_source(args.data_dir))
    x, y = splits.train.images.astype("float32") / 255, splits.train.labels
    xv, yv = splits.val.images.astype("float32") / 255, splits.val.labels
    with tempfile.TemporaryDirectory() as tmp:
        store, study_file = Path(tmp) / "store", Path(tmp) / "overhead.toml"
        study_file.write_text(STUDY)
        plain_fit(x, y, xv, yv), sweep_trial(store, study_file, args.data_dir, 0)  # warm-up: first traces, MLflow schema
        plain, trial, training, command = [], [], [], []
        for number in range(1, args.repeats + 1):
            plain.append(plain_fit(x, y, xv, yv))
            seconds, trained, whole = sweep_trial(store, study_file, args.data_dir, number)
            trial.append(seconds)
            training.append(trained)
            command.append(whole)
            print(f"repeat {number}: plain {plain[-1]:.2f} s, sweep trial {seconds:.2f} s, sweep command {whole:.2f} s", flush=True)
    ratio = statistics.median(trial) / statistics.median(plain)
    bookkeeping = [t - r for t, r in zip(trial, training, strict=True)]
    result = {
        "command": f"python bench/overhead.py --data-dir {args.data_dir} --repeats {args.repeats}",
        "config": "2 x 512 ReLU, Adam 1e-3, 5 epochs, batch 128, 54,000 train / 6,000 validation",
        "bookkeeping_seconds_per_trial_median": statistics.median(bookkeeping),
        "plain_fit_seconds": plain, "sweep_trial_seconds": trial, "sweep_train_seconds": training, "sweep_command_seconds": command,
        "bookkeeping_seconds": bookkeeping,
        "trial_ratio_median": ratio, "command_ratio_median": statistics.median(command) / statistics.median(plain),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "overhead.md").write_text(
        "# Overhead: one trial through `sweep` vs a plain `model.fit`\n\n"
        f"Command: `{result['command']}`  \nDate: {time.strftime('%Y-%m-%d %H:%M %Z')}; {result['config']}; TensorFlow backend, 2 CPU cores.\n\n"
        f"**Bookkeeping per trial: {statistics.median(bookkeeping):.2f} s** (median; the trial minus its `train` call: "
        "MLflow run, params, manifest, dataset input, per-epoch logging outside training, Optuna; the parent run's summary and chart, written after the trial is told, count in the command).\n\n"
        "| | plain `model.fit` (Keras examples' way) | the trial's `train` call | one `sweep` trial | whole `sweep run` command |\n|---|---|---|---|---|\n"
        f"| median seconds | {statistics.median(plain):.2f} | {statistics.median(training):.2f} | {statistics.median(trial):.2f} | {statistics.median(command):.2f} |\n"
        f"| ratio to plain | 1.00 | {statistics.median(training) / statistics.median(plain):.3f} | {ratio:.3f} | {result['command_ratio_median']:.3f} |\n\n"
        "The `train` call runs the default path (several batches per traced call; XLA where the run repays compiling), "
        "which is why it can beat the plain fit. The command adds opening the stores and loading the data.\n\n"
        f"Each repeat: plain {', '.join(f'{s:.2f}' for s in plain)} s; trial {', '.join(f'{s:.2f}' for s in trial)} s; "
        f"bookkeeping {', '.join(f'{s:.2f}' for s in bookkeeping)} s; command {', '.join(f'{s:.2f}' for s in command)} s.\n"
    )
    print((RESULTS / "overhead.md").read_text())


if __name__ == "__main__":
    main()
