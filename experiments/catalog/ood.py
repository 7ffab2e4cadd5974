"""Out-of-distribution scores: how far an image's CNN embedding lies from the training galaxies.

The score is the smallest squared Mahalanobis distance of the embedding to a class mean of the training
embeddings, with one shared covariance (Lee et al. 2018, "A simple unified framework for detecting
out-of-distribution samples"; Ledoit-Wolf shrinkage, so a few hundred training images suffice). The flag
threshold is the ``quantile`` (default 99%) of the scores of the *validation* split, so about 1% of
in-distribution images are flagged; the validation images were never trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf

from core.errors import DataError
from core.files import atomic_path
from pipelines.reader import Galaxy10File

log = logging.getLogger(__name__)

#: Training images embedded for the class means and covariance (a seeded sample when there are more).
MAX_TRAIN = 3000
#: Validation images scored for the threshold.
MAX_VAL = 3000
#: Share of validation images below the flag threshold.
QUANTILE = 0.99


@dataclass(frozen=True)
class OODDetector:
    """Class means ``(C, D)``, the shared precision matrix ``(D, D)`` and the flag threshold."""

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float
    n_train: int
    n_val: int
    val_flagged: float

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Smallest squared Mahalanobis distance to a class mean, ``(N,)`` float64."""
        x = np.asarray(embeddings, dtype=np.float64)
        best = np.full(len(x), np.inf)
        for mean in self.means:
            d = x - mean
            best = np.minimum(best, np.einsum("ij,jk,ik->i", d, self.precision, d))
        return best

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (for the catalog's metadata)."""
        return {
            "method": "min class Mahalanobis distance of the CNN embedding (shared Ledoit-Wolf covariance)",
            "threshold": self.threshold,
            "quantile": self.quantile,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "val_flagged": self.val_flagged,
        }

    def save(self, path: str | Path) -> None:
        """Write to ``path`` (npz) atomically."""
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(
                tmp,
                means=self.means,
                precision=self.precision,
                meta=np.array([self.threshold, self.quantile, self.n_train, self.n_val, self.val_flagged]),
            )

    @classmethod
    def load(cls, path: str | Path) -> OODDetector:
        with np.load(path) as z:
            threshold, quantile, n_train, n_val, flagged = z["meta"].tolist()
            return cls(z["means"], z["precision"], threshold, quantile, int(n_train), int(n_val), flagged)


def fit_detector(
    train_emb: np.ndarray, train_labels: np.ndarray, val_emb: np.ndarray, *, quantile: float = QUANTILE
) -> OODDetector:
    """Class means and shared covariance from training embeddings; the threshold from validation ones."""
    train_emb = np.asarray(train_emb, dtype=np.float64)
    labels = np.asarray(train_labels)
    classes = np.unique(labels)
    if len(train_emb) < 2 * len(classes) or len(val_emb) < 10:
        raise DataError(
            f"too few images to calibrate out-of-distribution scores ({len(train_emb)} training, "
            f"{len(val_emb)} validation); give the model's training file with more images, or --ood off"
        )
    means = np.stack([train_emb[labels == c].mean(axis=0) for c in classes])
    centred = train_emb - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    partial = OODDetector(means, precision, np.inf, quantile, len(train_emb), len(val_emb), 0.0)
    val_scores = partial.score(val_emb)
    threshold = float(np.quantile(val_scores, quantile))
    flagged = float(np.mean(val_scores > threshold))
    return OODDetector(means, precision, threshold, quantile, len(train_emb), len(val_emb), flagged)


def _sample(rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) <= k:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=k, replace=False))


def _embed_rows(embed: Callable[[np.ndarray], np.ndarray], data: Path, rows: np.ndarray, batch: int) -> np.ndarray:
    parts = []
    with Galaxy10File(data) as f:
        for _, images in f.iter_batches(batch, rows):
            parts.append(embed(images))
    return np.concatenate(parts)


def detector_from_file(
    embed: Callable[[np.ndarray], np.ndarray],
    data: str | Path,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    *,
    quantile: float = QUANTILE,
    batch: int = 64,
    seed: int = 0,
) -> OODDetector:
    """Embed (a seeded sample of) the training and validation rows of ``data`` and fit the detector."""
    data = Path(data)
    train = _sample(train_rows, MAX_TRAIN, seed)
    val = _sample(val_rows, MAX_VAL, seed + 1)
    with Galaxy10File(data) as f:
        labels = f.labels()[train]
    log.info(
        "out-of-distribution scores: embedding %d training and %d validation images of %s",
        len(train),
        len(val),
        data.name,
    )
    return fit_detector(
        _embed_rows(embed, data, train, batch), labels, _embed_rows(embed, data, val, batch), quantile=quantile
    )
