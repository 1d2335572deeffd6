"""Shared fixtures: a synthetic MNIST-format directory and its splits; nothing touches the network."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from mnist_core.data import load_splits, resolve_source
from tests.synthetic import write_idx_dir


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
    """A gzipped synthetic MNIST in LeCun's layout (600 train, 200 test images)."""
    return write_idx_dir(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def splits(idx_dir):
    return load_splits(resolve_source(idx_dir), fraction=0.1, seed=0)


@pytest.fixture(autouse=True)
def _no_ambient_data_dir(monkeypatch):
    """A developer's own MNIST_DATA_DIR must not leak into tests."""
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
