"""experiments.settings.search_space: schema validation with exact messages, conditional suggest, overrides."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from core.errors import ConfigError
from experiments.settings.search_space import (
    assignments,
    parse_search_space,
    space_hash,
    suggest,
    to_overrides,
    yaml_scalar,
)
from experiments.settings.tune import load_tune_config, parse_study

SPACE = {
    "train.learning_rate": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
    "train.batch_size": {"type": "categorical", "choices": [32, 64]},
    "model.filters": {"type": "categorical", "choices": [[32, 32, 64, 64], [16, 32, 64]]},
    "augment.policy": {"type": "categorical", "choices": ["reference", "galaxy"]},
    "rotation": {
        "type": "float",
        "low": 30.0,
        "high": 180.0,
        "target": "augment.strengths.rotation_limit",
        "when": {"augment.policy": "galaxy"},
    },
    "augment.targets": {"type": "categorical", "choices": {"none": None, "auto": "auto", "weak": {}}},
    "augment.targets.disturbed": {"type": "float", "low": 1.0, "high": 4.0, "when": {"augment.targets": "weak"}},
    "augment.targets.cigar": {"type": "int", "low": 1, "high": 4, "when": {"augment.targets": "weak"}},
}


@pytest.fixture
def space():
    return parse_search_space(SPACE)


def test_conditional_parameters_exist_only_when_their_condition_holds(space) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_policies = set()
    for _ in range(40):
        trial = study.ask()
        params = suggest(trial, space)
        assert params == trial.params
        seen_policies.add(params["augment.policy"])
        assert ("rotation" in params) == (params["augment.policy"] == "galaxy")
        weak = params["augment.targets"] == "weak"
        assert ("augment.targets.disturbed" in params) == weak
        assert ("augment.targets.cigar" in params) == weak
        assert 1e-4 <= params["train.learning_rate"] <= 3e-3
        assert round(params["model.dropout"] * 10, 6) == round(params["model.dropout"] * 10)
        study.tell(trial, 0.5)
    assert seen_policies == {"reference", "galaxy"}


def test_assignments_map_labels_to_values_and_merge_children(space) -> None:
    params = {
        "train.learning_rate": 1e-5,
        "model.dropout": 0.2,
        "train.batch_size": 64,
        "model.filters": "[16,32,64]",
        "augment.policy": "galaxy",
        "rotation": 90.0,
        "augment.targets": "weak",
        "augment.targets.disturbed": 2.5,
        "augment.targets.cigar": 3,
    }
    out = assignments(space, params)
    assert out == {
        "train.learning_rate": 1e-5,
        "model.dropout": 0.2,
        "train.batch_size": 64,
        "model.filters": [16, 32, 64],
        "augment.policy": "galaxy",
        "augment.strengths.rotation_limit": 90.0,
        "augment.targets": {"disturbed": 2.5, "cigar": 3},
    }
    overrides = to_overrides(space, params)
    assert "train.learning_rate=1.0e-05" in overrides
    assert 'augment.targets={"disturbed": 2.5, "cigar": 3}' in overrides
    # every override value parses back (as YAML) to exactly the assigned value and type
    for item in overrides:
        key, text = item.split("=", 1)
        assert yaml.safe_load(text) == out[key]
        assert type(yaml.safe_load(text)) is type(out[key])


def test_switch_values_auto_and_none(space) -> None:
    base = {
        "train.learning_rate": 1e-3,
        "model.dropout": 0.1,
        "train.batch_size": 32,
        "model.filters": "[32,32,64,64]",
        "augment.policy": "reference",
    }
    assert assignments(space, {**base, "augment.targets": "auto"})["augment.targets"] == "auto"
    assert assignments(space, {**base, "augment.targets": "none"})["augment.targets"] is None
    assert "augment.strengths.rotation_limit" not in assignments(space, {**base, "augment.targets": "none"})


@pytest.mark.parametrize("value", [1e-5, 3.0e20, 0.1, 2.0, -7.5e-9, 5, True, None, "auto", "1e-3", [1, 2.5e-7]])
def test_yaml_scalar_round_trips(value) -> None:
    assert yaml.safe_load(yaml_scalar(value)) == value
    assert type(yaml.safe_load(yaml_scalar(value))) is type(value)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (
            {"model.dropout": {"type": "float", "lo": 0.0, "high": 0.5}},
            "search_space 'model.dropout': unknown key 'lo'; use any of: type, low, high, step, log, choices, when, target",
        ),
        (
            {"model.dropout": {"type": "float", "low": 0.5, "high": 0.1}},
            "search_space 'model.dropout': range low=0.5 high=0.1 is empty; make low < high "
            "(or fix the value in the run section instead of searching it)",
        ),
        (
            {"train.batch_size": {"type": "categorical", "choices": []}},
            "search_space 'train.batch_size': choices is empty; list at least two values",
        ),
        (
            {"model.dropout": {"type": "uniform", "low": 0.0, "high": 0.5}},
            "search_space 'model.dropout': type='uniform' is unknown; use one of: float, int, categorical",
        ),
        (
            {"train.learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}},
            "search_space 'train.learning_rate': log scale needs low > 0, got low=0.0; raise low or drop log",
        ),
        (
            {"model.depth": {"type": "int", "low": 2, "high": 5.5}},
            "search_space 'model.depth': high=5.5 is not an integer; an int parameter needs integers",
        ),
        (
            {"x": {"type": "float", "low": 0.0, "high": 1.0, "when": {"augment.policy": "galaxy"}}},
            "search_space 'x': when refers to 'augment.policy', which is not a parameter listed before it; "
            "use one of: (none)",
        ),
        (
            {
                "augment.policy": {"type": "categorical", "choices": ["reference", "galaxy"]},
                "x": {"type": "float", "low": 0.0, "high": 1.0, "when": {"augment.policy": "galaxyy"}},
            },
            "search_space 'x': when augment.policy='galaxyy' is not one of its choices ['reference', 'galaxy']; "
            "use one of those",
        ),
        (
            {"train.batch_size": {"type": "categorical", "choices": [32, 64], "low": 1}},
            "search_space 'train.batch_size': key 'low' does not apply to a categorical parameter; "
            "use any of: type, choices, when, target",
        ),
        (
            {},
            "search_space must be a non-empty mapping of parameter name to spec; "
            "add e.g. train.learning_rate: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}",
        ),
    ],
)
def test_bad_search_space_gives_one_clear_line(space, message) -> None:
    with pytest.raises(ConfigError) as err:
        parse_search_space(space)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("study", "message"),
    [
        (
            {"metric": "f1"},
            "config key study.metric='f1' is not allowed; use one of: accuracy, balanced_accuracy, macro_f1",
        ),
        (
            {"sampler": {"name": "grid"}},
            "config key study.sampler.name='grid' is not allowed; use one of: tpe, random, cmaes, qmc",
        ),
        (
            {"pruner": {"name": "median", "patience": 3}},
            "unknown config key study.pruner.patience; allowed keys in study.pruner: name, n_startup_trials, n_warmup_steps, "
            "interval_steps, n_min_trials, min_epochs",
        ),
        (
            {"n_trial": 3},
            "unknown config key study.n_trial; allowed keys in study: name, metric, n_trials, timeout, workers, storage, "
            "sampler, pruner, heartbeat_interval, grace_period, retry_stale, log_models, keep_models, "
            "register_model, model_alias, refit, cv_folds, reference_trial, start_points, speed_objective, "
            "unlabeled",
        ),
        (
            {"heartbeat_interval": 10, "grace_period": 5},
            "config key study.grace_period=5 must exceed study.heartbeat_interval=10 (a live worker would look dead); "
            "make it at least twice the interval",
        ),
    ],
)
def test_bad_study_section(study, message) -> None:
    with pytest.raises(ConfigError) as err:
        parse_study(study, "x")
    assert str(err.value) == message


def test_space_hash_tracks_the_space_only() -> None:
    a = parse_search_space(SPACE)
    b = parse_search_space(yaml.safe_load(yaml.safe_dump(SPACE)))  # same space, re-read from YAML
    assert space_hash(a) == space_hash(b)
    changed = {**SPACE, "model.dropout": {"type": "float", "low": 0.0, "high": 0.6, "step": 0.1}}
    assert space_hash(parse_search_space(changed)) != space_hash(a)
    as_int = {
        **SPACE,
        "augment.targets.cigar": {"type": "float", "low": 1, "high": 4, "when": {"augment.targets": "weak"}},
    }
    assert space_hash(parse_search_space(as_int)) != space_hash(a)


def test_load_tune_config_defaults_study_name_to_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "my_study.yaml"
    path.write_text(yaml.safe_dump({"run": {"train": {"epochs": 2}}, "search_space": SPACE}, sort_keys=False))
    cfg = load_tune_config(path)
    assert cfg.study.name == "my_study"
    assert cfg.study.sampler.name == "tpe" and cfg.study.sampler.kwargs["seed"] == 0
    assert cfg.space.names == tuple(SPACE)
    assert cfg.run == {"train": {"epochs": 2}}


@pytest.mark.parametrize("name", ["tune_cnn.yaml", "tune_quick.yaml"])
def test_shipped_tuning_configs_resolve_at_every_range_end_and_choice(name: str) -> None:
    from experiments.settings.trial import check_against_config, resolve_run_config

    path = Path(__file__).resolve().parents[1] / "experiments" / "configs" / name
    cfg = load_tune_config(path)
    check_against_config(cfg)  # raises ConfigError naming the parameter if any probe is refused
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(25):
        trial = study.ask()
        run, overrides = resolve_run_config(cfg, suggest(trial, cfg.space))
        assert run.train.monitor == "val_accuracy"
        assert len(overrides) == len(assignments(cfg.space, trial.params))
        study.tell(trial, 0.0)


def test_auto_targets_work_with_or_without_a_source_run(tmp_path: Path) -> None:
    """Without run.augment.auto_from_run, 'auto' measures recall in a warm-up of each trial (issue 12)."""
    from experiments.settings.trial import check_against_config, resolve_run_config

    space = {"augment.targets": {"type": "categorical", "choices": {"none": None, "auto": "auto"}}}
    cfg = parse_tune_config_from(tmp_path, {"search_space": space})
    check_against_config(cfg)
    assert resolve_run_config(cfg, {"augment.targets": "auto"})[0].augment.auto_from_run is None
    cfg = parse_tune_config_from(tmp_path, {"run": {"augment": {"auto_from_run": "abc123"}}, "search_space": space})
    check_against_config(cfg)
    from experiments.settings.trial import resolve_run_config

    assert resolve_run_config(cfg, {"augment.targets": "auto"})[0].augment.auto_from_run == "abc123"
    assert resolve_run_config(cfg, {"augment.targets": "none"})[0].augment.auto_from_run is None


def parse_tune_config_from(tmp_path: Path, doc: dict):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_tune_config(path)


def test_cv_folds_default_by_validation_size_and_bad_values() -> None:
    auto = parse_study({"name": "s"}, "s")
    assert auto.cv_folds == "auto" and auto.folds_for(357) == 3 and auto.folds_for(500) == 0
    assert parse_study({"name": "s", "cv_folds": 0}, "s").folds_for(10) == 0
    assert parse_study({"name": "s", "cv_folds": 5}, "s").folds_for(10_000) == 5
    for bad in (1, -2, 21, "three", True, 2.5):
        with pytest.raises(ConfigError, match=r"study.cv_folds=.* must be auto, 0 .* or an integer 2-20"):
            parse_study({"name": "s", "cv_folds": bad}, "s")
