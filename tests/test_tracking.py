"""MLflow tracking: URI resolution, tracker life cycle, and a train -> log -> reload -> predict round trip."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from core.errors import ConfigError, ModelError
from experiments.serving.predictor import predict_images
from experiments.settings.run import flatten, load_config
from experiments.tracking.base import META_ARTIFACT, NullTracker, Tracker, git_commit
from experiments.tracking.loading import load_keras_model, load_prediction_model
from experiments.tracking.mlflow_tracker import MlflowTracker
from experiments.tracking.model_registry import default_champion_uri
from experiments.tracking.runs import run_val_recall
from experiments.tracking.store import resolve_tracking_uri, set_tracking_uri
from experiments.tracking.workspace import Workspace
from experiments.training import TrainOptions, prepare_run, train
from pipelines.preprocess import center_crop, load_resized

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "configs" / "smoke.yaml"


@pytest.fixture(autouse=True)
def _fresh_mlflow_uri():
    """MLflow keeps the URI set by set_tracking_uri in a module global; do not leak it to the next test."""
    yield
    mlflow.set_tracking_uri(None)


def test_tracking_uri_resolution(monkeypatch, tmp_path):
    assert resolve_tracking_uri("http://mlflow.example:5000") == "http://mlflow.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert resolve_tracking_uri() == "sqlite:///elsewhere.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    for bad in ("mlruns", "file:///tmp/mlruns", "./mlruns"):
        with pytest.raises(ConfigError, match="file store"):
            resolve_tracking_uri(bad)


def test_null_tracker_records():
    t = NullTracker()
    assert isinstance(t, Tracker)
    t.log_params({"a": 1})
    t.log_metrics({"m": 0.5}, step=1)
    t.log_metrics({"m": 0.7}, step=2)
    assert t.params == {"a": "1"} and t.metrics["m"] == [(1, 0.5), (2, 0.7)] and t.latest("m") == 0.7


def _status(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.status


def test_run_status_on_success_failure_and_kill():
    with MlflowTracker("exp", "ok", ws=Workspace()) as ok:
        ok.log_metrics({"x": 1.0, "bad": float("nan")}, step=3)
    assert _status(ok.run_id) == "FINISHED"
    assert MlflowClient().get_run(ok.run_id).data.metrics == {"x": 1.0}

    class Pruned(Exception):
        pass

    killed = MlflowTracker("exp", "pruned", ws=Workspace(), killed_on=(Pruned,))
    with pytest.raises(Pruned), killed:
        raise Pruned
    assert _status(killed.run_id) == "KILLED"
    failed = MlflowTracker("exp", "boom", ws=Workspace())
    with pytest.raises(RuntimeError), failed:
        raise RuntimeError("boom")
    assert _status(failed.run_id) == "FAILED"
    child = MlflowTracker("exp", "child", ws=Workspace(), parent_run_id=ok.run_id)
    with child:
        pass
    assert MlflowClient().get_run(child.run_id).data.tags["mlflow.parentRunId"] == ok.run_id


def test_unknown_models_and_runs_are_model_errors():
    assert default_champion_uri(ws=Workspace()) is None  # (this creates the empty store the look-ups below need)
    with pytest.raises(ModelError, match="cannot find model"):
        load_keras_model("runs:/0123456789abcdef0123456789abcdef/model", ws=Workspace())
    with pytest.raises(ModelError, match="not found"):
        run_val_recall("0123456789abcdef0123456789abcdef", ["disturbed"], ws=Workspace())


def test_only_tracking_imports_mlflow():
    pattern = re.compile(r"^\s*(import mlflow|from mlflow)", re.MULTILINE)
    offenders = [
        str(p.relative_to(ROOT))
        for pkg in ("pipelines", "augment", "ensembles", "experiments")
        for p in (ROOT / pkg).rglob("*.py")
        if pattern.search(p.read_text())
    ]
    assert offenders and all(o.startswith("experiments/tracking/") for o in offenders), offenders
    assert "experiments/tracking/base.py" not in offenders


def test_the_tracker_protocol_loads_without_mlflow():
    code = "import sys, experiments.tracking.base, experiments.training; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_train_log_reload_predict_round_trip(tiny_h5):
    cfg = load_config(SMOKE, ["train.epochs=1"])
    uri = set_tracking_uri()
    with MlflowTracker(cfg.experiment_name, cfg.run_name, ws=Workspace.of(uri)) as tracker:
        result = train(prepare_run(cfg, data_path=tiny_h5), tracker, TrainOptions(verbose=0))
    client = MlflowClient()
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"

    # params: the flattened config (+ targeting multipliers)
    assert run.data.params.items() >= flatten(cfg).items()
    assert run.data.params["multiplier.disturbed"] == "2"
    # tags: data fingerprint and provenance, git commit, package versions
    tags = run.data.tags
    assert tags["data.synthetic"] == "true" and tags["data.provenance"] == "synthetic"
    assert tags["data.fingerprint"] == result.meta["data_fingerprint"] and len(tags["data.fingerprint"]) == 64
    if git_commit():
        assert re.fullmatch(r"[0-9a-f]{40}", tags["git.commit"])
    assert tags["version.keras"] and tags["version.mlflow"] == mlflow.__version__
    # metrics: per epoch with step, final validation metrics, no test metrics
    history = client.get_metric_history(tracker.run_id, "epoch_val_accuracy")
    assert [m.step for m in history] == [1]
    for key in (
        "epoch_train_loss",
        "epoch_mix_disturbed",
        "val_accuracy",
        "val_balanced_accuracy",
        "val_macro_f1",
        "val_log_loss",
        "val_recall_disturbed",
        "val_precision_cigar",
        "best_epoch",
    ):
        assert key in run.data.metrics, key
    assert not [k for k in run.data.metrics if k.startswith("test_")]
    recall = run_val_recall(tracker.run_id, ["disturbed", "cigar"], ws=Workspace())
    np.testing.assert_allclose(recall, [result.val_metrics["recall_disturbed"], result.val_metrics["recall_cigar"]])
    # artifacts
    artifacts = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert {
        "config.yaml",
        "confusion_matrix_val.png",
        "per_class_metrics_val.csv",
        "learning_curves.png",
        "class_names.json",
        META_ARTIFACT,
    } <= artifacts
    local = Path(mlflow.artifacts.download_artifacts(run_id=tracker.run_id, artifact_path="config.yaml"))
    assert load_config(local) == cfg
    png = Path(mlflow.artifacts.download_artifacts(run_id=tracker.run_id, artifact_path="confusion_matrix_val.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the logged model: keras flavour, signature, input example, metadata, in the run's experiment
    info = mlflow.models.get_model_info(f"runs:/{tracker.run_id}/model")
    assert "keras" in info.flavors and info.signature is not None and info.saved_input_example_info
    assert info.signature.inputs.inputs[0].shape == (-1, 32, 32, 3)
    assert client.get_logged_model(info.model_id).experiment_id == run.info.experiment_id
    meta = info.metadata
    assert (meta["size"], meta["crop"], meta["synthetic"], meta["provenance"]) == (48, 32, True, "synthetic")
    assert meta["class_slugs"][0] == "disturbed" and len(meta["class_names"]) == 10
    assert "preprocess_version" in meta and meta["data_fingerprint"] == tags["data.fingerprint"]
    meta_file = Path(mlflow.artifacts.download_artifacts(run_id=tracker.run_id, artifact_path=META_ARTIFACT))
    assert json.loads(meta_file.read_text()) == meta

    # reload through MLflow (runs:/ and models:/ URIs): same predictions as the trained model
    import h5py

    with h5py.File(tiny_h5) as f:
        raw = f["images"][:12]  # 64 px originals
    crops = center_crop(np.asarray(load_resized(tiny_h5, size=48)[:12]), 32).astype(np.float32)
    expected = result.model.predict(crops, verbose=0)
    for model_uri in (f"runs:/{tracker.run_id}/model", result.model_uri):
        bundle = load_keras_model(model_uri, ws=Workspace())
        model, loaded_meta = bundle
        assert loaded_meta == meta
        np.testing.assert_allclose(model.predict(crops, verbose=0), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(predict_images(bundle, raw), expected, rtol=1e-5, atol=1e-6)
    # any size: a 100 px image is square-cropped and resized like training data
    big = np.zeros((1, 100, 120, 3), np.uint8)
    assert predict_images(bundle, big).shape == (1, 10)
    loaded = load_prediction_model(result.model_uri, ws=Workspace())
    assert loaded.kind == "keras" and loaded.info["run_id"] == tracker.run_id and loaded.info["synthetic"] is True


def _train_command(argv: list[str]) -> int:
    import argparse

    from experiments.commands import train as train_command

    parser = argparse.ArgumentParser(prog="galaxy10")
    train_command.register(parser.add_subparsers())
    args = parser.parse_args(["train", *argv])
    return args.func(args)


def test_train_command_logs_a_run(tiny_h5, capsys):
    db = Path("cli.db").resolve()
    code = _train_command(
        [
            "--config",
            str(SMOKE),
            "--data",
            str(tiny_h5),
            "--set",
            "train.epochs=1",
            "--tracking-uri",
            f"sqlite:///{db}",
            "--no-log-model",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["synthetic"] is True and "test" not in out and out["model_uri"] is None
    run = MlflowClient(f"sqlite:///{db}").get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "1"
    assert run.data.metrics["val_accuracy"] == pytest.approx(out["val"]["accuracy"])


def test_train_command_checks_inputs_before_opening_a_run(tiny_h5):
    uri = f"sqlite:///{Path('cli.db').resolve()}"
    with pytest.raises(ConfigError, match="train.optimizer"):
        _train_command(["--config", str(SMOKE), "--set", "train.optimizer=rmsprop", "--tracking-uri", uri])
    with pytest.raises(ModelError, match="not found"):
        _train_command(
            [
                "--config",
                str(SMOKE),
                "--data",
                str(tiny_h5),
                "--tracking-uri",
                uri,
                "--set",
                "augment.targets=auto",
                "--set",
                "augment.auto_from_run=0123456789abcdef0123456789abcdef",
            ]
        )
    client = MlflowClient(uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
