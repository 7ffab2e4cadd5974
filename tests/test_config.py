"""Run configs: defaults, shipped YAML files, overrides, validation errors, round trips."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError
from experiments.settings.run import (
    AugmentConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    flatten,
    from_dict,
    load_config,
    parse_override,
    to_dict,
    to_yaml,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "experiments" / "configs"
RUN_KEYS = {"data", "augment", "model", "train", "experiment_name", "run_name"}


def _run_config_files() -> list[Path]:
    """Every shipped YAML that is a run config (tuning/ensemble YAMLs have other top-level keys)."""
    out = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        if set(raw) <= RUN_KEYS:
            out.append(path)
    return out


def test_shipped_run_configs_include_ours():
    names = {p.name for p in _run_config_files()}
    assert {"reference.yaml", "targeted.yaml", "smoke.yaml"} <= names


@pytest.mark.parametrize("path", _run_config_files(), ids=lambda p: p.name)
def test_every_shipped_run_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert from_dict(to_dict(cfg)) == cfg


def test_reference_yaml_is_the_reference_recipe():
    cfg = load_config(CONFIG_DIR / "reference.yaml")
    assert cfg.model == ModelConfig(
        filters=(32, 32, 64, 64),
        kernel_size=3,
        batch_norm=False,
        dropout=0.5,
        dense_units=256,
        l2=0.0,
        global_pooling=False,
        activation="relu",
    )
    assert (cfg.augment.policy, cfg.augment.targets, cfg.augment.tta) == ("reference", None, False)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.optimizer, cfg.train.learning_rate) == (
        50,
        64,
        "adam",
        1e-3,
    )
    assert (cfg.train.schedule, cfg.train.precision) == ("constant", "float32")
    assert (cfg.data.size, cfg.data.crop) == (128, 88)


def test_targeted_yaml_targets_hard_classes_with_tta():
    cfg = load_config(CONFIG_DIR / "targeted.yaml")
    assert cfg.augment.policy == "galaxy"
    assert cfg.augment.targets["disturbed"] == 3.0 and cfg.augment.targets["cigar"] == 3.0
    assert cfg.augment.tta is True


def test_smoke_yaml_is_tiny():
    cfg = load_config(CONFIG_DIR / "smoke.yaml")
    assert cfg.train.epochs <= 2 and cfg.data.size <= 64 and cfg.data.max_images is not None


def test_defaults_without_file():
    cfg = load_config(None)
    assert cfg == RunConfig(DataConfig(), AugmentConfig(), ModelConfig(), TrainConfig())


def test_yaml_holds_only_differences(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  epochs: 7\nmodel:\n  filters: [16, 16]\n")
    cfg = load_config(path)
    assert cfg.train.epochs == 7 and cfg.model.filters == (16, 16)
    assert cfg.train.batch_size == TrainConfig().batch_size


def test_overrides_are_dotted_and_yaml_parsed(tmp_path):
    cfg = load_config(
        None,
        [
            "train.epochs=3",
            "train.learning_rate=3.0e-4",
            "augment.tta=true",
            "model.filters=[8, 16, 32]",
            "augment.targets={disturbed: 3}",
            "augment.targets.cigar=2.5",
            "data.max_images=null",
            "run_name=abc",
        ],
    )
    assert cfg.train.epochs == 3 and cfg.train.learning_rate == pytest.approx(3e-4)
    assert cfg.augment.tta is True and cfg.model.filters == (8, 16, 32)
    assert cfg.augment.targets == {"disturbed": 3.0, "cigar": 2.5}
    assert cfg.run_name == "abc"


def test_override_replaces_auto_targets_with_mapping():
    raw = apply_overrides({"augment": {"targets": "auto"}}, ["augment.targets.disturbed=2"])
    assert raw["augment"]["targets"] == {"disturbed": 2}


def test_override_later_wins_and_input_is_not_mutated():
    raw = {"train": {"epochs": 5}}
    out = apply_overrides(raw, ["train.epochs=1", "train.epochs=2"])
    assert out["train"]["epochs"] == 2 and raw["train"]["epochs"] == 5


def test_strengths_pass_through_to_policy():
    cfg = load_config(None, ["augment.policy=galaxy", "augment.strengths={rotation_limit: 90, isotropic_scale: false}"])
    assert cfg.augment.strengths == {"rotation_limit": 90, "isotropic_scale": False}


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.epoch=3", ["train.epoch", "epochs"]),
        ("trian.epochs=3", ["trian", "train"]),
        ("train.optimizer=rmsprop", ["train.optimizer", "adam, adamw, sgd"]),
        ("train.precision=float16", ["train.precision", "mixed_bfloat16"]),
        ("train.schedule=linear", ["train.schedule", "cosine"]),
        ("train.epochs=abc", ["train.epochs", "integer"]),
        ("train.epochs=2.5", ["train.epochs", "integer"]),
        ("train.epochs=0", ["train.epochs", "range"]),
        ("model.dropout=1.5", ["model.dropout", "range"]),
        ("model.batch_norm=1", ["model.batch_norm", "true or false"]),
        ("model.filters=[]", ["model.filters", "list"]),
        ("model.filters=[8, 8, 8, 8, 8, 8, 8]", ["model.filters", "pooling"]),
        ("data.crop=200", ["data.crop", "data.size"]),
        ("augment.policy=fancy", ["augment.policy", "galaxy"]),
        ("augment.targets=sometimes", ["augment.targets", "auto"]),
        ("augment.targets.nebula=0.5", ["nebula", ">= 1"]),
        ("augment.targets.disturbed=0.5", ["disturbed", ">= 1"]),
        ("augment.auto_from_run=abc", ["auto_from_run", "targets=auto"]),
        ("augment.strengths.rotation_limit=400", ["rotation_limit"]),
        ("augment.strengths.spin=1", ["spin"]),
        ("epochs=3", ["epochs", "top-level"]),
        ("train.epochs.x=3", ["train.epochs", "integer"]),
    ],
)
def test_bad_values_name_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("text", ["train.epochs", "=3", "train..epochs=3", "train.epochs=[1,"])
def test_malformed_overrides(text):
    with pytest.raises(ConfigError, match="override"):
        load_config(None, [text])


def test_parse_override_splits_on_first_equals():
    assert parse_override("run_name=a=b") == ("run_name", "a=b")
    assert parse_override("train.learning_rate=1.0e-3") == ("train.learning_rate", 1e-3)


def test_auto_targets_with_run_id_load():
    cfg = load_config(None, ["augment.targets=auto", "augment.auto_from_run=0123abcd", "augment.max_multiplier=3"])
    assert cfg.augment.targets == "auto" and cfg.augment.auto_from_run == "0123abcd"


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == load_config(None)


def test_round_trips_through_dict_and_yaml():
    cfg = load_config(
        None,
        [
            "augment.targets={disturbed: 3, cigar: 1.5}",
            "model.filters=[4, 8]",
            "train.patience=null",
            "augment.policy=galaxy",
            "augment.strengths={noise_std: 2}",
        ],
    )
    assert from_dict(to_dict(cfg)) == cfg
    assert from_dict(yaml.safe_load(to_yaml(cfg))) == cfg


def test_configs_are_frozen():
    cfg = load_config(None)
    with pytest.raises(AttributeError):
        cfg.train.epochs = 3  # type: ignore[misc]


def test_flatten_for_mlflow_params():
    cfg = load_config(None, ["augment.targets={disturbed: 3}", "train.patience=null"])
    flat = flatten(cfg)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in flat.items())
    assert flat["train.epochs"] == "50" and flat["model.filters"] == "[32, 32, 64, 64]"
    assert flat["augment.targets.disturbed"] == "3.0" and flat["train.patience"] == "null"
    assert flat["augment.tta"] == "false"
    train_keys = {k for k in flat if k.startswith("train.")}
    assert train_keys == {f"train.{f.name}" for f in fields(TrainConfig)}
