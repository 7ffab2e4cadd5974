"""tf.data input pipelines: crops, epochs, oversampling, reproducibility, augmentation."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from augment.policies import augment_batch, build_policy
from core.errors import ConfigError, DataError
from pipelines.inputs import EpochPlanner, cropped_array, make_eval_dataset, make_train_dataset
from pipelines.preprocess import center_crop


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (120, 40, 40, 3), dtype=np.uint8)
    labels = np.arange(120) % 10
    return images, labels


def _epoch(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def _rows_of(images, batch_x, crop):
    """Recover which image each (unaugmented) sample came from by matching its centre crop."""
    crops = center_crop(images, crop).reshape(len(images), -1)
    lookup = {c.tobytes(): i for i, c in enumerate(crops)}
    return np.array([lookup[x.astype(np.uint8).reshape(-1).tobytes()] for x in batch_x])


def test_no_augmentation_yields_centre_crops_each_row_once(arrays):
    images, labels = arrays
    train = np.arange(0, 100)
    ds = make_train_dataset(images, labels, batch_size=16, crop=24, seed=3, indices=train)
    x, y = _epoch(ds)
    assert x.dtype == np.float32 and x.shape == (100, 24, 24, 3) and y.dtype == np.int32
    assert x.min() >= 0 and x.max() <= 255
    rows = _rows_of(images, x, 24)
    assert sorted(rows.tolist()) == train.tolist()  # every train row exactly once, none from outside
    assert not np.array_equal(rows, train)  # shuffled
    np.testing.assert_array_equal(y, labels[rows])


def test_epochs_differ_and_runs_repeat(arrays):
    images, labels = arrays
    make = functools.partial(make_train_dataset, images, labels, batch_size=32, crop=24, seed=5)
    ds = make()
    first, second = _epoch(ds), _epoch(ds)
    assert not np.array_equal(first[1], second[1])  # a new order each epoch
    again = make()
    np.testing.assert_array_equal(_epoch(again)[0], first[0])
    np.testing.assert_array_equal(_epoch(again)[0], second[0])
    other_seed = make_train_dataset(images, labels, batch_size=32, crop=24, seed=6)
    assert not np.array_equal(_epoch(other_seed)[1], first[1])


def test_cardinality_is_known(arrays):
    images, labels = arrays
    ds = make_train_dataset(images, labels, batch_size=32, crop=24, multipliers=np.r_[2.5, np.ones(9)])
    # 120 images, 12 of class 0 at x2.5 -> 120 + 18 = 138 samples -> 5 batches
    assert int(ds.cardinality().numpy()) == 5
    assert sum(len(y) for _, y in ds) == 138


def test_oversampling_matches_multipliers(arrays):
    images, labels = arrays
    planners = []
    multipliers = np.ones(10)
    multipliers[0], multipliers[4] = 3.0, 2.0
    ds = make_train_dataset(
        images, labels, batch_size=64, crop=24, multipliers=multipliers, seed=1, planner_out=planners
    )
    _, y = _epoch(ds)
    counts = np.bincount(y, minlength=10)
    assert counts[0] == 36 and counts[4] == 24 and all(counts[k] == 12 for k in (1, 2, 3, 5, 6, 7, 8, 9))
    mix = planners[0].class_mixes[0]
    assert mix["disturbed"] == pytest.approx(36 / len(y)) and mix["cigar"] == pytest.approx(24 / len(y))


def test_fractional_multipliers_keep_a_fixed_epoch_length(arrays):
    images, labels = arrays
    planner = EpochPlanner(labels, np.arange(120), np.r_[1.5, 1.5, 1.5, np.ones(7)], seed=0)
    lengths = {len(planner.plan(e)[0]) for e in range(6)}
    assert lengths == {planner.epoch_length} and planner.epoch_length == 138


def test_augmentation_changes_pixels_reproducibly(arrays):
    images, labels = arrays
    aug = functools.partial(augment_batch, build_policy("reference"))
    plain = _epoch(make_train_dataset(images, labels, batch_size=20, crop=24, seed=2))
    a1 = _epoch(make_train_dataset(images, labels, batch_size=20, crop=24, seed=2, augment_fn=aug))
    a2 = _epoch(make_train_dataset(images, labels, batch_size=20, crop=24, seed=2, augment_fn=aug, parallel_calls=1))
    np.testing.assert_array_equal(plain[1], a1[1])  # same order and labels
    assert np.mean(plain[0] != a1[0]) > 0.5  # pixels really changed
    np.testing.assert_array_equal(a1[0], a2[0])  # independent of thread count


def test_eval_dataset_keeps_order(arrays):
    images, labels = arrays
    rows = np.array([7, 3, 99, 0, 42])
    x, y = _epoch(make_eval_dataset(images, labels, crop=24, batch_size=2, indices=rows))
    np.testing.assert_array_equal(x, center_crop(images[rows], 24).astype(np.float32))
    np.testing.assert_array_equal(y, labels[rows])
    only_x = np.concatenate([b.numpy() for b in make_eval_dataset(images, crop=24, batch_size=4, indices=rows)])
    np.testing.assert_array_equal(only_x, x)
    np.testing.assert_array_equal(cropped_array(images, 24, rows), center_crop(images[rows], 24))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"crop": 64}, "larger"),
        ({"indices": np.array([0, 500])}, "0..119"),
        ({"indices": np.array([], dtype=int)}, "non-empty"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments(arrays, kwargs, match):
    images, labels = arrays
    args = {"batch_size": 8, "crop": 24, **kwargs}
    with pytest.raises(DataError, match=match):
        make_train_dataset(images, labels, **args)


def test_bad_seed(arrays):
    images, labels = arrays
    with pytest.raises(ConfigError, match="seed"):
        make_train_dataset(images, labels, batch_size=8, crop=24, seed=-1)


def test_bad_images_and_labels(arrays):
    images, labels = arrays
    with pytest.raises(DataError, match="uint8"):
        make_train_dataset(images.astype(np.float32), labels, batch_size=8, crop=24)
    with pytest.raises(DataError, match="labels"):
        make_train_dataset(images, labels[:5], batch_size=8, crop=24)
