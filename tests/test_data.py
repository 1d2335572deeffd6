"""Data loaders (IDX and TFDS), the validation split, the pipeline, and every bad-input path."""

from __future__ import annotations

import gzip
import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mnist_core import data
from mnist_core.data import DataError, IdxSource, TfdsSource, load_splits, make_dataset, resolve_source
from tests.synthetic import idx_bytes, make_digits, write_idx_dir


def test_idx_gzipped_and_plain_give_the_same_data(idx_dir, tmp_path):
    plain = write_idx_dir(tmp_path / "plain", gz=False)
    a, b = IdxSource(idx_dir).read("train"), IdxSource(plain).read("train")
    assert a.images.shape == (600, 28, 28) and a.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert data.checksum(a) == data.checksum(b)


def test_mirror_names_with_dots_are_found(tmp_path):
    images, labels = make_digits(50, seed=3)
    for stem, array in (("train-images.idx3-ubyte", images), ("train-labels.idx1-ubyte", labels)):
        (tmp_path / stem).write_bytes(idx_bytes(array))
    assert len(IdxSource(tmp_path).read("train")) == 50


def test_test_split_is_separate(idx_dir):
    # The test file is read on its own, and no test image is among the training or validation images,
    # which between them are exactly the training file.
    source = IdxSource(idx_dir)
    test, train = source.read("test"), source.read("train")
    splits = load_splits(resolve_source(idx_dir), 0.1, seed=0)
    assert len(test) == 200
    rows = lambda images: {image.tobytes() for image in images}  # noqa: E731
    assert rows(splits.train.images) | rows(splits.val.images) == rows(train.images)
    assert not rows(test.images) & (rows(splits.train.images) | rows(splits.val.images))


def test_split_sizes_and_determinism(idx_dir):
    source = resolve_source(idx_dir)
    first, again, other = load_splits(source, 0.1, seed=0), load_splits(source, 0.1, seed=0), load_splits(source, 0.1, seed=1)
    assert (len(first.train), len(first.val)) == (540, 60)
    np.testing.assert_array_equal(first.val.images, again.val.images)
    assert not np.array_equal(first.val.images, other.val.images)
    assert first.source.startswith("idx:") and len(first.checksum) == 64


def test_split_is_a_partition(idx_dir):
    full = IdxSource(idx_dir).read("train")
    train, val = data.split_validation(full, 0.25, seed=7)
    rows = {r.tobytes() for r in np.concatenate([train.images, val.images])}
    assert len(train) + len(val) == len(full) and rows == {r.tobytes() for r in full.images}


def test_pipeline_scales_batches_and_reshuffles(splits):
    dataset = make_dataset(splits.train, batch_size=64, shuffle_seed=0)
    x, y = next(iter(dataset))
    assert x.shape == (64, 28, 28) and x.dtype.name == "float32" and y.shape == (64,)
    assert 0.0 <= float(np.min(x)) and float(np.max(x)) <= 1.0
    epoch1 = np.concatenate([b[1].numpy() for b in dataset])
    epoch2 = np.concatenate([b[1].numpy() for b in dataset])
    assert sorted(epoch1) == sorted(splits.train.labels) and not np.array_equal(epoch1, epoch2)


def test_pipeline_runs_without_autotune(splits):
    # tf.data's autotune thread made each epoch's iterator wait up to seconds to close (bench/results/README.md).
    assert make_dataset(splits.train, batch_size=64, shuffle_seed=0).options().autotune.enabled is False
    assert make_dataset(splits.val, batch_size=64).options().autotune.enabled is False


def test_env_var_selects_local_data(idx_dir, monkeypatch):
    monkeypatch.setenv("MNIST_DATA_DIR", str(idx_dir))
    assert isinstance(resolve_source(), IdxSource)


def test_default_source_is_tfds():
    assert isinstance(resolve_source(), TfdsSource)


def test_tfds_source_through_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=30):
        arrays = TfdsSource(str(tmp_path)).read("train")
    assert arrays.images.shape == (30, 28, 28) and arrays.labels.max() <= 9


def test_offline_without_data_fails_fast_and_never_downloads(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    def no_download(self, *args, **kwargs):
        raise AssertionError("must not try to download when offline")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    with pytest.raises(DataError, match="--data-dir"):
        TfdsSource(str(tmp_path / "tfds")).read("train")


def _corrupt(directory, name, content):
    (directory / name).write_bytes(content)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("train-images-idx3-ubyte.gz", b"", "shorter than an IDX header"),
        ("train-images-idx3-ubyte.gz", b"not gzip at all", "cannot read"),
        ("train-images-idx3-ubyte.gz", gzip.compress(idx_bytes(make_digits(600, 1)[0]))[:-100], "cannot read"),
        ("train-images-idx3-ubyte.gz", gzip.compress(idx_bytes(make_digits(600, 1)[0])[:-5]), "truncated or corrupt"),
        ("train-images-idx3-ubyte.gz", gzip.compress(idx_bytes(make_digits(600, 1)[1])), "3 dimension"),
        ("train-images-idx3-ubyte.gz", gzip.compress(idx_bytes(np.zeros((600, 27, 27), np.uint8))), "expected \\(N, 28, 28\\)"),
        ("train-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(np.zeros(599, np.uint8))), "600 images but 599 labels"),
        ("train-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(np.full(600, 12, np.uint8))), "label 12 out of range"),
    ],
    # Named ids: gzip bytes carry the time, so ids made from them differ between pytest-xdist workers.
    ids=["empty", "not-gzip", "cut-gzip", "truncated-idx", "labels-as-images", "27x27", "too-few-labels", "label-12"],
)
def test_bad_files_name_the_file(tmp_path, name, content, message):
    directory = write_idx_dir(tmp_path / "bad")
    _corrupt(directory, name, content)
    with pytest.raises(DataError, match=message) as error:
        IdxSource(directory).read("train")
    assert "train-" in str(error.value)


def test_missing_file_and_missing_dir(tmp_path):
    directory = write_idx_dir(tmp_path / "partial")
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        IdxSource(directory).read("test")
    with pytest.raises(DataError, match="does not exist"):
        resolve_source(tmp_path / "nowhere")


def test_seeded_fixture_and_split_are_pinned(splits):
    # Pinned: a change to the synthetic generator or the split shows up here, not as a drift in results.
    assert splits.checksum.startswith("a016a19efbad0042")
    assert splits.val.labels[:12].tolist() == [0, 6, 4, 6, 9, 0, 1, 1, 8, 1, 7, 9]
    assert splits.train.labels[:12].tolist() == [8, 8, 2, 4, 9, 4, 5, 6, 3, 9, 0, 4]
