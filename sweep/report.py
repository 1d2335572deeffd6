"""Results: the trials as a pandas table (best first, Pareto set marked) and the accuracy-vs-time chart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from mnist_core.digits import TRAIN_IMAGES
from mnist_core.machine import MachineProfile
from sweep import costmodel
from sweep.context import CommandError, Options, open_store, open_study, open_tracker, study_machine, study_spec
from sweep.optuna_private import sibling
from sweep.points import Scale, pareto_mask, study_points
from sweep.record import TrialRecord, records
from sweep.studyfile import STUDIES, load_study
from sweep.tracking import PARENT_ATTR, SUMMARY_METRICS, Tracker

# Columns the printed table leaves to the CSV.
CSV_ONLY = ("reason", "mlflow_run_id", "best_val_loss", "warmup_seconds", "seconds_per_epoch", "steady_epochs",
            "examples_per_second", "predicted_seconds")


# The seed model's accuracy (no machine changes it), and its study file (whose work predicts its seconds).
SEED_ACCURACY, SEED_STUDY = STUDIES / "seed.reference.json", STUDIES / "seed.toml"
SEED_LABEL = "seed model 5x2000, 10 ep"


def seed_point(study: optuna.Study, study_profile: MachineProfile | None) -> tuple[str, float, float] | None:
    """(label, seconds, validation accuracy) of the seed model on `study`'s chart, in the study's seconds:
    measured, when this store's `seed` study trained it on the study's machine; else predicted from its work
    and that machine's profile (as corrected by the study's trials), at its known accuracy. None for a study
    without a machine: never a number from another machine."""
    if study_profile is None:
        return None
    seeds = sibling(study, load_study(SEED_STUDY).name)
    for trial in seeds.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if seeds else ():
        rec = TrialRecord.load(trial)
        if rec.machine and costmodel.same_machine(MachineProfile.from_fields(rec.machine), study_profile):
            return f"{SEED_LABEL} (measured here, {trial.datetime_complete:%Y-%m-%d})", rec.train_seconds, rec.best_val_accuracy
    try:
        accuracy = float(json.loads(SEED_ACCURACY.read_text())["val_accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    spec = load_study(SEED_STUDY)
    examples = round(TRAIN_IMAGES * (1 - spec.validation_fraction))
    config = spec.config_for(optuna.trial.FixedTrial({}), seed=spec.seed)
    seconds = costmodel.fit(study, examples, study_profile).predict(config, examples)
    return f"{SEED_LABEL} (predicted for this machine)", seconds, accuracy


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, params, score and costs; `pareto` marks the accuracy-vs-time front."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        rec = TrialRecord.load(trial)
        row = {"trial": trial.number, "state": trial.state.name, **trial.params}
        row.update({m: getattr(rec, m) for m in (*SUMMARY_METRICS, "predicted_seconds", "reason", "mlflow_run_id")})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    for metric in SUMMARY_METRICS:
        frame[metric] = pd.to_numeric(frame[metric], errors="coerce")
    frame["study_seconds"] = frame["study_seconds"].fillna(frame["train_seconds"])  # stored before profiles: raw
    complete = (frame["state"] == TrialState.COMPLETE.name).to_numpy()
    accuracy = np.where(complete, frame["best_val_accuracy"], np.nan)
    frame.insert(2, "pareto", pareto_mask(accuracy, frame["study_seconds"].to_numpy()))
    return frame.sort_values(["best_val_accuracy", "study_seconds"], ascending=[False, True], na_position="last").reset_index(drop=True)


def points_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per (trial, epoch) point: its cumulative training seconds and validation accuracy, the trial's
    state and params; `pareto` marks the front of the points."""
    trials = study.get_trials(deepcopy=False)
    rows = [{"trial": p.trial, "epoch": p.epoch, "study_seconds": p.seconds, "val_accuracy": p.val_accuracy,
             "state": trials[p.trial].state.name, **trials[p.trial].params} for p in study_points(study)]
    frame = pd.DataFrame(rows, columns=None if rows else ["trial", "epoch", "study_seconds", "val_accuracy", "state"])
    frame.insert(4, "pareto", pareto_mask(frame["val_accuracy"].to_numpy(float), frame["study_seconds"].to_numpy(float)))
    return frame.sort_values(["study_seconds", "val_accuracy"], ascending=[True, False]).reset_index(drop=True)


def _label(row: pd.Series) -> str:
    shape = f"{int(row['depth'])}x{int(row['width'])}" if "depth" in row and "width" in row else f"#{row['trial']}"
    return f"{shape}, ep {int(row['epoch'])}"


# Accuracies the log-error axis labels: each step about halves the error.
ACCURACY_TICKS = (0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995)


def log_error_axis(ax) -> None:
    """A matplotlib accuracy axis in decades of the error 1 - accuracy, labelled in percent."""
    import matplotlib.ticker

    scale = Scale("log")
    ax.set_yscale("function", functions=(scale.score, lambda score: 1.0 - 10.0 ** -np.asarray(score, float)))
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ACCURACY_TICKS))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda a, _: f"{100 * a:g}%"))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def plot_tradeoff(frame: pd.DataFrame, points: pd.DataFrame, path: Path, title: str,
                  reference: tuple[str, float, float] | None = None, scale: Scale = Scale("log"), machine: str | None = None) -> Path:
    """Accuracy against training seconds (log scale): each trial's epochs as a line, the front of all
    (trial, epoch) points as a staircase. On the log front scale the accuracy axis is the error's logarithm,
    so 99% -> 99.5% is as tall as 96% -> 98%.

    `reference` is (label, seconds, accuracy) of a model to compare with, e.g. the seed model. Seconds are
    study seconds, those of `machine` (the one that started the study).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    complete = frame[frame["state"] == TrialState.COMPLETE.name]
    pruned = frame[(frame["state"] == TrialState.PRUNED.name) & frame["best_val_accuracy"].notna()]
    for _, curve in points.groupby("trial"):
        ax.plot(curve["study_seconds"], curve["val_accuracy"], color="tab:blue", lw=0.6, alpha=0.25)
    ax.scatter(complete["study_seconds"], complete["best_val_accuracy"], s=22, color="tab:blue", alpha=0.6, label="trial (best epoch; line: its epochs)")
    if not pruned.empty:
        ax.scatter(pruned["study_seconds"], pruned["best_val_accuracy"], s=22, marker="x", color="grey", alpha=0.6, label="pruned / cut short")
    front = points[points["pareto"]].sort_values("study_seconds")
    ax.step(front["study_seconds"], front["val_accuracy"], where="post", color="tab:red", lw=1.5, label="Pareto front of (trial, epoch) points")
    ax.scatter(front["study_seconds"], front["val_accuracy"], s=40, color="tab:red", zorder=3)
    for _, row in front.iterrows():
        ax.annotate(_label(row), (row["study_seconds"], row["val_accuracy"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    if reference is not None:
        name, seconds, accuracy = reference
        ax.scatter([seconds], [accuracy], s=120, marker="*", color="tab:orange", zorder=4, label=name)
    accuracies = pd.concat([complete["best_val_accuracy"], pd.Series([reference[2]] if reference else [], dtype=float)]).dropna()
    if scale.name == "log":
        log_error_axis(ax)
        if len(accuracies):
            ax.set_ylim(min(accuracies.quantile(0.1), 0.9), 1.0 - max((1.0 - accuracies.max()) / 2, 5e-4))  # at most 99.95%
    elif len(accuracies):
        ax.set_ylim(max(accuracies.quantile(0.1) - 0.02, 0.0), min(accuracies.max() + 0.01, 1.0))
    if (pd.concat([complete, pruned])["study_seconds"] > 0).any():
        ax.set_xscale("log")
    if complete.empty:
        ax.text(0.5, 0.5, "no complete trial yet", transform=ax.transAxes, ha="center", color="grey")
    ax.set_xlabel(f"training seconds{f' on {machine}' if machine else ''} (log scale)")
    ax.set_ylabel("best validation accuracy" + (" (log of the error)" if scale.name == "log" else ""))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(study: optuna.Study, out: Path, tracker: Tracker, scale: Scale) -> tuple[pd.DataFrame, Path, Path]:
    """`trials.csv`, `points.csv` (every epoch) and `tradeoff.png` in `out`, also logged to the study's parent MLflow run."""
    frame, points = trials_frame(study), points_frame(study)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, points_path = out / "trials.csv", out / "points.csv"
    frame.to_csv(csv_path, index=False)
    points.to_csv(points_path, index=False)
    study_profile = study_machine(study, create=False)
    chart = plot_tradeoff(frame, points, out / "tradeoff.png", f"{study.study_name}: accuracy vs training time",
                          seed_point(study, study_profile), scale, study_profile.label if study_profile else None)
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent:
        for artifact in (csv_path, points_path, chart):
            tracker.log_artifact(parent, artifact)
    return frame, csv_path, chart


def machines(study: optuna.Study) -> list[str]:
    """Lines naming the machines the study's trials ran on, with their measured rates, and which one its
    seconds are in."""
    study_profile = study_machine(study, create=False)
    lines = [f"study seconds are seconds on {study_profile.label}" if study_profile else
             "this study was started before machine profiles were kept: its seconds are each trial's raw seconds"]
    ran: dict[str, list[int]] = {}
    unprofiled = 0
    for rec in records(study):
        if rec.machine is not None:
            measured = {k: v for k, v in rec.machine.items() if k != "source"}  # cached or measured, the same machine
            ran.setdefault(json.dumps(measured, sort_keys=True), []).append(rec.number)
        else:
            unprofiled += rec.trained
    for key, numbers in ran.items():
        p = MachineProfile.from_fields(json.loads(key))
        lines.append(f"  {len(numbers)} trial(s) on {p.host}: {p.label}; {p.gflops:.0f} GFLOP/s, {p.gbps:.1f} GB/s, "
                     f"{p.batch_us:.0f} us a batch (measured {p.measured})")
    if unprofiled:
        lines.append(f"  {unprofiled} trained trial(s) stored without a machine profile: their seconds are raw")
    return lines


def table(frame: pd.DataFrame) -> str:
    """The trials as text, best first, without the columns only the CSV needs."""
    columns = [c for c in frame.columns if c not in CSV_ONLY]
    with pd.option_context("display.max_rows", 200, "display.width", 200, "display.float_format", "{:.4g}".format):
        return frame[columns].to_string(index=False)


def run_report(options: Options, out: Path | None) -> int:
    """`sweep report`: print the table and write the CSVs and the chart (also to the parent run)."""
    spec = study_spec(options)
    study = open_study(options, spec, open_store(options), create=False)
    if not study.trials:
        raise CommandError(f"study {study.study_name!r} has no trials yet")
    frame, csv_path, chart = write_report(study, (out or options.report_dir) / study.study_name, open_tracker(options, study), spec.scale)
    print(table(frame))
    print("\n" + "\n".join(machines(study)))
    print(f"\nwrote {csv_path}, {csv_path.with_name('points.csv')} (every epoch of every trial) and {chart} "
          "(Pareto set: pareto=True)")
    return 0
