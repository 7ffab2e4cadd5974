"""Starting weights (issue 14): ``model.weights`` files, ``model.init_from`` logged models, ``train.freeze_epochs``.

Weights are copied by layer name; a mismatch of backbone or shapes fails with one line naming both models;
the classifier starts fresh for another class set; frozen epochs leave the backbone untouched.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from core.errors import ConfigError
from experiments.settings.run import ModelConfig, load_config
from experiments.tracking.base import NullTracker
from experiments.training import TrainOptions, load_training_data, prepare_run, train
from models import build_model
from models.head import CLASSIFIER_LAYER, EMBEDDING_LAYER, HEAD_LAYERS
from models.weights import load_weights_file, transfer_weights

RESNET = ["model.name=resnet", "model.params={depth: 10, width: 4}", "model.dense_units=8"]
TINY = [
    "data.size=32",
    "data.crop=24",
    "train.epochs=2",
    "train.batch_size=16",
    "train.patience=null",
    "augment.policy=none",
    "train.precision=float32",
]


def resnet(width: int = 4, classes: int = 10, name: str = "resnet") -> keras.Model:
    params = {"depth": 10, "width": width} if name == "resnet" else {"filters": [4, 8]}
    return build_model(ModelConfig(name=name, params=params, dense_units=8), input_size=24, num_classes=classes)


def backbone_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {
        layer.name: [np.array(w) for w in layer.get_weights()]
        for layer in model.layers
        if layer.weights and layer.name not in HEAD_LAYERS
    }


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(all(np.array_equal(x, y) for x, y in zip(a[k], b[k])) for k in a)


def test_transfer_copies_every_backbone_layer_and_a_new_class_count_gets_a_fresh_classifier() -> None:
    keras.utils.set_random_seed(0)
    source, target = resnet(classes=10), resnet(classes=4)
    assert not same(backbone_weights(source), backbone_weights(target))
    fresh = transfer_weights(target, source, target_desc="target", source_desc="source")
    assert fresh == [CLASSIFIER_LAYER]
    assert same(backbone_weights(source), backbone_weights(target))
    np.testing.assert_array_equal(
        target.get_layer(EMBEDDING_LAYER).get_weights()[0], source.get_layer(EMBEDDING_LAYER).get_weights()[0]
    )


def test_same_class_count_but_other_classes_keeps_the_classifier_fresh() -> None:
    keras.utils.set_random_seed(0)
    source, target = resnet(), resnet()
    before = target.get_layer(CLASSIFIER_LAYER).get_weights()[0].copy()
    assert transfer_weights(target, source, target_desc="t", source_desc="s", keep_classifier=False) == [
        CLASSIFIER_LAYER
    ]
    np.testing.assert_array_equal(target.get_layer(CLASSIFIER_LAYER).get_weights()[0], before)


@pytest.mark.parametrize(
    "source_kw,match",
    [
        ({"width": 8}, r"layer 'stem_conv' has weights \[\(3, 3, 3, 8\)"),
        ({"name": "d4_cnn"}, "has no layer 'stem_conv'"),
    ],
)
def test_mismatched_backbones_fail_with_one_line_naming_both(source_kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        transfer_weights(resnet(), resnet(**source_kw), target_desc="resnet(width=4)", source_desc="the source")
    assert "\n" not in str(err.value) and "resnet(width=4)" in str(err.value) and "the source" in str(err.value)


def test_keras_and_weights_h5_files(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    source = resnet()
    source.save(tmp_path / "src.keras")
    source.save_weights(tmp_path / "src.weights.h5")
    a = resnet()
    load_weights_file(a, tmp_path / "src.keras", target_desc="a")
    assert same(backbone_weights(a), backbone_weights(source))
    b = resnet()
    load_weights_file(b, tmp_path / "src.weights.h5", target_desc="b")
    for x, y in zip(b.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ConfigError, match="same model.name, model.params and class count"):
        load_weights_file(resnet(width=8), tmp_path / "src.weights.h5", target_desc="c")
    (tmp_path / "junk.keras").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="cannot read model.weights junk.keras"):
        load_weights_file(resnet(), tmp_path / "junk.keras", target_desc="d")


class Snapshot(keras.callbacks.Callback):
    """The backbone's weights after each epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.after: list[dict] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.after.append(backbone_weights(self.model))


def test_train_starts_from_a_weights_file_and_freeze_epochs_train_only_the_head(tiny_h5: Path, tmp_path: Path) -> None:
    keras.utils.set_random_seed(1)
    source = build_model(
        ModelConfig(name="resnet", params={"depth": 10, "width": 4}, dense_units=8),
        input_size=24,
        num_classes=10,
        precision="float32",
    )
    source.save(tmp_path / "start.keras")
    start = backbone_weights(source)
    cfg = load_config(None, [*TINY, *RESNET, f"model.weights={tmp_path / 'start.keras'}", "train.freeze_epochs=1"])
    data = load_training_data(cfg.data, tiny_h5)
    snap = Snapshot()
    tracker = NullTracker()
    train(
        prepare_run(cfg, data), tracker, TrainOptions(callbacks=[snap], log_model=False, verbose=0, restore_best=False)
    )
    assert len(snap.after) == 2
    assert same(snap.after[0], start)  # epoch 1: backbone frozen at the file's weights (batch norm too)
    assert not same(snap.after[1], start)  # epoch 2: everything trains
    assert len(tracker.metrics["epoch_val_loss"]) == 2 and tracker.params["model.weights"].endswith("start.keras")


def test_bad_starting_weights_fail_before_training(tiny_h5: Path, tmp_path: Path) -> None:
    data = load_training_data(load_config(None, TINY).data, tiny_h5)
    with pytest.raises(ConfigError, match="model.weights file .* not found"):
        train(prepare_run(load_config(None, [*TINY, *RESNET, f"model.weights={tmp_path / 'nope.keras'}"]), data))
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not a Keras weights file for resnet"):
        train(prepare_run(load_config(None, [*TINY, *RESNET, f"model.weights={tmp_path / 'w.npz'}"]), data))
    with pytest.raises(ConfigError, match="needs an MLflow store"):
        train(
            prepare_run(load_config(None, [*TINY, *RESNET, "model.init_from=0123456789abcdef0123456789abcdef"]), data)
        )
    with pytest.raises(ConfigError, match="another backbone; set model.name=d4_cnn"):
        d4 = resnet(name="d4_cnn")
        train(
            prepare_run(
                load_config(None, [*TINY, *RESNET, "model.init_from=x@champion"]),
                data,
                model_loader=lambda ref: (
                    d4,
                    {
                        "backbone": "d4_cnn",
                        "backbone_params": {"filters": [4, 8]},
                        "class_names": list(data.class_names),
                    },
                ),
            ),
            None,
            TrainOptions(log_model=False),
        )


@pytest.mark.parametrize(
    "sets,match",
    [
        (["train.epochs=3", "train.freeze_epochs=3"], "leaves no epoch"),
        (["model.weights=a.keras", "model.init_from=x@champion"], "keep one"),
        (["model.init_from=''"], "model.init_from is empty"),
    ],
)
def test_config_checks(sets: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, sets)


@pytest.mark.slow
def test_init_from_a_logged_run_through_the_cli(smoke_model, tmp_path: Path) -> None:  # noqa: ANN001
    """`galaxy10 train --set model.init_from=<run id>` starts from the logged model's weights."""
    import mlflow

    from experiments.cli import main as cli_main
    from experiments.tracking.loading import load_keras_model

    mlflow.set_tracking_uri(smoke_model.tracking_uri)
    source, _ = load_keras_model(smoke_model.model_uri, ws=smoke_model.ws)
    smoke = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"
    argv = [
        "-q",
        "train",
        "--config",
        str(smoke),
        "--data",
        str(smoke_model.data_path),
        "--tracking-uri",
        smoke_model.tracking_uri,
        "--set",
        "train.epochs=2",
        "--set",
        "train.freeze_epochs=1",
        "--set",
        f"model.init_from={smoke_model.run_id}",
        "--set",
        "run_name=warm-start",
    ]
    assert cli_main(argv) == 0
    run = mlflow.search_runs(experiment_names=["galaxy10-smoke"], filter_string="tags.mlflow.runName = 'warm-start'")
    assert len(run) == 1 and run.iloc[0]["params.model.init_from"] == smoke_model.run_id
    warm, _ = load_keras_model(f"runs:/{run.iloc[0]['run_id']}/model", ws=smoke_model.ws)
    assert not same(backbone_weights(warm), backbone_weights(source))  # trained on after the start
    code = cli_main(
        [
            *argv[:-2],
            "--set",
            "run_name=bad",
            "--set",
            "model.name=resnet",
            "--set",
            "model.params={depth: 10, width: 4}",
        ]
    )
    assert code == 2  # a reference_cnn model cannot start a resnet: one line, no run
    assert (
        len(mlflow.search_runs(experiment_names=["galaxy10-smoke"], filter_string="tags.mlflow.runName = 'bad'")) == 0
    )
