"""MixUp / CutMix (issue 14's recipe): they really change pixels and labels, and labels stay distributions."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from augment.mixing import mix_batch
from core.errors import ConfigError


def _batch(n: int = 16, size: int = 8, k: int = 4) -> tuple[tf.Tensor, tf.Tensor]:
    x = np.stack([np.full((size, size, 3), 10.0 * i, np.float32) for i in range(n)])  # each image one value
    y = np.eye(k, dtype=np.float32)[np.arange(n) % k]
    return tf.constant(x), tf.constant(y)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixing_changes_pixels_and_keeps_label_distributions(kind: str) -> None:
    tf.random.set_seed(0)
    x, y = _batch()
    mx, my = mix_batch(x, y, **{kind: 1.0}, prob=1.0)
    mx, my = mx.numpy(), my.numpy()
    assert not np.allclose(mx, x.numpy())  # pixels really changed
    np.testing.assert_allclose(my.sum(axis=1), 1.0, atol=1e-6)
    assert (my.max(axis=1) < 1.0 - 1e-6).any()  # some labels are mixtures
    if kind == "cutmix":  # the label weight of the pasted image equals the pasted area
        for i in range(len(mx)):
            own = np.isclose(mx[i, ..., 0], 10.0 * i)
            if not own.all():
                assert my[i, i % 4] >= own.mean() - 1e-5


def test_mixing_off_or_never_leaves_the_batch_alone() -> None:
    x, y = _batch()
    for kwargs in ({}, {"mixup": 1.0, "prob": 0.0}):
        mx, my = mix_batch(x, y, **kwargs)
        np.testing.assert_array_equal(mx.numpy(), x.numpy())
        np.testing.assert_array_equal(my.numpy(), y.numpy())
    with pytest.raises(ConfigError):
        mix_batch(x, y, mixup=-1.0)


def test_warmup_then_cosine() -> None:
    from experiments.settings.run import load_config
    from experiments.training.fitting import learning_rate_at

    t = load_config(
        None, ["train.learning_rate=0.01", "train.epochs=12", "train.warmup_epochs=2", "train.schedule=cosine"]
    ).train
    lrs = [learning_rate_at(t, e) for e in range(12)]
    assert lrs[0] == pytest.approx(0.01 / 3) and lrs[1] == pytest.approx(0.02 / 3) and lrs[2] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 0.001
