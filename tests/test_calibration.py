"""Temperature scaling and the expected calibration error (ensembles/calibration.py), and where they are used."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import DataError
from ensembles.calibration import apply_temperature, expected_calibration_error, fit_temperature, reliability


def _overconfident(n: int, seed: int, sharpen: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from calibrated probabilities, then the probabilities sharpened (logits x ``sharpen``)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.2, (n, 4))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p])
    return apply_temperature(p, 1.0 / sharpen), y


def test_temperature_scaling_lowers_validation_ece_and_keeps_predictions() -> None:
    probs, y = _overconfident(4000, 0)
    t = fit_temperature(probs, y)
    assert t == pytest.approx(3.0, rel=0.15)  # undoes the sharpening
    calibrated = apply_temperature(probs, t)
    before, after = expected_calibration_error(probs, y), expected_calibration_error(calibrated, y)
    assert before > 0.1 and after < 0.03 and after < before / 4
    np.testing.assert_array_equal(calibrated.argmax(axis=1), probs.argmax(axis=1))
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0, rtol=1e-5)
    # on images it was not fitted on, too
    other, y2 = _overconfident(4000, 1)
    assert expected_calibration_error(apply_temperature(other, t), y2) < expected_calibration_error(other, y2) / 3


def test_calibrated_probabilities_keep_temperature_near_one() -> None:
    probs, y = _overconfident(4000, 2, sharpen=1.0)
    assert fit_temperature(probs, y) == pytest.approx(1.0, abs=0.12)
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs.astype(np.float32))


def test_reliability_bins_count_every_image() -> None:
    probs, y = _overconfident(500, 3)
    rel = reliability(probs, y, n_bins=10)
    assert rel.count.sum() == 500 and len(rel.confidence) == 10
    filled = rel.count > 0
    assert np.all((rel.accuracy[filled] >= 0) & (rel.accuracy[filled] <= 1))
    perfect = np.eye(4)[y]
    assert expected_calibration_error(perfect, y) == pytest.approx(0.0)
    with pytest.raises(DataError, match="held-out"):
        fit_temperature(probs[:1], y[:1])


@pytest.mark.slow
def test_training_fits_and_stores_the_temperature(smoke_model) -> None:
    """Every training run fits its temperature on validation, logs ECE before/after, stores it with the model."""
    from mlflow import MlflowClient

    from experiments.serving.predictor import load_predictor

    metrics = MlflowClient(smoke_model.tracking_uri).get_run(smoke_model.run_id).data.metrics
    assert {"temperature", "ece_val", "ece_val_calibrated"} <= set(metrics)
    predictor = load_predictor(smoke_model.model_uri, ws=smoke_model.ws)
    assert predictor.card.temperature == pytest.approx(metrics["temperature"], rel=1e-5)
