"""After the sweep: pick the winner, retrain it with its seed, test it once, save, log and register it.

This is the only place the test split is read: selection uses validation accuracy alone. With another
training seed (`--seed`) the same selected configuration and epoch are retrained and tested once more, so that
a headline can be the median over seeds rather than one draw of initial weights and batch order.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from mnist_core.data import Source, Splits, scale_pixels
from mnist_core.evaluate import evaluate_test
from mnist_core.machine import current
from mnist_core.trainer import TrainResult, train, warm_up
from sweep.context import Options, load_data, open_store, open_study, open_tracker, study_machine, study_spec
from sweep.costmodel import seconds_scale
from sweep.points import most_accurate, study_points
from sweep.record import Point, TrialRecord
from sweep.studyfile import StudySpec
from sweep.tracking import PARENT_ATTR, Tracker, fluent_tracking, machine_tags


class SelectionError(Exception):
    """No trial qualifies (none complete, or none under the time limit)."""


def _suffix(max_train_seconds: float | None, seed: int | None) -> str:
    return ("" if max_train_seconds is None else f"-under-{max_train_seconds:g}s") + ("" if seed is None else f"-seed-{seed}")


def model_name(study_name: str, max_train_seconds: float | None = None, seed: int | None = None) -> str:
    """The .keras file name of a study's winner under one selection rule and training seed (None: the trial's):
    each keeps its own file."""
    return f"{study_name}{_suffix(max_train_seconds, seed)}.keras"


def run_name(trial_number: int, max_train_seconds: float | None = None, seed: int | None = None) -> str:
    """The MLflow run name of a retrained winner, which says the rule that chose it and a seed other than the
    trial's: `best-trial-48`, `best-trial-48-under-2.2s`, `best-trial-48-seed-1`."""
    return f"best-trial-{trial_number}{_suffix(max_train_seconds, seed)}"


def select_point(study: optuna.Study, max_train_seconds: float | None = None) -> tuple[FrozenTrial, Point]:
    """The most accurate (trial, epoch) point (the faster on ties), optionally among those within a time limit.

    Every full epoch of a finished trial, complete or pruned, is a model its seeded retrain reproduces.
    """
    points = study_points(study)
    if not points:
        raise SelectionError(f"study {study.study_name!r} has no trained trial yet; run `python -m sweep run` first")
    if max_train_seconds is not None:
        fast = [p for p in points if p.seconds <= max_train_seconds]
        if not fast:
            quickest = min(p.seconds for p in points)
            raise SelectionError(f"no epoch of any trial ended within {max_train_seconds:g} s; the quickest took {quickest:.1f} s")
        points = fast
    point = most_accurate(points)
    return study.get_trials(deepcopy=False)[point.trial], point


def retrain(spec: StudySpec, trial: FrozenTrial, splits: Splits, epoch: int, seed: int | None = None) -> TrainResult:
    """The trial's configuration and seed (or `seed`), trained as planned and stopped after `epoch`: the
    learning-rate schedule runs over the trial's planned epochs, so with the trial's seed the weights are the
    trial's at that epoch (on CPU)."""
    rec = TrialRecord.load(trial)
    config = spec.config_for(optuna.trial.FixedTrial(trial.params), seed=rec.seed if seed is None else seed)
    if rec.jit_compile is not None:  # the path the trial ran on (XLA or not), not one chosen anew
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, jit_compile=rec.jit_compile))
    warm_up(splits)  # timed like the trial it repeats: the sweep timed it in a warm process
    return train(config, splits, on_epoch=lambda e: f"epoch {epoch} reached" if e.epoch >= epoch else None, keep_model=True, verbose=2)


def selection_rule(max_train_seconds: float | None) -> str:
    """How `best` chose its trial, in words (shown on the registered model)."""
    rule = "highest validation accuracy of any epoch of any finished trial, the faster on ties"
    return rule if max_train_seconds is None else f"{rule}, among epochs that ended within {max_train_seconds:g} s of training"


def log_best(
    tracker: Tracker, tracking_uri: str, study: optuna.Study, trial: FrozenTrial, result: TrainResult,
    splits: Splits, source: Source, model_path: Path, rule: str, study_seconds: float, name: str,
) -> dict[str, float]:
    """Test once, save a .keras file, log + register the model in MLflow with a signature, and say on the
    registered version where it came from: its trial's run, test accuracy, training time, selection rule."""
    import mlflow
    from mlflow.models import infer_signature

    test = evaluate_test(result.model, source)
    run_id = tracker.start_run(
        name, study.user_attrs.get(PARENT_ATTR), {"optuna.trial_number": str(trial.number), "role": "best", "selection": rule}
    )
    tracker.describe_run(run_id, result.config, splits, trial_number=trial.number)
    tracker.log_metrics(run_id, {"best_val_accuracy": result.best_epoch.val_accuracy, "train_seconds": result.seconds,
                                 "study_seconds": study_seconds, **test})
    tracker.set_tags(run_id, machine_tags(current()))
    model_path.parent.mkdir(parents=True, exist_ok=True)
    result.model.save(model_path)
    sample = scale_pixels(splits.val.images[:8]).numpy()
    signature = infer_signature(sample, result.model.predict(sample, verbose=0))
    requirements = [f"{p}=={importlib.metadata.version(p)}" for p in ("keras", "tensorflow")]
    name = f"mnist-{study.study_name}"
    with fluent_tracking(tracking_uri), mlflow.start_run(run_id=run_id):
        info = mlflow.keras.log_model(
            result.model, name="model", signature=signature, pip_requirements=requirements, registered_model_name=name,
        )
    trial_run = TrialRecord.load(trial).mlflow_run_id
    tracker.describe_model_version(
        name,
        info.registered_model_version,
        {
            "test_accuracy": f"{test['test_accuracy']:.4f}",
            "train_seconds": f"{result.seconds:.1f}",
            "selection": rule,
            "optuna.trial_number": str(trial.number),
            "trial_run_id": trial_run or "",
        },
        f"Trial {trial.number} of study {study.study_name!r}, retrained with seed {result.config.seed} for "
        f"{len(result.epochs)} epoch(s): test accuracy {test['test_accuracy']:.4f}, trained in {result.seconds:.1f} s. "
        f"Chosen by {rule}. The trial's run: {tracker.run_link(trial_run) if trial_run else 'not recorded'}.",
    )
    tracker.end_run(run_id, "FINISHED")
    return test


def run_best(options: Options, max_train_seconds: float | None, model_path: Path | None, seed: int | None = None) -> int:
    """`sweep best`: select on validation, retrain (with the trial's seed, or `seed`), test once, save and
    register; print what and where."""
    spec = study_spec(options)
    study = open_study(options, spec, open_store(options), create=False)
    trial, point = select_point(study, max_train_seconds)
    source, splits = load_data(options, spec)
    rec = TrialRecord.load(trial)
    seeded = f"seed {rec.seed}" if seed is None else f"seed {seed} instead of the trial's {rec.seed}"
    print(f"retraining trial {trial.number} ({trial.params}) for {point.epoch} of its {rec.epochs or '?'} epoch(s), "
          f"{seeded} (its epoch {point.epoch}: val accuracy {point.val_accuracy:.4f} after {point.seconds:.1f} s)", flush=True)
    result = retrain(spec, trial, splits, point.epoch, seed)
    # Retrained here: its seconds are this machine's; in the study's seconds they compare with the sweep's.
    study_seconds = result.seconds * seconds_scale(result.config, len(splits.train), current(), study_machine(study, create=False))
    path = model_path or options.store / "models" / model_name(study.study_name, max_train_seconds, seed)
    test = log_best(open_tracker(options, study), options.tracking, study, trial, result, splits, source, path,
                    selection_rule(max_train_seconds), study_seconds, run_name(trial.number, max_train_seconds, seed))
    took = f"{result.seconds:.1f} s" + (f" here, {study_seconds:.1f} study seconds" if round(study_seconds, 1) != round(result.seconds, 1) else "")
    print(f"trial {trial.number}, epoch {point.epoch}{'' if seed is None else f', seed {seed}'}: val accuracy "
          f"{result.epochs[-1].val_accuracy:.4f} (sweep: {point.val_accuracy:.4f}), test accuracy {test['test_accuracy']:.4f}, "
          f"test loss {test['test_loss']:.4f}, trained in {took}")
    print(f"saved {path}; registered in MLflow as mnist-{study.study_name}")
    if model_path is None and max_train_seconds is not None:
        print(f"classify images with it: python -m sweep predict --model {path} IMAGE...")
    return 0
