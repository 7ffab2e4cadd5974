"""``galaxy10 pretrain``: the view policy, VICReg on a tiny pool, resume, and fine-tuning from the result."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

from augment.views import ViewPolicy, make_view_fn
from core.errors import ConfigError, DataError
from experiments.pretraining.pool import Pool, load_pool
from experiments.pretraining.run import PretrainSettings, checkpoint_path, pretrain
from experiments.settings.run import from_dict
from experiments.tracking.workspace import Workspace


def blobs(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Round (0) and elongated (1) galaxies at any of the 4 right-angle orientations (+-17 degrees), with
    shifts, sizes, flux per band, sky level and noise within the view policy's ranges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    labels = np.arange(n) % 2
    images = np.empty((n, size, size, 3), np.uint8)
    for i, label in enumerate(labels):
        t = rng.integers(0, 4) * np.pi / 2 + rng.uniform(-0.3, 0.3)
        dy, dx = rng.uniform(-2, 2, 2)
        u, v = (xx - dx) * np.cos(t) + (yy - dy) * np.sin(t), -(xx - dx) * np.sin(t) + (yy - dy) * np.cos(t)
        a, b = (5, 5) if label == 0 else (7, 3.5)
        s = rng.uniform(0.8, 1.25)
        g = np.exp(-0.5 * ((u / (a * s)) ** 2 + (v / (b * s)) ** 2))
        flux = np.array([0.8, 1.0, 0.9]) * rng.uniform(0.8, 1.2, 3)
        image = g[..., None] * flux * 200 + rng.normal(0, 6, (size, size, 3)) + 20 + rng.uniform(-20, 20, 3)
        images[i] = np.clip(image, 0, 255)
    return images, labels


CFG = {
    "data": {"size": 32, "crop": 24},
    "model": {"filters": [8, 16], "dense_units": 32, "dropout": 0.5},
    "train": {"precision": "float32"},
}


def _monitor() -> types.SimpleNamespace:
    images, labels = blobs(200, 1)
    return types.SimpleNamespace(images=images, labels=labels, train=np.arange(100), val=np.arange(100, 200))


def test_every_view_transform_changes_pixels_and_keeps_the_shape() -> None:
    import tensorflow as tf

    images, _ = blobs(16, 3)
    x = tf.constant(images, tf.float32)
    off = ViewPolicy(zoom=0, shift=0, flux=0, sky=0, blur=0, noise=0)
    tf.random.set_seed(0)
    base = make_view_fn(32, 24, off)(x).numpy()
    assert base.shape == (16, 24, 24, 3) and 0 <= base.min() and base.max() <= 255
    for name, value in (("zoom", 0.3), ("shift", 0.2), ("flux", 0.3), ("sky", 0.2), ("blur", 1.5), ("noise", 0.05)):
        policy = ViewPolicy(**{**off.__dict__, name: value})
        tf.random.set_seed(0)
        views = make_view_fn(32, 24, policy)(x).numpy()
        assert np.abs(views - base).mean() > 0.1, name  # the transform really changes pixels
    with pytest.raises(ConfigError, match="zoom"):
        ViewPolicy(zoom=2.0)
    with pytest.raises(ConfigError, match="crop"):
        make_view_fn(32, 40)


def test_pretraining_lowers_the_loss_and_beats_a_random_encoder_on_knn() -> None:
    """VICReg on 256 unlabelled toy galaxies: the loss falls, and the k-NN accuracy of the embedding on a
    labelled set beats that of the same encoder at its random initialisation (epoch 0 of the same run)."""
    images, _ = blobs(256, 0)
    pool = Pool(images, "f" * 64, ("toy",), ())
    result = pretrain(
        from_dict(CFG), pool, PretrainSettings(epochs=10, batch_size=64, monitor_every=10), monitor=_monitor()
    )
    assert result.history[-1]["loss"] < result.history[0]["loss"] - 1.0
    assert set(result.knn) == {0, 10}
    assert result.knn[10] >= result.knn[0] + 0.05, result.knn
    assert result.meta["pretrained"] == "vicreg" and result.meta["class_names"] == []


def test_a_killed_pretraining_continues_from_its_last_epoch(tmp_path: Path) -> None:
    images, _ = blobs(128, 0)
    pool = Pool(images, "e" * 64, ("toy",), ())
    settings = PretrainSettings(epochs=4, batch_size=32)

    class Killer:
        def log_metrics(self, metrics: dict, step: int | None = None) -> None:
            if step == 3:
                raise KeyboardInterrupt  # killed during epoch 3's bookkeeping: epochs 1-2 are checkpointed

    with pytest.raises(KeyboardInterrupt):
        pretrain(from_dict(CFG), pool, settings, tracker=Killer(), checkpoint_dir=tmp_path)
    assert len(list(tmp_path.glob("pretrain-*.npz"))) == 1 and not list(tmp_path.glob(".*"))
    resumed = pretrain(from_dict(CFG), pool, settings, checkpoint_dir=tmp_path)
    assert (resumed.resumed_from, resumed.epochs_run, len(resumed.history)) == (2, 4, 4)
    again = pretrain(from_dict(CFG), pool, settings, checkpoint_dir=tmp_path)  # finished: nothing to do
    assert again.resumed_from == 4 and again.history == resumed.history
    other = PretrainSettings(epochs=4, batch_size=16)  # other settings: their own checkpoint
    assert pretrain(from_dict(CFG), pool, other, checkpoint_dir=tmp_path).resumed_from == 0
    assert checkpoint_path(tmp_path, "k").name == "pretrain-k.npz"


def test_fine_tuning_starts_from_the_pretrained_weights(tmp_path: Path, make_h5) -> None:  # noqa: ANN001
    from experiments.training import load_training_data, prepare_run, start_from_weights
    from models import build_model

    images, _ = blobs(64, 0)
    result = pretrain(from_dict(CFG), Pool(images, "d" * 64, ("toy",), ()), PretrainSettings(epochs=1, batch_size=32))
    saved = tmp_path / "pretrained.keras"
    result.model.save(saved)
    cfg = from_dict({**CFG, "model": {**CFG["model"], "weights": str(saved)}})
    data = load_training_data(cfg.data, make_h5(n=40, size=32, imported_classes=("a", "b", "c")))
    model = build_model(cfg.model, input_size=24, num_classes=3)
    conv = next(layer for layer in model.layers if layer.name.startswith("conv"))
    before = [w.copy() for w in conv.get_weights()]
    fresh = start_from_weights(model, prepare_run(cfg, data))
    assert fresh == ["logits"]  # a new classifier for the 3 classes; everything else loaded
    for got, want in zip(conv.get_weights(), result.model.get_layer(conv.name).get_weights()):
        np.testing.assert_array_equal(got, want)
    assert not all(np.array_equal(a, b) for a, b in zip(before, conv.get_weights()))
    np.testing.assert_array_equal(
        model.get_layer("embedding").get_weights()[0], result.model.get_layer("embedding").get_weights()[0]
    )


def test_the_pool_takes_catalog_inputs_and_skips_unreadable_images(tmp_path: Path, make_h5) -> None:  # noqa: ANN001
    from PIL import Image

    h5 = make_h5(n=12, size=40)
    folder = tmp_path / "cutouts"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((50, 60, 3), 40 * i, np.uint8)).save(folder / f"g{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    pool = load_pool([str(h5), str(folder)], 32)
    assert pool.images.shape == (15, 32, 32, 3) and pool.images.dtype == np.uint8
    assert len(pool.skipped) == 1 and "broken.png" in pool.skipped[0] and pool.synthetic
    with pytest.raises(DataError, match="does not exist"):
        load_pool([str(tmp_path / "nope")], 32)


@pytest.mark.slow
def test_tune_with_an_unlabeled_pool_queues_a_pretrained_start_point(tmp_path: Path, tiny_h5: Path, capsys) -> None:  # noqa: ANN001
    """``tune --unlabeled``: the first start point's backbone is pretrained on the pool and registered, and the
    study's first trial is that start point fine-tuned from it (its run's model.init_from says so)."""
    import h5py
    import optuna
    from conftest import tiny_tune_yaml
    from mlflow import MlflowClient

    from experiments.cli import main

    pool = tmp_path / "pool.h5"
    images, _ = blobs(96, 5, size=64)
    with h5py.File(pool, "w") as f:
        f.create_dataset("images", data=images)
        f.create_dataset("ans", data=np.zeros(96, np.uint8))
    config = tiny_tune_yaml(
        tmp_path / "t.yaml",
        experiment="e",
        name="un",
        n_trials=2,
        epochs=1,
        start_points=[{"train.learning_rate": 3.0e-3, "model.dropout": 0.2}],
    )
    assert (
        main(
            [
                "tune",
                "--config",
                str(config),
                "--data",
                str(tiny_h5),
                "--unlabeled",
                str(pool),
                "--pretrain-epochs",
                "1",
                "--tracking-uri",
                f"sqlite:///{tmp_path / 'm.db'}",
            ]
        )
        == 0
    )
    assert "pretrained: un-pretrained@pretrained" in capsys.readouterr().out
    study = optuna.load_study(study_name="un", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    first = study.trials[0]
    assert first.user_attrs.get("init_from") == "un-pretrained@pretrained"
    assert first.params == {"train.learning_rate": 3.0e-3, "model.dropout": 0.2}
    assert "init_from" not in study.trials[1].user_attrs
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run = client.get_run(first.user_attrs["mlflow_run_id"])
    assert run.data.params["model.init_from"] == "un-pretrained@pretrained"
    assert client.get_model_version_by_alias("un-pretrained", "pretrained").run_id
    # a later study reuses the registered encoder: no pretraining, the start point fine-tuned from it
    capsys.readouterr()
    again = [
        "tune",
        "--config",
        str(config),
        "--data",
        str(tiny_h5),
        "--study",
        "re",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
    ]
    assert main([*again, "--pretrained", "un-pretrained@pretrained"]) == 0
    assert "pretrained:" not in capsys.readouterr().out
    reused = optuna.load_study(study_name="re", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert reused.trials[0].user_attrs.get("init_from") == "un-pretrained@pretrained"
    for bad, why in (
        (["--pretrained", "nope@pretrained"], "cannot find model"),
        (["--pretrained", "un-pretrained@pretrained", "--unlabeled", str(pool)], "not both"),
    ):
        assert main(["-q", *again, "--study", "bad", *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0]
    # the report names the pool behind the pretrained start point
    capsys.readouterr()
    assert (
        main(
            [
                "-q",
                "report",
                "--study",
                "un",
                "--out",
                str(tmp_path / "rep"),
                "--bootstrap",
                "50",
                "--tracking-uri",
                f"sqlite:///{tmp_path / 'm.db'}",
            ]
        )
        == 0
    )
    numbers = json.loads((tmp_path / "rep" / "report.json").read_text())
    (pool_facts,) = numbers["unlabeled_pools"]
    assert pool_facts["trial"] == 0 and pool_facts["sources"] == str(pool) and pool_facts["images"] == "96"
    assert f"96 unlabelled images from {pool}" in (tmp_path / "rep" / "report.html").read_text()


def test_a_tuning_config_can_name_its_unlabeled_pool(tmp_path: Path) -> None:
    from conftest import tiny_tune_yaml

    from experiments.settings.tune import load_tune_config, unlabeled_inputs

    config = tiny_tune_yaml(
        tmp_path / "sub" / "t.yaml" if (tmp_path / "sub").mkdir() is None else None,
        experiment="e",
        name="u",
        n_trials=1,
        unlabeled=["pool", "/abs/other.h5"],
    )
    tune = load_tune_config(config)
    assert unlabeled_inputs(tune) == [str(tmp_path / "sub" / "pool"), "/abs/other.h5"]
    bad = tiny_tune_yaml(tmp_path / "bad.yaml", experiment="e", name="u", n_trials=1, unlabeled=[3])
    with pytest.raises(ConfigError, match="study.unlabeled"):
        load_tune_config(bad)


def test_evaluates_held_out_images_may_not_be_in_the_pretraining_pool(tmp_path: Path, tiny_h5: Path) -> None:
    """``galaxy10 evaluate`` hands a tuning recipe's pretraining its held-out fold: a pool holding one of those
    images is refused before anything is trained."""
    import h5py
    from conftest import tiny_tune_yaml

    from experiments.settings.tune import load_tune_config
    from experiments.tuning.unlabeled import pretrain_for_study

    images, _ = blobs(40, 9, size=64)
    pool = tmp_path / "pool.h5"
    with h5py.File(pool, "w") as f:
        f.create_dataset("images", data=images)
        f.create_dataset("ans", data=np.zeros(40, np.uint8))
    tune = load_tune_config(
        tiny_tune_yaml(
            tmp_path / "t.yaml", experiment="e", name="h", n_trials=1, start_points=[{"train.learning_rate": 3.0e-3}]
        )
    )
    with pytest.raises(
        DataError, match=r"holds 1 image\(s\) of the validation and test splits of tiny.h5 or the held-out"
    ):
        pretrain_for_study(
            tune,
            [str(pool)],
            data_path=str(tiny_h5),
            overrides=(),
            epochs=1,
            budget=None,
            ws=Workspace.of(f"sqlite:///{tmp_path / 'm.db'}"),
            held_out=images[[3]],
        )
    assert not (tmp_path / "m.db").exists()
