"""Pseudo-labels: which unlabelled images a teacher labels, and how many of each class a student learns from.

An image is kept when the teacher's calibrated top probability reaches ``threshold`` and it is not flagged
out-of-distribution; then each class keeps at most ``per_class`` images, the most confident first, so the
majority classes do not drown the rare ones (Xie et al. 2020, Noisy Student). Also here: the check that the
pool holds no image the student is scored on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import ConfigError, DataError


@dataclass(frozen=True)
class PseudoLabels:
    """The chosen pool rows, their pseudo-labels and confidences, and the counts behind the choice."""

    rows: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    n_pool: int
    n_ood: int
    n_unsure: int
    per_class: dict[str, int]

    def describe(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.per_class.items())
        return (
            f"{len(self.rows)} of {self.n_pool} pool images pseudo-labelled ({counts}); {self.n_unsure} below "
            f"the confidence threshold, {self.n_ood} out-of-distribution left out"
        )


def check_selection(threshold: float, per_class: int | None) -> None:
    """One line for a confidence threshold outside (0, 1) or a per-class cap outside 1-10,000,000."""
    if not 0 < threshold < 1:
        raise ConfigError(f"--threshold {threshold} is out of range; use 0 < t < 1 (e.g. 0.8)")
    if per_class is not None and not 1 <= per_class <= 10_000_000:
        raise ConfigError(f"--per-class {per_class} is out of range; use 1-10,000,000 (or leave it out: no cap)")


def select_pseudo_labels(
    probs: np.ndarray,
    class_slugs: Sequence[str],
    *,
    threshold: float,
    ood_flags: np.ndarray | None = None,
    per_class: int | None = None,
) -> PseudoLabels:
    """Pseudo-labels from calibrated probabilities ``(N, C)`` (see the module docs)."""
    check_selection(threshold, per_class)
    probs = np.asarray(probs, dtype=np.float64)
    conf, label = probs.max(axis=1), probs.argmax(axis=1)
    ood = np.zeros(len(probs), bool) if ood_flags is None else np.asarray(ood_flags, bool)
    sure = conf >= threshold
    candidates = np.flatnonzero(sure & ~ood)
    chosen = []
    counts = {}
    for k, slug in enumerate(class_slugs):
        rows = candidates[label[candidates] == k]
        rows = rows[np.argsort(-conf[rows], kind="stable")]
        if per_class is not None:
            rows = rows[:per_class]
        chosen.append(rows)
        counts[slug] = int(len(rows))
    rows = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    return PseudoLabels(rows, label[rows], conf[rows], len(probs), int(np.sum(ood & sure)), int(np.sum(~sure)), counts)


def thumbnails(images: np.ndarray, side: int = 48) -> np.ndarray:
    """Colour thumbnails ``(N, side * side * 3)``, each standardised (zero mean, unit length): correlation = dot
    product."""
    from pipelines.preprocess import resize_images

    small = resize_images(np.asarray(images, dtype=np.uint8), side).astype(np.float64)
    flat = small.reshape(len(small), -1)
    flat -= flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.where(norm > 0, norm, 1.0)


#: Pixel correlation of 48 px colour thumbnails above which two images count as the same galaxy: on the 928
#: GZ2 bed images no two distinct galaxies reach 0.98, while a resampled copy keeps at least 0.996.
SAME_GALAXY_CORRELATION = 0.985


def refuse_scored_images(pool: np.ndarray, scored: np.ndarray, *, what: str, threshold: float | None = None) -> None:
    """One ``DataError`` line when the pool holds an image of ``scored`` (the images a score is computed on):
    the same galaxy, found by the correlation of 48 px colour thumbnails (resampling and JPEG do not hide it)."""
    if len(pool) == 0 or len(scored) == 0:
        return
    threshold = SAME_GALAXY_CORRELATION if threshold is None else threshold
    a, b = thumbnails(pool), thumbnails(scored)
    hits = 0
    first = None
    for start in range(0, len(a), 2048):
        corr = a[start : start + 2048] @ b.T
        found = np.flatnonzero(corr.max(axis=1) > threshold)
        if len(found) and first is None:
            first = start + int(found[0])
        hits += len(found)
    if hits:
        raise DataError(
            f"the unlabelled pool holds {hits} image(s) of the {what} (pool image {first} is one): a "
            "pool must not contain the images a score is computed on; remove them from the pool"
        )
