"""Tiny MNIST-format data sets: ten shapes (ring, bars, crosses...) that a small MLP learns in seconds.

Classes differ by shape, not position, so they survive the crop-and-centre step of `predict`.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def _shape(label: int) -> np.ndarray:
    """A 20x20 drawing of class `label`."""
    canvas = np.zeros((20, 20), np.float32)
    yy, xx = np.mgrid[:20, :20]
    if label == 0:
        canvas[np.abs(np.hypot(yy - 9.5, xx - 9.5) - 8) < 1.5] = 1  # ring
    elif label == 1:
        canvas[:, 8:12] = 1  # vertical bar
    elif label == 2:
        canvas[8:12, :] = 1  # horizontal bar
    elif label == 3:
        canvas[np.abs(yy - xx) < 2] = 1  # diagonal \
    elif label == 4:
        canvas[np.abs(yy + xx - 19) < 2] = 1  # diagonal /
    elif label == 5:
        canvas[:, 8:12] = canvas[8:12, :] = 1  # plus
    elif label == 6:
        canvas[(np.abs(yy - xx) < 2) | (np.abs(yy + xx - 19) < 2)] = 1  # X
    elif label == 7:
        canvas[2:18, 2:18] = 1  # filled square
    elif label == 8:
        canvas[:4, :] = canvas[:, 8:12] = 1  # T
    else:
        canvas[:, :4] = canvas[16:, :] = 1  # L
    return canvas


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` 28x28 uint8 images (light on dark, like MNIST) with labels 0-9, shifted and noisy."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.zeros((n, 28, 28), np.float32)
    for i, label in enumerate(labels):
        dy, dx = rng.integers(2, 7, 2)
        images[i, dy : dy + 20, dx : dx + 20] = _shape(int(label))
    images += rng.normal(0, 0.1, images.shape)
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array in IDX format."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dir(directory: Path, n_train: int = 600, n_test: int = 200, gz: bool = True) -> Path:
    """Write the four LeCun-named IDX files of a synthetic data set into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = make_digits(n, seed)
        for name, array in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            (directory / (name + suffix)).write_bytes(gzip.compress(data) if gz else data)
    return directory
