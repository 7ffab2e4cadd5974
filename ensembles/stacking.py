"""Stacking: a meta-learner on out-of-fold CNN and second-stage probabilities.

Two meta-learners (``stack.meta``): ``logistic`` (default), a multinomial logistic regression on the
concatenated log-probabilities, and ``blend`` - ``w * CNN + (1 - w) * second stage`` with the one weight
chosen by out-of-fold log loss (:class:`BlendMeta`). ``benchmarks/bench_stacking.py`` measured both
(README, "Why stacking lost"): stacking a CNN with a second stage fit on *its own* embeddings adds
little by construction - the CNN's probabilities are a softmax of a linear map of the very embedding
the second stage already sees - and on the real GZ2 bed the fold CNNs' own outputs were far weaker
than a second stage on their embeddings, so the blend (which keeps weight on them) lost more than the
logistic stack (which learns to ignore them).

Meta-features are the log-probabilities of each base model, concatenated. They must be
out-of-fold for the images the meta-learner is fit on: in ``crossfit`` mode they come from fold
models that never saw those images (and second stages cross-validated within each fold); in
``val_cv`` mode :func:`nested_cv_stack` scores the whole stack by nested cross-validation on the
validation split, so no image is scored by a model (base or meta) that was fit on its label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from core.errors import DataError
from ensembles.crossfit import cv_predict_proba, cv_splits
from ensembles.second_stage import full_proba

_EPS = 1e-6


def meta_features(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """``[log p_1, log p_2, ...]``: concatenated, clipped log-probabilities of the base models."""
    arrs = [np.asarray(b, dtype=np.float64) for b in blocks]
    if not arrs or any(a.ndim != 2 or len(a) != len(arrs[0]) for a in arrs):
        raise DataError(f"meta-features need (N, C) blocks with the same N, got {[a.shape for a in arrs]}")
    return np.concatenate([np.log(np.clip(a, _EPS, 1.0)) for a in arrs], axis=1)


#: The meta-learners ``stack.meta`` may name.
META_LEARNERS: tuple[str, ...] = ("blend", "logistic")
#: Candidate weights of the first block in a :class:`BlendMeta`.
BLEND_GRID = np.linspace(0.0, 1.0, 21)


class BlendMeta(ClassifierMixin, BaseEstimator):
    """``w * p_1 + (1 - w) * p_2`` of two base models, ``w`` chosen on log loss (a one-parameter stack).

    Fit and applied on :func:`meta_features` of two ``(N, C)`` blocks (log-probabilities), like the
    logistic meta-learner. ``weight_`` is the first block's (the CNN's) weight.
    """

    def fit(self, X: np.ndarray, y: np.ndarray) -> BlendMeta:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] % 2:
            raise DataError(f"a blend needs the meta-features of exactly two (N, C) blocks, got shape {X.shape}")
        k = X.shape[1] // 2
        y = np.asarray(y, dtype=np.int64)
        a, b = np.exp(X[:, :k]), np.exp(X[:, k:])
        rows = np.arange(len(y))
        losses = [-np.mean(np.log(np.clip(w * a[rows, y] + (1 - w) * b[rows, y], 1e-12, None))) for w in BLEND_GRID]
        self.weight_ = float(BLEND_GRID[int(np.argmin(losses))])
        self.classes_ = np.arange(k)
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        k = len(self.classes_)
        p = self.weight_ * np.exp(X[:, :k]) + (1 - self.weight_) * np.exp(X[:, k:])
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def make_meta_learner(C: float = 1.0, *, seed: int = 0, kind: str = "logistic") -> Any:
    """The meta-learner: a :class:`BlendMeta`, or multinomial logistic regression (L2, strength ``1/C``)."""

    if kind == "blend":
        return BlendMeta()
    if kind == "logistic":
        return LogisticRegression(C=float(C), max_iter=2000, random_state=seed)
    raise DataError(f"unknown meta-learner {kind!r}; use one of: {', '.join(META_LEARNERS)}")


def fit_meta(
    blocks: Sequence[np.ndarray], y: np.ndarray, *, C: float = 1.0, seed: int = 0, kind: str = "logistic"
) -> Any:
    """Fit the meta-learner on out-of-fold base-model probabilities ``blocks`` against ``y``."""
    return make_meta_learner(C, seed=seed, kind=kind).fit(meta_features(blocks), np.asarray(y))


def meta_predict(meta: Any, blocks: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Meta-learner probabilities over all ``n_classes`` columns."""
    return full_proba(meta, meta_features(blocks), n_classes)


def nested_cv_stack(
    cnn_probs: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    make_second: Callable[[], Any],
    n_classes: int,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    inner_folds: int,
    C: float = 1.0,
    seed: int = 0,
    kind: str = "logistic",
) -> np.ndarray:
    """Honest probabilities of CNN + second stage stacked, by nested cross-validation.

    For each outer split the second stage's meta-features on the fit rows come from an inner
    cross-validation, the second stage refit on all fit rows scores the held-out rows, and the
    meta-learner fit on the fit rows combines them. Returns out-of-fold probabilities ``(N, C)``.
    """
    y = np.asarray(y, dtype=np.int64)
    out = np.zeros((len(y), n_classes), dtype=np.float64)
    for fit_rows, score_rows in splits:
        inner = cv_splits(y[fit_rows], inner_folds, seed=seed + 1)
        second_oof = cv_predict_proba(make_second, X[fit_rows], y[fit_rows], n_classes, inner)
        second = make_second().fit(X[fit_rows], y[fit_rows])
        meta = fit_meta([cnn_probs[fit_rows], second_oof], y[fit_rows], C=C, seed=seed, kind=kind)
        out[score_rows] = meta_predict(
            meta, [cnn_probs[score_rows], full_proba(second, X[score_rows], n_classes)], n_classes
        )
    return out
