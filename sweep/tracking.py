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
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

from mnist_core.data import Splits
from mnist_core.machine import MachineProfile
from mnist_core.trainer import EpochStats, TrainConfig, TrainResult
from sweep.credentials import TRACKING_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("keras", "tensorflow", "tensorflow-datasets", "optuna", "mlflow", "numpy", "pandas")
PARENT_ATTR = "mlflow_parent_run_id"
# MLflow 3's UI shows an experiment of this kind as model training (runs, metrics, charts), not GenAI.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# The runs table a study opens on (`sweep ui` links to it): MLflow's shared view state, an experiment tag.
VIEW_KEY = "sweep"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_COLUMNS = ("best_val_accuracy", "train_seconds", "param_count", "best_epoch", "epochs_run")

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


def _twice(write: Callable[[], object]) -> None:
    """MLflow's SQL store looks a shared row (a dataset, an experiment tag) up, then inserts it: workers
    starting together can all miss it, and the losers' inserts break the unique key. A second try finds it."""
    try:
        write()
    except MlflowException:
        write()


def study_url(tracking_uri: str, study_name: str, server: str) -> str:
    """Where the MLflow UI at `server` shows the study's runs (its front page if the study has none yet)."""
    with _schema_lock(tracking_uri):
        experiment = MlflowClient(tracking_uri).get_experiment_by_name(study_name)
    if experiment is None:
        return server
    view = f"&viewStateShareKey={VIEW_KEY}" if VIEW_TAG in experiment.tags else ""
    # MLflow 3 starts in its GenAI mode; workflowType picks the model-training one for this page.
    return f"{server}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning{view}"


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
        "keras_backend": _keras_backend(),
        "packages": versions,
        **extra,
    }


def _keras_backend() -> str:
    """Keras' backend: asked of Keras once a net has been built in this process; before that (a sweep's
    bookkeeping alone) not worth importing TensorFlow for, and read as Keras reads it, from KERAS_BACKEND."""
    keras = sys.modules.get("keras")
    return keras.backend.backend() if keras is not None else os.environ.get("KERAS_BACKEND", "tensorflow")


SUMMARY_METRICS = (
    "best_val_accuracy",
    "best_val_loss",
    "best_epoch",
    "epochs_run",
    "train_seconds",
    "study_seconds",
    "warmup_seconds",
    "seconds_per_epoch",
    "steady_epochs",
    "examples_per_second",
    "param_count",
)


def summary_metrics(result: TrainResult, seconds_scale: float = 1.0) -> dict[str, float | None]:
    """A trial's score (its best validation epoch) and costs: what the report and MLflow show. Its seconds
    are the machine's that ran it; study seconds are them times `seconds_scale` (`sweep/costmodel.py`)."""
    best = result.best_epoch
    values = (
        best.val_accuracy if best else None,
        best.val_loss if best else None,
        best.epoch if best else None,
        len(result.epochs),
        result.seconds,
        result.seconds * seconds_scale,
        result.warmup_seconds,
        result.seconds_per_epoch,
        result.steady_epochs,
        result.examples_per_second,
        result.param_count,
    )
    return dict(zip(SUMMARY_METRICS, values, strict=True))


def machine_tags(profile: MachineProfile) -> dict[str, str]:
    """A machine profile as `machine.*` run tags: which machine a run's seconds are of."""
    return {f"machine.{name}": str(value) for name, value in profile.fields().items()}


def config_params(config: TrainConfig) -> dict[str, Any]:
    """A training config flattened to MLflow params."""
    params = dataclasses.asdict(config.model)
    params.update(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed, **dataclasses.asdict(config.augmentation))
    return params


def trade_off_charts(scientific: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """MLflow's chart view, as its UI stores it in a view state (`compareRunCharts`, `compareRunSections`; the
    card fields of MLflow 3's `RunsChartsCardConfig` classes): a section of the three pictures a study is
    for, ahead of the one chart per metric MLflow adds by itself. Best validation accuracy against training
    seconds over the trial runs; the scientific parameters against it; validation accuracy by epoch."""
    section = "sweep-trade-off"
    card = lambda kind, uuid, name, **fields: {"uuid": uuid, "type": kind, "runsCountToCompare": 500, "metricSectionId": section,  # noqa: E731
                                                "deleted": False, "isGenerated": False, "displayName": name, **fields}
    charts = [
        card("SCATTER", "sweep-tradeoff", "Trade-off: best_val_accuracy vs train_seconds",
             xaxis={"key": "train_seconds", "type": "METRIC"}, yaxis={"key": "best_val_accuracy", "type": "METRIC"}),
        card("PARALLEL", "sweep-scientific", "Scientific parameters vs best_val_accuracy",
             selectedParams=list(scientific), selectedMetrics=["best_val_accuracy"], showAllRuns=True),
        card("LINE", "sweep-curves", "val_accuracy by epoch", metricKey="val_accuracy", selectedMetricKeys=["val_accuracy"],
             lineSmoothness=0, xAxisScaleType="linear", scaleType="linear", xAxisKey="step", selectedXAxisMetricKey="",
             yAxisKey="metric", yAxisExpressions=[], ignoreOutliers=False, useGlobalXaxisKey=True, useGlobalLineSmoothing=True,
             range={}),
    ]
    return charts, [{"uuid": section, "name": "Trade-off", "display": True, "isReordered": True}]


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

    def describe(self, parent_run_id: str, param_names: list[str], scientific: list[str]) -> None:
        """Open the experiment in MLflow's model-training view, on the study's runs: the parent expanded,
        best first, with the score, its cost and the searched params as columns; and in its chart view the
        trade-off first (`trade_off_charts`)."""
        columns = [f"metrics.`{m}`" for m in VIEW_COLUMNS] + [f"params.`{p}`" for p in param_names]
        charts, sections = trade_off_charts(scientific)
        view = {
            # search facets
            "searchFilter": "", "orderByKey": "metrics.`best_val_accuracy`", "orderByAsc": False, "startTime": "ALL",
            "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
            # UI state: MLflow replaces its own with this one whole, so every field is given
            "selectedColumns": ["attributes.`Dataset`", *columns], "columnOrder": [], "columnWidths": {},
            "runsExpanded": {parent_run_id: True}, "runsPinned": [], "runsHidden": [], "runsVisibilityMap": {},
            "runsHiddenMode": "SHOW_ALL", "viewMaximized": False, "runListHidden": False, "isAccordionReordered": True,
            "compareRunCharts": charts, "compareRunSections": sections,
            "useGroupedValuesInCharts": True, "hideEmptyCharts": True, "groupBy": None, "groupsExpanded": {},
            "autoRefreshEnabled": True, "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
        }
        tags = {**EXPERIMENT_KIND, VIEW_TAG: json.dumps(view)}
        for key, value in tags.items():
            _twice(lambda: self.client.set_experiment_tag(self.experiment_id, key, value))

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

    def log_epoch(self, run_id: str, stats: EpochStats, cumulative: dict[str, float] | None = None) -> None:
        """An epoch's metrics, and the run's `cumulative` ones at its end (study seconds, FLOPs, ...)."""
        self.log_metrics(
            run_id,
            {
                "loss": stats.loss,
                "accuracy": stats.accuracy,
                "val_loss": stats.val_loss,
                "val_accuracy": stats.val_accuracy,
                "epoch_seconds": stats.seconds,
                **(cumulative or {}),
            },
            step=stats.epoch,
        )

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dataset(self, run_id: str, splits: Splits) -> None:
        """The data a run trained on, as an MLflow dataset input: the UI's Dataset column tells runs on other data apart."""
        kind, _, where = splits.source.partition(":")
        dataset = Dataset(
            name="mnist", digest=splits.checksum[:12], source_type=kind, source=json.dumps({"uri": where}),
            profile=json.dumps({"train_examples": len(splits.train), "validation_examples": len(splits.val),
                                "data_checksum_sha256": splits.checksum}),
        )
        inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])]
        _twice(lambda: self.client.log_inputs(run_id, datasets=inputs))

    def describe_run(self, run_id: str, config: TrainConfig, splits: Splits, **manifest_extra: Any) -> None:
        """What a run trained: its config as params, its data as a dataset input, and a `manifest.json`
        (seed, data and checksum, code and package versions, plus `manifest_extra`). Trials and `best` alike."""
        self.log_params(run_id, config_params(config))
        self.log_dataset(run_id, splits)
        self.log_dict(run_id, manifest(config.seed, splits.source, splits.checksum, **manifest_extra), "manifest.json")

    def log_dict(self, run_id: str, data: dict[str, Any], name: str) -> None:
        self.client.log_dict(run_id, data, name)

    def log_artifact(self, run_id: str, path: Path) -> None:
        self.client.log_artifact(run_id, str(path))

    def run_link(self, run_id: str) -> str:
        """A Markdown link to a run, relative to the MLflow UI (model version descriptions render it)."""
        return f"[{run_id[:8]}](#/experiments/{self.experiment_id}/runs/{run_id})"

    def describe_model_version(self, name: str, version: int | str, tags: dict[str, str], description: str) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, value)
        self.client.update_model_version(name, str(version), description=description)

    def set_description(self, run_id: str, text: str) -> None:
        """The run's description, as MLflow's UI shows and edits it (Markdown). Workers ending together all
        write the parent run's, a shared row (`_twice`)."""
        _twice(lambda: self.client.set_tag(run_id, MLFLOW_RUN_NOTE, text))

    def end_run(self, run_id: str, status: str) -> None:
        """status: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)
