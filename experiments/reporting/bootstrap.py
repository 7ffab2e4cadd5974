"""Bootstrap confidence intervals of accuracy and macro-F1 from resampled confusion counts."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from core.errors import ConfigError, DataError
from experiments.paired import confusion_stack
from experiments.training.evaluation import metric_from_counts

#: Bootstrap resamples for the confidence intervals (default and most).
DEFAULT_RESAMPLES = 1000
MAX_RESAMPLES = 100_000


def accuracy_macro_f1(counts: np.ndarray, present: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 of confusion counts; macro-F1 averages over the classes in ``present``.

    ``present`` (boolean ``(C,)``) defaults to the classes with true images in ``counts``: the
    convention of :func:`experiments.training.evaluation.classification_metrics` (a bootstrap passes the classes
    present in the whole test split, so every resample averages over the same classes). Works on one
    ``(C, C)`` matrix or a stack ``(B, C, C)``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if present is None:
        present = counts.sum(axis=-1).reshape(-1, counts.shape[-1]).sum(axis=0) > 0
    present = np.asarray(present, dtype=bool)
    return metric_from_counts(counts, "accuracy", present), metric_from_counts(counts, "macro_f1", present)


#: Resamples drawn (and held in memory) at a time by :func:`bootstrap_ci`.
_BOOTSTRAP_CHUNK = 200


def bootstrap_ci(
    y_true: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    n_classes: int,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, tuple[float, float]]]:
    """Percentile bootstrap intervals of accuracy and macro-F1 for each model's predicted labels.

    The same resampled test sets (seeded) are used for every model (paired bootstrap), so their
    intervals are comparable. Resamples are drawn :data:`_BOOTSTRAP_CHUNK` at a time, so memory
    does not grow with ``n_resamples`` (at most :data:`MAX_RESAMPLES`). Returns
    ``{model: {"accuracy": (lo, hi), "macro_f1": (lo, hi)}}``.
    """
    y = np.asarray(y_true, dtype=np.int64)
    if y.ndim != 1 or len(y) == 0:
        raise DataError("bootstrap needs a non-empty 1-D label array (the test split is empty)")
    check_resamples(n_resamples)
    if not 0 < level < 1:
        raise ConfigError(f"bootstrap needs 0 < level < 1, got {level}")
    preds = {}
    for name, pred in predictions.items():
        pred = np.asarray(pred, dtype=np.int64)
        if pred.shape != y.shape:
            raise DataError(f"model {name!r} predicted {pred.shape} labels for {y.shape} test images")
        preds[name] = pred
    present = np.bincount(y, minlength=n_classes)[:n_classes] > 0
    rng = np.random.default_rng(seed)
    acc: dict[str, list[np.ndarray]] = {name: [] for name in preds}
    f1: dict[str, list[np.ndarray]] = {name: [] for name in preds}
    for start in range(0, n_resamples, _BOOTSTRAP_CHUNK):
        chunk = rng.integers(0, len(y), size=(min(_BOOTSTRAP_CHUNK, n_resamples - start), len(y)))
        for name, pred in preds.items():
            a, f = accuracy_macro_f1(confusion_stack(y, pred, chunk, n_classes), present)
            acc[name].append(a)
            f1[name].append(f)
    tail = 100 * (1 - level) / 2
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name in preds:
        acc_all, f1_all = np.concatenate(acc[name]), np.concatenate(f1[name])
        out[name] = {
            "accuracy": (float(np.percentile(acc_all, tail)), float(np.percentile(acc_all, 100 - tail))),
            "macro_f1": (float(np.percentile(f1_all, tail)), float(np.percentile(f1_all, 100 - tail))),
        }
    return out


def check_resamples(n_resamples: int) -> int:
    """``n_resamples`` if it lies in 1..:data:`MAX_RESAMPLES`, else one ``ConfigError`` line."""
    if not 1 <= n_resamples <= MAX_RESAMPLES:
        raise ConfigError(
            f"--bootstrap {n_resamples} is out of range; use 1-{MAX_RESAMPLES:,} resamples "
            f"(e.g. --bootstrap {DEFAULT_RESAMPLES}; the intervals settle by a few thousand)"
        )
    return n_resamples
