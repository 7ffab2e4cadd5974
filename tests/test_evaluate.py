"""``galaxy10 evaluate``: the folds, the corrected summary, resuming a killed evaluation, the whole command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments.crossval.folds import Fold, inner_validation, parse_recipe, repeated_folds
from experiments.crossval.recipes import FoldResult
from experiments.crossval.summary import summarize
from experiments.tracking.workspace import Workspace


def test_every_image_is_held_out_once_per_repetition_and_duplicates_stay_together() -> None:
    rng = np.random.default_rng(0)
    labels = np.resize(np.arange(4), 120)
    groups = np.arange(120)
    groups[[5, 9]] = 5  # images 5 and 9 are the same galaxy
    plan = repeated_folds(labels, groups, repeats=3, folds=5, seed=7)
    assert [f.cell for f in plan[:6]] == ["r0k0", "r0k1", "r0k2", "r0k3", "r0k4", "r1k0"]
    for r in range(3):
        tests = np.concatenate([f.test for f in plan if f.r == r])
        assert sorted(tests.tolist()) == list(range(120))
    for f in plan:
        assert not set(f.train) & set(f.test)
        assert ({5, 9} <= set(f.test)) or not ({5, 9} & set(f.test))
        assert set(np.bincount(labels[f.test], minlength=4)) <= {5, 6, 7}  # stratified
    assert not np.array_equal(plan[0].test, plan[5].test)  # another shuffle per repetition
    again = repeated_folds(labels, groups, repeats=1, folds=5, seed=7)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(again, plan))  # R=1 is R=3's first repetition
    del rng


def test_inner_validation_is_stratified_and_keeps_singletons_in_training() -> None:
    labels = np.r_[np.zeros(50, int), np.ones(30, int), [2]]
    train = np.arange(81)
    tr, va = inner_validation(labels, train, 0.1, seed=0)
    assert sorted(np.r_[tr, va].tolist()) == list(range(81)) and not set(tr) & set(va)
    assert 80 in tr and set(labels[va]) == {0, 1}


def test_summary_differences_use_the_corrected_interval() -> None:
    from experiments.paired import corrected_resampled_t

    labels = np.resize(np.arange(2), 40)
    plan = [Fold(0, k, np.setdiff1d(np.arange(40), np.arange(k, 40, 4)), np.arange(k, 40, 4)) for k in range(4)]
    rng = np.random.default_rng(1)
    preds = {
        name: {
            f.cell: np.eye(2)[np.where(rng.random(len(f.test)) < p, labels[f.test], 1 - labels[f.test])] for f in plan
        }
        for name, p in (("a", 0.6), ("b", 0.9))
    }
    s = summarize(labels, plan, preds, {}, class_names=("x", "y"), class_slugs=("x", "y"), repeats=1)
    (d,) = s.differences
    fold_diff = s.recipes[1].scores["accuracy"] - s.recipes[0].scores["accuracy"]
    expect = corrected_resampled_t(fold_diff, n_train=30, n_test=10)
    assert (d.metrics["accuracy"].mean, d.metrics["accuracy"].lo) == pytest.approx((expect.mean, expect.lo))
    assert d.metrics["accuracy"].se / d.metrics["accuracy"].naive_se == pytest.approx(np.sqrt(1 + 4 * 10 / 30))
    identical = summarize(
        labels, plan, {"a": preds["a"], "c": preds["a"]}, {}, class_names=("x", "y"), class_slugs=("x", "y"), repeats=1
    )
    t = identical.differences[0].metrics["accuracy"]
    assert (t.mean, t.lo, t.hi) == (0.0, 0.0, 0.0)


def _recipe(tmp: Path, name: str, epochs: int) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "experiment_name": f"ev-{name}",
                "data": {"size": 32, "crop": 24},
                "model": {"filters": [4, 8], "dense_units": 8},
                "train": {"epochs": epochs, "batch_size": 32, "patience": None},
            }
        )
    )
    return path


def _fake_runner(calls: list, kill_at: int | None = None):
    """A deterministic stand-in for training: probabilities from the recipe's epochs and the fold's images."""

    def run(cfg, data, fold, *, seed, tracker, lookups):  # noqa: ANN001, ANN202 - the runner's signature
        calls.append(fold.cell)
        if kill_at is not None and len(calls) == kill_at:
            raise KeyboardInterrupt  # the user pressed Ctrl-C (a SIGKILL leaves the child RUNNING: same redo)
        rng = np.random.default_rng(cfg.train.epochs * 1000 + int(fold.test[0]))
        y = data.labels[fold.test]
        right = rng.random(len(y)) < (0.5 + 0.1 * cfg.train.epochs)
        pred = np.where(right, y, (y + 1) % data.num_classes)
        return FoldResult(np.eye(data.num_classes, dtype=np.float32)[pred], 1.0, {})

    return run


def _evaluate(tmp: Path, h5: Path, out: str, store: str, recipes: list, **kw):
    from experiments.crossval.run import run_evaluation

    return run_evaluation(
        h5, recipes, out=tmp / out, repeats=2, folds=3, seed=0, ws=Workspace.of(f"sqlite:///{tmp / store}"), **kw
    )


def test_a_killed_evaluation_resumes_and_gives_the_uninterrupted_numbers(
    tmp_path: Path, make_h5, monkeypatch: pytest.MonkeyPatch
) -> None:
    from experiments.crossval import run as run_module

    h5 = make_h5(n=60, size=32)
    recipes = [parse_recipe(f"a={_recipe(tmp_path, 'a', 1)}"), parse_recipe(f"b={_recipe(tmp_path, 'b', 3)}")]
    calls: list = []
    monkeypatch.setattr(run_module, "run_train_recipe", _fake_runner(calls))
    whole = _evaluate(tmp_path, h5, "whole", "whole.db", recipes)
    assert (whole.ran, whole.reused, len(calls)) == (12, 0, 12)

    calls.clear()
    monkeypatch.setattr(run_module, "run_train_recipe", _fake_runner(calls, kill_at=5))
    with pytest.raises(KeyboardInterrupt):
        _evaluate(tmp_path, h5, "resumed", "resumed.db", recipes)
    assert not (tmp_path / "resumed").exists()  # nothing half-written
    calls.clear()
    monkeypatch.setattr(run_module, "run_train_recipe", _fake_runner(calls))
    resumed = _evaluate(tmp_path, h5, "resumed", "resumed.db", recipes)
    assert (resumed.ran, resumed.reused) == (8, 4) and len(calls) == 8
    assert resumed.parent_run_id != whole.parent_run_id and resumed.key == whole.key

    a = json.loads((tmp_path / "whole" / "evaluation.json").read_text())
    b = json.loads((tmp_path / "resumed" / "evaluation.json").read_text())
    assert a["differences"] == b["differences"]
    assert {k: v["folds"] for k, v in a["recipes"].items()} == {k: v["folds"] for k, v in b["recipes"].items()}
    # one MLflow parent, a FINISHED child per recipe and fold, the redone fold's first try marked FAILED
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'resumed.db'}")
    runs = client.search_runs([client.get_experiment_by_name("galaxy10-evaluate").experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == resumed.parent_run_id]
    assert sum(r.info.status == "FINISHED" for r in children) == 12
    assert client.get_run(resumed.parent_run_id).info.status == "FINISHED"


def test_more_repetitions_extend_an_earlier_evaluation(
    tmp_path: Path, make_h5, monkeypatch: pytest.MonkeyPatch
) -> None:
    from experiments.crossval import run as run_module
    from experiments.crossval.run import run_evaluation

    h5 = make_h5(n=60, size=32)
    recipes = [parse_recipe(f"a={_recipe(tmp_path, 'a', 1)}"), parse_recipe(f"b={_recipe(tmp_path, 'b', 2)}")]
    calls: list = []
    monkeypatch.setattr(run_module, "run_train_recipe", _fake_runner(calls))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    one = run_evaluation(h5, recipes, out=tmp_path / "one", repeats=1, folds=3, ws=Workspace.of(uri))
    two = run_evaluation(h5, recipes, out=tmp_path / "two", repeats=2, folds=3, ws=Workspace.of(uri))
    assert (one.ran, two.ran, two.reused) == (6, 6, 6) and two.parent_run_id == one.parent_run_id
    assert json.loads((tmp_path / "two" / "evaluation.json").read_text())["repeats"] == 2


@pytest.mark.slow
def test_evaluate_command_end_to_end(tmp_path: Path, make_h5, capsys: pytest.CaptureFixture[str]) -> None:
    """Two real recipes trained on 2 x 2 folds of an imported 3-class file through the CLI."""
    from experiments.cli import main as cli_main

    h5 = make_h5(n=48, size=32, imported_classes=("smooth", "disk", "ring"))
    a, b = _recipe(tmp_path, "a", 1), _recipe(tmp_path, "b", 2)
    argv = [
        "-q",
        "evaluate",
        "--data",
        str(h5),
        "--recipe",
        str(a),
        "--recipe",
        str(b),
        "--repeats",
        "2",
        "--folds",
        "2",
        "--out",
        str(tmp_path / "ev"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
    ]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "| b - a |" in out and "Nadeau & Bengio" in out and "4 fold fit(s) run" not in out
    doc = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert doc["class_names"] == ["smooth", "disk", "ring"] and doc["repeats"] == 2 and doc["folds"] == 2
    diff = doc["differences"]["b"]["metrics"]["accuracy"]
    assert diff["ci"][0] <= diff["mean"] <= diff["ci"][1]
    assert set(doc["differences"]["b"]["recall"]) == {"smooth", "disk", "ring"}
    assert (tmp_path / "ev" / "evaluation.png").read_bytes().startswith(b"\x89PNG")
    assert cli_main(argv) == 0  # again: everything reused
    assert "0 fold fit(s) run, 8 reused" in capsys.readouterr().out


def test_a_label_fraction_keeps_a_stratified_share_of_each_folds_training_images(
    tmp_path: Path, make_h5, monkeypatch: pytest.MonkeyPatch
) -> None:
    from experiments.crossval import run as run_module
    from experiments.crossval.folds import label_subset
    from experiments.crossval.run import run_evaluation

    labels = np.r_[np.zeros(80, int), np.ones(20, int), [2, 2]]
    rows = np.arange(102)
    sub = label_subset(labels, rows, 0.1, seed=0)
    assert np.bincount(labels[sub]).tolist() == [8, 2, 1] and np.array_equal(sub, np.sort(sub))
    assert np.array_equal(label_subset(labels, rows, 1.0, seed=0), rows)

    h5 = make_h5(n=60, size=32)
    recipes = [parse_recipe(f"a={_recipe(tmp_path, 'a', 1)}"), parse_recipe(f"b={_recipe(tmp_path, 'b', 2)}")]
    seen: list[tuple[int, int]] = []
    fake = _fake_runner([])

    def spy(cfg, data, fold, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append((len(fold.train), len(fold.test)))
        return fake(cfg, data, fold, **kw)

    monkeypatch.setattr(run_module, "run_train_recipe", spy)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    quarter = run_evaluation(
        h5, recipes, out=tmp_path / "q", repeats=1, folds=3, ws=Workspace.of(uri), label_fraction=0.25
    )
    assert {t for _, t in seen} == {20} and {n for n, _ in seen} == {10}  # 40 training images per fold -> 10
    whole = run_evaluation(h5, recipes, out=tmp_path / "w", repeats=1, folds=3, ws=Workspace.of(uri))
    assert whole.key != quarter.key and whole.ran == 6  # another evaluation, not a continuation


def test_a_continued_evaluation_refuses_a_changed_ensemble_config(tmp_path: Path) -> None:
    from core.errors import ConfigError
    from experiments.crossval.run import ENSEMBLE_ARTIFACT, _check_same_ensemble
    from experiments.tracking.mlflow_tracker import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    with MlflowTracker("e", "parent", ws=Workspace.of(uri)) as parent:
        parent.log_text("mode: crossfit\n", ENSEMBLE_ARTIFACT)
    _check_same_ensemble(parent.run_id, "mode: crossfit\n", Workspace.of(uri))  # unchanged: fine
    _check_same_ensemble(parent.run_id, None, Workspace.of(uri))  # no tuning recipe: nothing to compare
    with pytest.raises(ConfigError, match="ensemble.yaml changed since this evaluation began"):
        _check_same_ensemble(parent.run_id, "mode: val_cv\n", Workspace.of(uri))


def test_with_a_label_fraction_the_correction_keeps_the_k_fold_overlap() -> None:
    """Subsets of the folds' training images overlap less than the folds do: the correction keeps the K-fold
    ratio n_test / (N - n_test), not n_test / (images learned from), which would blow the interval up."""
    labels = np.resize(np.arange(2), 40)
    full = [Fold(0, k, np.setdiff1d(np.arange(40), np.arange(k, 40, 4)), np.arange(k, 40, 4)) for k in range(4)]
    plan = [f.with_labels(labels, 0.2, seed=0) for f in full]
    assert {len(f.train) for f in plan} == {6} and {len(f.test) for f in plan} == {10}
    rng = np.random.default_rng(2)
    preds = {
        name: {f.cell: np.eye(2)[np.where(rng.random(10) < p, labels[f.test], 1 - labels[f.test])] for f in plan}
        for name, p in (("a", 0.6), ("b", 0.8))
    }
    s = summarize(labels, plan, preds, {}, class_names=("x", "y"), class_slugs=("x", "y"), repeats=1)
    t = s.differences[0].metrics["accuracy"]
    assert (s.n_train, s.n_pool, s.n_test) == (6, 30, 10)
    assert t.se / t.naive_se == pytest.approx(np.sqrt(1 + 4 * 10 / 30))


@pytest.mark.parametrize("tune_first", [False, True])
def test_a_factor_budget_follows_the_run_recipes_median_time_per_fold(
    tmp_path: Path, make_h5, monkeypatch: pytest.MonkeyPatch, tune_first: bool
) -> None:
    """``--budget 4x``: 4 x the run recipe's median wall time over the folds so far, so a fold whose run recipe
    stopped early does not starve the tuning recipe; the run recipes of a fold run first, whatever the order
    of the recipes (the first recipe stays the baseline)."""
    from conftest import tiny_tune_yaml

    from experiments.crossval import run as run_module
    from experiments.crossval.folds import Budget
    from experiments.crossval.run import run_evaluation

    h5 = make_h5(n=60, size=32)
    times = iter([100.0, 10.0, 40.0])  # the run recipe's seconds on folds 0, 1, 2
    budgets: list[float] = []

    def fake_train(cfg, data, fold, **kw):  # noqa: ANN001, ANN003, ANN202
        y = data.labels[fold.test]
        return FoldResult(np.eye(data.num_classes, dtype=np.float32)[y], next(times), {})

    def fake_tune(tune, recipe, source, fold, *, budget, **kw):  # noqa: ANN001, ANN003, ANN202
        budgets.append(budget)
        return FoldResult(np.full((len(fold.test), 10), 0.1, np.float32), 1.0, {})

    monkeypatch.setattr(run_module, "run_train_recipe", fake_train)
    monkeypatch.setattr(run_module, "run_tune_recipe", fake_tune)
    tune_yaml = tiny_tune_yaml(tmp_path / "t.yaml", experiment="e", name="t", n_trials=1)
    recipes = [parse_recipe(f"a={_recipe(tmp_path, 'a', 1)}"), parse_recipe(f"t={tune_yaml}")]
    recipes = recipes[::-1] if tune_first else recipes
    run_evaluation(
        h5,
        recipes,
        out=tmp_path / "ev",
        repeats=1,
        folds=3,
        ws=Workspace.of(f"sqlite:///{tmp_path / 'm.db'}"),
        budget=Budget(factor=4.0),
    )
    assert budgets == [400.0, 4 * 55.0, 4 * 40.0]  # medians of [100], [100, 10], [100, 10, 40]
