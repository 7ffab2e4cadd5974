"""Backbones of the registry (issue 14): the D4-equivariant CNN's symmetry, and every backbone builds,
trains a step, saves and reloads with ``safe_mode``."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from experiments.config import ModelConfig, load_config
from models import EMBEDDING_LAYER, backbone_names, build_model
from models.layers.d4 import COMPOSE, INVERSE, ORDER, D4Conv, D4Lift, transform, transform_feature_map
from pipelines.errors import ConfigError


def test_the_group_table_is_d4() -> None:
    assert ORDER == 8 and sorted(COMPOSE[0]) == list(range(8))
    for g in range(8):
        assert COMPOSE[g, INVERSE[g]] == 0 and sorted(COMPOSE[g]) == list(range(8))  # a Latin square
    assert any(COMPOSE[a, b] != COMPOSE[b, a] for a in range(8) for b in range(8))  # not abelian
    x = np.random.default_rng(0).normal(size=(5, 5))
    for g in range(8):
        for h in range(8):
            np.testing.assert_array_equal(transform(transform(x, h), g), transform(x, COMPOSE[g, h]))


def test_d4_feature_maps_permute_as_the_group_says() -> None:
    """Intermediate group feature maps: lift(T_h x) = T_h lift(x) with the group axis permuted."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 12, 12, 3)).astype(np.float32)
    lift, conv = D4Lift(4, 3), D4Conv(5, 3)
    base_lift = np.asarray(lift(x))
    base_conv = np.asarray(conv(base_lift))
    for h in range(8):
        xh = transform(x, h, axes=(1, 2)).copy()
        got_lift = np.asarray(lift(xh))
        np.testing.assert_allclose(got_lift, transform_feature_map(base_lift, h), atol=1e-4)
        np.testing.assert_allclose(np.asarray(conv(got_lift)), transform_feature_map(base_conv, h), atol=1e-4)


def test_d4_cnn_embedding_is_invariant_to_all_8_orientations() -> None:
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(name="d4_cnn", params={"filters": [4, 8, 8]}, dense_units=16, dropout=0.0)
    model = build_model(cfg, input_size=32, num_classes=5)
    embed = keras.Model(model.input, model.get_layer(EMBEDDING_LAYER).output)
    x = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    base = np.asarray(embed(x, training=False))
    assert np.abs(base).max() > 0
    for g in range(8):
        views = transform(x, g, axes=(1, 2)).copy()
        np.testing.assert_allclose(np.asarray(embed(views, training=False)), base, rtol=1e-4, atol=1e-5)
    # a plain CNN is not invariant (the test can fail)
    plain = build_model(ModelConfig(filters=(4, 8), dense_units=16, dropout=0.0), input_size=32, num_classes=5)
    plain_embed = keras.Model(plain.input, plain.get_layer(EMBEDDING_LAYER).output)
    assert not np.allclose(np.asarray(plain_embed(transform(x, 1, axes=(1, 2)).copy())),
                           np.asarray(plain_embed(x)), atol=1e-3)


def test_d4_cnn_refuses_a_crop_that_breaks_the_symmetry() -> None:
    with pytest.raises(ConfigError, match="odd"):
        build_model(ModelConfig(name="d4_cnn", params={"filters": [4, 8, 8]}), input_size=30)


@pytest.mark.parametrize("params,match", [({"depth": 50}, "depth"), ({"kernel": 3}, "not a parameter")])
def test_backbone_params_are_validated_with_one_line(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["model.name=resnet", f"model.params={params}"])


#: Tiny settings per backbone so one step runs in seconds on a CPU.
TINY = {
    "reference_cnn": {"filters": [4, 8]},
    "resnet": {"params": {"depth": 10, "width": 4, "stochastic_depth": 0.1}},
    "d4_cnn": {"params": {"filters": [4, 8]}},
    "efficientnetv2": {"params": {"variant": "B0"}},
    "convnext": {"params": {"variant": "Tiny"}},
}


def test_every_registered_backbone_has_a_tiny_setting() -> None:
    assert set(backbone_names()) == set(TINY)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("efficientnetv2", "convnext")
                                  else n for n in sorted(TINY)])  # the applications take ~50 s each on 2 cores
def test_each_backbone_trains_saves_and_reloads_in_safe_mode(name: str, tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    size = 32
    cfg = ModelConfig(name=name, dense_units=8, **TINY[name])
    model = build_model(cfg, input_size=size, num_classes=3, precision="mixed_bfloat16")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    from models.layers import register_custom_layers

    register_custom_layers()
    again = keras.models.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(np.asarray(again.predict(x, verbose=0)), np.asarray(model.predict(x, verbose=0)),
                               atol=1e-6)
    assert again.get_layer(EMBEDDING_LAYER).units == 8
