"""Classification metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from core.errors import DataError
from experiments.training.evaluation import (
    class_recall,
    classification_metrics,
    per_class_table,
    prefixed,
    rare_class_tradeoff,
    scalar_metrics,
)
from pipelines.classes import CLASS_SLUGS, absent_classes


def _one_hot_probs(pred, n_classes=10, p=0.9):
    probs = np.full((len(pred), n_classes), (1 - p) / (n_classes - 1))
    probs[np.arange(len(pred)), pred] = p
    return probs


def test_hand_computed_three_classes():
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(y, _one_hot_probs(pred, 3), ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["recall_a"] == pytest.approx(2 / 3) and m["recall_b"] == pytest.approx(1 / 2) and m["recall_c"] == 1.0
    assert (
        m["precision_a"] == 1.0
        and m["precision_b"] == pytest.approx(1 / 2)
        and m["precision_c"] == pytest.approx(1 / 2)
    )
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    np.testing.assert_allclose(m["confusion"], [[2 / 3, 1 / 3, 0], [0, 0.5, 0.5], [0, 0, 1]])
    np.testing.assert_array_equal(m["confusion_counts"], [[2, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_matches_sklearn_on_random_predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 300)
    probs = rng.dirichlet(np.ones(10), 300)
    m = classification_metrics(y, probs)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=range(10)), rel=1e-6)
    recall = skm.recall_score(y, pred, average=None, labels=range(10))
    np.testing.assert_allclose(class_recall(m), recall)
    np.testing.assert_allclose(m["confusion"].sum(1), 1.0)


def test_perfect_and_absent_classes():
    y = np.array([0, 1, 1, 3])
    m = classification_metrics(y, _one_hot_probs(y))
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert m["recall_round"] == 0.0 and m["precision_round"] == 0.0  # class 2 absent, never predicted
    assert m["confusion"][2].sum() == 0.0
    # one convention for every macro metric: the classes present in y_true (issue 11: a 1-class file
    # used to give accuracy 100%, balanced accuracy 100%, macro-F1 10%)
    assert m["macro_f1"] == pytest.approx(1.0)
    assert absent_classes(y, CLASS_SLUGS) == [s for k, s in enumerate(CLASS_SLUGS) if k not in (0, 1, 3)]


def test_macro_metrics_agree_on_a_one_class_split():
    y = np.zeros(6, dtype=int)
    probs = _one_hot_probs(np.array([0, 0, 0, 0, 0, 1]))
    m = classification_metrics(y, probs)
    assert m["balanced_accuracy"] == pytest.approx(5 / 6)
    # F1 of class 0 (the only class present): 2*5 / (6 + 5)
    assert m["macro_f1"] == pytest.approx(10 / 11)


def test_log_loss_is_finite_for_zero_probability():
    probs = np.zeros((2, 10))
    probs[:, 5] = 1.0
    m = classification_metrics(np.array([0, 5]), probs)
    assert np.isfinite(m["log_loss"]) and m["log_loss"] == pytest.approx(-np.log(1e-7) / 2, rel=1e-3)


def test_prefixed_names_and_tables():
    y = np.arange(10)
    m = classification_metrics(y, _one_hot_probs(y))
    val = prefixed(m, "val")
    assert "val_recall_disturbed" in val and "val_precision_edge_on_bulge" in val and "val_accuracy" in val
    assert "val_confusion" not in val and all(isinstance(v, float) for v in val.values())
    assert set(scalar_metrics(m)) == {k[4:] for k in val}
    rows = per_class_table(m)
    assert [r["class"] for r in rows] == list(CLASS_SLUGS) and all(r["support"] == 1 for r in rows)
    np.testing.assert_allclose(class_recall(val, "val"), np.ones(10))


@pytest.mark.parametrize(
    "y, probs, match",
    [
        (np.array([0.5, 1.0]), np.ones((2, 10)) / 10, "integer"),
        (np.array([0, 1]), np.ones((3, 10)) / 10, "n_images"),
        (np.array([0, 12]), np.ones((2, 10)) / 10, "0..9"),
        (np.array([0, 1]), np.full((2, 10), np.nan), "NaN"),
        (np.array([], dtype=int), np.ones((0, 10)), "n_images"),
    ],
)
def test_bad_inputs(y, probs, match):
    with pytest.raises(DataError, match=match):
        classification_metrics(y, probs)


def test_rare_tradeoff_perfect_detector_loses_nothing() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    probs = np.full((8, 3), 0.1)
    probs[np.arange(8), y] = 0.8
    out = rare_class_tradeoff(y, probs, rare=1)
    assert out["auc"] == 1.0
    assert out["never_accuracy"] == pytest.approx(6 / 8)
    assert out["best_accuracy"] == 1.0 and out["best_accuracy_recall"] == 1.0
    assert out["recall_at_no_loss"] == 1.0


def test_rare_tradeoff_weak_detector_at_low_prevalence_buys_no_recall_for_free() -> None:
    # a balanced binary set: the rare score ranks 2 of 4 rare images above every other image, the rest below
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    score = np.array([0.9, 0.8, 0.3, 0.2, 0.7, 0.6, 0.5, 0.4])
    probs = np.stack([1 - score, score], axis=1)
    same = rare_class_tradeoff(y, probs, rare=1)
    assert same["prevalence"] == 0.5 and same["never_accuracy"] == 0.5
    assert same["best_accuracy"] == pytest.approx(0.75) and same["best_accuracy_recall"] == 0.5
    assert same["best_balanced_accuracy"] == pytest.approx(0.75)
    # at 10% prevalence: calling the top 2 rare images costs nothing (precision 1) -> recall 0.5 for free;
    # going further (threshold 0.4, every 'other' called rare before the last 2 rings) costs accuracy
    rare10 = rare_class_tradeoff(y, probs, rare=1, prevalence=0.1)
    assert rare10["never_accuracy"] == pytest.approx(0.9)
    assert rare10["best_accuracy"] == pytest.approx(0.95) and rare10["recall_at_no_loss"] == 0.5
    assert rare10["best_balanced_accuracy"] == pytest.approx(0.75)  # balanced accuracy ignores prevalence
    # a detector whose rare images all rank below an 'other' image: any call costs accuracy at 10%
    probs_bad = np.stack([1 - score[::-1], score[::-1]], axis=1)
    bad = rare_class_tradeoff(y, probs_bad, rare=1, prevalence=0.1)
    assert bad["recall_at_no_loss"] == 0.0 and bad["best_accuracy"] == pytest.approx(0.9)


def test_rare_tradeoff_refuses_a_missing_class_and_bad_prevalence() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    with pytest.raises(DataError, match="rare class"):
        rare_class_tradeoff(np.array([0, 0]), probs, rare=1)
    with pytest.raises(DataError, match="prevalence"):
        rare_class_tradeoff(np.array([0, 1]), probs, rare=1, prevalence=1.5)
