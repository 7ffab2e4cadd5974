"""tf.data input pipelines fed from the cached uint8 resized images (a numpy array or memmap).

Training, per pass over the dataset (one Keras epoch)::

    epoch plan (oversampled + shuffled indices, numpy, seeded by (seed, epoch))
      -> batch of indices
      -> gather + augment (albumentations on the 128 px uint8 batch) + centre crop, in
         ``tf.numpy_function``, ``parallel_calls`` batches at a time, order kept
      -> float32 0..255 images, int32 labels -> prefetch

Every batch is augmented with its own seed drawn from the epoch plan, so a run is reproducible
whatever the thread timing. Each new iteration of the dataset (Keras starts one per epoch) is the
next epoch: new oversampling draw, new order, new augmentations. The model rescales the images
itself (``Rescaling(1/255)``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from core.errors import ConfigError, DataError
from pipelines.classes import CLASS_SLUGS
from pipelines.preprocess import center_crop
from pipelines.sampling import class_mix, epoch_rng, oversample_indices

log = logging.getLogger(__name__)

#: ``augment_fn(images_uint8, seed) -> images_uint8`` (same shape), e.g. a partial of
#: ``augment.policies.augment_batch``.
AugmentFn = Callable[[np.ndarray, int], np.ndarray]

#: Batches prepared in parallel; 2 keeps both cores busy without starving the model's own threads.
DEFAULT_PARALLEL_CALLS = 2


def _check_images(images: Any, crop: int) -> None:
    shape = getattr(images, "shape", None)
    if getattr(images, "dtype", None) != np.uint8 or shape is None or len(shape) != 4 or shape[-1] != 3:
        raise DataError(
            f"input images must be uint8 (N, H, W, 3), got {getattr(images, 'dtype', None)} {shape}; "
            "pass the array from pipelines.preprocess.load_resized"
        )
    if crop > min(shape[1], shape[2]):
        raise DataError(f"crop {crop} px is larger than the {shape[1]} px images; use a crop <= {shape[1]}")


def _check_rows(images: np.ndarray, labels: np.ndarray | None, indices: Any) -> np.ndarray:
    rows = np.arange(len(images), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if rows.ndim != 1 or rows.size == 0:
        raise DataError(f"indices must be a non-empty 1-D integer array, got shape {rows.shape}")
    if rows.min() < 0 or rows.max() >= len(images):
        raise DataError(f"indices must lie in 0..{len(images) - 1}, found {rows.min()}..{rows.max()}")
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{len(labels)} labels for {len(images)} images; pass one label per image")
    return rows


class EpochPlanner:
    """The per-epoch sample plan: which rows, in what order, with which augmentation seeds.

    Epoch ``e`` (0-based, counted by :meth:`next_epoch` calls) draws its oversampling and order from
    ``numpy.random.default_rng([seed, e])``. :attr:`class_mixes` keeps each epoch's class mix.
    """

    def __init__(
        self,
        labels: np.ndarray,
        rows: np.ndarray,
        multipliers: np.ndarray | None,
        seed: int,
        class_slugs: Sequence[str] | None = None,
    ) -> None:
        self.labels = np.asarray(labels)
        self.rows = rows
        self.multipliers = multipliers
        self.seed = int(seed)
        if class_slugs is None:  # as many classes as the multipliers / labels need
            n = len(multipliers) if multipliers is not None else int(self.labels.max(initial=-1)) + 1
            class_slugs = CLASS_SLUGS if n <= len(CLASS_SLUGS) else tuple(str(k) for k in range(n))
        self.class_slugs = tuple(class_slugs)
        sub = self.labels[self.rows].astype(np.int64)
        weights = np.ones(len(rows)) if multipliers is None else np.asarray(multipliers, dtype=np.float64)[sub]
        #: Samples per epoch, fixed: the expected oversampled count (Keras needs a constant epoch length).
        self.epoch_length = max(1, int(round(float(weights.sum()))))
        self.epoch = 0
        self.class_mixes: list[dict[str, float]] = []
        self._lock = threading.Lock()

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(rows, seeds)`` of ``epoch``: shuffled (oversampled) row indices and one seed per sample."""

        rng = epoch_rng(self.seed, epoch)
        sub_labels = self.labels[self.rows].astype(np.int64)
        if self.multipliers is None:
            order = rng.permutation(len(self.rows))
        else:
            order = oversample_indices(sub_labels, self.multipliers, rng)
        # Random rounding makes the oversampled count vary by a few samples; trim or top up (with
        # random repeats) to the fixed epoch length.
        if len(order) > self.epoch_length:
            order = order[: self.epoch_length]
        elif len(order) < self.epoch_length:
            order = np.concatenate([order, rng.choice(order, self.epoch_length - len(order))])
        seeds = rng.integers(0, 2**31 - 1, size=len(order), dtype=np.int64)
        return self.rows[order], seeds

    def next_epoch(self) -> tuple[np.ndarray, np.ndarray]:
        """Plan the next epoch and record its class mix (thread-safe)."""

        with self._lock:
            epoch = self.epoch
            self.epoch += 1
        rows, seeds = self.plan(epoch)
        if len(self.class_mixes) <= epoch:
            self.class_mixes.append(class_mix(self.labels.astype(np.int64), rows, self.class_slugs))
        log.debug("epoch %d plan: %d samples", epoch, len(rows))
        return rows, seeds


def _loader(
    images: np.ndarray, labels: np.ndarray, crop: int, augment_fn: AugmentFn | None
) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The per-batch numpy work: gather rows, augment (seeded), centre crop."""

    def load(rows: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(rows, kind="stable")  # sorted reads are faster on a memmap
        batch = np.empty((len(rows), *images.shape[1:]), dtype=np.uint8)
        batch[order] = images[rows[order]]
        if augment_fn is not None:
            batch = augment_fn(batch, int(seeds[0]))
        cropped = np.ascontiguousarray(center_crop(batch, crop))
        return cropped, labels[rows].astype(np.int32)

    return load


def _batch_map(load: Callable, crop: int) -> Callable:
    def fn(rows: tf.Tensor, seeds: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = tf.numpy_function(load, [rows, seeds], [tf.uint8, tf.int32], stateful=False)
        x = tf.ensure_shape(x, [None, crop, crop, 3])
        y = tf.ensure_shape(y, [None])
        return tf.cast(x, tf.float32), y

    return fn


def make_train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    crop: int,
    augment_fn: AugmentFn | None = None,
    multipliers: np.ndarray | None = None,
    seed: int = 0,
    indices: np.ndarray | None = None,
    parallel_calls: int = DEFAULT_PARALLEL_CALLS,
    planner_out: list | None = None,
    class_slugs: Sequence[str] | None = None,
) -> tf.data.Dataset:
    """Training batches ``(float32 (B, crop, crop, 3) 0..255, int32 (B,))``, a new epoch per iteration.

    Every epoch has the same length, ``round(sum of the samples' multipliers)`` samples, so Keras
    knows the number of steps.

    Parameters
    ----------
    images, labels
        uint8 ``(N, H, W, 3)`` (e.g. the memmap from ``load_resized``) and ``(N,)`` labels.
    batch_size, crop
        Batch size; side of the centre crop taken after augmentation.
    augment_fn
        ``augment_fn(batch_uint8, seed) -> batch_uint8`` or None for no augmentation.
    multipliers
        Per-class oversampling multipliers (``augment.targeting``), or None.
    seed
        Seeds the epoch plans; the same seed gives the same batches.
    indices
        Rows of ``images`` to train on (e.g. ``split.train``); None uses all.
    parallel_calls
        Batches prepared concurrently.
    planner_out
        If a list is given, the :class:`EpochPlanner` is appended to it (to read class mixes).
    class_slugs
        The data's class slugs, which name the logged class mix (default: Galaxy10's).
    """
    _check_images(images, crop)
    labels = np.asarray(labels)
    rows = _check_rows(images, labels, indices)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"batch_size={batch_size!r} must be a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer")
    planner = EpochPlanner(labels, rows, None if multipliers is None else np.asarray(multipliers), seed, class_slugs)
    if planner_out is not None:
        planner_out.append(planner)

    def epoch_plan(_: tf.Tensor) -> tf.data.Dataset:
        plan_rows, plan_seeds = tf.numpy_function(planner.next_epoch, [], [tf.int64, tf.int64], stateful=True)
        plan_rows = tf.ensure_shape(plan_rows, [None])
        plan_seeds = tf.ensure_shape(plan_seeds, [None])
        return tf.data.Dataset.from_tensor_slices((plan_rows, plan_seeds)).batch(int(batch_size))

    load = _loader(images, labels, crop, augment_fn)
    ds = tf.data.Dataset.range(1).flat_map(epoch_plan)
    ds = ds.map(_batch_map(load, crop), num_parallel_calls=int(parallel_calls), deterministic=True)
    n_batches = -(-planner.epoch_length // int(batch_size))
    ds = ds.apply(tf.data.experimental.assert_cardinality(n_batches))
    return ds.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    crop: int,
    batch_size: int,
    indices: np.ndarray | None = None,
    parallel_calls: int = DEFAULT_PARALLEL_CALLS,
) -> tf.data.Dataset:
    """Evaluation batches in row order, centre-cropped, no augmentation.

    Yields ``(images, labels)`` when ``labels`` is given, else images only.
    """
    _check_images(images, crop)
    lab = np.zeros(len(images), dtype=np.int32) if labels is None else np.asarray(labels)
    rows = _check_rows(images, lab, indices)
    load = _loader(images, lab, crop, None)
    ds = tf.data.Dataset.from_tensor_slices((rows, np.zeros(len(rows), dtype=np.int64))).batch(int(batch_size))
    ds = ds.map(_batch_map(load, crop), num_parallel_calls=int(parallel_calls), deterministic=True)
    if labels is None:
        ds = ds.map(lambda x, y: x)
    return ds.prefetch(tf.data.AUTOTUNE)


def cropped_array(images: np.ndarray, crop: int, indices: np.ndarray | None = None) -> np.ndarray:
    """Centre-cropped uint8 copy of ``images[indices]`` (for prediction and test-time augmentation)."""
    _check_images(images, crop)
    rows = _check_rows(images, None, indices)
    return np.ascontiguousarray(center_crop(np.asarray(images[rows]), crop))
