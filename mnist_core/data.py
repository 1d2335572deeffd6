"""MNIST from two sources, a seeded validation split and tf.data pipelines.

Sources: local LeCun IDX files (`--data-dir` / `MNIST_DATA_DIR`, gzipped or not), else
tensorflow-datasets. Training code gets `load_splits` (train + held-out validation); the test
split is read only through `Source.read("test")`, which evaluation code calls after selection.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from mnist_core.augment import Augmentation, augment_batch
from mnist_core.digits import IMAGE_SHAPE, NUM_CLASSES

DATA_DIR_ENV = "MNIST_DATA_DIR"
TFDS_HOST = "storage.googleapis.com"  # where tensorflow-datasets downloads MNIST from
Split = Literal["train", "test"]

# LeCun's names; mirrors use "-idx3-ubyte" or ".idx3-ubyte", gzipped or not.
_IDX_STEMS = {
    ("train", "images"): ("train-images", 3),
    ("train", "labels"): ("train-labels", 1),
    ("test", "images"): ("t10k-images", 3),
    ("test", "labels"): ("t10k-labels", 1),
}


class DataError(Exception):
    """MNIST cannot be loaded; the message names the file or source and how to fix it."""


@dataclass(frozen=True)
class Arrays:
    """Images (uint8, N x 28 x 28) and labels (uint8, N) of one split."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Splits:
    """Training and validation arrays, with where they came from (for run manifests)."""

    train: Arrays
    val: Arrays
    source: str
    checksum: str


class Source(Protocol):
    def read(self, split: Split) -> Arrays: ...

    def describe(self) -> str: ...


def _checked(images: np.ndarray, labels: np.ndarray, where: str) -> Arrays:
    """Reject data that is not MNIST-shaped, so a bad file fails here and not mid-training."""
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{where}: images have shape {images.shape}, expected (N, 28, 28)")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{where}: holds no examples")
    if labels.max() >= NUM_CLASSES:
        raise DataError(f"{where}: label {int(labels.max())} out of range 0-9")
    return Arrays(images.astype(np.uint8, copy=False), labels.astype(np.uint8, copy=False))


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse one IDX file of unsigned bytes with `ndim` dimensions (gzipped if named *.gz)."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({exc}); re-download the file") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: {len(raw)} bytes is shorter than an IDX header; re-download it")
    zero, dtype_code, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or dims != ndim:
        raise DataError(
            f"{path}: not an IDX file of unsigned bytes with {ndim} dimension(s) "
            f"(magic {raw[:4].hex()}); is it the right file?"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise DataError(
            f"{path}: {len(raw)} bytes, expected {expected} for shape {shape}; "
            "the file is truncated or corrupt, re-download it"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


@dataclass(frozen=True)
class IdxSource:
    """A directory with the four LeCun IDX files (any MNIST-format dataset in that layout)."""

    directory: Path

    def _file(self, split: Split, kind: str) -> tuple[Path, int]:
        stem, ndim = _IDX_STEMS[(split, kind)]
        names = [f"{stem}{sep}idx{ndim}-ubyte{gz}" for sep in "-." for gz in ("", ".gz")]
        for name in names:
            if (self.directory / name).is_file():
                return self.directory / name, ndim
        raise DataError(
            f"{self.directory}: no {names[0]}[.gz]; the directory needs the four MNIST IDX files "
            "(train-images, train-labels, t10k-images, t10k-labels)"
        )

    def read(self, split: Split) -> Arrays:
        images_path, images_ndim = self._file(split, "images")
        labels_path, labels_ndim = self._file(split, "labels")
        images = read_idx(images_path, images_ndim)
        labels = read_idx(labels_path, labels_ndim)
        return _checked(images, labels, f"{images_path.name} + {labels_path.name}")

    def describe(self) -> str:
        return f"idx:{self.directory.resolve()}"


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether `host` answers within `timeout` s; DNS runs in a thread so it cannot hang us."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


@dataclass(frozen=True)
class TfdsSource:
    """tensorflow-datasets `mnist`; downloads once into `data_dir` (TFDS default if None)."""

    data_dir: str | None = None

    def read(self, split: Split) -> Arrays:
        import tensorflow_datasets as tfds

        builder = tfds.builder("mnist", data_dir=self.data_dir)
        try:
            dataset = builder.as_dataset(split=split, as_supervised=True)
        except AssertionError:  # TFDS's way of saying "not downloaded yet"
            # TFDS retries a dead network for minutes; find out in seconds instead.
            if not _reachable(TFDS_HOST):
                raise DataError(
                    f"MNIST is not in {builder.data_dir} and {TFDS_HOST} is unreachable (offline?): "
                    f"pass --data-dir DIR (or set {DATA_DIR_ENV}) to a folder with the four MNIST "
                    "IDX files, or run once online"
                ) from None
            builder.download_and_prepare()
            dataset = builder.as_dataset(split=split, as_supervised=True)
        # Fixed-size batches: batch_size=-1 aborts on datasets of unknown size (mocked ones).
        batches = list(tfds.as_numpy(dataset.batch(10_000)))
        images = np.concatenate([b[0] for b in batches]) if batches else np.zeros((0, 28, 28, 1), np.uint8)
        labels = np.concatenate([b[1] for b in batches]) if batches else np.zeros(0, np.uint8)
        return _checked(np.squeeze(images, axis=-1), labels, f"tensorflow-datasets mnist/{split}")

    def describe(self) -> str:
        return f"tfds:mnist@{self.data_dir or 'default'}"


def resolve_source(data_dir: str | Path | None = None) -> Source:
    """Local IDX files when a directory is given (argument or $MNIST_DATA_DIR), else TFDS."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if not data_dir:
        return TfdsSource()
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise DataError(f"data dir {directory} does not exist; point --data-dir at the MNIST IDX files")
    return IdxSource(directory)


def checksum(arrays: Arrays) -> str:
    """sha256 of the decoded arrays: the same for gzipped and plain copies of one dataset."""
    digest = hashlib.sha256(arrays.images.tobytes())
    digest.update(arrays.labels.tobytes())
    return digest.hexdigest()


def split_validation(arrays: Arrays, fraction: float, seed: int) -> tuple[Arrays, Arrays]:
    """Hold out `fraction` of `arrays` for validation; the same seed gives the same split."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    n_val = round(len(arrays) * fraction)
    if not 0 < n_val < len(arrays):
        raise DataError(f"{len(arrays)} examples cannot be split with validation fraction {fraction}")
    order = np.random.default_rng(seed).permutation(len(arrays))
    val, train = order[:n_val], order[n_val:]
    return (
        Arrays(arrays.images[train], arrays.labels[train]),
        Arrays(arrays.images[val], arrays.labels[val]),
    )


def load_splits(source: Source, fraction: float = 0.1, seed: int = 0) -> Splits:
    """The training split of `source`, divided into train and a held-out validation set."""
    full = source.read("train")
    train, val = split_validation(full, fraction, seed)
    return Splits(train=train, val=val, source=source.describe(), checksum=checksum(full))


def scale_pixels(images):
    """uint8 pixels to float32 in [0, 1]: the one definition for training and for prediction."""
    import tensorflow as tf

    return tf.cast(images, tf.float32) / 255.0


def make_dataset(arrays: Arrays, batch_size: int, shuffle_seed: int | None = None, augmentation: Augmentation | None = None):
    """A tf.data pipeline: reshuffle each epoch (if seeded), batch, scale each batch, prefetch. For Keras'
    own loops (`Model.evaluate` on the test set, `predict`, the peers' `Model.fit`); `mnist_core.trainer`
    gathers its batches from resident tensors instead.

    `augmentation` (an `mnist_core.augment.Augmentation`, training only) distorts each batch after scaling,
    with per-batch seeds drawn from `shuffle_seed`: a new draw every epoch, the same draws every run.
    Autotuning is off: its background thread sleeps for periods that double up to seconds, and each
    epoch's iterator waits for it to wake before it can close (the stalls are measured in
    bench/results/README.md). The in-memory arrays need no tuning: shuffling uint8 rows and
    scaling whole batches keeps the per-example work to a copy.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((arrays.images, arrays.labels))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(arrays), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(lambda x, y: (scale_pixels(x), y))
    if augmentation is not None and augmentation.enabled:
        if shuffle_seed is None:
            raise ValueError("augmentation needs a seed: it is drawn from shuffle_seed")
        seeds = tf.data.Dataset.random(seed=shuffle_seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(lambda batch, seed: (augment_batch(batch[0], seed, augmentation), batch[1]))
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(2).with_options(options)
