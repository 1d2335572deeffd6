"""After the sweep: pick the winner, retrain it with its seed, test it once, log it; classify images.

This is the only place the test split is read: selection uses validation accuracy alone.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from mnist_core.data import IMAGE_SHAPE, Source, Splits, scale_pixels
from mnist_core.evaluate import evaluate_test
from mnist_core.trainer import TrainResult, train
from sweep.hypermodel import StudySpec
from sweep.tracking import PARENT_ATTR, Tracker, config_params, manifest


class SelectionError(Exception):
    """No trial qualifies (none complete, or none under the time limit)."""


def select_trial(study: optuna.Study, max_train_seconds: float | None = None) -> FrozenTrial:
    """The most accurate complete trial (faster wins ties), optionally among those under a time limit."""
    complete = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("best_val_accuracy") is not None
    ]
    if not complete:
        raise SelectionError(f"study {study.study_name!r} has no complete trial yet; run `python -m sweep run` first")
    if max_train_seconds is not None:
        fast = [t for t in complete if t.user_attrs["train_seconds"] <= max_train_seconds]
        if not fast:
            quickest = min(t.user_attrs["train_seconds"] for t in complete)
            raise SelectionError(f"no trial trained within {max_train_seconds:g} s; the quickest took {quickest:.1f} s")
        complete = fast
    return max(complete, key=lambda t: (t.user_attrs["best_val_accuracy"], -t.user_attrs["train_seconds"]))


def retrain(spec: StudySpec, trial: FrozenTrial, splits: Splits) -> TrainResult:
    """The trial's configuration and seed, trained to its best validation epoch (same weights on CPU)."""
    config = spec.config_for(optuna.trial.FixedTrial(trial.params), seed=trial.user_attrs["seed"])
    config = dataclasses.replace(config, epochs=int(trial.user_attrs["best_epoch"]))
    return train(config, splits, keep_model=True, verbose=2)


def log_best(
    tracker: Tracker, tracking_uri: str, study: optuna.Study, trial: FrozenTrial, result: TrainResult,
    splits: Splits, source: Source, model_path: Path,
) -> dict[str, float]:
    """Test once, save a .keras file, and log + register the model in MLflow with a signature."""
    import mlflow
    from mlflow.models import infer_signature

    test = evaluate_test(result.model, source)
    run_id = tracker.start_run(
        f"best-trial-{trial.number}", study.user_attrs.get(PARENT_ATTR), {"optuna.trial_number": str(trial.number), "role": "best"}
    )
    tracker.log_params(run_id, config_params(result.config))
    tracker.log_metrics(run_id, {"best_val_accuracy": result.best_epoch.val_accuracy, "train_seconds": result.seconds, **test})
    tracker.log_dict(run_id, manifest(result.config.seed, splits.source, splits.checksum, trial_number=trial.number), "manifest.json")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    result.model.save(model_path)
    sample = scale_pixels(splits.val.images[:8]).numpy()
    signature = infer_signature(sample, result.model.predict(sample, verbose=0))
    requirements = [f"{p}=={importlib.metadata.version(p)}" for p in ("keras", "tensorflow")]
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.keras.log_model(
            result.model, name="model", signature=signature, pip_requirements=requirements,
            registered_model_name=f"mnist-{study.study_name}",
        )
    tracker.end_run(run_id, "FINISHED")
    return test


def prepare_image(path: Path) -> np.ndarray:
    """A photo or scan of one digit as MNIST sees it: light on dark, fitted in 20x20, centred in 28x28."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"), np.float32)
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None
    def border(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])

    if border(pixels).mean() > 127:  # dark ink on light paper: invert to MNIST's light-on-dark
        pixels = 255.0 - pixels
    pixels = np.clip(pixels - np.median(border(pixels)), 0, None)  # background to zero
    if pixels.max() <= 0:
        raise ValueError(f"{path}: no digit found (the image is blank)")
    rows, cols = np.nonzero(pixels > 0.2 * pixels.max())
    crop = pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = 20.0 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    fitted = np.asarray(Image.fromarray(crop * (255.0 / crop.max())).resize(size, Image.LANCZOS), np.float32)
    canvas = np.zeros(IMAGE_SHAPE, np.float32)
    weights = np.clip(fitted, 0, None)
    cy, cx = (np.array(np.nonzero(weights)) * weights[weights > 0]).sum(axis=1) / weights.sum()
    top = int(np.clip(round(14 - cy), 0, 28 - fitted.shape[0]))
    left = int(np.clip(round(14 - cx), 0, 28 - fitted.shape[1]))
    canvas[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return np.clip(canvas, 0, 255).astype(np.uint8)


def predict(model_path: Path, images: list[Path]) -> list[tuple[Path, int, float]]:
    """(image, digit, probability) for each image, with the saved best model."""
    import keras

    batch = np.stack([prepare_image(p) for p in images])
    try:
        model = keras.saving.load_model(model_path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{model_path}: not a saved Keras model ({str(exc).splitlines()[0]})") from None
    probabilities = model.predict(scale_pixels(batch), verbose=0)
    return [(p, int(np.argmax(row)), float(np.max(row))) for p, row in zip(images, probabilities, strict=True)]
