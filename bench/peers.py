"""Sweep efficiency against what a user would otherwise run: KerasTuner Hyperband and plain Optuna TPE.

Same search space (studies/tradeoff.toml: depth 1-6, width 32-2048 log, 1-10 epochs, learning rate
1e-4..1e-2 log, batch 64-512, dropout 0-0.3), same data and split, same wall-clock budget each, one
after the other in one run, each in its own process:

- `ours`: `python -m sweep run` on the default study (TPE, accuracy and time, budgets, estimates).
- `kerastuner`: KerasTuner `Hyperband` on val_accuracy (max_epochs 10), stopped at the budget.
- `optuna`: a hand-written Optuna TPE objective, `model.fit` then the last val_accuracy; no pruning,
  no budgets (a trial running at the budget finishes, and its overrun is reported).

For each: best validation accuracy within the budget, time to first reach 98.0% validation accuracy
(at an epoch's end), trials finished, and the test accuracy of the winner retrained from scratch
(after the budget; the test set is read only then). Writes bench/results/peers.{json,md}.

Usage: python bench/peers.py --data-dir ../shared/datasets/mnist --minutes 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
STUDY = ROOT / "studies" / "tradeoff.toml"
TARGET = 0.98
METHODS = ("ours", "kerastuner", "optuna")


def _splits(data_dir: str):
    from mnist_core.data import load_splits, resolve_source
    from sweep.hypermodel import load_study

    spec = load_study(STUDY)
    source = resolve_source(data_dir)
    return spec, source, load_splits(source, spec.validation_fraction, spec.split_seed)


def _config(params: dict, seed: int = 0):
    """A peer's hyperparameters as our TrainConfig, so every winner is retrained the same way."""
    from mnist_core.model import MLPConfig
    from mnist_core.trainer import TrainConfig

    model = MLPConfig(depth=params["depth"], width=params["width"], dropout=params["dropout"], learning_rate=params["learning_rate"])
    return TrainConfig(model, epochs=params["epochs"], batch_size=params["batch_size"], seed=seed)


def _test_winner(config, splits, source) -> float:
    from mnist_core.evaluate import evaluate_test
    from mnist_core.trainer import train

    result = train(config, splits, keep_model=True)
    return evaluate_test(result.model, source)["test_accuracy"]


def _arrays(splits):
    from mnist_core.data import scale_pixels

    return (scale_pixels(splits.train.images).numpy(), splits.train.labels, scale_pixels(splits.val.images).numpy(), splits.val.labels)


def curve_callback(start: float, deadline: float, points: list):
    """A Keras callback: record (seconds since start, val_accuracy) at each epoch's end; stop training at the deadline."""
    import keras

    class Curve(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            points.append((time.time() - start, float(logs["val_accuracy"])))
            if time.time() >= deadline:
                self.model.stop_training = True

    return Curve()


def run_ours(data_dir: str, seconds: float, work: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from mnist_core.evaluate import evaluate_test
    from sweep.best import retrain
    from sweep.cli import main as sweep_main
    from sweep.oracle import FINISHED, load_existing, open_storage
    from sweep.tracking import default_tracking_uri

    spec, source, splits = _splits(data_dir)
    start = time.time()
    code = sweep_main(["run", "--study", str(STUDY), "--store", str(work), "--data-dir", data_dir, "--timeout", str(seconds), "--trials", "1000"])
    used = time.time() - start
    assert code == 0, code
    study = load_existing(open_storage(None, work), spec.name)
    client = MlflowClient(default_tracking_uri(work))
    experiment = client.get_experiment_by_name(spec.name)
    points = []
    for run in client.search_runs([experiment.experiment_id], max_results=5000):
        if "optuna.trial_number" in run.data.tags:
            points += [(m.timestamp / 1000 - start, m.value) for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    complete = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("best_val_accuracy") is not None]
    winner = max(complete, key=lambda t: t.user_attrs["best_val_accuracy"])
    result = retrain(spec, winner, splits)
    return _summary(points, used, len(study.get_trials(states=FINISHED)), winner.params | {"epochs": winner.user_attrs["best_epoch"]},
                    winner.user_attrs["best_val_accuracy"], evaluate_test(result.model, source)["test_accuracy"])


def run_kerastuner(data_dir: str, seconds: float, work: Path) -> dict:
    import keras_tuner as kt

    from mnist_core.model import MLPConfig, build_mlp

    spec, source, splits = _splits(data_dir)
    x, y, xv, yv = _arrays(splits)
    start = time.time()
    deadline = start + seconds
    points: list = []

    class HyperModel(kt.HyperModel):
        def build(self, hp):
            return build_mlp(MLPConfig(
                depth=hp.Int("depth", 1, 6), width=hp.Int("width", 32, 2048, sampling="log"),
                dropout=hp.Float("dropout", 0.0, 0.3), learning_rate=hp.Float("learning_rate", 1e-4, 1e-2, sampling="log"),
            ))

        def fit(self, hp, model, *args, **kwargs):
            return model.fit(*args, batch_size=hp.Choice("batch_size", [64, 128, 256, 512]), **kwargs)

    # The Hyperband tuner, not the bare Tuner: only it trains each trial for its bracket's epochs and
    # resumes promoted trials from their checkpoints. Iterations repeat until the budget is spent;
    # then no new trial starts.
    tuner = kt.Hyperband(HyperModel(), objective="val_accuracy", max_epochs=10, factor=3, hyperband_iterations=1000, seed=0,
                         directory=str(work), project_name="hyperband", overwrite=True)
    create_trial = tuner.oracle.create_trial

    def create_trial_until_deadline(tuner_id):
        if time.time() >= deadline:
            return kt.engine.trial.Trial(tuner.oracle.get_space(), status=kt.engine.trial.TrialStatus.STOPPED)
        return create_trial(tuner_id)

    tuner.oracle.create_trial = create_trial_until_deadline
    tuner.search(x, y, validation_data=(xv, yv), callbacks=[curve_callback(start, deadline, points)], verbose=0)
    used = time.time() - start
    finished = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    best = max(finished, key=lambda t: t.score)
    params = dict(best.hyperparameters.values)
    params["epochs"] = int(params.get("tuner/epochs", 10))
    return _summary(points, used, len(finished), {k: v for k, v in params.items() if not k.startswith("tuner/")},
                    best.score, _test_winner(_config(params), splits, source))


def run_optuna(data_dir: str, seconds: float, work: Path) -> dict:
    import keras
    import optuna

    from mnist_core.model import MLPConfig, build_mlp

    spec, source, splits = _splits(data_dir)
    x, y, xv, yv = _arrays(splits)
    start = time.time()
    points: list = []
    callback = curve_callback(start, float("inf"), points)  # no budgets: record only

    def objective(trial: optuna.Trial) -> float:
        keras.backend.clear_session()
        model = build_mlp(MLPConfig(
            depth=trial.suggest_int("depth", 1, 6), width=trial.suggest_int("width", 32, 2048, log=True),
            dropout=trial.suggest_float("dropout", 0.0, 0.3), learning_rate=trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
        ))
        history = model.fit(x, y, batch_size=trial.suggest_categorical("batch_size", [64, 128, 256, 512]),
                            epochs=trial.suggest_int("epochs", 1, 10), validation_data=(xv, yv), callbacks=[callback], verbose=0)
        return history.history["val_accuracy"][-1]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, timeout=seconds)
    used = time.time() - start
    return _summary(points, used, len(study.trials), study.best_params, study.best_value,
                    _test_winner(_config(study.best_params), splits, source))


def _summary(points: list, used: float, trials: int, params: dict, val: float, test: float) -> dict:
    """The figures of one method; `curve` is its best validation accuracy so far, at each improvement."""
    curve, best = [], 0.0
    for seconds, accuracy in sorted(points):
        if accuracy > best:
            best = accuracy
            curve.append((seconds, accuracy))
    reached = [t for t, v in curve if v >= TARGET]
    return {"seconds_used": used, "trials_finished": trials, "best_val_accuracy": val,
            "seconds_to_98": reached[0] if reached else None, "winner": params, "winner_test_accuracy": test, "curve": curve}


def one(method: str, data_dir: str, minutes: float, out: Path) -> None:
    with tempfile.TemporaryDirectory() as work:
        result = {"ours": run_ours, "kerastuner": run_kerastuner, "optuna": run_optuna}[method](data_dir, minutes * 60, Path(work))
    out.write_text(json.dumps(result, default=float))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="methods to (re)run; the others keep their figures from bench/results/peers.json")
    parser.add_argument("--method", choices=METHODS, help="(internal) run one method in this process")
    parser.add_argument("--out", type=Path, help="(internal) where --method writes its JSON")
    args = parser.parse_args()
    if args.method:
        return one(args.method, args.data_dir, args.minutes, args.out)
    command = f"python bench/peers.py --data-dir {args.data_dir} --minutes {args.minutes:g}"
    saved = RESULTS / "peers.json"
    results = json.loads(saved.read_text())["results"] if saved.exists() and len(args.methods) < len(METHODS) else {}
    for method in args.methods:
        out = Path(tempfile.mktemp(suffix=".json"))
        print(f"{method}: {args.minutes:g} minutes ...", flush=True)
        subprocess.run([sys.executable, __file__, "--data-dir", args.data_dir, "--minutes", str(args.minutes),
                        "--method", method, "--out", str(out)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        results[method] = json.loads(out.read_text()) | {"command": f"{command} --methods {method}", "date": time.strftime("%Y-%m-%d %H:%M %Z")}
        print(method, results[method], flush=True)
    write({m: results[m] for m in METHODS if m in results}, command, args.minutes)


def write(results: dict, command: str, minutes: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "peers.json").write_text(json.dumps({"command": command, "minutes_each": minutes, "results": results}, indent=2) + "\n")
    names = {"ours": "mnist-sweep (default study)", "kerastuner": "KerasTuner Hyperband", "optuna": "plain Optuna TPE"}
    lines = [
        "# Sweep efficiency: mnist-sweep vs KerasTuner Hyperband vs plain Optuna TPE", "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} CPU cores, TensorFlow backend, real MNIST "
        f"(54,000 train / 6,000 validation, the same split for all). Budget: {minutes:g} minutes each, one after the other.", "",
        "| method | best val accuracy | time to 98.0% val | trials finished | wall-clock used | winner | winner's test accuracy (retrained) |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, r in results.items():
        reached = f"{r['seconds_to_98']:.0f} s" if r["seconds_to_98"] is not None else "not reached"
        winner = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["winner"].items())
        lines.append(f"| {names[method]} | {r['best_val_accuracy']:.4f} | {reached} | {r['trials_finished']} | "
                     f"{r['seconds_used']:.0f} s | {winner} | {r['winner_test_accuracy']:.4f} |")
    lines += ["", "Each row was measured by:"]
    lines += [f"- {names[m]}: `{r['command']}`, {r['date']}" for m, r in results.items()]
    chart = plot_curves(results, names, minutes)
    lines += ["", f"![best validation accuracy so far]({chart.name})", ""]
    (RESULTS / "peers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot_curves(results: dict, names: dict, minutes: float) -> Path:
    """Best validation accuracy so far against wall-clock, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for method, r in results.items():
        if r["curve"]:
            seconds, accuracy = zip(*r["curve"])
            axes.step([s / 60 for s in seconds] + [minutes], list(accuracy) + [accuracy[-1]], where="post", label=names[method])
    axes.axhline(TARGET, color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="wall-clock (minutes)", ylabel="best validation accuracy so far", ylim=(0.95, 0.99),
             title=f"Same space, same data, {minutes:g} minutes each")
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    path = RESULTS / "peers.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


if __name__ == "__main__":
    main()
