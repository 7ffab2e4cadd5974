"""augment.targeting: requested class mix, reproducibility, per-epoch variety, bounded auto multipliers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from augment.targeting import auto_multipliers, multipliers_from_targets
from core.errors import ConfigError, DataError
from pipelines.classes import CLASS_SLUGS, GALAXY10, NUM_CLASSES, REFERENCE_RECALL, class_index
from pipelines.sampling import class_mix, epoch_rng, oversample_indices


@pytest.fixture
def labels() -> np.ndarray:
    """Unbalanced labels: class k has 20 + 7k images, shuffled."""
    y = np.concatenate([np.full(20 + 7 * k, k, np.uint8) for k in range(NUM_CLASSES)])
    np.random.default_rng(0).shuffle(y)
    return y


def test_multipliers_from_targets_by_slug_name_and_index() -> None:
    m = multipliers_from_targets({"disturbed": 3, "Cigar Shaped Smooth": 2.5, 7: 1.5})
    expected = np.ones(NUM_CLASSES)
    expected[[0, 4, 7]] = [3.0, 2.5, 1.5]
    np.testing.assert_array_equal(m, expected)
    np.testing.assert_array_equal(multipliers_from_targets(None), np.ones(NUM_CLASSES))
    np.testing.assert_array_equal(multipliers_from_targets({}), np.ones(NUM_CLASSES))


@pytest.mark.parametrize(
    "targets, match",
    [
        ({"spiral": 2}, "'spiral'"),
        ({"cigar": 0.5}, "'cigar'.*>= 1"),
        ({"cigar": float("inf")}, "'cigar'"),
        ({"cigar": "3"}, "'cigar'"),
        ({"cigar": True}, "'cigar'"),
        ({"cigar": 2, 4: 3}, "twice"),
        ({12: 2}, "12"),
        ([("cigar", 2)], "mapping"),
    ],
)
def test_bad_targets_name_the_key_in_one_line(targets, match) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        multipliers_from_targets(targets)
    assert "\n" not in str(err.value)


def test_integer_multipliers_give_exact_counts(labels: np.ndarray) -> None:
    m = multipliers_from_targets({"disturbed": 3, "cigar": 2})
    idx = oversample_indices(labels, m, np.random.default_rng(1))
    n_k = np.bincount(labels, minlength=NUM_CLASSES)
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=NUM_CLASSES), n_k * m.astype(int))
    # every original index appears, targeted ones exactly m_k times
    per_index = np.bincount(idx, minlength=len(labels))
    np.testing.assert_array_equal(per_index, m[labels].astype(int))
    mix = class_mix(labels, idx)
    assert list(mix) == list(CLASS_SLUGS)
    assert mix["disturbed"] == pytest.approx(3 * n_k[0] / (n_k @ m))
    assert sum(mix.values()) == pytest.approx(1.0)


def test_fractional_multiplier_matches_in_expectation(labels: np.ndarray) -> None:
    m = multipliers_from_targets({"merging": 2.5, "cigar": 1.3})
    n_k = np.bincount(labels, minlength=NUM_CLASSES)
    counts = np.array(
        [np.bincount(labels[oversample_indices(labels, m, epoch_rng(0, e))], minlength=NUM_CLASSES) for e in range(400)]
    )
    # copies beyond the whole ones: expected (m_k - floor(m_k)) * n_k, e.g. 13.5 for merging (n=27)
    fractional_extra = counts.mean(0) - n_k * np.floor(m)
    np.testing.assert_allclose(fractional_extra, (m - np.floor(m)) * n_k, atol=0.1)
    # merging: 27 + 27 + 13.5 on average: each epoch 67 or 68 copies, both happen
    assert set(counts[:, 1]) == {67, 68}
    # every image of a fractional class keeps at least its whole copies, at most one more
    idx = oversample_indices(labels, m, epoch_rng(0, 0))
    per_index = np.bincount(idx, minlength=len(labels))
    merging = labels == 1
    assert per_index[merging].min() == 2 and per_index[merging].max() == 3
    assert np.all(per_index[labels == 0] == 1)


def test_oversampling_is_reproducible_and_differs_per_epoch(labels: np.ndarray) -> None:
    m = multipliers_from_targets({"disturbed": 2.5})
    a = oversample_indices(labels, m, epoch_rng(42, 3))
    b = oversample_indices(labels, m, epoch_rng(42, 3))
    c = oversample_indices(labels, m, epoch_rng(42, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    extra_a = np.flatnonzero(np.bincount(a, minlength=len(labels)) == 3)
    extra_c = np.flatnonzero(np.bincount(c, minlength=len(labels)) == 3)
    assert not np.array_equal(extra_a, extra_c)  # the half that gets the third copy is redrawn
    np.testing.assert_array_equal(oversample_indices(labels, m, 5), oversample_indices(labels, m, 5))


def test_no_targets_is_a_shuffled_permutation(labels: np.ndarray) -> None:
    idx = oversample_indices(labels, np.ones(NUM_CLASSES), 0)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(np.sort(idx), np.arange(len(labels)))
    assert not np.array_equal(idx, np.arange(len(labels)))


def test_targeted_class_absent_from_labels_is_fine() -> None:
    y = np.array([0, 1, 1, 2], np.uint8)
    idx = oversample_indices(y, multipliers_from_targets({"cigar": 3}), 0)
    np.testing.assert_array_equal(np.sort(idx), np.arange(4))


@pytest.mark.parametrize(
    "labels_in, mult, exc",
    [
        (np.array([0, 10]), np.ones(NUM_CLASSES), DataError),
        (np.array([0.0, 1.0]), np.ones(NUM_CLASSES), DataError),
        (np.array([0, 6]), np.ones(5), DataError),  # any class count (issue 12), but the labels must fit it
        (np.array([0, 1]), np.ones(0), ConfigError),
        (np.array([0, 1]), np.full(NUM_CLASSES, 0.5), ConfigError),
    ],
)
def test_oversample_rejects_bad_input(labels_in, mult, exc) -> None:
    with pytest.raises(exc):
        oversample_indices(labels_in, mult, 0)


def test_auto_multipliers_on_reference_recall() -> None:
    m = auto_multipliers(REFERENCE_RECALL)
    best = max(REFERENCE_RECALL.values())
    assert m[class_index("edge_on_no_bulge")] == 1.0  # the best class
    assert m[class_index("disturbed")] == pytest.approx(best / 0.31)
    assert m.argmax() == class_index("disturbed")
    np.testing.assert_array_equal(m, auto_multipliers([REFERENCE_RECALL[s] for s in CLASS_SLUGS]))
    assert auto_multipliers(REFERENCE_RECALL, max_multiplier=2.0).max() == 2.0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=NUM_CLASSES, max_size=NUM_CLASSES),
    st.floats(1.0, 10.0),
    st.integers(0, NUM_CLASSES - 1),
    st.floats(0.0, 1.0),
)
def test_auto_multipliers_bounded_and_monotone(recall, max_m, k, new_value) -> None:
    m = auto_multipliers(recall, max_multiplier=max_m)
    assert np.all(m >= 1.0) and np.all(m <= max_m)
    assert m[int(np.argmax(recall))] == 1.0
    # weaker class -> at least as many copies
    order = np.argsort(recall)
    assert np.all(np.diff(m[order]) <= 1e-12)
    # lowering one class's recall never lowers its multiplier (others fixed)
    lowered = list(recall)
    lowered[k] = min(recall[k], new_value)
    assert auto_multipliers(lowered, max_multiplier=max_m)[k] >= m[k] - 1e-12


@pytest.mark.parametrize(
    "recall, kwargs, match",
    [
        ([0.5] * 9, {"classes": GALAXY10}, "10 value"),
        ([0.5] * 9 + [1.2], {"classes": GALAXY10}, "edge_on_bulge"),
        ([0.5] * 9 + [float("nan")], {"classes": GALAXY10}, "edge_on_bulge"),
        ([0.5, 1.2], {}, "recall of 1 is not"),
        ({"disturbed": 0.3}, {}, "lacks"),
        ([0.5] * 10, {"max_multiplier": 0.5}, "max_multiplier"),
    ],
)
def test_auto_multipliers_rejects_bad_recall(recall, kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        auto_multipliers(recall, **kwargs)


def test_class_mix_rejects_bad_indices(labels: np.ndarray) -> None:
    with pytest.raises(DataError):
        class_mix(labels, np.array([], np.int64))
    with pytest.raises(DataError):
        class_mix(labels, np.array([len(labels)]))
