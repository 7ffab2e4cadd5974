"""Scoring on the test split: once, for the report, logged as one MLflow child run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError, ModelError
from experiments.reporting.contents import Report, ScoredModel
from experiments.serving.predictor import predict_file_rows, predictor_from_loaded
from experiments.settings.run import RunConfig
from experiments.tracking.base import git_commit
from experiments.tracking.loading import load_prediction_model
from experiments.tracking.mlflow_tracker import MlflowTracker
from experiments.tracking.runs import log_metrics_to_run, set_run_tags
from experiments.tracking.workspace import Workspace
from experiments.training.evaluation import classification_metrics, prefixed
from pipelines.baseline import baseline_metrics, score_baseline
from pipelines.dataset import TrainData
from pipelines.splits import ensure_split

#: Name of the MLflow child run that holds the report's test scores.
SCORING_RUN_NAME = "report test scoring"


def score_baseline_model(data: TrainData, cfg: RunConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Test predictions of the most-frequent-class baseline (``pipelines.baseline``) and its summary."""

    if cfg.data.max_images is None:
        split = ensure_split(
            data.path,
            test_fraction=cfg.data.test_fraction,
            val_fraction=cfg.data.val_fraction,
            seed=cfg.data.split_seed,
        )
        summary = score_baseline(data.path, split)
        if len(split.test) != len(data.test) or not np.array_equal(np.sort(split.test), np.sort(data.test)):
            raise DataError(f"the split of {data.path} changed since the study ran; re-run the study on this split")
    else:  # the study used the first max_images images: score the baseline on the same test images
        summary = baseline_metrics(data.labels[data.train], data.labels[data.test], tuple(data.class_names))
    y_pred = np.full(len(data.test), int(summary["majority_class"]), dtype=np.int64)
    return y_pred, summary


def score_logged_model(model_uri: str, data_path: Path, indices: np.ndarray, *, ws: Workspace) -> np.ndarray:
    """Test probabilities of a logged model (Keras CNN or pyfunc ensemble) from the raw file images,
    through the one :class:`experiments.serving.predictor.Predictor` that ``galaxy10 predict`` and the web page use."""

    predictor = predictor_from_loaded(load_prediction_model(model_uri, ws=ws))
    probs = predict_file_rows(predictor, data_path, indices, desc="score on test")
    if probs.ndim != 2 or probs.shape[0] != len(indices):
        raise ModelError(
            f"model {model_uri} returned {probs.shape} for {len(indices)} images; "
            "expected class probabilities (N, n_classes)"
        )
    return probs


def _scored(
    key: str,
    label: str,
    description: str,
    run_id: str | None,
    model_uri: str | None,
    y_true: np.ndarray,
    probs: np.ndarray,
    slugs: Sequence[str],
) -> ScoredModel:
    metrics = classification_metrics(y_true, probs, slugs)
    return ScoredModel(key, label, description, run_id, model_uri, np.asarray(probs).argmax(axis=1), metrics)


def log_test_scores(report: Report, *, experiment_name: str, ws: Workspace) -> str:
    """Log every test number: a "report test scoring" child run, plus ``test_*`` on the models' runs."""

    tags = {
        "report.kind": "test_scoring",
        "optuna.study": report.study_name,
        "data.fingerprint": report.data.fingerprint,
        "data.provenance": report.data.provenance,
        "data.synthetic": str(report.data.synthetic).lower(),
        "data.path": report.data.path,
        "report.bootstrap": f"{report.n_resamples} resamples, seed {report.seed}, paired, percentile 95%",
        **{f"report.{m.key}.run_id": m.run_id or "" for m in report.models},
        **{f"report.{m.key}.model_uri": m.model_uri or "" for m in report.models},
        **git_commit(),
    }
    with MlflowTracker(experiment_name, SCORING_RUN_NAME, ws=ws, parent_run_id=report.parent_run_id, tags=tags) as run:
        metrics: dict[str, float] = {"test_n_images": float(report.data.split_sizes["test"])}
        for m in report.models:
            metrics.update(prefixed(m.metrics, f"test_{m.key}"))
            for name, (lo, hi) in m.ci.items():
                metrics[f"test_{m.key}_{name}_ci_low"] = lo
                metrics[f"test_{m.key}_{name}_ci_high"] = hi
        for p in report.paired:
            pre = f"test_paired_{p.a_key}_vs_{p.b_key}"
            for name, d in p.comparison.differences.items():
                metrics.update(
                    {f"{pre}_{name}_diff": d.diff, f"{pre}_{name}_ci_low": d.lo, f"{pre}_{name}_ci_high": d.hi}
                )
            metrics[f"{pre}_mcnemar_p"] = p.comparison.mcnemar.p_value
        if report.calibration:
            metrics["test_cnn_ece"] = report.calibration["test_ece"]
            metrics["test_cnn_ece_calibrated"] = report.calibration["test_ece_calibrated"]
        run.log_metrics(metrics)
        scoring_run = str(run.run_id)
    for m in report.models:
        if m.run_id and m.key != "baseline":
            log_metrics_to_run(
                m.run_id,
                {
                    **prefixed(m.metrics, "test"),
                    **{f"test_{k}_ci_low": v[0] for k, v in m.ci.items()},
                    **{f"test_{k}_ci_high": v[1] for k, v in m.ci.items()},
                },
                ws=ws,
            )
            set_run_tags(m.run_id, {"report.test_scoring_run": scoring_run}, ws=ws)
    return scoring_run
