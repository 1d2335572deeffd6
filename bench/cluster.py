"""Load test: how many workers one PostgreSQL and one MLflow tracking server take.

    python bench/cluster.py --data-dir ../shared/datasets/mnist     # 16 and 32 workers: bench/results/cluster.json

A server host is set up on 127.0.0.1 as the README says (`deploy/sweep-server`: PostgreSQL and MLflow's
basic-auth app, on ports 5434 and 5078, in a temporary folder), and stopped at the end. For each N in WORKERS,
N workers are started as separate processes (not `--workers`, which the core count bounds), each a `sweep
run` of one shared study: the real trial lifecycle, storage, tracking and heartbeats, with a stand-in trainer
that imports no TensorFlow (each epoch sleeps EPOCH_SECONDS and reports a made-up accuracy), so that 32 of
them fit in memory. While they run, the bench counts PostgreSQL's client connections to the study's
database (`pg_stat_activity`, backend type `client backend`) every SAMPLE_SECONDS, in all and per worker (a worker
names its connections `sweep PID HOST`); other clients (by name) and other processes there (autovacuum workers, on
slots of their own) are counted apart. Protocol, fixed here: TRIALS_PER_WORKER x N trials per study,
EPOCHS epochs each, heartbeats every second (a stale interval of STALE_SECONDS).

Fields per run: `workers`, `trials` (trained), `trials_per_second` (trained / wall clock from the first
worker's start to the last one's end), `max_db_connections`, `max_connections_per_worker`, `max_other_backends`
(the peak of each other backend type or client), `lost` (requested but not trained), `duplicates`
(trained beyond the request, and MLflow runs beyond one per trial), `running_left` (trials and MLflow runs
left RUNNING), `failed` (FAIL trials). The file's top level repeats the largest run's fields.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import RESULTS, ROOT, clean_tree, commit, machine

WORKERS = (16, 32)
TRIALS_PER_WORKER = 4
EPOCHS = 3
EPOCH_SECONDS = 0.2
STALE_SECONDS = 6.0
SAMPLE_SECONDS = 0.5
PORTS = (5434, 5078)
SERVER = ROOT / "deploy" / "sweep-server"


def stand_in_train(config, data, budget=None, on_epoch=None, on_progress=None, **_):
    """`mnist_core.trainer.train` without TensorFlow: EPOCHS epochs of EPOCH_SECONDS each, an accuracy that
    grows with the net's size and epochs, every hook called as the trainer calls it."""
    from mnist_core.model import param_count
    from mnist_core.trainer import EpochStats, TrainResult

    epochs, started = [], time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        time.sleep(EPOCH_SECONDS)
        accuracy = 1 - 0.5 / (math.log(param_count(config.model)) * epoch)
        stats = EpochStats(epoch, 1 - accuracy, accuracy, 1 - accuracy, accuracy, EPOCH_SECONDS, len(data.train), False)
        epochs.append(stats)
        if on_epoch is not None and on_epoch(stats):
            return TrainResult(config, param_count(config.model), epochs, time.perf_counter() - started, "stopped", "pruned")
    return TrainResult(config, param_count(config.model), epochs, time.perf_counter() - started, "completed", None)


def worker(argv: list[str]) -> int:
    """One worker: `sweep run ARGV` in this process, with the stand-in trainer and a nominal machine profile
    (measuring one would import TensorFlow)."""
    from mnist_core import machine as machine_module
    from sweep import loop, trial
    from sweep.cli import main

    identity = {"cpu": "stand-in", "cores": (0,), "threads": 1, "cpu_quota": None, "gpu": None, "gpu_memory_mib": None,
                "tensorflow": "none", "host": socket.gethostname()}
    machine_module._current = machine_module.nominal(identity)
    trial.train, loop.warm_up = stand_in_train, lambda splits: None
    code = main(argv)
    if "tensorflow" in sys.modules:
        print("the stand-in worker imported TensorFlow", file=sys.stderr)
        return 3
    return code


def backends(directory: Path) -> list[tuple[str, str, int]]:
    """PostgreSQL's processes on the study's database: (backend type, application name, count). A `client
    backend` is a connection (what max_connections bounds), and a worker's are named `sweep PID HOST`
    (`sweep.storage.engine_options`); autovacuum workers show there too, on slots of their own."""
    query = ("SELECT backend_type, application_name, count(*) FROM pg_stat_activity WHERE datname = 'sweep_optuna' "
             "GROUP BY 1, 2")
    pg_bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    done = subprocess.run(["runuser", "-u", "postgres", "--", pg_bin / "psql", "-h", directory / "run", "-p", str(PORTS[0]),
                           "-U", "postgres", "-d", "postgres", "-qtAF", "\t", "-c", query], capture_output=True, text=True)
    rows = (line.split("\t") for line in done.stdout.splitlines() if line.strip())
    return [(kind, name, int(count)) for kind, name, count in rows]


def fold_sample(rows: list[tuple[str, str, int]], peak: dict) -> None:
    """Fold one sample into the peaks: client connections in all, the most one worker held, and the rest by
    type (other backends) or name (clients that are not workers)."""
    clients = [(name, count) for kind, name, count in rows if kind == "client backend"]
    workers = [count for name, count in clients if name.startswith("sweep ")]
    peak["clients"] = max(peak["clients"], sum(count for _, count in clients))
    peak["per_worker"] = max(peak["per_worker"], max(workers, default=0))
    others = {**{kind: count for kind, _, count in rows if kind != "client backend"},
              **{f"client {name or '(unnamed)'}": count for name, count in clients if not name.startswith("sweep ")}}
    for key, count in others.items():
        peak["others"][key] = max(peak["others"].get(key, 0), count)


def run(count: int, directory: Path, data_dir: str, work: Path) -> dict:
    """N workers on one fresh study; what the bench reports of them."""
    from sweep.testing.stores import study_text

    name = f"cluster-{count}"
    path = work / f"{name}.toml"
    path.write_text(study_text(name, epochs=f"{{ low = {EPOCHS}, high = {EPOCHS + 1} }}"))
    subprocess.run([SERVER, "add-worker", "worker", "--study", name, "--dir", directory], check=True, capture_output=True)
    secret = lambda user: (directory / "secrets" / f"{user}.password").read_text().strip()  # noqa: E731
    storage, tracking = f"postgresql://sweep@127.0.0.1:{PORTS[0]}/sweep_optuna", f"http://127.0.0.1:{PORTS[1]}"
    env = {**os.environ, "PGPASSWORD": secret("sweep"), "MLFLOW_TRACKING_USERNAME": "worker", "MLFLOW_TRACKING_PASSWORD": secret("worker"),
           "SWEEP_STALE_SECONDS": str(STALE_SECONDS), "PYTHONUNBUFFERED": "1"}
    requested = count * TRIALS_PER_WORKER
    argv = ["run", "--study", str(path), "--name", name, "--trials", str(requested), "--storage", storage, "--tracking-uri", tracking,
            "--data-dir", data_dir]
    peak: dict = {"clients": 0, "per_worker": 0, "others": {}}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_SECONDS):
            fold_sample(backends(directory), peak)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, __file__, "worker", *argv, "--store", str(work / f"{name}-{i}")], env=env, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(count)]
    sampler.start()
    outputs = [p.communicate()[0] for p in processes]
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    broken = [(p.returncode, out[-1500:]) for p, out in zip(processes, outputs) if p.returncode]
    if broken:
        raise SystemExit(f"{len(broken)} of {count} workers failed; the first: exit {broken[0][0]}\n{broken[0][1]}")
    return {"workers": count, "requested": requested, "wall_seconds": wall, "max_db_connections": peak["clients"],
            "max_connections_per_worker": peak["per_worker"], "max_other_backends": peak["others"],
            **tally(name, storage, tracking, env, requested)}


def tally(name: str, storage: str, tracking: str, env: dict, requested: int) -> dict:
    """The study and its runs, read back through the real clients (as a worker, with its credentials)."""
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from sweep.record import TrialRecord

    saved = {k: os.environ.get(k) for k in ("PGPASSWORD", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ.update({k: env[k] for k in saved})
    # Named, and closed at once: an engine is freed only by a garbage collection, and this one's connection
    # would otherwise sit on the database through the next run's samples.
    reader = optuna.storages.RDBStorage(f"{storage}?application_name=cluster-bench-tally")
    try:
        trials = optuna.load_study(study_name=name, storage=reader).trials
        client = MlflowClient(tracking)
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=50_000)
    finally:
        reader.engine.dispose()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    trained = sum(TrialRecord.load(t).trained for t in trials)
    with_runs = sum("mlflow_run_id" in t.user_attrs for t in trials)
    children = sum("mlflow.parentRunId" in r.data.tags for r in runs)
    return {"trials": trained, "lost": max(requested - trained, 0), "duplicates": max(trained - requested, 0) + max(children - with_runs, 0),
            "running_left": sum(t.state == TrialState.RUNNING for t in trials) + sum(r.info.status == "RUNNING" for r in runs),
            "failed": sum(t.state == TrialState.FAIL for t in trials)}


def bench(data_dir: str) -> None:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    directory, work = Path(tempfile.mkdtemp(prefix="mnist-sweep-cluster-")), Path(tempfile.mkdtemp(prefix="mnist-sweep-cluster-work-"))
    directory.chmod(0o755)
    runs = []
    try:
        subprocess.run([SERVER, "start", "--listen", "127.0.0.1", "--workers", "127.0.0.1/32", "--ports", ",".join(map(str, PORTS)),
                        "--dir", directory], check=True, capture_output=True)
        for count in WORKERS:
            runs.append(run(count, directory, str(Path(data_dir).resolve()), work))
            runs[-1]["trials_per_second"] = runs[-1]["trials"] / runs[-1]["wall_seconds"]
            print(json.dumps(runs[-1]), flush=True)
    finally:
        subprocess.run([SERVER, "stop", "--dir", directory], capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    result = {**runs[-1], "runs": runs, "protocol": {"trials_per_worker": TRIALS_PER_WORKER, "epochs": EPOCHS, "epoch_seconds": EPOCH_SECONDS,
                                                    "stale_seconds": STALE_SECONDS},
              "targets": {"lost": 0, "duplicates": 0, "running_left": 0, "max_db_connections": "< 100", "max_connections_per_worker": 2},
              "commit": commit(), "clean_tree": clean_tree(), "machine": machine(), "started": started,
              "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": "python bench/cluster.py --data-dir ../shared/datasets/mnist"}
    (RESULTS / "cluster.json").write_text(json.dumps(result, indent=2) + "\n")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    bench(parser.parse_args().data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
