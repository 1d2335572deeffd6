"""Training-set augmentation: random affine moves (translation, rotation, scale) and elastic distortion.

All of it is one resampling of each image: every output pixel reads the input at an affine image of its
own position plus, for elastic distortion, a smooth random displacement (Simard et al. 2003: uniform noise
smoothed by a Gaussian of width `elastic_sigma`, scaled by `elastic`). It runs on whole batches inside the
trainer's traced loop (or a tf.data pipeline), with stateless random ops seeded per batch, so a seed
replays the same distortions.
Only the training pipeline applies it: validation, test and `predict` see the images as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mnist_core.digits import IMAGE_SHAPE
from mnist_core.schema import bounded, check_fields


@dataclass(frozen=True)
class Augmentation:
    """How far each training image may move: `translate` (fraction of the side), `rotate` (degrees),
    `scale` (relative zoom), `elastic` (displacement scale in pixels; 0 is off), `elastic_sigma` (pixels).
    `strength` scales the four moves at once (0 turns augmentation off): one knob for a search to turn."""

    translate: float = bounded(0.0, float, 0.0, 0.5)
    rotate: float = bounded(0.0, float, 0.0, 180.0)
    scale: float = bounded(0.0, float, 0.0, 0.5)
    elastic: float = bounded(0.0, float, 0.0, 100.0)
    elastic_sigma: float = bounded(4.0, float, 0.5, 14.0)
    strength: float = bounded(1.0, float, 0.0, 2.0)

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def enabled(self) -> bool:
        return self.strength > 0 and any((self.translate, self.rotate, self.scale, self.elastic))


def _gaussian_smooth(field, sigma: float):
    """Gaussian blur of (B, H, W, C) fields, zero beyond the edges: a blur matrix on each side (two small
    matrix products cost less than a convolution with a kernel as wide as the image)."""
    import tensorflow as tf

    height, width = IMAGE_SHAPE

    def blur(n):
        offsets = tf.range(n, dtype=tf.float32)
        weights = tf.exp(-0.5 * ((offsets[:, None] - offsets[None, :]) / sigma) ** 2)
        full = tf.reduce_sum(tf.exp(-0.5 * (tf.range(-n + 1, n, dtype=tf.float32) / sigma) ** 2))
        return weights / full  # each row: the kernel's taps that fall inside the image, of a kernel summing to 1

    return tf.einsum("ij,bjkc,lk->bilc", blur(height), field, blur(width))


def _bilinear(images, ys, xs):
    """Sample (B, H, W) images at float positions (B, H, W); zero outside the image."""
    import tensorflow as tf

    height, width = IMAGE_SHAPE
    padded = tf.pad(images, ((0, 0), (1, 1), (1, 1)))  # a zero border: positions outside read zeros
    ph, pw = height + 2, width + 2
    ys = tf.clip_by_value(ys + 1.0, 0.0, ph - 1.0)
    xs = tf.clip_by_value(xs + 1.0, 0.0, pw - 1.0)
    y0, x0 = tf.floor(ys), tf.floor(xs)
    wy, wx = ys - y0, xs - x0
    y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
    y1, x1 = tf.minimum(y0 + 1, ph - 1), tf.minimum(x0 + 1, pw - 1)
    flat = tf.reshape(padded, (-1,))
    base = tf.reshape(tf.range(tf.shape(images)[0]) * ph * pw, (-1, 1, 1))

    def at(y, x):
        return tf.gather(flat, base + y * pw + x)

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def augment_batch(images, seed, augmentation: Augmentation):
    """Distort a (B, 28, 28) float batch; `seed` is a stateless seed (shape [2]): the same seed, the same batch."""
    import tensorflow as tf

    height, width = IMAGE_SHAPE
    count = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 4)

    def uniform(shape, index, bound):
        return tf.random.stateless_uniform(shape, seeds[index], -bound, bound)

    strength = augmentation.strength
    angle = uniform([count], 0, strength * augmentation.rotate * math.pi / 180.0)
    zoom = 1.0 + uniform([count], 1, strength * augmentation.scale)
    shift = uniform([count, 2], 2, strength * augmentation.translate) * tf.constant([height, width], tf.float32)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    grid_y, grid_x = tf.meshgrid(tf.range(height, dtype=tf.float32) - cy, tf.range(width, dtype=tf.float32) - cx, indexing="ij")
    cos, sin, zoom = (tf.reshape(v, (-1, 1, 1)) for v in (tf.cos(angle), tf.sin(angle), zoom))
    # Each output pixel reads from the inverse move of its position: rotated back, unzoomed, unshifted.
    xs = (cos * grid_x + sin * grid_y) / zoom + cx - tf.reshape(shift[:, 1], (-1, 1, 1))
    ys = (-sin * grid_x + cos * grid_y) / zoom + cy - tf.reshape(shift[:, 0], (-1, 1, 1))
    if augmentation.elastic:
        noise = uniform([count, height, width, 2], 3, 1.0)
        displacement = _gaussian_smooth(noise, augmentation.elastic_sigma) * (strength * augmentation.elastic)
        ys += displacement[..., 0]
        xs += displacement[..., 1]
    return _bilinear(images, ys, xs)
