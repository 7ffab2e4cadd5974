"""Classification metrics from labels and predicted probabilities (pure numpy / scikit-learn).

Metric names are flat strings so they can be logged as they are: ``accuracy``, ``balanced_accuracy``,
``macro_f1``, ``log_loss``, ``recall_<slug>``, ``precision_<slug>`` (a caller adds a ``val_`` or
``test_`` prefix with :func:`prefixed`).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from core.errors import DataError
from pipelines.classes import CLASS_SLUGS


def _check(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[0] == 0:
        raise DataError(f"probabilities must be (n_images, n_classes) with n_images={len(y)} > 0, got {p.shape}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise DataError(f"labels must lie in 0..{p.shape[1] - 1}, found {y.min()}..{y.max()}")
    if not np.all(np.isfinite(p)):
        raise DataError("probabilities contain NaN or inf; the model diverged (lower the learning rate)")
    return y.astype(np.int64), p


def classification_metrics(y_true: Any, probs: Any, class_slugs: Sequence[str] = CLASS_SLUGS) -> dict[str, Any]:
    """Score probabilities ``(N, C)`` against integer labels ``(N,)``.

    Returns
    -------
    dict
        Floats ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present in
        ``y_true``), ``macro_f1`` (mean F1 over the same classes: one convention for every macro
        metric; see :func:`pipelines.classes.absent_classes`), ``log_loss`` (probabilities clipped to 1e-7),
        ``recall_<slug>`` / ``precision_<slug>`` (0 where a class has no true / predicted images)
        and ``confusion`` (``(C, C)`` ndarray, rows = true class normalised to sum 1, zero rows
        for absent classes) plus ``confusion_counts`` (int).
    """
    y, p = _check(y_true, probs)
    n_classes = p.shape[1]
    if len(class_slugs) != n_classes:
        raise DataError(f"{len(class_slugs)} class names for {n_classes} probability columns")
    labels = np.arange(n_classes)
    pred = p.argmax(axis=1)
    counts = skm.confusion_matrix(y, pred, labels=labels)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    recall = np.divide(np.diag(counts), support, out=np.zeros(n_classes), where=support > 0)
    precision = np.divide(np.diag(counts), predicted, out=np.zeros(n_classes), where=predicted > 0)
    clipped = np.clip(p, 1e-7, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    out: dict[str, Any] = {
        "accuracy": float(np.mean(pred == y)),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "macro_f1": float(skm.f1_score(y, pred, labels=labels[support > 0], average="macro", zero_division=0)),
        "log_loss": float(-np.mean(np.log(clipped[np.arange(len(y)), y]))),
    }
    for k, slug in enumerate(class_slugs):
        out[f"recall_{slug}"] = float(recall[k])
    for k, slug in enumerate(class_slugs):
        out[f"precision_{slug}"] = float(precision[k])
    out["confusion"] = np.divide(
        counts, support[:, None], out=np.zeros((n_classes, n_classes)), where=support[:, None] > 0
    )
    out["confusion_counts"] = counts
    return out


def metric_from_counts(counts: np.ndarray, metric: str, present: np.ndarray) -> np.ndarray:
    """``accuracy``, ``balanced_accuracy`` or ``macro_f1`` of confusion counts ``(..., C, C)``, macro metrics
    averaged over the classes in ``present`` (the same convention as :func:`classification_metrics`)."""
    counts = np.asarray(counts, dtype=np.float64)
    tp = np.diagonal(counts, axis1=-2, axis2=-1)
    support, predicted = counts.sum(axis=-1), counts.sum(axis=-2)
    if metric == "accuracy":
        return tp.sum(axis=-1) / counts.sum(axis=(-2, -1))
    if metric == "balanced_accuracy":
        recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
        return recall[..., present].mean(axis=-1)
    if metric == "macro_f1":
        denom = support + predicted
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        return f1[..., present].mean(axis=-1)
    raise DataError(f"unknown metric {metric!r}; use accuracy, balanced_accuracy or macro_f1")


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Only the float entries of ``metrics`` (drops the confusion matrices)."""
    return {k: float(v) for k, v in metrics.items() if np.isscalar(v)}


def prefixed(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """Scalar metrics renamed ``<prefix>_<name>`` (e.g. ``val_recall_disturbed``)."""
    return {f"{prefix}_{k}": v for k, v in scalar_metrics(metrics).items()}


def per_class_table(metrics: Mapping[str, Any], class_slugs: Sequence[str] = CLASS_SLUGS) -> list[dict[str, Any]]:
    """Rows ``{class, recall, precision, support}`` for a per-class CSV."""
    support = np.asarray(metrics["confusion_counts"]).sum(axis=1)
    return [
        {
            "class": slug,
            "recall": metrics[f"recall_{slug}"],
            "precision": metrics[f"precision_{slug}"],
            "support": int(support[k]),
        }
        for k, slug in enumerate(class_slugs)
    ]


def per_class_csv(metrics: Mapping[str, Any], class_slugs: Sequence[str], class_names: Sequence[str]) -> str:
    """:func:`per_class_table` as CSV text with the class names (columns class, name, recall, precision,
    support), the per-class metrics artifact of training and ensemble runs."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["class", "name", "recall", "precision", "support"], lineterminator="\n")
    writer.writeheader()
    for row, name in zip(per_class_table(metrics, class_slugs), class_names):
        writer.writerow(
            {
                "class": row["class"],
                "name": name,
                "recall": f"{row['recall']:.6f}",
                "precision": f"{row['precision']:.6f}",
                "support": row["support"],
            }
        )
    return buf.getvalue()


def class_recall(metrics: Mapping[str, Any], prefix: str = "", class_slugs: Sequence[str] = CLASS_SLUGS) -> np.ndarray:
    """The per-class recalls, in label order, from a (possibly prefixed) metrics mapping."""
    pre = f"{prefix}_" if prefix else ""
    missing = [s for s in class_slugs if f"{pre}recall_{s}" not in metrics]
    if missing:
        raise DataError(f"metrics lack {pre}recall_ for class(es) {', '.join(missing)}")
    return np.array([float(metrics[f"{pre}recall_{s}"]) for s in class_slugs])


def rare_class_tradeoff(y_true: Any, probs: Any, rare: int, *, prevalence: float | None = None) -> dict[str, float]:
    """What any threshold on one class's probability can buy: the accuracy / rare-recall trade-off.

    The decision rule is "predict ``rare`` when its probability is at least ``t``, else the most
    probable other class", for every ``t`` (never / always / each distinct probability). Images are
    weighted so that ``rare`` has share ``prevalence`` (its share in ``y_true`` when None): a detector
    measured on a balanced set can be read at a catalog's real prevalence.

    Returns
    -------
    dict
        ``auc`` (one-vs-rest ROC AUC of the rare class's probability; NaN when one side is empty),
        ``prevalence``, ``never_accuracy`` (accuracy when ``rare`` is never predicted),
        ``best_accuracy`` and ``best_accuracy_recall`` (the most accurate threshold and the rare
        recall there), ``recall_at_no_loss`` (the largest rare recall whose accuracy is at least
        ``never_accuracy``), ``best_balanced_accuracy`` with its ``best_balanced_accuracy_accuracy``
        and ``best_balanced_accuracy_recall`` (balanced accuracy over the classes present).
    """
    y, p = _check(y_true, probs)
    n_classes = p.shape[1]
    if not 0 <= rare < n_classes:
        raise DataError(f"rare class {rare} is not one of the {n_classes} classes")
    is_rare = y == rare
    if not is_rare.any() or is_rare.all():
        raise DataError("the rare-class trade-off needs images of the rare class and of the others")
    share = float(is_rare.mean()) if prevalence is None else float(prevalence)
    if not 0.0 < share < 1.0:
        raise DataError(f"prevalence must lie strictly between 0 and 1, got {prevalence}")
    weight = np.where(is_rare, share / is_rare.sum(), (1.0 - share) / (~is_rare).sum())
    others = p.copy()
    others[:, rare] = -np.inf
    fallback_hit = others.argmax(axis=1) == y  # right when the rare class is not called
    score = p[:, rare]
    # calling the k highest-scoring images rare, for k = 0 and the end of every group of tied scores
    order = np.argsort(-score, kind="stable")
    ends = np.r_[0, np.flatnonzero(np.diff(score[order]) != 0) + 1, len(y)]
    ends = np.unique(ends)

    def called_hits(hit: np.ndarray) -> np.ndarray:  # sum of hit over the first k images, per k in ends
        return np.r_[0.0, np.cumsum(hit[order])][ends]

    rare_hit = is_rare.astype(np.float64)
    # accuracy: rare images called rare + the rest right by their fallback
    accuracy_a = called_hits(weight * rare_hit) + (weight * fallback_hit).sum() - called_hits(weight * fallback_hit)
    present = np.unique(y)
    per_class = []
    for c in present:
        in_c = (y == c).astype(np.float64)
        hits = called_hits(in_c) if c == rare else (in_c * fallback_hit).sum() - called_hits(in_c * fallback_hit)
        per_class.append(hits / in_c.sum())
    recall_a = per_class[int(np.flatnonzero(present == rare)[0])]
    balanced_a = np.mean(per_class, axis=0)
    # the first (fewest rare calls) threshold reaching the best, up to rounding of the running sums
    best = int(np.flatnonzero(accuracy_a >= accuracy_a.max() - 1e-12)[0])
    best_bal = int(np.flatnonzero(balanced_a >= balanced_a.max() - 1e-12)[0])
    no_loss = accuracy_a >= accuracy_a[0] - 1e-12
    auc = float(skm.roc_auc_score(is_rare, score))
    return {
        "auc": auc,
        "prevalence": share,
        "never_accuracy": float(accuracy_a[0]),
        "best_accuracy": float(accuracy_a[best]),
        "best_accuracy_recall": float(recall_a[best]),
        "recall_at_no_loss": float(recall_a[no_loss].max()),
        "best_balanced_accuracy": float(balanced_a[best_bal]),
        "best_balanced_accuracy_accuracy": float(accuracy_a[best_bal]),
        "best_balanced_accuracy_recall": float(recall_a[best_bal]),
    }


def cv_spread(scores: list[float] | None) -> str | None:
    """``0.612 ± 0.031 (3)``: mean and sample SD of a trial's fold scores, or None without CV."""
    if not scores:
        return None
    sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
    return f"{statistics.fmean(scores):.3f} ± {sd:.3f} ({len(scores)})"
