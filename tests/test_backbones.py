"""Backbones of the registry (issue 14): the D4-equivariant CNN's symmetry, and every backbone builds,
trains a step, saves and reloads with ``safe_mode``."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from core.errors import ConfigError
from experiments.settings.run import ModelConfig, load_config
from models import EMBEDDING_LAYER, backbone_names, build_model
from models.layers.d4 import (
    COMPOSE,
    INVERSE,
    ORDER,
    D4Conv,
    D4Lift,
    D4RadialPool,
    ring_matrix,
    transform,
    transform_feature_map,
)


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


@pytest.mark.parametrize(
    "pool",
    [
        {"pool": "radial"},
        {"pool": "mean"},
        {"pool": "radial", "ring_stats": ["mean", "max"]},
        {"pool": "radial", "ring_stats": ["max"], "rings": 4},
        {"pool": "radial", "group_pool": "max"},
    ],
)
def test_d4_cnn_embedding_is_invariant_to_all_8_orientations(pool: dict, tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(name="d4_cnn", params={"filters": [4, 8, 8], **pool}, dense_units=16, dropout=0.0)
    model = build_model(cfg, input_size=32, num_classes=5)
    embed = keras.Model(model.input, model.get_layer(EMBEDDING_LAYER).output)
    x = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    base = np.asarray(embed(x, training=False))
    assert np.abs(base).max() > 0
    for g in range(8):
        views = transform(x, g, axes=(1, 2)).copy()
        np.testing.assert_allclose(np.asarray(embed(views, training=False)), base, rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "d4.keras")  # the pooling's settings survive a safe_mode reload
    again = keras.models.load_model(tmp_path / "d4.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(
        np.asarray(again(x, training=False)), np.asarray(model(x, training=False)), rtol=1e-5, atol=1e-6
    )
    # a plain CNN is not invariant (the test can fail)
    plain = build_model(ModelConfig(filters=(4, 8), dense_units=16, dropout=0.0), input_size=32, num_classes=5)
    plain_embed = keras.Model(plain.input, plain.get_layer(EMBEDDING_LAYER).output)
    assert not np.allclose(
        np.asarray(plain_embed(transform(x, 1, axes=(1, 2)).copy())), np.asarray(plain_embed(x)), atol=1e-3
    )


def test_radial_pool_keeps_the_radial_profile_and_is_invariant() -> None:
    """Ring means separate a concentrated from an extended blob (a global mean cannot) and do not move
    under any of the 8 orientations, also for an odd-sized map."""
    for side in (6, 7):
        m = ring_matrix(side, 3)
        np.testing.assert_allclose(m.sum(axis=0), 1.0, rtol=1e-6)
        for g in range(8):
            perm = transform(np.arange(side * side).reshape(side, side), g).ravel()
            np.testing.assert_allclose(m[perm], m)  # every ring is a union of D4 orbits
    yy, xx = np.mgrid[:6, :6] - 2.5
    r = np.sqrt(yy**2 + xx**2)
    core = (r < 1.2).astype(np.float32)
    halo = np.where(r < 1.2, 0.0, 4 / 32).astype(np.float32) * (r < 3)
    core, halo = core * (halo.mean() / core.mean()), halo  # same global mean, different profiles
    maps = np.stack([core, halo])[:, :, :, None, None].repeat(8, axis=3)  # (2, 6, 6, 8, 1)
    out = np.asarray(D4RadialPool(3)(maps.astype(np.float32)))
    assert np.isclose(maps[0].mean(), maps[1].mean())
    assert out.shape == (2, 3) and out[0, 0] > out[0, 2] and out[1, 0] < out[1, 2]
    # ring maxima see light that covers only part of a ring (an elongated blob), which ring means dilute
    bar = np.zeros((6, 6), np.float32)
    bar[2:4, :] = 1.0  # a horizontal bar through the centre
    disc = (r < 3).astype(np.float32) * (bar.sum() / (r < 3).sum())  # a round blob with the same total light
    both = np.stack([bar, disc])[:, :, :, None, None].repeat(8, axis=3)
    stats = np.asarray(D4RadialPool(3, ["mean", "max"])(both))
    assert stats.shape == (2, 6) and stats[0, 5] > 2 * stats[1, 5]  # outer-ring maximum: the bar's tips
    # orientation pooling: one orientation firing strongly (an edge-on disc) vs all 8 firing weakly (a round
    # blob) have the same mean over the group; only the maximum over the group tells them apart
    one = np.zeros((1, 6, 6, 8, 1), np.float32)
    one[..., 2, 0] = 8.0
    all8 = np.ones((1, 6, 6, 8, 1), np.float32)
    pair = np.concatenate([one, all8])
    by_mean, by_max = np.asarray(D4RadialPool(3)(pair)), np.asarray(D4RadialPool(3, group="max")(pair))
    np.testing.assert_allclose(by_mean[0], by_mean[1])
    assert np.all(by_max[0] > 4 * by_max[1])
    with pytest.raises(ValueError, match="group"):
        D4RadialPool(3, group="median")
    with pytest.raises(ValueError, match="stats"):
        D4RadialPool(3, ["median"])
    with pytest.raises(ValueError, match="rings"):
        ring_matrix(2, 3)


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


# One eager training step: tracing the keras.applications graphs for a compiled step takes ~30 s each on
# 2 cores, an eager step of the same model 2-6 s, so every backbone runs in `make test`.
@pytest.mark.parametrize("name", sorted(TINY))
def test_each_backbone_trains_saves_and_reloads_in_safe_mode(name: str, tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    size = 32
    cfg = ModelConfig(name=name, dense_units=8, **TINY[name])
    model = build_model(cfg, input_size=size, num_classes=3, precision="mixed_bfloat16")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    x = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    model.fit(x, y, epochs=1, verbose=0)
    assert any(
        not np.array_equal(b, keras.ops.convert_to_numpy(w)) for b, w in zip(before, model.trainable_weights)
    )  # it trained
    path = tmp_path / f"{name}.keras"
    model.save(path)
    from models.layers import register_custom_layers

    register_custom_layers()
    again = keras.models.load_model(path, safe_mode=True, compile=False)
    probs = np.asarray(model(x, training=False), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(again(x, training=False), dtype=np.float32), probs, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    assert again.get_layer(EMBEDDING_LAYER).units == 8


def _write_notop_h5(app_fn, path: Path) -> np.ndarray:  # noqa: ANN001
    """An ``include_top=False`` weights file in the layout of the ImageNet ``*_notop.h5`` downloads (Keras'
    legacy HDF5 weights format), with a random first-convolution kernel; returns that kernel."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    src = app_fn(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    first = next(layer for layer in src.layers if isinstance(layer, keras.layers.Conv2D))
    kernel = np.random.default_rng(1).normal(size=first.kernel.shape).astype(np.float32)
    first.kernel.assign(kernel)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, src)
    return kernel


def test_a_notop_weights_file_starts_the_application_backbone(tmp_path: Path) -> None:
    """``model.weights: ..._notop.h5`` loads the file into the backbone (no download); the wrong file for the
    chosen backbone is one ConfigError line."""
    path = tmp_path / "efficientnetv2-b0_notop.h5"
    kernel = _write_notop_h5(keras.applications.EfficientNetV2B0, path)
    cfg = load_config(
        None,
        ["model.name=efficientnetv2", "model.params={variant: B0}", f"model.weights={path}", "model.dense_units=8"],
    ).model
    model = build_model(cfg, input_size=32, num_classes=3)
    first = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    np.testing.assert_array_equal(np.asarray(first.kernel), kernel)
    fresh = build_model(
        load_config(None, ["model.name=efficientnetv2", "model.dense_units=8"]).model, input_size=32, num_classes=3
    )
    fresh_first = next(layer for layer in fresh.layers if isinstance(layer, keras.layers.Conv2D))
    assert not np.array_equal(np.asarray(fresh_first.kernel), kernel)
    wrong = load_config(None, ["model.name=convnext", f"model.weights={path}"]).model
    with pytest.raises(
        ConfigError,
        match=r"^cannot load model.weights efficientnetv2-b0_notop.h5 into "
        r"convnext\(variant=Tiny\) .*give include_top=False weights of ConvNeXtTiny$",
    ):
        build_model(wrong, input_size=32, num_classes=3)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,sets", [("resnet", ["model.params={depth: 10, width: 8}"]), ("d4_cnn", ["model.params={filters: [4, 8, 8]}"])]
)
def test_each_backbone_through_mlflow_predict_page_and_an_ensemble(
    name: str, sets: list[str], tiny_h5: Path, tmp_path: Path
) -> None:
    """A 1-epoch `galaxy10 train` logs the backbone to MLflow; it reloads (safe_mode), predicts from the
    command line and the web page, and serves as the CNN of a two-branch ensemble with the reference CNN."""
    import io

    import mlflow
    from PIL import Image

    from ensembles.ensemble_model import Branch, EnsembleModel, load_ensemble, save_ensemble
    from experiments.cli import main as cli_main
    from experiments.serving.predictor import load_predictor
    from experiments.serving.web import create_app
    from experiments.tracking.loading import load_keras_model
    from experiments.tracking.workspace import Workspace

    smoke = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"
    ids = []
    for model_sets in ([f"model.name={name}", *sets], []):
        argv = ["-q", "train", "--config", str(smoke), "--data", str(tiny_h5), "--set", "train.epochs=1"]
        for s in model_sets:
            argv += ["--set", s]
        assert cli_main(argv) == 0
        ids.append(
            mlflow.search_runs(experiment_names=["galaxy10-smoke"], order_by=["start_time DESC"], max_results=1).iloc[
                0
            ]["run_id"]
        )
    bundle = load_keras_model(f"runs:/{ids[0]}/model", ws=Workspace())
    assert bundle.meta["backbone"] == name
    png = tmp_path / "g.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(png)
    assert cli_main(["-q", "predict", str(png), "--model", ids[0], "--format", "json"]) == 0
    predictor = load_predictor(ids[0], ws=Workspace())
    resp = (
        create_app(predictor)
        .test_client()
        .post(
            "/api/predict", data={"file": (io.BytesIO(png.read_bytes()), "g.png")}, content_type="multipart/form-data"
        )
    )
    assert resp.status_code == 200
    reply = resp.get_json()
    expected = predictor.calibrate(predictor.predict(np.asarray(Image.open(png))[None]))[0]
    assert reply["probabilities"] == pytest.approx(dict(zip(bundle.meta["class_names"], expected.tolist())), abs=1e-5)
    assert reply["top_class"] == bundle.meta["class_names"][int(np.argmax(expected))]
    reference = load_keras_model(f"runs:/{ids[1]}/model", ws=Workspace())
    branches = [
        Branch(cnn=b.model, size=int(b.meta["size"]), crop=int(b.meta["crop"]), name=n)
        for b, n in ((bundle, name), (reference, "reference_cnn"))
    ]
    ens = EnsembleModel("vote", branches, tuple(bundle.meta["class_names"]), tuple(bundle.meta["class_slugs"]))
    images = np.stack([np.asarray(Image.open(png))] * 3)
    probs = ens.predict_proba(images)
    folder = save_ensemble(ens, tmp_path / "ens")
    np.testing.assert_allclose(load_ensemble(folder).predict_proba(images), probs, atol=1e-6)
    np.testing.assert_allclose(
        probs, 0.5 * (predictor.predict(images) + load_predictor(ids[1], ws=Workspace()).predict(images)), atol=1e-5
    )
