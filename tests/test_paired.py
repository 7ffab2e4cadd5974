"""Paired verdicts: bootstrap differences, exact McNemar, the corrected resampled t."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.errors import ConfigError, DataError
from experiments.paired import (
    compare_predictions,
    corrected_resampled_t,
    mcnemar_exact,
    paired_bootstrap,
    paired_mean_interval,
    verdict,
)


def _preds(n: int = 300, seed: int = 0, acc: float = 0.8, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return y, np.where(rng.random(n) < acc, y, (y + 1) % k)


def test_identical_predictions_differ_by_exactly_zero() -> None:
    y, a = _preds()
    diffs = paired_bootstrap(y, a, a.copy(), 4, n_resamples=500)
    for d in diffs.values():
        assert d.diff == 0.0 and (d.lo, d.hi) == (0.0, 0.0)
        assert d.verdict == "not distinguishable on 300 images"
    m = mcnemar_exact(y, a, a)
    assert (m.a_only, m.b_only, m.p_value) == (0, 0, 1.0)


@pytest.mark.parametrize("k", [1, 3, 6, 10])
def test_mcnemar_is_the_exact_binomial_when_one_model_is_right_on_k_more_images(k: int) -> None:
    y, b = _preds(n=200, seed=1)
    wrong = np.flatnonzero(b != y)[:k]
    a = b.copy()
    a[wrong] = y[wrong]  # A right on k more images, wrong on none more
    m = mcnemar_exact(y, a, b)
    assert (m.a_only, m.b_only) == (k, 0)
    assert m.p_value == pytest.approx(min(1.0, 2 * 0.5**k))
    assert mcnemar_exact(y, b, a).p_value == pytest.approx(m.p_value)


def test_mcnemar_counts_only_the_discordant_images() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    a = np.array([0, 0, 0, 1, 1, 1, 0, 0])  # right on 0,1,2,4,5
    b = np.array([0, 1, 1, 0, 1, 0, 0, 1])  # right on 0,3,4,7
    m = mcnemar_exact(y, a, b)
    assert (m.a_only, m.b_only) == (3, 2)  # a alone: 1,2,5; b alone: 3,7
    assert m.p_value == pytest.approx(1.0)


def test_a_clearly_better_model_gets_better_and_the_reverse_worse() -> None:
    y, b = _preds(n=600, seed=2, acc=0.6)
    a = y.copy()
    a[::10] = (y[::10] + 1) % 4  # 90% right
    d = paired_bootstrap(y, a, b, 4, n_resamples=500)["accuracy"]
    assert d.diff == pytest.approx(np.mean(a == y) - np.mean(b == y))
    assert d.lo > 0 and d.verdict == "better"
    assert paired_bootstrap(y, b, a, 4, n_resamples=500)["accuracy"].verdict == "worse"


def test_a_one_image_lead_is_not_distinguishable() -> None:
    y, b = _preds(n=300, seed=3)
    a = b.copy()
    i = int(np.flatnonzero(b != y)[0])
    a[i] = y[i]
    d = paired_bootstrap(y, a, b, 4, n_resamples=1000)["accuracy"]
    assert d.diff == pytest.approx(1 / 300)
    assert d.lo <= 0 <= d.hi and d.verdict.startswith("not distinguishable")


def test_compare_predictions_per_class_recall_differences() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    a = np.array([0, 0, 1, 0, 2, 2])
    b = np.array([0, 1, 1, 1, 2, 0])
    c = compare_predictions(y, a, b, ["x", "y", "z", "w"], a="A", b="B", n_resamples=100)
    assert c.recall_diff == {"x": 0.5, "y": -0.5, "z": 0.5, "w": None}
    assert c.as_dict()["mcnemar"]["a_only_right"] == 2


def test_paired_mean_interval_of_identical_values_is_a_point() -> None:
    assert paired_mean_interval(np.zeros(50)) == (0.0, 0.0, 0.0)
    m, lo, hi = paired_mean_interval(np.full(40, -0.2) + np.linspace(-0.01, 0.01, 40))
    assert lo < m < hi < 0


def test_corrected_t_is_wider_than_naive_by_the_known_factor() -> None:
    rng = np.random.default_rng(0)
    d = rng.normal(0.02, 0.03, size=15)  # 3 x 5 folds
    t = corrected_resampled_t(d, n_train=800, n_test=200)
    # variance x (1/J + n_test/n_train) against x 1/J: sqrt(1 + J n_test / n_train) = sqrt(1 + 15/4)
    assert t.se / t.naive_se == pytest.approx(math.sqrt(1 + 15 * 200 / 800))
    assert t.naive_se == pytest.approx(np.std(d, ddof=1) / math.sqrt(15))
    from scipy.stats import t as student

    q = student.ppf(0.975, 14)
    assert (t.lo, t.hi) == pytest.approx((d.mean() - q * t.se, d.mean() + q * t.se))


def test_corrected_t_of_constant_differences() -> None:
    t = corrected_resampled_t(np.full(6, 0.05), n_train=10, n_test=5)
    assert (t.lo, t.hi) == pytest.approx((0.05, 0.05)) and t.verdict == "better"
    assert corrected_resampled_t(np.zeros(6), n_train=10, n_test=5).verdict == "not distinguishable"


def test_verdict_words() -> None:
    assert verdict(0.01, 0.2) == "better"
    assert verdict(-0.2, -0.01) == "worse"
    assert verdict(-0.01, 0.2, 397) == "not distinguishable on 397 images"


def test_bad_inputs_raise_one_line_errors() -> None:
    y, a = _preds(n=20)
    with pytest.raises(DataError, match="same 20 images"):
        paired_bootstrap(y, a, a[:10], 4)
    with pytest.raises(ConfigError, match="strictly between"):
        paired_bootstrap(y, a, a, 4, level=1.5)
    with pytest.raises(ConfigError, match="not supported"):
        paired_bootstrap(y, a, a, 4, metrics=("log_loss",))
    with pytest.raises(DataError, match="at least 2"):
        corrected_resampled_t([0.1], n_train=1, n_test=1)
