"""Outgrowing one machine: two workers share one study through PostgreSQL and an MLflow tracking server,
both behind passwords, as `deploy/sweep-server` sets them up.

The services run on 127.0.0.1; `.ci/services start` sets them up and prints the variables this test reads
(the passwords stay in the server's secrets folder). Each worker has its own local store, as it would on its
own machine. The same setup across real network namespaces, with faults: tests/test_hosts.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient

from sweep.record import FINISHED
from sweep.storage import open_storage
from sweep.testing.stores import ROOT, check_consistent, sweep_process

SERVER_DIR = os.environ.get("SWEEP_TEST_SERVER_DIR")
POSTGRES = os.environ.get("SWEEP_TEST_POSTGRES_URL")
MLFLOW = os.environ.get("SWEEP_TEST_MLFLOW_URI")

pytestmark = pytest.mark.skipif(
    not (SERVER_DIR and POSTGRES and MLFLOW), reason='needs PostgreSQL and an MLflow server: eval "$(.ci/services start)"'
)


def secret(user: str) -> str:
    return (Path(SERVER_DIR) / "secrets" / f"{user}.password").read_text().strip()


def test_two_workers_finish_one_study_through_postgresql_and_an_mlflow_server(tmp_path, idx_dir, study_file, monkeypatch):
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    subprocess.run([ROOT / "deploy/sweep-server", "add-worker", "worker", "--study", name, "--dir", SERVER_DIR],
                   check=True, capture_output=True)
    for variable, value in (("PGPASSWORD", secret("sweep")), ("MLFLOW_TRACKING_USERNAME", "worker"),
                            ("MLFLOW_TRACKING_PASSWORD", secret("worker"))):
        monkeypatch.setenv(variable, value)
    shared = ["--study", study_file, "--name", name, "--storage", POSTGRES, "--tracking-uri", MLFLOW, "--data-dir", idx_dir]
    workers = [sweep_process("run", *shared, "--trials", "4", "--store", tmp_path / f"machine-{i}") for i in range(2)]
    for worker in workers:
        out, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, out

    study = optuna.load_study(study_name=name, storage=POSTGRES)
    client = MlflowClient(MLFLOW)
    experiment = client.get_experiment_by_name(name)
    all_runs = client.search_runs([experiment.experiment_id], max_results=1000)
    check_consistent(study, all_runs, finished=4)
    assert len({t.user_attrs["pid"] for t in study.get_trials(states=FINISHED)}) == 2  # both workers trained
    trial = study.get_trials(states=FINISHED)[0]
    manifest = json.loads(Path(client.download_artifacts(trial.user_attrs["mlflow_run_id"], "manifest.json")).read_text())
    assert manifest["seed"] == trial.user_attrs["seed"]  # artifacts went through the server, not a local folder
    assert not any((tmp_path / f"machine-{i}" / "artifacts").exists() for i in range(2))


def test_a_workers_database_connections_carry_its_process_and_host_for_pg_stat_activity(tmp_path, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", secret("sweep"))
    opened = open_storage(POSTGRES, tmp_path)
    opened.get_all_studies()  # its pool keeps the connection open after the call
    observer = sqlalchemy.create_engine(POSTGRES, poolclass=sqlalchemy.pool.NullPool)
    with observer.connect() as connection:
        names = connection.execute(sqlalchemy.text(
            "SELECT application_name FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database()")).scalars().all()
    assert f"sweep {os.getpid()} {socket.gethostname()}" in names
