"""CNN ensembles by voting: soft voting and weighted averaging of member probabilities.

Weights fit on the validation split and scored on the same split would be optimistic, so
:func:`cv_weighted_vote` scores them honestly: weights fit on K-1 validation folds are applied to
the held-out fold. The deployed ensemble uses weights fit on the whole validation split.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import softmax

from core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: How weights are fit: minimise log loss on the simplex, or proportional to each member's accuracy.
WEIGHT_METHODS: tuple[str, ...] = ("log_loss", "accuracy")
_EPS = 1e-7


def _stack(probs: Sequence[np.ndarray]) -> np.ndarray:
    arrs = [np.asarray(p, dtype=np.float64) for p in probs]
    if not arrs:
        raise DataError("voting needs at least one member's probabilities")
    shape = arrs[0].shape
    if len(shape) != 2 or any(a.shape != shape for a in arrs):
        raise DataError(f"members' probabilities must share one (N, C) shape, got {[a.shape for a in arrs]}")
    return np.stack(arrs)  # (M, N, C)


def soft_vote(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of members' probabilities ``(N, C)``; equal weights when None."""
    stacked = _stack(probs)
    w = np.full(len(stacked), 1.0 / len(stacked)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(stacked),) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
        raise DataError(f"vote weights must be {len(stacked)} non-negative numbers summing to 1, got {w}")
    return np.tensordot(w, stacked, axes=1)


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0))))


def fit_vote_weights(probs: Sequence[np.ndarray], y: np.ndarray, *, method: str = "log_loss") -> np.ndarray:
    """Member weights (non-negative, sum 1) fit on ``probs`` against labels ``y``.

    ``log_loss``: minimise the log loss of the weighted mixture (softmax-parametrised weights,
    L-BFGS from equal weights). ``accuracy``: weights proportional to each member's accuracy.
    """

    stacked = _stack(probs)
    labels = np.asarray(y, dtype=np.int64)
    m = len(stacked)
    if method not in WEIGHT_METHODS:
        raise ConfigError(f"vote weight method {method!r} is unknown; use one of: {', '.join(WEIGHT_METHODS)}")
    if m == 1:
        return np.ones(1)
    if method == "accuracy":
        acc = np.array([np.mean(s.argmax(axis=1) == labels) for s in stacked])
        return acc / acc.sum() if acc.sum() > 0 else np.full(m, 1.0 / m)
    picked = stacked[:, np.arange(len(labels)), labels]  # (M, N): each member's prob of the true class

    def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
        w = softmax(z)
        mix = np.clip(w @ picked, _EPS, None)
        loss = -np.mean(np.log(mix))
        grad_w = -np.mean(picked / mix, axis=1)  # dL/dw
        grad_z = w * (grad_w - np.dot(w, grad_w))  # chain rule through the softmax
        return float(loss), grad_z

    result = minimize(objective, np.zeros(m), jac=True, method="L-BFGS-B")
    w = softmax(result.x)
    equal = np.full(m, 1.0 / m)
    if _log_loss(np.tensordot(w, stacked, axes=1), labels) > _log_loss(np.tensordot(equal, stacked, axes=1), labels):
        return equal  # the optimiser should never do worse than its starting point
    return w


def cv_weighted_vote(
    probs: Sequence[np.ndarray],
    y: np.ndarray,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    method: str = "log_loss",
) -> tuple[np.ndarray, np.ndarray]:
    """Honest probabilities of a weighted vote: per split, weights fit on the fit rows score the others.

    Returns ``(out-of-fold probabilities (N, C), per-split weights (S, M))``.
    """
    stacked = _stack(probs)
    labels = np.asarray(y, dtype=np.int64)
    out = np.zeros(stacked.shape[1:], dtype=np.float64)
    scored = np.zeros(len(labels), dtype=bool)
    all_w = []
    for fit_rows, score_rows in splits:
        w = fit_vote_weights(stacked[:, fit_rows], labels[fit_rows], method=method)
        out[score_rows] = np.tensordot(w, stacked[:, score_rows], axes=1)
        scored[score_rows] = True
        all_w.append(w)
    if not scored.all():
        raise DataError("the cross-validation splits leave validation images unscored")
    return out, np.stack(all_w)
