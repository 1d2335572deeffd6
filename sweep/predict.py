"""Classify photos or scans of single digits with a saved model, prepared the way MNIST digits are."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_core.data import IMAGE_SHAPE, scale_pixels


def prepare_image(path: Path) -> np.ndarray:
    """A photo or scan of one digit as MNIST sees it: light on dark, fitted in 20x20, centred in 28x28."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"), np.float32)
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None
    def border(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])

    if border(pixels).mean() > 127:  # dark ink on light paper: invert to MNIST's light-on-dark
        pixels = 255.0 - pixels
    pixels = np.clip(pixels - np.median(border(pixels)), 0, None)  # background to zero
    if pixels.max() <= 0:
        raise ValueError(f"{path}: no digit found (the image is blank)")
    rows, cols = np.nonzero(pixels > 0.2 * pixels.max())
    crop = pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = 20.0 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    fitted = np.asarray(Image.fromarray(crop * (255.0 / crop.max())).resize(size, Image.LANCZOS), np.float32)
    canvas = np.zeros(IMAGE_SHAPE, np.float32)
    weights = np.clip(fitted, 0, None)
    cy, cx = (np.array(np.nonzero(weights)) * weights[weights > 0]).sum(axis=1) / weights.sum()
    top = int(np.clip(round(14 - cy), 0, 28 - fitted.shape[0]))
    left = int(np.clip(round(14 - cx), 0, 28 - fitted.shape[1]))
    canvas[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return np.clip(canvas, 0, 255).astype(np.uint8)


def predict(model_path: Path, images: list[Path]) -> list[tuple[Path, int, float]]:
    """(image, digit, probability) for each image, with the saved best model."""
    import keras

    import mnist_core.model  # noqa: F401  registers the layer, schedule and loss that saved models name

    batch = np.stack([prepare_image(p) for p in images])
    try:
        model = keras.saving.load_model(model_path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{model_path}: not a saved Keras model ({str(exc).splitlines()[0]})") from None
    probabilities = model.predict(scale_pixels(batch), verbose=0)
    return [(p, int(np.argmax(row)), float(np.max(row))) for p, row in zip(images, probabilities, strict=True)]
