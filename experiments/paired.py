"""Paired verdicts: is model A better than model B on the same images? (pure numpy / SciPy)

Two models scored on the same images are compared image by image, never by their separate intervals:

- :func:`paired_bootstrap` resamples the images once for both models and gives, per metric (accuracy,
  balanced accuracy, macro-F1), the difference ``A - B`` with a percentile interval;
- :func:`mcnemar_exact` is the exact McNemar test of accuracy (a two-sided binomial test on the images
  exactly one of the two gets right);
- :func:`compare_predictions` puts both together with the per-class recall differences;
- :func:`corrected_resampled_t` is Nadeau and Bengio's corrected resampled t interval of a mean
  difference over R x K cross-validation folds, whose training sets overlap (``galaxy10 evaluate``).

:func:`verdict` words an interval: ``better`` / ``worse`` when it excludes 0, else ``not distinguishable
on N images``. A multiple-comparison correction is the caller's (the champion rule widens the level by
Bonferroni over the candidates it looked at).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import ConfigError, DataError
from experiments.training.evaluation import metric_from_counts

#: Metrics a paired bootstrap can compare (those computable from confusion counts).
PAIRED_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1")
#: Resamples of a paired bootstrap unless the caller says otherwise.
DEFAULT_PAIRED_RESAMPLES = 2000
_CHUNK = 200


def verdict(lo: float, hi: float, n_images: int | None = None) -> str:
    """``better`` when the interval of ``A - B`` lies above 0, ``worse`` below, else ``not distinguishable``
    (``... on N images`` when ``n_images`` is given)."""
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "not distinguishable" + (f" on {n_images:,} images" if n_images is not None else "")


@dataclass(frozen=True)
class PairedDifference:
    """One metric of A and B on the same images, their difference ``A - B`` and its interval."""

    metric: str
    a: float
    b: float
    diff: float
    lo: float
    hi: float
    level: float
    n_images: int
    method: str = "paired bootstrap (percentile)"

    @property
    def verdict(self) -> str:
        """``better`` / ``worse`` / ``not distinguishable on N images`` (A against B)."""
        return verdict(self.lo, self.hi, self.n_images)

    def text(self, scale: float = 1.0, digits: int = 3) -> str:
        """``+0.012 [-0.020, +0.045]`` (``scale`` 100 for points)."""
        return f"{self.diff * scale:+.{digits}f} [{self.lo * scale:+.{digits}f}, {self.hi * scale:+.{digits}f}]"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus the verdict."""
        return {
            "metric": self.metric,
            "a": self.a,
            "b": self.b,
            "diff": self.diff,
            "ci": [self.lo, self.hi],
            "level": self.level,
            "n_images": self.n_images,
            "method": self.method,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test: ``a_only`` images only A gets right, ``b_only`` only B; two-sided ``p``."""

    a_only: int
    b_only: int
    p_value: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "a_only_right": self.a_only,
            "b_only_right": self.b_only,
            "p_value": self.p_value,
            "test": "exact McNemar (two-sided binomial on the discordant images)",
        }


@dataclass(frozen=True)
class PairedComparison:
    """A against B on the same images: metric differences, McNemar and per-class recall differences."""

    a: str
    b: str
    n_images: int
    differences: Mapping[str, PairedDifference]
    mcnemar: McNemar
    recall_diff: Mapping[str, float | None] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """The verdict on accuracy."""
        return self.differences["accuracy"].verdict

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "a": self.a,
            "b": self.b,
            "n_images": self.n_images,
            "differences": {k: d.as_dict() for k, d in self.differences.items()},
            "mcnemar": self.mcnemar.as_dict(),
            "recall_diff": dict(self.recall_diff),
        }


def _labels(y_true: Any, *preds: Any) -> tuple[np.ndarray, ...]:
    y = np.asarray(y_true, dtype=np.int64)
    if y.ndim != 1 or len(y) == 0:
        raise DataError("a paired comparison needs a non-empty 1-D label array")
    out = [y]
    for p in preds:
        p = np.asarray(p, dtype=np.int64)
        if p.shape != y.shape:
            raise DataError(f"a paired comparison needs predictions for the same {len(y)} images, got {p.shape}")
        out.append(p)
    return tuple(out)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ConfigError(f"a confidence level must lie strictly between 0 and 1, got {level}")


def mcnemar_exact(y_true: Any, pred_a: Any, pred_b: Any) -> McNemar:
    """Exact two-sided McNemar test of accuracy on the same images.

    Only the discordant images count: ``k`` that A alone gets right and ``m`` that B alone gets right;
    under "equally accurate" each is A's with probability 1/2, so ``p = P(|Binomial(k + m, 1/2) - (k + m)/2|
    >= |k - (k + m)/2|)``. With no discordant image p is 1.
    """
    from scipy.stats import binomtest

    y, a, b = _labels(y_true, pred_a, pred_b)
    right_a, right_b = a == y, b == y
    a_only, b_only = int(np.sum(right_a & ~right_b)), int(np.sum(right_b & ~right_a))
    n = a_only + b_only
    p = 1.0 if n == 0 else float(binomtest(a_only, n, 0.5, alternative="two-sided").pvalue)
    return McNemar(a_only, b_only, min(1.0, p))


def paired_bootstrap(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    n_classes: int,
    *,
    metrics: Sequence[str] = PAIRED_METRICS,
    n_resamples: int = DEFAULT_PAIRED_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    interval: str = "percentile",
) -> dict[str, PairedDifference]:
    """Differences ``metric(A) - metric(B)`` on the same images with bootstrap intervals.

    Each resample draws the images once and scores both models on it (a paired bootstrap), so what the
    two share - easy and hard images - cancels. Macro metrics average over the classes present in the
    whole set (each resample averages over the same classes). Identical predictions give exactly 0 and
    the interval ``[0, 0]``. ``interval``: ``percentile`` (the resampled differences' quantiles) or
    ``normal`` (difference +- z x their standard deviation: steadier at the extreme levels that a
    multiple-comparison correction asks for, where a percentile rests on a few resamples).
    """
    if interval not in ("percentile", "normal"):
        raise ConfigError(f"paired interval {interval!r} is not supported; use percentile or normal")
    y, a, b = _labels(y_true, pred_a, pred_b)
    _check_level(level)
    unknown = [m for m in metrics if m not in PAIRED_METRICS]
    if unknown:
        raise ConfigError(f"paired metric {unknown[0]!r} is not supported; use {', '.join(PAIRED_METRICS)}")
    if not 1 <= n_resamples <= 100_000:
        raise ConfigError(f"paired bootstrap resamples {n_resamples} out of range; use 1-100,000")
    present = np.bincount(y, minlength=n_classes)[:n_classes] > 0
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    cc = n_classes * n_classes
    for start in range(0, n_resamples, _CHUNK):
        rows = rng.integers(0, len(y), size=(min(_CHUNK, n_resamples - start), len(y)))
        ca, cb = confusion_stack(y, a, rows, n_classes), confusion_stack(y, b, rows, n_classes)
        for m in metrics:
            diffs[m].append(metric_from_counts(ca, m, present) - metric_from_counts(cb, m, present))
    full_a = np.bincount(y * n_classes + a, minlength=cc).reshape(n_classes, n_classes)
    full_b = np.bincount(y * n_classes + b, minlength=cc).reshape(n_classes, n_classes)
    tail = 100 * (1 - level) / 2
    z = _normal_quantile(level)
    out = {}
    for m in metrics:
        d = np.concatenate(diffs[m])
        va, vb = float(metric_from_counts(full_a, m, present)), float(metric_from_counts(full_b, m, present))
        if interval == "normal":
            sd = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
            lo, hi, method = va - vb - z * sd, va - vb + z * sd, "paired bootstrap (normal)"
        else:
            lo, hi = float(np.percentile(d, tail)), float(np.percentile(d, 100 - tail))
            method = "paired bootstrap (percentile)"
        out[m] = PairedDifference(m, va, vb, va - vb, lo, hi, level, len(y), method)
    return out


def confusion_stack(y_true: np.ndarray, y_pred: np.ndarray, resamples: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion-count matrices ``(B, C, C)`` of ``B`` resamples (rows of index array ``resamples``)."""
    codes = (np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64))[resamples]
    codes += (np.arange(len(resamples), dtype=np.int64) * n_classes * n_classes)[:, None]
    counts = np.bincount(codes.ravel(), minlength=len(resamples) * n_classes * n_classes)
    return counts.reshape(len(resamples), n_classes, n_classes)


def _normal_quantile(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def bonferroni_level(level: float, n_comparisons: int) -> float:
    """The per-comparison level that keeps ``level`` for ``n_comparisons`` intervals together (Bonferroni)."""
    _check_level(level)
    return 1 - (1 - level) / max(1, int(n_comparisons))


def recall_differences(y_true: Any, pred_a: Any, pred_b: Any, class_slugs: Sequence[str]) -> dict[str, float | None]:
    """Per-class recall of A minus that of B (None for a class with no image)."""
    y, a, b = _labels(y_true, pred_a, pred_b)
    out: dict[str, float | None] = {}
    for k, slug in enumerate(class_slugs):
        rows = y == k
        out[slug] = None if not rows.any() else float(np.mean(a[rows] == k) - np.mean(b[rows] == k))
    return out


def compare_predictions(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    class_slugs: Sequence[str],
    *,
    a: str = "A",
    b: str = "B",
    n_resamples: int = DEFAULT_PAIRED_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> PairedComparison:
    """Everything a verdict "A against B on these images" needs (see the module docs)."""
    diffs = paired_bootstrap(y_true, pred_a, pred_b, len(class_slugs), n_resamples=n_resamples, seed=seed, level=level)
    return PairedComparison(
        a,
        b,
        len(np.asarray(y_true)),
        diffs,
        mcnemar_exact(y_true, pred_a, pred_b),
        recall_differences(y_true, pred_a, pred_b, class_slugs),
    )


def paired_mean_interval(values: Any, *, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-image paired differences (e.g. of log loss) and its normal interval, mean +- z SD / sqrt(n)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise DataError("a paired mean needs a non-empty 1-D array of per-image differences")
    _check_level(level)
    half = _normal_quantile(level) * (float(np.std(v, ddof=1)) / math.sqrt(len(v)) if len(v) > 1 else 0.0)
    mean = float(v.mean())
    return mean, mean - half, mean + half


def per_image_log_loss(y_true: Any, probs: Any) -> np.ndarray:
    """``-log p(true class)`` of every image (probabilities clipped to 1e-7, as in the metrics)."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1.0)
    p /= p.sum(axis=1, keepdims=True)
    return -np.log(p[np.arange(len(y)), y])


@dataclass(frozen=True)
class CorrectedT:
    """Nadeau-Bengio corrected resampled t interval of a mean difference over cross-validation folds."""

    mean: float
    lo: float
    hi: float
    se: float
    naive_se: float
    p_value: float
    n_folds: int
    test_train_ratio: float
    level: float

    @property
    def verdict(self) -> str:
        """``better`` / ``worse`` / ``not distinguishable``."""
        return verdict(self.lo, self.hi)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "mean": self.mean,
            "ci": [self.lo, self.hi],
            "se": self.se,
            "naive_se": self.naive_se,
            "p_value": self.p_value,
            "n_folds": self.n_folds,
            "test_train_ratio": self.test_train_ratio,
            "level": self.level,
            "verdict": self.verdict,
            "method": "Nadeau-Bengio corrected resampled t (variance x (1/J + n_test/n_train), J - 1 df)",
        }


def corrected_resampled_t(diffs: Any, *, n_train: float, n_test: float, level: float = 0.95) -> CorrectedT:
    """Corrected resampled t interval (Nadeau & Bengio 2003) of the mean of ``J`` fold differences.

    The J = R x K folds of a repeated cross-validation share most of their training images, so the fold
    differences are correlated and the naive variance ``s^2 / J`` is too small; the correction uses
    ``s^2 (1/J + n_test / n_train)`` with ``J - 1`` degrees of freedom. A spread of 0 gives a zero-width
    interval at the mean.
    """
    from scipy.stats import t as student_t

    d = np.asarray(diffs, dtype=np.float64).ravel()
    if len(d) < 2:
        raise DataError(f"a corrected resampled t needs at least 2 fold differences, got {len(d)}")
    if not (n_train > 0 and n_test > 0):
        raise DataError(f"a corrected resampled t needs positive train and test sizes, got {n_train}, {n_test}")
    _check_level(level)
    j = len(d)
    mean, var = float(d.mean()), float(d.var(ddof=1))
    ratio = float(n_test) / float(n_train)
    se, naive = math.sqrt(var * (1.0 / j + ratio)), math.sqrt(var / j)
    q = float(student_t.ppf(0.5 + level / 2, df=j - 1))
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * student_t.sf(abs(mean) / se, df=j - 1))
    return CorrectedT(mean, mean - q * se, mean + q * se, se, naive, p, j, ratio, level)
