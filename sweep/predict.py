"""Classify photos or scans of single digits with a saved model, prepared the way MNIST digits are."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_core.data import scale_pixels
from mnist_core.digits import IMAGE_SHAPE
from sweep.context import CommandError

# MNIST's preparation (LeCun et al.): each digit fitted in a 20 x 20 box, keeping its aspect, then placed so
# its centre of mass sits at the centre of the 28 x 28 image.
DIGIT_BOX = 20
WHITE = 255.0
# Pixels brighter than this fraction of the brightest are ink, for the digit's bounding box.
INK_FRACTION = 0.2


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

    if border(pixels).mean() > WHITE / 2:  # dark ink on light paper: invert to MNIST's light-on-dark
        pixels = WHITE - pixels
    pixels = np.clip(pixels - np.median(border(pixels)), 0, None)  # background to zero
    if pixels.max() <= 0:
        raise ValueError(f"{path}: no digit found (the image is blank)")
    rows, cols = np.nonzero(pixels > INK_FRACTION * pixels.max())
    crop = pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = DIGIT_BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    fitted = np.asarray(Image.fromarray(crop * (WHITE / crop.max())).resize(size, Image.LANCZOS), np.float32)
    canvas = np.zeros(IMAGE_SHAPE, np.float32)
    weights = np.clip(fitted, 0, None)
    cy, cx = (np.array(np.nonzero(weights)) * weights[weights > 0]).sum(axis=1) / weights.sum()
    height, width = IMAGE_SHAPE
    top = int(np.clip(round(height / 2 - cy), 0, height - fitted.shape[0]))
    left = int(np.clip(round(width / 2 - cx), 0, width - fitted.shape[1]))
    canvas[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return np.clip(canvas, 0, WHITE).astype(np.uint8)


def predict(model_path: Path, images: list[Path]) -> list[tuple[Path, int, float]]:
    """(image, digit, probability) for each image, with the saved best model."""
    import keras

    import mnist_core.network  # noqa: F401  registers the layer, schedule and loss that saved models name

    batch = np.stack([prepare_image(p) for p in images])
    try:
        model = keras.saving.load_model(model_path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{model_path}: not a saved Keras model ({str(exc).splitlines()[0]})") from None
    probabilities = model.predict(scale_pixels(batch), verbose=0)
    return [(p, int(np.argmax(row)), float(np.max(row))) for p, row in zip(images, probabilities, strict=True)]


def run_predict(images: list[Path], model: Path) -> int:
    """`sweep predict`: print each image's digit and its probability."""
    if not model.is_file():
        raise CommandError(f"no model at {model}; run `python -m sweep best` first or pass --model FILE")
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise CommandError(f"no such image: {', '.join(missing)}")
    try:
        predictions = predict(model, images)
    except ValueError as exc:  # an image that cannot be read or holds no digit
        raise CommandError(str(exc)) from None
    for path, digit, probability in predictions:
        print(f"{path}: {digit} (p={probability:.3f})")
    return 0
