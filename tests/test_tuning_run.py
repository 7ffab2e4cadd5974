"""galaxy10 tune end to end on tiny data: MLflow parent/child runs, pruning, resuming, workers, SIGKILL.

Every end-to-end test trains real (tiny) CNNs and creates an MLflow database, so each takes longer
than 15 s and is marked slow; ``make test`` runs them, ``make test-fast`` skips them.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from conftest import tiny_study_in, tiny_tune_yaml
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from core.errors import ConfigError
from experiments.cli import main as cli_main
from experiments.tracking.base import NullTracker
from experiments.tuning.plots import save_plots
from experiments.tuning.storage import open_storage
from experiments.tuning.study import COUNTED_STATES, load_existing_study

REPO = Path(__file__).resolve().parents[1]


def write_tune_yaml(path: Path, *, name: str = "t", n_trials: int = 3, **kw: object) -> Path:
    return tiny_tune_yaml(path, experiment="tune-test", name=name, n_trials=n_trials, **kw)


def mlflow_client() -> MlflowClient:
    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def runs_of(experiment: str = "tune-test") -> tuple[list, list]:
    """(parent runs, child runs) of the experiment."""
    client = mlflow_client()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("optuna.role") == "study"]
    children = [r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags and r.data.tags.get("optuna.role") != "refit"]
    return parents, children


def refit_runs(experiment: str = "tune-test") -> list:
    """The refit child runs of the study (issue 13), apart from the trial runs."""
    client = mlflow_client()
    exp = client.get_experiment_by_name(experiment)
    return [
        r
        for r in client.search_runs([exp.experiment_id], max_results=1000)
        if r.data.tags.get("optuna.role") == "refit"
    ]


def load(name: str = "t") -> optuna.Study:
    return optuna.load_study(study_name=name, storage="sqlite:///optuna.db")


@pytest.mark.slow  # TensorFlow start-up, MLflow database creation and real training: ~20-50 s
def test_three_trial_study_logs_parent_and_nested_children(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_tune_yaml(tmp_path / "tune.yaml", refit=True)
    assert cli_main(["tune", "--config", str(config), "--data", str(tiny_h5)]) == 0
    out = capsys.readouterr().out
    assert "study t: 3 complete (3 new this run" in out
    study = load()
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    parents, children = runs_of()
    refits = refit_runs()
    assert len(parents) == 1 and len(children) == 3 and len(refits) == 1
    # issue 13: the best configuration is refit on train + validation, logged as its own run, registered
    refit = refits[0]
    assert int(refit.data.tags["refit.of_trial"]) == study.best_trial.number
    assert refit.data.params["train.epochs"] == str(study.best_trial.user_attrs["best_epoch"])
    assert int(refit.data.tags["data.n_train"]) > int(children[0].data.tags["data.n_train"])
    assert mlflow_client().get_model_version_by_alias("t", "refit").run_id == refit.info.run_id
    assert "refit on train + validation: models:/t@refit" in out
    parent = parents[0]
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert parent.data.params["study.name"] == "t"
    assert parent.data.params["study.search_space_hash"] == study.user_attrs["search_space_hash"]
    assert parent.data.tags["study.sampler"].startswith("tpe(")
    client = mlflow_client()
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    assert sorted(by_number) == [0, 1, 2]
    for trial in study.trials:
        child = by_number[trial.number]
        assert child.data.tags[MLFLOW_PARENT_RUN_ID] == parent.info.run_id
        assert child.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert child.info.status == "FINISHED" and child.data.tags["optuna.trial_state"] == "COMPLETE"
        assert float(child.data.params["optuna.model.dropout"]) == pytest.approx(trial.params["model.dropout"])
        assert float(child.data.params["model.dropout"]) == pytest.approx(trial.params["model.dropout"])
        history = client.get_metric_history(child.info.run_id, "epoch_val_accuracy")
        assert [m.step for m in history] == [1, 2]
        assert [m.value for m in history] == pytest.approx([trial.intermediate_values[1], trial.intermediate_values[2]])
        assert child.data.metrics["val_accuracy"] == pytest.approx(trial.value)
        assert {"val_balanced_accuracy", "val_macro_f1", "trial_seconds"} <= set(child.data.metrics)
    best = study.best_trial
    # a trial logs its model only when it beats every earlier COMPLETE trial
    for trial in study.trials:
        improved = all(trial.value > t.value for t in study.trials[: trial.number])
        assert by_number[trial.number].data.tags["optuna.model_logged"] == ("true" if improved else "false")
        assert ("model_uri" in trial.user_attrs) == improved
    tagged = [r for r in children if r.data.tags.get("optuna.best_trial") == "true"]
    assert [r.info.run_id for r in tagged] == [best.user_attrs["mlflow_run_id"]]
    champion = client.get_model_version_by_alias("t", "champion")
    assert champion.run_id == best.user_attrs["mlflow_run_id"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert artifacts == {
        "plots/optimization_history.png",
        "plots/param_importances.png",
        "plots/parallel_coordinate.png",
    }
    assert {"search_space.yaml", "base_config.yaml"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert client.get_run(parent.info.run_id).data.metrics["best_val_accuracy"] == pytest.approx(best.value)

    # Re-running the same command continues the study: nothing left to do, same parent run.
    assert cli_main(["tune", "--config", str(config), "--data", str(tiny_h5)]) == 0
    assert "(0 new this run" in capsys.readouterr().out
    parents_again, children_again = runs_of()
    assert [p.info.run_id for p in parents_again] == [parent.info.run_id]
    assert len(children_again) == 3 and len(load().trials) == 3
    assert [r.info.run_id for r in refit_runs()] == [refit.info.run_id]  # the same best trial: not refit again


@pytest.mark.slow  # TensorFlow start-up, MLflow database creation and real training: ~20-50 s
def test_forced_pruning_shows_in_optuna_and_mlflow(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # accuracy can never reach 1.1, so the threshold pruner must prune every trial after epoch 1
    config = write_tune_yaml(
        tmp_path / "tune.yaml", name="p", n_trials=2, pruner={"name": "threshold", "lower": 1.1, "n_warmup_steps": 0}
    )
    assert cli_main(["tune", "--config", str(config), "--data", str(tiny_h5)]) == 0
    study = load("p")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [1] for t in study.trials)
    _, children = runs_of()
    assert len(children) == 2
    client = mlflow_client()
    for child in children:
        assert child.info.status == "KILLED"
        assert child.data.tags["optuna.trial_state"] == "PRUNED"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "epoch_val_accuracy")] == [1]
        assert "val_accuracy" not in child.data.metrics  # never evaluated: stopped after epoch 1
    out = capsys.readouterr().out
    assert "study p: 2 pruned" in out and "best: no COMPLETE trial yet" in out
    assert "note: no COMPLETE trial yet: no optimisation plots" in out
    assert cli_main(["study", "show", "p"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("PRUNED") == 2


def test_plots_need_two_varying_complete_trials() -> None:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    study.tell(trial, 0.5)
    parent = NullTracker()
    logged, notes = save_plots(study, parent, "accuracy")
    assert logged == ["plots/optimization_history.png", "plots/parallel_coordinate.png"]
    assert notes == ["plot param_importances skipped: parameter importances need >= 2 COMPLETE trials, the study has 1"]
    same = optuna.create_study(direction="maximize")
    for value in (0.1, 0.2):
        t = same.ask()
        t.suggest_categorical("policy", ["galaxy"])
        same.tell(t, value)
    _, notes = save_plots(same, NullTracker(), "accuracy")
    assert notes == [
        "plot param_importances skipped: parameter importances need a parameter that varies across "
        "the COMPLETE trials (and is set in all of them); none does yet"
    ]


def test_bad_search_space_key_via_cli(tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = yaml.safe_load(write_tune_yaml(tmp_path / "t.yaml").read_text())
    doc["search_space"]["model.dropuot"] = {"type": "float", "low": 0.1, "high": 0.5}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    assert cli_main(["tune", "--config", str(tmp_path / "bad.yaml"), "--data", str(tiny_h5)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "galaxy10: error: search_space 'model.dropuot' = 0.1: unknown config key model.dropuot; "
        "allowed keys in model: name, params, filters, kernel_size, batch_norm, dropout, dense_units, l2, "
        "global_pooling, activation, weights, init_from"
    )
    assert not (tmp_path / "optuna.db").exists()  # refused before any study was created


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tiny_h5: Path, tmp_path: Path) -> None:
    # a grace period well above a loaded CI machine's heartbeat gaps: a live trial must not be failed as stale
    # (and re-queued) here - that path is tested on its own with a killed worker
    config = write_tune_yaml(tmp_path / "tune.yaml", name="w", n_trials=4, grace_period=15)
    assert (
        cli_main(["tune", "--config", str(config), "--data", str(tiny_h5), "--workers", "2", "--set", "train.epochs=1"])
        == 0
    )
    study = load("w")
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers))) and len(set(numbers)) == len(numbers)
    assert len(study.get_trials(states=COUNTED_STATES)) == 4  # the shared budget, never overshot
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL))
    parents, children = runs_of()
    assert len(parents) == 1
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == numbers
    assert {r.data.tags[MLFLOW_PARENT_RUN_ID] for r in children} == {parents[0].info.run_id}
    assert {r.data.tags["optuna.worker"] for r in children} == {"0", "1"}
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {r.info.run_id for r in children}


def _running_trial_with_a_report(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM trials t JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING'"
            ).fetchone()
    except sqlite3.Error:
        return False
    return row[0] > 0


@pytest.mark.slow
def test_sigkilled_worker_then_rerun_continues_the_study(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a long trial (30 epochs), killed after its first epoch
    config = write_tune_yaml(tmp_path / "tune.yaml", name="k", n_trials=2, epochs=30)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.cli", "-q", "tune", "--config", str(config), "--data", str(tiny_h5)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not _running_trial_with_a_report(tmp_path / "optuna.db"):
            assert proc.poll() is None, "the tune command ended before it could be killed"
            assert time.time() < deadline, "no trial reported an epoch within 120 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    killed = load("k").trials
    assert [t.state for t in killed] == [optuna.trial.TrialState.RUNNING]
    killed_run = killed[0].user_attrs["mlflow_run_id"]
    assert mlflow_client().get_run(killed_run).info.status == "RUNNING"
    # the dead worker's heartbeat, moved past the 3 s grace period (no sleep: a loaded machine cannot race it)
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-10 seconds')")

    assert cli_main(["tune", "--config", str(config), "--data", str(tiny_h5), "--set", "train.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "stale trials failed on start-up: 0" in out
    study = load("k")
    states = [t.state for t in study.trials]
    assert states[0] == optuna.trial.TrialState.FAIL
    assert states[1:].count(optuna.trial.TrialState.COMPLETE) + states[1:].count(optuna.trial.TrialState.PRUNED) == 2
    assert study.trials[1].params == killed[0].params  # the stale trial's parameters were retried
    assert study.trials[1].system_attrs["failed_trial"] == 0
    dead = mlflow_client().get_run(killed_run)
    assert dead.info.status == "FAILED"
    assert dead.data.tags["optuna.trial_state"] == "FAIL"
    assert dead.data.tags["optuna.fail_reason"].startswith("stale heartbeat")
    parents, children = runs_of()
    assert len(parents) == 1 and len(children) == 3


@pytest.mark.slow  # four one-epoch trials
def test_the_top_k_trials_keep_their_models_for_voting(tmp_path: Path) -> None:
    """Issue 13: with log_models: top_k (the default), every trial among the final top ``keep_models``
    has a logged model, so `galaxy10 ensemble` can vote with them (here k = 2 of 4 trials)."""
    from conftest import tiny_study_in

    from experiments.settings.tune import parse_study

    assert parse_study({}, "s").log_models == "top_k" and parse_study({}, "s").keep_models == 3
    with tiny_study_in(tmp_path, n_images=200, n_trials=4, log_all_models=False, keep_models=2) as study:
        trials = load_existing_study("tiny", open_storage(study.storage)).get_trials()
    done = sorted((t for t in trials if t.value is not None), key=lambda t: -t.value)
    assert len(done) == 4
    assert all("model_uri" in t.user_attrs for t in done[:2]), [(t.number, t.value, t.user_attrs) for t in done]


@pytest.mark.slow
def test_cv_folds_objective_is_the_mean_over_folds_and_prunes_on_the_running_mean(tmp_path: Path) -> None:
    """study.cv_folds=2: the trial's value is the mean of its two fold scores, reported per fold and epoch
    (step fold x 1000 + epoch, so every trial is compared at equal epochs of equal folds), logged with its
    spread; the logged model is the one trained on the whole train split."""
    from mlflow import MlflowClient

    from experiments.tuning.storage import open_storage
    from experiments.tuning.study import load_existing_study

    with tiny_study_in(tmp_path, n_images=300, n_trials=1, cv_folds=2) as study:
        trial = load_existing_study("tiny", open_storage(study.storage)).trials[0]
        scores = trial.user_attrs["cv_scores"]
        assert len(scores) == 2 and trial.value == pytest.approx(float(np.mean(scores)), abs=1e-6)
        assert sorted(trial.intermediate_values) == [1, 1001]  # epoch 1 of fold 1, epoch 1 of fold 2
        assert trial.intermediate_values[1001] == pytest.approx(trial.value, abs=1e-6)  # the running mean at the end
        assert trial.user_attrs["scored_images"] == 240  # the train split of 300 images: every one scored once
        assert 0 <= trial.user_attrs["cv_accuracy"] <= 1
        run = MlflowClient(study.tracking_uri).get_run(study.best_run_id)
        assert run.data.metrics["cv_accuracy_mean"] == pytest.approx(trial.value, abs=1e-6)
        assert run.data.metrics["cv_accuracy_std"] >= 0 and run.data.tags["optuna.cv_folds"] == "2"
        assert "val_accuracy" in run.data.metrics and trial.user_attrs["model_uri"]  # the whole-train model
        assert trial.user_attrs["cv_best_epochs"] == [1, 1]  # each fold's best epoch, kept for the refit
        history = MlflowClient(study.tracking_uri).get_metric_history(study.best_run_id, "cv_fold_best_epoch")
        assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 1.0)]


def test_refit_trains_for_the_mean_best_epoch_of_the_folds() -> None:
    """A cross-validated trial is refit for its folds' mean best epoch (chosen on images each fold did not
    train on), not for the best epoch of the one validation split; a trial without folds for that epoch."""
    from experiments.tuning.refit import refit_epochs

    assert refit_epochs({"cv_best_epochs": [3, 4, 6], "best_epoch": 9}) == (
        4,
        "mean best epoch of its 3 folds [3, 4, 6]",
    )
    assert refit_epochs({"cv_best_epochs": [1, 2], "best_epoch": 9})[0] == 2  # 1.5 rounds to even: 2
    assert refit_epochs({"best_epoch": 9}) == (9, "its best validation checkpoint")


# --------------------------------------------------------------------------------------------
# The reference recipe is trial 0
# --------------------------------------------------------------------------------------------
def test_the_reference_trial_runs_reference_yaml_at_its_full_budget(tmp_path: Path) -> None:
    """Trial 0's config is ``reference.yaml`` as shipped (model, augmentation, resolution, epochs, early
    stopping), on the study's experiment, file, image selection and split; ``--set`` applies to it too."""
    from experiments.settings.run import load_config
    from experiments.settings.trial import REFERENCE_CONFIG, reference_run_config
    from experiments.settings.tune import load_tune_config

    tune = load_tune_config(REPO / "experiments" / "configs" / "tune_catalog.yaml")
    assert tune.study.reference_trial  # the default, in the catalog study
    shipped = load_config(REFERENCE_CONFIG)
    cfg, overrides = reference_run_config(tune, extra_overrides=["data.path=cat.h5", "data.split_seed=7"])
    assert cfg.model == shipped.model and cfg.augment == shipped.augment and cfg.train == shipped.train
    assert (cfg.data.size, cfg.data.crop, cfg.train.epochs, cfg.train.patience) == (128, 88, 50, 10)
    assert cfg.train.precision == "float32" and cfg.model.filters == (32, 32, 64, 64)
    assert cfg.experiment_name == "galaxy10-tune-catalog"  # the study's experiment, beside its other trials
    assert (cfg.data.path, cfg.data.split_seed) == ("cat.h5", 7)
    assert overrides[-2:] == ["data.path=cat.h5", "data.split_seed=7"]
    quick = load_tune_config(REPO / "experiments" / "configs" / "tune_quick.yaml")
    assert not quick.study.reference_trial  # the demo's budget is shorter than the reference's


@pytest.mark.slow  # three tiny trials, a refit and an ensemble comparison
def test_a_new_study_starts_with_the_reference_recipe(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_tune_yaml(tmp_path / "tune.yaml", n_trials=2, reference_trial=True, refit=True)
    shrink = ["--set", "train.epochs=1", "--set", "data.size=48", "--set", "data.crop=32"]
    assert cli_main(["-q", "tune", "--config", str(config), "--data", str(tiny_h5), *shrink]) == 0
    study = load()
    first, second = sorted(study.trials, key=lambda t: t.number)
    assert first.user_attrs.get("reference_recipe") is True and first.params == {}
    assert "reference_recipe" not in second.user_attrs and set(second.params) == {
        "train.learning_rate",
        "model.dropout",
    }
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in runs_of()[1]}
    ref, other = runs[first.number].data, runs[second.number].data
    assert ref.tags["optuna.reference"] == "true" and other.tags["optuna.reference"] == "false"
    # the reference's network and recipe, shrunk only by the command line's --set
    assert ref.params["model.filters"] == "[32, 32, 64, 64]" and ref.params["augment.policy"] == "reference"
    assert ref.params["train.learning_rate"] == "0.001" and ref.params["data.crop"] == "32"
    assert other.params["model.filters"] == "[8, 16]"  # the study's base config
    # re-running continues the study: no second reference trial
    assert cli_main(["-q", "tune", "--config", str(config), "--data", str(tiny_h5), "--trials", "3", *shrink]) == 0
    assert sum(bool(t.user_attrs.get("reference_recipe")) for t in load().trials) == 1
    # the refit of a best reference trial trains the reference recipe
    refit = refit_runs()
    best = load().best_trial
    assert refit and refit[0].data.tags["refit.of_trial"] == str(best.number)  # the newest refit first
    expected = "[32, 32, 64, 64]" if best.user_attrs.get("reference_recipe") else "[8, 16]"
    assert refit[0].data.params["model.filters"] == expected
    # the reference is an ensemble candidate (or the best CNN itself)
    ens = tmp_path / "ens.yaml"
    ens.write_text(
        "mode: val_cv\ncv_folds: 2\nvote: {top_k: 1, weighted: null}\nsecond_stage: {logreg: {}}\n"
        "stack: {second_stage: []}\n"
    )
    capsys.readouterr()
    assert cli_main(["ensemble", "--study", "t", "--config", str(ens)]) == 0
    out = capsys.readouterr().out
    if best.user_attrs.get("reference_recipe"):
        assert not re.search(r"^\s*reference\s", out, re.M)  # cnn-best is the reference
    else:
        assert re.search(r"^\s*reference\s", out, re.M), out


def test_speed_objective_makes_a_multi_objective_study(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``study.speed_objective``: Optuna optimises the metric and the model's images/s together; the best
    trial is still chosen by the metric; the Pareto front is plotted; `study show` says so."""
    from experiments.tuning.study import ATTR_SPEED, best_trial, trial_value

    config = write_tune_yaml(tmp_path / "tune.yaml", name="mo", n_trials=2, speed_objective=True)
    assert cli_main(["tune", "--config", str(config), "--data", str(tiny_h5)]) == 0
    study = load("mo")
    assert len(study.directions) == 2
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE and len(t.values) == 2
        assert t.values[1] == pytest.approx(t.user_attrs[ATTR_SPEED], rel=1e-3) and t.values[1] > 0
        assert not t.intermediate_values  # no pruning reports in a multi-objective study
    best = best_trial(study)
    assert trial_value(best) == max(trial_value(t) for t in study.trials)
    parent = runs_of()[0][0]
    artifacts = {a.path for a in mlflow_client().list_artifacts(parent.info.run_id, "plots")}
    assert "plots/pareto_front.png" in artifacts
    capsys.readouterr()
    assert cli_main(["study", "show", "mo"]) == 0
    assert "multi-objective" in capsys.readouterr().out
    # the same study name asked for one objective is refused, naming the key
    single = write_tune_yaml(tmp_path / "single.yaml", name="mo", n_trials=3)
    assert cli_main(["tune", "--config", str(single), "--data", str(tiny_h5)]) == 2
    assert "speed_objective" in capsys.readouterr().err


def test_speed_objective_needs_no_pruner() -> None:
    from experiments.settings.tune import parse_study

    with pytest.raises(ConfigError, match="cannot prune; set study.pruner: none"):
        parse_study({"speed_objective": True}, "s")
    assert parse_study({"speed_objective": True, "pruner": "none"}, "s").directions == ["maximize", "maximize"]


@pytest.mark.slow
def test_a_budget_keeps_the_configs_n_trials(tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--budget 99999h`` with ``study.n_trials: 2`` runs 2 trials, and the plan says the cap bound it."""
    config = write_tune_yaml(tmp_path / "tune.yaml", name="capped", n_trials=2)
    assert (
        cli_main(
            ["tune", "--config", str(config), "--data", str(tiny_h5), "--budget", "99999h", "--set", "train.epochs=1"]
        )
        == 0
    )
    assert "capped by study.n_trials / --trials = 2, not by the budget" in capsys.readouterr().out
    assert len(load("capped").get_trials(states=COUNTED_STATES)) == 2
