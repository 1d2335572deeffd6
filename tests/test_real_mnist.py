"""Real MNIST (slow; run with `MNIST_DATA_DIR=... pytest -m slow`): the canonical files load and a small MLP learns them."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest

from mnist_core.data import load_splits, resolve_source
from mnist_core.model import MLPConfig
from mnist_core.trainer import TrainConfig, train

DATA = os.environ.get("MNIST_DATA_DIR")  # read at import: an autouse fixture hides it from each test
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not DATA, reason="set MNIST_DATA_DIR to the real MNIST IDX files")]


def test_files_match_their_published_checksums():
    sums = Path(DATA) / "MD5SUMS.uncompressed"
    if not sums.exists():
        pytest.skip("no MD5SUMS.uncompressed beside the files")
    for line in sums.read_text().splitlines():
        digest, name = line.split()
        path = Path(DATA) / name
        raw = path.read_bytes() if path.exists() else gzip.decompress((Path(DATA) / f"{name}.gz").read_bytes())
        assert hashlib.md5(raw).hexdigest() == digest, name


def test_split_sizes_like_the_seed():
    source = resolve_source(DATA)
    splits = load_splits(source, 0.1, seed=0)
    assert (len(splits.train), len(splits.val), len(source.read("test"))) == (54_000, 6_000, 10_000)


def test_small_mlp_learns_real_digits():
    splits = load_splits(resolve_source(DATA), 0.1, seed=0)
    result = train(TrainConfig(MLPConfig(depth=2, width=256), epochs=2, batch_size=128), splits)
    assert result.outcome == "completed" and result.best_epoch.val_accuracy > 0.96
