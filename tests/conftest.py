"""Shared fixtures: a synthetic MNIST-format directory and its splits; nothing touches the network."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One pinned machine profile for every test and the processes they start: no test pays the measurement, and
# the trainer's decisions do not depend on the machine (tests/test_machine.py measures, with its own cache).
os.environ["MNIST_SWEEP_PROFILE"] = str(Path(__file__).parent / "fixtures" / "machine.json")

import pytest

from mnist_core.data import load_splits, resolve_source
from sweep.cli import main
from sweep.testing.stores import TINY
from tests.synthetic import write_idx_dir


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
    """A gzipped synthetic MNIST in LeCun's layout (600 train, 200 test images)."""
    return write_idx_dir(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def splits(idx_dir):
    return load_splits(resolve_source(idx_dir), fraction=0.1, seed=0)


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch):
    """A developer's own data dir, storage or tracking server must not leak into tests."""
    for name in ("MNIST_DATA_DIR", "SWEEP_STORAGE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_clock(monkeypatch):
    """One clock for the trainer and the sweep's deadlines that advances 10 ms per batch trained, over every
    run (whoever reads it, however often): budget decisions depend on batches, not on machine speed.
    `fake_clock.stall = (step, seconds)` adds a pause after that many batches."""
    from mnist_core import trainer
    from sweep import context

    monitors = []
    real_init = trainer._Monitor.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        monitors.append(self)

    def now() -> float:
        steps = sum(m.steps for m in monitors)
        step, pause = clock.stall
        return steps * 0.01 + (pause if steps > step else 0.0)

    class clock:
        stall = (10**9, 0.0)

    monkeypatch.setattr(trainer._Monitor, "__init__", init)
    monkeypatch.setattr(trainer, "clock", now)
    monkeypatch.setattr(context, "clock", now)
    return clock


@pytest.fixture
def study_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture
def cli(tmp_path, idx_dir, study_file, capsys):
    """Run `python -m sweep COMMAND ...` in-process against `run.store`; returns (code, out, err)."""

    def run(command: str, *args: str, data: bool = True, study: Path | None = study_file):
        argv = [command]
        if study is not None:
            argv += ["--study", str(study)]
        argv += ["--store", str(run.store), *(["--data-dir", str(idx_dir)] if data else []), *args]
        code = main(argv)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    run.store = tmp_path / "store"
    return run
