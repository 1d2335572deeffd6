"""MLflow tracking through `MlflowClient`: one experiment per study, a parent run per sweep, a child
run per trial with params, per-epoch metrics, summary metrics, a manifest and a final status.

The client API (no fluent active-run state) keeps this safe in several processes at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import importlib.metadata
import logging
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from mnist_core.trainer import EpochStats, TrainConfig
from sweep.credentials import TRACKING_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("keras", "tensorflow", "tensorflow-datasets", "optuna", "mlflow", "numpy", "pandas")
PARENT_ATTR = "mlflow_parent_run_id"

for _noisy in ("alembic", "mlflow"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


def default_tracking_uri(store: Path) -> str:
    return f"sqlite:///{(store / 'mlflow.db').resolve()}"


@contextlib.contextmanager
def _schema_lock(tracking_uri: str):
    """Serialise MLflow's first use of a SQLite file: processes starting together would each migrate it."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    with open(tracking_uri.removeprefix("sqlite:///") + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def fluent_tracking(tracking_uri: str):
    """MLflow's fluent API (model logging needs it) on `tracking_uri`, for the duration only.

    `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI, which would send later commands in
    this process, and every child process, to this store: the variable is put back as it was.
    """
    import mlflow

    saved = os.environ.get(TRACKING_ENV)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)  # None unsets the variable


@functools.cache
def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def manifest(seed: int, data_source: str, data_checksum: str, **extra: Any) -> dict[str, Any]:
    """What it takes to reproduce a run: seed, data and its checksum, code and package versions."""
    import keras

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "seed": seed,
        "data_source": data_source,
        "data_checksum_sha256": data_checksum,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "keras_backend": keras.backend.backend(),
        "packages": versions,
        **extra,
    }


def config_params(config: TrainConfig) -> dict[str, Any]:
    """A training config flattened to MLflow params."""
    params = dataclasses.asdict(config.model)
    params.update(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed)
    return params


class Tracker:
    """One study's MLflow experiment."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path):
        """Artifacts go under `artifact_root` for a local store; a tracking server keeps its own."""
        with _schema_lock(tracking_uri):
            self.client = MlflowClient(tracking_uri)
            found = self.client.get_experiment_by_name(experiment)
        if found is None:
            local = tracking_uri.startswith(("sqlite:", "file:", "/"))
            location = (artifact_root / experiment).resolve().as_uri() if local else None
            try:
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            except MlflowException:  # another worker created it first
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            self.experiment_id = found.experiment_id

    def start_run(self, name: str, parent_id: str | None = None, tags: dict[str, str] | None = None) -> str:
        all_tags = {MLFLOW_RUN_NAME: name, **(tags or {})}
        if parent_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_id
        return self.client.create_run(self.experiment_id, tags=all_tags).info.run_id

    def resume_run(self, run_id: str) -> None:
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        )

    def log_epoch(self, run_id: str, stats: EpochStats) -> None:
        self.log_metrics(
            run_id,
            {
                "loss": stats.loss,
                "accuracy": stats.accuracy,
                "val_loss": stats.val_loss,
                "val_accuracy": stats.val_accuracy,
                "epoch_seconds": stats.seconds,
            },
            step=stats.epoch,
        )

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dict(self, run_id: str, data: dict[str, Any], name: str) -> None:
        self.client.log_dict(run_id, data, name)

    def log_artifact(self, run_id: str, path: Path) -> None:
        self.client.log_artifact(run_id, str(path))

    def end_run(self, run_id: str, status: str) -> None:
        """status: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)
