"""Issue 22: pruning at equal epochs with a floor, start points, --budget plans that fit."""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from core.errors import ConfigError
from experiments.settings.checks import parse_duration
from experiments.settings.search_space import to_overrides
from experiments.settings.trial import resolve_run_config
from experiments.settings.tune import parse_tune_config
from experiments.tuning.budget import StudyPlan, plan_ensemble, plan_study, trial_seconds
from experiments.tuning.pruning import FloorPruner, describe_cuts, floor_epochs, fold_epoch, step_of

# ----------------------------------------------------------------------------------------------- pruning


def test_steps_align_trials_of_any_epoch_budget_at_equal_fold_and_epoch() -> None:
    assert step_of(0, 5) == 5 and fold_epoch(step_of(2, 7)) == (2, 7)
    # fold 2, epoch 3 is one step for a trial of 8 epochs and one of 50 (it used to be k * epochs + e)
    assert step_of(1, 3) == step_of(1, 3) and step_of(1, 3) not in {1 * 8 + 3, 1 * 50 + 3}
    with pytest.raises(ValueError):
        step_of(0, 1000)


def _complete(best_epoch: int, values: dict[int, float], **attrs: object) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=TrialState.COMPLETE,
        value=max(values.values()),
        intermediate_values=values,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        user_attrs={"best_epoch": best_epoch, **attrs},
    )


def _study(pruner: optuna.pruners.BasePruner, finished: list[optuna.trial.FrozenTrial]) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for t in finished:
        study.add_trial(t)
    return study


def test_a_trial_is_never_pruned_before_the_epochs_finished_trials_needed() -> None:
    """The wrapped pruner would cut any value under 1.0 at once; the floor holds it off until the epoch at
    which the finished trials reached their best (median of 10 and 12 -> 11)."""
    finished = [_complete(10, {e: 0.5 for e in range(1, 21)}), _complete(12, {e: 0.6 for e in range(1, 21)})]
    study = _study(FloorPruner(optuna.pruners.ThresholdPruner(lower=1.0), "auto"), finished)
    assert floor_epochs(study.get_trials(), "auto") == 11
    trial = study.ask()
    cut_at = None
    for epoch in range(1, 21):
        trial.report(0.1, epoch)
        if trial.should_prune():
            cut_at = epoch
            break
    assert cut_at == 11


def test_the_floor_applies_in_every_fold_and_can_be_pinned() -> None:
    study = _study(FloorPruner(optuna.pruners.ThresholdPruner(lower=1.0), 4), [])
    trial = study.ask()
    trial.report(0.1, step_of(1, 3))
    assert not trial.should_prune()  # fold 2, epoch 3 < 4
    trial.report(0.1, step_of(1, 4))
    assert trial.should_prune()


def test_without_finished_trials_the_floor_leaves_the_pruner_alone() -> None:
    study = _study(FloorPruner(optuna.pruners.ThresholdPruner(lower=1.0), "auto"), [])
    trial = study.ask()
    trial.report(0.1, 1)
    assert trial.should_prune()


def test_cross_validated_folds_give_the_floor_their_first_fold() -> None:
    t = _complete(30, {1: 0.5}, cv_best_epochs=[7, 9, 8])
    assert floor_epochs([t], "auto") == 7


def test_study_show_says_where_each_pruned_trial_was_cut_and_against_what() -> None:
    finished = [
        _complete(5, {step_of(0, 3): 0.6, step_of(1, 3): 0.7}),
        _complete(5, {step_of(0, 3): 0.8, step_of(1, 3): 0.9}),
    ]
    pruned = create_trial(
        state=TrialState.PRUNED,
        intermediate_values={step_of(0, 3): 0.4, step_of(1, 3): 0.3},
        params={"x": 0.1},
        distributions={"x": FloatDistribution(0, 1)},
        user_attrs={"cv_folds": 3},
    )
    pruned.number = 2
    assert describe_cuts([*finished, pruned]) == [
        "trial 2: cut at epoch 3 of fold 2 with 0.3000; median of 2 COMPLETE trial(s) there 0.8000"
    ]


def test_min_epochs_is_checked() -> None:
    with pytest.raises(ConfigError, match="study.pruner.min_epochs='soon' must be auto"):
        parse_tune_config(
            {
                "study": {"name": "s", "pruner": {"name": "median", "min_epochs": "soon"}},
                "search_space": {"model.dropout": {"type": "float", "low": 0, "high": 0.5}},
            }
        )
    cfg = parse_tune_config(
        {
            "study": {"name": "s", "pruner": {"name": "hyperband", "min_epochs": 3}},
            "search_space": {"model.dropout": {"type": "float", "low": 0, "high": 0.5}},
        }
    )
    assert cfg.study.pruner.min_epochs == 3 and "min_epochs" not in cfg.study.pruner.kwargs


# ------------------------------------------------------------------------------------------ start points

SPACE = {
    "model.name": {"type": "categorical", "choices": ["d4_cnn", "reference_cnn"]},
    "d4": {
        "type": "categorical",
        "choices": {"small": {"filters": [4, 8, 16, 16]}},
        "target": "model.params",
        "when": {"model.name": "d4_cnn"},
    },
    "resolution": {
        "type": "categorical",
        "choices": {"64-48": {"size": 64, "crop": 48}, "96-72": {"size": 96, "crop": 72}},
        "target": "data",
    },
    "model.dropout": {"type": "float", "low": 0.1, "high": 0.6},
}


def test_start_points_are_queued_after_the_reference_trial(tmp_path) -> None:  # noqa: ANN001
    from experiments.tuning.storage import open_storage
    from experiments.tuning.study import open_study

    point = {"model.name": "d4_cnn", "d4": "small", "resolution": "64-48"}
    tune = parse_tune_config({"study": {"name": "sp", "start_points": [point]}, "search_space": SPACE})
    study = open_study(tune, open_storage(f"sqlite:///{tmp_path / 'o.db'}"))
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs for t in waiting] == [{"reference_recipe": True}, {"start_point": True}]
    assert waiting[1].system_attrs["fixed_params"] == point  # its labels; dropout is left to the sampler


@pytest.mark.parametrize(
    ("point", "message"),
    [
        ({"model.width": 3}, "unknown config key study.start_points[0].model.width: not a search_space parameter"),
        (
            {"resolution": "128-88"},
            "config key study.start_points[0].resolution='128-88' is not allowed; use one of its choices",
        ),
        (
            {"model.dropout": 0.9},
            "config key study.start_points[0].model.dropout=0.9 is not allowed; give a number in [0.1, 0.6]",
        ),
    ],
)
def test_bad_start_points_are_one_clear_error(point: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_tune_config({"study": {"name": "s", "start_points": [point]}, "search_space": SPACE})
    assert str(err.value).startswith(message)


def test_a_resolution_choice_sets_size_and_crop_and_keeps_the_rest_of_data() -> None:
    tune = parse_tune_config(
        {"run": {"data": {"path": "my_set.h5", "split_seed": 3}}, "study": {"name": "s"}, "search_space": SPACE}
    )
    params = {"model.name": "reference_cnn", "resolution": "96-72", "model.dropout": 0.3}
    assert "data.size=96" in to_overrides(tune.space, params)
    cfg, _ = resolve_run_config(tune, params)
    assert (cfg.data.size, cfg.data.crop, cfg.data.path, cfg.data.split_seed) == (96, 72, "my_set.h5", 3)


# -------------------------------------------------------------------------------------------------- budget


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), (" 2M ", 120), ("0.5h", 1800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "1d", "-5m", "0", "m", "1h 30x", "inf"])
def test_bad_durations_are_one_clear_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--budget"):
        parse_duration(text)


def _plan(budget: float, **kw: object) -> StudyPlan:
    args = {
        "reference_epoch_s": 2.0,
        "reference_epochs": 50,
        "trial_epoch_s": 2.0,
        "trial_epochs": 40,
        "fold_options": (3, 2, 0),
        "max_trials": 50,
        "refit": True,
        **kw,
    }
    return plan_study(budget, **args)


@pytest.mark.parametrize("budget", [150.0, 400.0, 900.0, 3000.0, 20000.0])
@pytest.mark.parametrize("overhead", [0.0, 6.0])
def test_a_plan_fits_its_budget(budget: float, overhead: float) -> None:
    plan = _plan(budget, spent_s=12.0, fit_overhead_s=overhead)
    if overhead:  # every fit pays its set-up: a trial of 3 folds is 4 fits
        assert (
            plan.reference_s
            == trial_seconds(50, 2.0, plan.folds) + (4 if plan.folds == 3 else 3 if plan.folds == 2 else 1) * overhead
        )
    assert plan.planned_s + 12.0 <= budget * 0.9 + 1e-9
    assert plan.deadline_s + plan.trial_s + (plan.refit_s if plan.refit else 0) <= budget * 0.9 - 12.0 + 1e-9
    assert plan.n_trials >= 1 and plan.folds in (3, 2, 0)


def test_a_plan_prefers_folds_then_drops_them_then_cuts_epochs() -> None:
    rich = _plan(20000.0)
    assert rich.folds == 3 and rich.n_trials > 10 and rich.refit and rich.epochs is None
    # 3 folds cost the reference 3 x 2/3 x 100 s + 100 s = 300 s: room for it and two tuned trials at 2 folds
    assert _plan(700.0).folds == 2
    tight = _plan(350.0)
    assert tight.folds == 0 and tight.n_trials >= 3
    cut = _plan(230.0)  # 207 s usable: the reference (100 s) and two tuned trials of fewer epochs
    assert cut.folds == 0 and cut.epochs is not None and cut.epochs < 40 and cut.n_trials == 3
    assert cut.reference_s == trial_seconds(50, 2.0, 0)


def test_a_budget_too_short_for_the_reference_names_what_it_needs() -> None:
    with pytest.raises(ConfigError) as err:
        _plan(60.0)
    assert str(err.value) == (
        "--budget 60 s is too short: the reference trial alone needs about 111 s on this "
        "machine; give at least 2m or set study.reference_trial: false"
    )


def test_a_plan_without_the_reference_trial_counts_tuned_trials_only() -> None:
    plan = _plan(300.0, reference_epoch_s=None, refit=False)
    assert plan.reference_s == 0 and plan.planned_s == plan.n_trials * plan.trial_s <= 270.0
    assert "the reference recipe" not in plan.describe() and f"{plan.n_trials} tuned trial(s)" in plan.describe()


def test_trials_caps_a_plan() -> None:
    capped = _plan(20000.0, max_trials=4)
    assert capped.n_trials == 4 and capped.capped == 4
    assert "capped by study.n_trials / --trials = 4, not by the budget" in capped.describe()
    bound = _plan(350.0)
    assert bound.capped is None and "as many as the budget holds" in bound.describe()


@pytest.mark.slow
def test_a_measured_plan_keeps_the_configs_trial_cap(tmp_path, make_h5) -> None:  # noqa: ANN001
    """The measured path: real speed probes on a tiny file; a huge budget runs the config's study.n_trials,
    not 50, and says the cap bound it; a budget below the measured reference trial is refused."""
    from conftest import tiny_tune_yaml

    from experiments.settings.tune import load_tune_config
    from experiments.tuning.budget import plan_for_study

    h5 = make_h5(n=80, size=48)
    tune = load_tune_config(tiny_tune_yaml(tmp_path / "t.yaml", experiment="e", name="t", n_trials=2, epochs=3))
    plan = plan_for_study(
        tune, data_path=str(h5), budget_s=360000.0, max_trials=tune.study.n_trials, with_reference=False
    )
    assert plan.n_trials == 2 and plan.capped == 2 and "capped by study.n_trials" in plan.describe()
    assert plan.reference_s == 0 and 0 < plan.trial_s < 600 and plan.trial_max_s >= plan.trial_s
    assert plan.planned_s == pytest.approx(2 * plan.trial_s)
    with pytest.raises(ConfigError, match="is too short"):
        plan_for_study(tune, data_path=str(h5), budget_s=0.5, max_trials=2, with_reference=False)


@dataclass(frozen=True)
class _Crossfit:
    folds: int = 3


@dataclass(frozen=True)
class _EnsembleCfg:
    mode: str = "crossfit"
    crossfit: _Crossfit = _Crossfit()


def test_the_ensemble_keeps_cross_fitting_only_when_it_fits() -> None:
    cfg, text = plan_ensemble(_EnsembleCfg(), 100.0, 600.0)  # 3 folds x 2/3 x 100 s = 200 s <= 0.675 x 600
    assert cfg.mode == "crossfit" and "fits" in text
    cfg, text = plan_ensemble(_EnsembleCfg(), 100.0, 120.0)
    assert cfg.mode == "val_cv" and "~200 s" in text
    cfg, _ = plan_ensemble(_EnsembleCfg(), None, 600.0)
    assert cfg.mode == "val_cv"
    assert math.isclose(trial_seconds(10, 1.0, 3), 3 * 10 * 2 / 3 + 10)


# ----------------------------------------------------------------------------------- study accuracy guard


def _scored(number: int, value: float, acc: float, n: int = 100, key: str = "val_accuracy") -> optuna.trial.FrozenTrial:
    t = create_trial(
        state=TrialState.COMPLETE,
        value=value,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        user_attrs={key: acc, "scored_images": n},
    )
    t.number = number
    return t


def test_the_best_trial_keeps_its_accuracy() -> None:
    """By balanced accuracy trial 0 leads, but its accuracy trails trial 1's by 0.20 (SE of the
    difference 0.063 on 100 images each): the best is the best trial by the metric among those within the
    SE of the most accurate one."""
    from experiments.tuning.study import guarded_best

    top, accurate, close = _scored(0, 0.70, 0.60), _scored(1, 0.65, 0.80), _scored(2, 0.69, 0.76)
    assert guarded_best([top, accurate], "balanced_accuracy").number == 1
    assert guarded_best([top, accurate, close], "balanced_accuracy").number == 2
    assert guarded_best([top, accurate, close], "accuracy").number == 0  # the guard is the metric itself
    # cross-validated accuracy (every train image scored once) is what the guard reads when there
    cv = [_scored(0, 0.70, 0.78, 600, "cv_accuracy"), _scored(1, 0.65, 0.80, 600, "cv_accuracy")]
    assert guarded_best(cv, "balanced_accuracy").number == 0
    assert guarded_best([], "accuracy") is None


def test_study_show_prints_the_guard_evidence_behind_the_best_trial() -> None:
    """The lines ``galaxy10 study show`` prints: which trial was passed over and why, and which was chosen."""
    from experiments.tuning.study import guard_evidence

    top, accurate, close = _scored(0, 0.70, 0.60), _scored(1, 0.65, 0.80), _scored(2, 0.69, 0.76)
    best, lines = guard_evidence([top, accurate, close], "balanced_accuracy")
    assert best.number == 2
    assert lines[0].startswith("the most accurate trial is 1 (accuracy 0.8000 on 100 images)")
    assert lines[1] == (
        "trial 0 (balanced_accuracy 0.7000): accuracy 0.6000, -0.2000 against trial 1, standard "
        "error 0.0632: passed over"
    )
    assert lines[2].startswith("trial 2 (balanced_accuracy 0.6900): accuracy 0.7600") and lines[2].endswith("chosen")
