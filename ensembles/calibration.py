"""Temperature scaling (Guo et al. 2017) and the expected calibration error.

A CNN's softmax outputs are over-confident after training; dividing the logits by one temperature
``T`` fitted on held-out images (by log loss) makes the probabilities say how often the prediction is
right, without changing any prediction (the order of the classes of an image is kept). The models output
probabilities, so the logits are ``log p`` (equal to the logits up to a per-image constant, which softmax
ignores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from core.errors import DataError

#: Temperatures searched (log-uniform bounds).
T_RANGE = (0.05, 20.0)
#: Bins of the reliability diagram and the ECE.
N_BINS = 15


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / T)`` row-wise, float32 (T = 1 returns the probabilities unchanged)."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return p.astype(np.float32)
    logits = np.log(np.clip(p, 1e-12, 1.0)) / float(temperature)
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _nll(probs: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = apply_temperature(probs, temperature).astype(np.float64)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the log loss of ``probs`` on labels ``y`` (held-out images)."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(y) < 2 or probs.shape != (len(y), probs.shape[-1]):
        raise DataError(
            f"temperature scaling needs held-out probabilities (N, C) and N labels; got {probs.shape} "
            f"and {len(y)} labels"
        )
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    res = minimize_scalar(
        lambda t: _nll(probs, y, float(np.exp(t))), bounds=(lo, hi), method="bounded", options={"xatol": 1e-4}
    )
    best = float(np.exp(res.x))
    return best if _nll(probs, y, best) <= _nll(probs, y, 1.0) else 1.0


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: mean confidence, accuracy, count; and the expected calibration error."""

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    ece: float


def reliability(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> Reliability:
    """Reliability table of the top-class confidence in ``n_bins`` equal-width bins, and the ECE.

    ECE = sum over bins of (share of images) x |accuracy - mean confidence| (Naeini et al. 2015).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    conf = p.max(axis=1)
    right = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, conf, n_bins) / count
        acc = np.bincount(which, right, n_bins) / count
    ece = float(np.nansum(count / max(len(y), 1) * np.abs(acc - mean_conf)))
    return Reliability(mean_conf, acc, count, ece)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """The ECE of :func:`reliability`."""
    return reliability(probs, y, n_bins).ece


def calibration_metrics(probs: np.ndarray, y: np.ndarray, temperature: float | None = None) -> dict[str, float]:
    """``temperature`` (fitted on ``probs``/``y`` when None) and the ECE before and after applying it:
    ``{temperature, ece_val, ece_val_calibrated}``, as training runs and ensemble candidates log them."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    t = fit_temperature(probs, y) if temperature is None else float(temperature)
    return {
        "temperature": t,
        "ece_val": expected_calibration_error(probs, y),
        "ece_val_calibrated": expected_calibration_error(apply_temperature(probs, t), y),
    }
