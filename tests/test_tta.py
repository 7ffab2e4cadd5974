"""augment.tta: the 8 D4 views are distinct and form a group; tta_predict averages over them."""

from __future__ import annotations

import numpy as np
import pytest

from augment.tta import N_VIEWS, dihedral_view, dihedral_views, inverse_dihedral_view, tta_predict
from core.errors import DataError, ModelError


@pytest.fixture
def asym() -> np.ndarray:
    """Random images: no rotation or mirror symmetry."""
    return np.random.default_rng(0).integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)


def test_eight_distinct_views_of_an_asymmetric_image(asym: np.ndarray) -> None:
    views = dihedral_views(asym)
    assert len(views) == N_VIEWS == 8
    np.testing.assert_array_equal(views[0], asym)
    for v in views:
        assert v.shape == asym.shape and v.dtype == asym.dtype and v.flags.c_contiguous
    keys = {v.tobytes() for v in views}
    assert len(keys) == 8
    # a view moves pixels, never changes them
    for v in views:
        np.testing.assert_array_equal(np.sort(v.reshape(5, -1), axis=1), np.sort(asym.reshape(5, -1), axis=1))


def test_views_form_a_group(asym: np.ndarray) -> None:
    views = dihedral_views(asym)
    keys = {v.tobytes(): j for j, v in enumerate(views)}
    for j in range(N_VIEWS):
        np.testing.assert_array_equal(inverse_dihedral_view(views[j], j), asym)  # inverse recovers
        for i in range(N_VIEWS):
            assert dihedral_view(views[j], i).tobytes() in keys  # closed under composition
        inverse = [i for i in range(N_VIEWS) if np.array_equal(dihedral_view(views[j], i), asym)]
        assert len(inverse) == 1  # exactly one inverse element in the set


def test_rotation_direction_and_flip_are_what_they_say() -> None:
    img = np.zeros((1, 3, 3, 1), np.uint8)
    img[0, 0, 2, 0] = 1  # top-right corner
    np.testing.assert_array_equal(dihedral_view(img, 4)[0, :, :, 0], img[0, :, ::-1, 0])  # mirror
    quarter = dihedral_view(img, 1)[0, :, :, 0]
    assert quarter[0, 0] == 1  # np.rot90 turns counter-clockwise: top-right -> top-left


def test_invariant_predict_fn_equals_plain_prediction(asym: np.ndarray) -> None:
    def predict(x: np.ndarray) -> np.ndarray:  # depends only on the colour histogram: D4-invariant
        means = x.reshape(len(x), -1, 3).mean(1)
        e = np.exp(means / 50.0)
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    np.testing.assert_allclose(tta_predict(predict, asym, batch_size=2), predict(asym), rtol=1e-6)


def test_non_invariant_predict_fn_is_the_mean_over_views(asym: np.ndarray) -> None:
    def predict(x: np.ndarray) -> np.ndarray:  # looks at the top-left pixel only: not invariant
        e = np.exp(x[:, 0, 0, :].astype(np.float64) / 40.0)
        return e / e.sum(1, keepdims=True)

    expected = np.mean([predict(v) for v in dihedral_views(asym)], axis=0)
    got = tta_predict(predict, asym, batch_size=3)
    assert got.dtype == np.float32 and got.shape == (5, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert not np.allclose(got, predict(asym), atol=1e-3)


def test_tta_predict_batches_never_exceed_batch_size(asym: np.ndarray) -> None:
    sizes = []

    def predict(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        return np.full((len(x), 2), 0.5)

    tta_predict(predict, asym, batch_size=2)
    assert sizes == [2] * 8 + [2] * 8 + [1] * 8


def test_tta_rejects_bad_input(asym: np.ndarray) -> None:
    with pytest.raises(DataError, match="square"):
        dihedral_views(np.zeros((2, 8, 6, 3), np.uint8))
    with pytest.raises(ModelError, match="predict_fn"):
        tta_predict(lambda x: np.zeros(len(x)), asym)
    with pytest.raises(DataError):
        tta_predict(lambda x: np.zeros((len(x), 2)), asym[:0])
