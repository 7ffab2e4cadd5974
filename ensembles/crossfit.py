"""Honest out-of-fold predictions: cross-fitting the CNN, and cross-validation on the validation split.

A CNN's embeddings of its own training images are over-fit (it has memorised them), so a second
stage fit on them learns the wrong thing. Two remedies, chosen by ``mode`` in the ensemble config:

``crossfit``
    The CNN recipe is trained K times, each time on K-1 folds of the training split, and each fold
    model embeds (and classifies) only its held-out fold: out-of-fold embeddings and probabilities
    for every training image. :func:`crossfit` runs the folds through callables supplied by the
    caller (``experiments/`` trains the CNN) and checks the bookkeeping: the images a fold model
    trained on and the images it embedded are disjoint, and every training image is embedded
    exactly once. Each fold model has its own embedding space (unit ``i`` of one CNN means nothing
    to another), so second stages are fit per fold on that fold's held-out embeddings and the
    deployed ensemble averages the K (CNN, second stage) branches.

``val_cv``
    Cheaper: the full CNN embeds the validation split (images it never trained on) and the second
    stage is fit there, scored by cross-validation (:func:`cv_predict_proba`).

Nothing here touches the test split.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from core.errors import DataError
from ensembles.second_stage import full_proba

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    """One cross-fitting fold: image indices (into the data file) to train on and to hold out."""

    number: int
    train: np.ndarray
    heldout: np.ndarray


@dataclass(frozen=True)
class FoldRecord:
    """What one fold really did: the indices its model trained on and the indices it embedded."""

    number: int
    trained_on: np.ndarray
    embedded: np.ndarray


@dataclass
class OutOfFold:
    """Out-of-fold outputs for ``indices`` (row ``i`` belongs to image ``indices[i]``).

    ``fold_of[i]`` is the fold whose model embedded row ``i``; ``models`` are the fold models in
    fold order; ``records`` the bookkeeping that :func:`check_records` verified.
    """

    indices: np.ndarray
    embeddings: np.ndarray
    probs: np.ndarray
    fold_of: np.ndarray
    models: list[Any] = field(default_factory=list)
    records: list[FoldRecord] = field(default_factory=list)

    def rows_of(self, fold: int) -> np.ndarray:
        """Row numbers (into ``indices``/``embeddings``) held out by ``fold``."""
        return np.flatnonzero(self.fold_of == fold)


def make_folds(indices: np.ndarray, labels: np.ndarray, n_folds: int, *, seed: int = 0) -> list[Fold]:
    """Stratified K folds over ``indices`` (``labels`` are the labels of those indices)."""

    idx = np.asarray(indices, dtype=np.int64)
    y = np.asarray(labels)
    if len(idx) != len(y):
        raise DataError(f"{len(idx)} indices but {len(y)} labels; pass the labels of the indices")
    if n_folds < 2:
        raise DataError(f"cross-fitting needs at least 2 folds, got {n_folds}; set crossfit.folds >= 2")
    if len(idx) < 2 * n_folds:
        raise DataError(f"{len(idx)} training images are too few for {n_folds} folds; use fewer folds or more data")
    # classes with fewer members than folds cannot be stratified exactly; sklearn warns and copes
    counts = np.bincount(y.astype(np.int64))
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(np.zeros(len(idx)), y))
    if counts[counts > 0].min() < n_folds:
        log.info("some classes have fewer than %d training images; their folds are not perfectly stratified", n_folds)
    return [Fold(k, np.sort(idx[tr]), np.sort(idx[te])) for k, (tr, te) in enumerate(splits)]


def check_records(records: Sequence[FoldRecord], indices: np.ndarray) -> None:
    """Verify cross-fitting bookkeeping; raise ``DataError`` naming the first violation.

    Each fold's training indices and embedded indices must be disjoint, and every index of
    ``indices`` must be embedded exactly once over all folds (and nothing else embedded).
    """
    expected = np.sort(np.asarray(indices, dtype=np.int64))
    seen: list[np.ndarray] = []
    for rec in records:
        overlap = np.intersect1d(rec.trained_on, rec.embedded)
        if overlap.size:
            raise DataError(
                f"cross-fitting fold {rec.number} embedded {overlap.size} image(s) it was trained on "
                f"(e.g. index {int(overlap[0])}); its out-of-fold outputs would be over-fit"
            )
        seen.append(np.asarray(rec.embedded, dtype=np.int64))
    embedded = np.sort(np.concatenate(seen)) if seen else np.zeros(0, dtype=np.int64)
    if len(embedded) != len(expected) or not np.array_equal(embedded, expected):
        uniq, counts = np.unique(embedded, return_counts=True)
        twice = uniq[counts > 1]
        missing = np.setdiff1d(expected, embedded)
        extra = np.setdiff1d(embedded, expected)
        detail = (
            f"{twice.size} embedded more than once"
            if twice.size
            else f"{missing.size} never embedded"
            if missing.size
            else f"{extra.size} outside the training split"
        )
        raise DataError(
            f"cross-fitting did not embed every training image exactly once ({detail}); the fold plan is broken"
        )


def crossfit(
    folds: Sequence[Fold],
    indices: np.ndarray,
    train_fold: Callable[[Fold], tuple[Any, np.ndarray]],
    embed_fold: Callable[[Any, Fold], tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> OutOfFold:
    """Train one model per fold and collect its out-of-fold embeddings and probabilities.

    Parameters
    ----------
    folds
        From :func:`make_folds` over ``indices``.
    indices
        The training-split indices every image of which must be embedded exactly once.
    train_fold
        ``train_fold(fold) -> (model, indices it really trained on)``.
    embed_fold
        ``embed_fold(model, fold) -> (indices it embedded, embeddings, probabilities)``.
    """
    idx = np.asarray(indices, dtype=np.int64)
    position = {int(v): i for i, v in enumerate(idx)}
    if len(position) != len(idx):
        raise DataError("the training indices contain duplicates; the split is broken")
    emb_rows: dict[int, np.ndarray] = {}
    prob_rows: dict[int, np.ndarray] = {}
    fold_of = np.full(len(idx), -1, dtype=np.int64)
    records, models = [], []
    for fold in folds:
        model, trained_on = train_fold(fold)
        embedded, emb, probs = embed_fold(model, fold)
        embedded = np.asarray(embedded, dtype=np.int64)
        rec = FoldRecord(fold.number, np.asarray(trained_on, dtype=np.int64), embedded)
        check_records([rec], embedded)  # this fold on its own: trained and embedded sets disjoint
        if len(emb) != len(embedded) or len(probs) != len(embedded):
            raise DataError(f"fold {fold.number} returned {len(emb)} embeddings for {len(embedded)} images")
        for row, image in enumerate(embedded):
            pos = position.get(int(image))
            if pos is None:
                raise DataError(f"fold {fold.number} embedded image {int(image)}, which is not in the training split")
            emb_rows[pos], prob_rows[pos] = emb[row], probs[row]
            fold_of[pos] = fold.number
        records.append(rec)
        models.append(model)
        log.info(
            "cross-fitting fold %d/%d: trained on %d images, embedded %d held-out images",
            fold.number + 1,
            len(folds),
            len(rec.trained_on),
            len(embedded),
        )
    check_records(records, idx)
    embeddings = np.stack([emb_rows[i] for i in range(len(idx))]).astype(np.float32)
    probs_all = np.stack([prob_rows[i] for i in range(len(idx))]).astype(np.float32)
    return OutOfFold(
        indices=idx, embeddings=embeddings, probs=probs_all, fold_of=fold_of, models=models, records=records
    )


def cv_splits(labels: np.ndarray, n_folds: int, *, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified ``(fit rows, score rows)`` pairs over ``len(labels)`` rows (fewer folds if a class is tiny)."""

    y = np.asarray(labels)
    counts = np.bincount(y.astype(np.int64)) if len(y) else np.zeros(1, dtype=np.int64)
    if len(y) < 4 or counts.max() < 2:
        raise DataError(
            f"cross-validation needs at least 4 images and 2 of some class, got {len(y)} images; "
            "use more validation images"
        )
    k = int(max(2, min(n_folds, counts.max(), len(y) // 2)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def cv_predict_proba(
    make_estimator: Callable[[], Any],
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Out-of-fold ``predict_proba`` of fresh estimators over ``splits`` (all ``n_classes`` columns)."""

    out = np.zeros((len(y), n_classes), dtype=np.float64)
    scored = np.zeros(len(y), dtype=bool)
    for fit_rows, score_rows in splits:
        est = make_estimator().fit(X[fit_rows], y[fit_rows])
        out[score_rows] = full_proba(est, X[score_rows], n_classes)
        scored[score_rows] = True
    if not scored.all():
        raise DataError(f"cross-validation left {int((~scored).sum())} rows unscored; the folds are broken")
    return out
