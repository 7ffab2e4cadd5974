"""One epoch's sample of the training images: every image once plus extra copies of targeted classes.

A multiplier ``m_k >= 1`` means each image of class ``k`` appears ``m_k`` times per epoch on average:
once as itself, ``floor(m_k) - 1`` extra times, and once more for a random fraction ``m_k - floor(m_k)``
of the class's images (drawn anew each epoch). Which classes get multipliers, and how large, is
``augment.targeting``'s business; this module only draws the sample and measures its class mix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.errors import ConfigError, DataError
from pipelines.classes import GALAXY10


def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    """Return ``rng`` itself, or a new Generator seeded with the int ``rng``."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ConfigError(f"random state {rng!r} is not an int seed or numpy Generator; pass one")


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """Return the generator for one epoch: reproducible for ``(seed, epoch)``, different across epochs."""
    return np.random.default_rng([int(seed), int(epoch)])


def check_multipliers(multipliers: Any) -> np.ndarray:
    m = np.asarray(multipliers, dtype=np.float64)
    if m.ndim != 1 or m.size == 0 or not np.all(np.isfinite(m)) or np.any(m < 1.0):
        raise ConfigError(
            f"multipliers must be one finite number >= 1 per class, got {np.asarray(multipliers).tolist()}; "
            "build them with multipliers_from_targets or auto_multipliers"
        )
    return m


def _check_labels(labels: Any, n_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be a 1-D integer array, got {y.dtype} {y.shape}; pass the `ans` labels")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"labels must lie in 0..{n_classes - 1}, found {y.min()}..{y.max()}; check the data file")
    return y.astype(np.int64, copy=False)


def oversample_indices(labels: Any, multipliers: Any, rng: np.random.Generator | int) -> np.ndarray:
    """Return one epoch's shuffled int64 indices: every index once plus extra copies of targeted classes.

    Class ``k`` with ``n_k`` images and multiplier ``m_k`` gets ``(floor(m_k) - 1) * n_k`` whole extra
    copies plus ``(m_k - floor(m_k)) * n_k`` extra images drawn without replacement (the fractional
    count is rounded up or down at random so its expectation is exact).
    """
    m = check_multipliers(multipliers)
    y = _check_labels(labels, len(m))
    gen = _as_rng(rng)
    parts = [np.arange(len(y), dtype=np.int64)]
    for k in np.flatnonzero(m > 1.0):
        members = np.flatnonzero(y == k)
        if members.size == 0:
            continue
        whole = int(math.floor(m[k]))
        parts.extend([members] * (whole - 1))
        want = (m[k] - whole) * members.size
        n_extra = int(math.floor(want)) + int(gen.random() < want - math.floor(want))
        if n_extra:
            parts.append(gen.choice(members, size=n_extra, replace=False))
    indices = np.concatenate(parts)
    gen.shuffle(indices)
    return indices


def class_mix(labels: Any, indices: Any, slugs: Sequence[str] = GALAXY10.slugs) -> dict[str, float]:
    """Return the fraction of each class (by slug, every class of ``slugs``) among ``labels[indices]``."""
    y = _check_labels(labels, len(slugs))
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise DataError(f"indices must be a non-empty 1-D integer array, got {idx.dtype} {idx.shape}")
    if idx.min() < 0 or idx.max() >= len(y):
        raise DataError(f"indices must lie in 0..{len(y) - 1}, found {idx.min()}..{idx.max()}")
    counts = np.bincount(y[idx], minlength=len(slugs))
    return {slug: float(c) / idx.size for slug, c in zip(slugs, counts)}
