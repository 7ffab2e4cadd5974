"""Batch-level label mixing: MixUp and CutMix on one-hot labels (tf.data, inside the input pipeline).

Each batch is mixed with probability ``prob``: MixUp blends whole images and their labels with a
weight ``lam ~ Beta(alpha, alpha)``; CutMix pastes a box covering a fraction ``1 - lam`` of the image
from another image of the batch and mixes the labels by the pasted area. When both are on, a mixed
batch uses one of them at random. The partner of each image is a random permutation of the batch.
"""

from __future__ import annotations

from typing import Any

from core.errors import ConfigError


def _beta(alpha: float) -> Any:
    import tensorflow as tf

    a = tf.random.gamma([], alpha)
    b = tf.random.gamma([], alpha)
    return a / (a + b)


def mix_batch(images: Any, labels: Any, *, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0) -> Any:
    """Return ``(images, labels)`` of one batch, mixed as configured (``labels`` one-hot float32).

    ``mixup`` / ``cutmix``: the Beta ``alpha`` of each (0 = off). ``prob``: chance that a batch is mixed.
    """
    import tensorflow as tf

    if mixup < 0 or cutmix < 0 or not 0 <= prob <= 1:
        raise ConfigError(f"mixup={mixup}, cutmix={cutmix} must be >= 0 and mix probability {prob} in [0, 1]")
    if mixup == 0 and cutmix == 0:
        return images, labels
    images = tf.cast(images, tf.float32)
    labels = tf.cast(labels, tf.float32)
    n = tf.shape(images)[0]
    perm = tf.random.shuffle(tf.range(n))
    other_x, other_y = tf.gather(images, perm), tf.gather(labels, perm)

    def do_mixup() -> Any:
        lam = _beta(mixup)
        return lam * images + (1 - lam) * other_x, lam * labels + (1 - lam) * other_y

    def do_cutmix() -> Any:
        lam = _beta(cutmix)
        h, w = tf.shape(images)[1], tf.shape(images)[2]
        cut = tf.sqrt(1.0 - lam)
        ch = tf.cast(tf.cast(h, tf.float32) * cut, tf.int32)
        cw = tf.cast(tf.cast(w, tf.float32) * cut, tf.int32)
        cy = tf.random.uniform([], 0, h, dtype=tf.int32)
        cx = tf.random.uniform([], 0, w, dtype=tf.int32)
        y0, y1 = tf.clip_by_value(cy - ch // 2, 0, h), tf.clip_by_value(cy + ch // 2, 0, h)
        x0, x1 = tf.clip_by_value(cx - cw // 2, 0, w), tf.clip_by_value(cx + cw // 2, 0, w)
        rows = tf.logical_and(tf.range(h) >= y0, tf.range(h) < y1)
        cols = tf.logical_and(tf.range(w) >= x0, tf.range(w) < x1)
        box = tf.cast(tf.logical_and(rows[:, None], cols[None, :]), tf.float32)[None, :, :, None]
        area = tf.reduce_mean(box)
        return images * (1 - box) + other_x * box, (1 - area) * labels + area * other_y

    def mixed() -> Any:
        if mixup > 0 and cutmix > 0:
            return tf.cond(tf.random.uniform([]) < 0.5, do_mixup, do_cutmix)
        return do_mixup() if mixup > 0 else do_cutmix()

    return tf.cond(tf.random.uniform([]) < prob, mixed, lambda: (images, labels))
