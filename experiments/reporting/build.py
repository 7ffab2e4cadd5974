"""The whole report behind ``galaxy10 report``: facts, one scoring run, figures, rendering."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, DataError, ModelError
from core.outputs import check_output_dir
from experiments.reporting.bootstrap import DEFAULT_RESAMPLES, bootstrap_ci
from experiments.reporting.contents import EnsembleInfo, Report
from experiments.reporting.extra import check_model_refs, score_extra_models
from experiments.reporting.facts import StudyFacts, data_card, find_ensemble, pretraining_pools, study_facts
from experiments.reporting.figure_set import make_figures
from experiments.reporting.render import write_report_dir
from experiments.reporting.scoring import _scored, log_test_scores, score_baseline_model, score_logged_model
from experiments.reporting.verdicts import paired_rows
from experiments.tracking.base import git_commit
from experiments.tracking.runs import (
    get_run_facts,
    list_run_artifacts,
    log_artifacts_to_run,
    logged_run_config,
    set_run_tags,
)
from experiments.tracking.workspace import Workspace
from experiments.training import load_training_data
from pipelines.classes import absent_classes

log = logging.getLogger(__name__)


#: Artifact folder of the report on the study's parent run.
ARTIFACT_DIR = "report"


def reproduce_commands(
    study: StudyFacts,
    *,
    ws: Workspace,
    data_path: str,
    out: str,
    parent_tags: Mapping[str, str],
    tune_config: str | None,
    ensemble: EnsembleInfo,
) -> list[str]:
    """Shell lines that rebuild the study, the ensemble comparison and this report (with comments)."""
    q = shlex.quote
    common = f"--storage {q(study.storage_url)} --tracking-uri {q(ws.tracking_uri)}"
    trials = parent_tags.get("study.n_trials")
    cmds = [
        f"# the study's tuning YAML is logged as tune_config/ on run {study.parent_run_id}",
        f"galaxy10 tune --config {q(tune_config or 'TUNE_CONFIG.yaml')} --study {q(study.name)} {common} "
        f"--data {q(data_path)}" + (f" --trials {trials}" if trials else ""),
    ]
    if ensemble.found:
        if ensemble.comparison_run_id:
            cmds.append(
                f"# the comparison's config is logged as ensemble_config.yaml on run {ensemble.comparison_run_id}"
            )
        mode = f" --set mode={q(ensemble.mode)}" if ensemble.mode else ""
        cmds.append(
            f"galaxy10 ensemble --study {q(study.name)} --config experiments/configs/ensemble.yaml{mode} {common}"
        )
    cmds.append(f"galaxy10 report --study {q(study.name)} --out {q(out)} {common}")
    return cmds


def _tune_config_path(parent_run_id: str, ws: Workspace) -> str | None:
    logged = list_run_artifacts(parent_run_id, "tune_config", ws=ws)
    if not logged:
        return None
    name = Path(logged[0]).name
    shipped = Path(__file__).parent / "configs" / name
    return f"experiments/configs/{name}" if shipped.is_file() else name


def calibration_summary(run_id: str, probs: np.ndarray, y_true: np.ndarray, ws: Workspace) -> dict[str, Any]:
    """The best CNN's temperature (fitted on validation, from its run) and its test ECE before and after."""
    from ensembles.calibration import apply_temperature, reliability

    metrics = get_run_facts(run_id, ws=ws).metrics
    temperature = metrics.get("temperature")
    if temperature is None:
        return {}
    before = reliability(probs, y_true)
    after = reliability(apply_temperature(probs, temperature), y_true)
    return {
        "temperature": float(temperature),
        "run_id": run_id,
        "ece_val": metrics.get("ece_val"),
        "ece_val_calibrated": metrics.get("ece_val_calibrated"),
        "test_ece": before.ece,
        "test_ece_calibrated": after.ece,
        "curves": {"uncalibrated": before, f"T = {temperature:.2f}": after},
    }


def build_report(
    study_name: str,
    *,
    ws: Workspace,
    out: str | os.PathLike | None = None,
    data_path: str | os.PathLike | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    log_artifacts: bool = True,
    force: bool = False,
    extra_models: Sequence[str] = (),
) -> Report:
    """Score the study's models on the test split, log the numbers, write the report into ``out``.

    Parameters
    ----------
    study_name
        An Optuna study made by ``galaxy10 tune``.
    out
        Output folder (default ``reports/<study>``): new, empty or a previous report (replaced atomically);
        any other folder is refused before any work unless ``force``.
    data_path
        Where the data file is now, if it moved since the study ran (its fingerprint must match).
    log_artifacts
        Also log the report files under ``report/`` on the study's parent run.
    extra_models
        More models to score beside the study's (``--model``: a self-trained student, a fine-tuned CNN), each
        compared by paired verdicts; a self-trained model's pool is named and checked against the test images.
    """

    out = Path(out) if out is not None else Path("reports") / study_name
    check_model_refs(extra_models)
    check_output_dir(out, what="report", force=force)
    uri = ws.require_store()
    study = study_facts(study_name, ws)
    try:
        parent = get_run_facts(study.parent_run_id, ws=ws)
    except ModelError:
        hint = f" (the study logged to {study.recorded_tracking_uri})" if study.recorded_tracking_uri else ""
        raise ConfigError(
            f"the study's MLflow parent run {study.parent_run_id} is not at {uri}{hint}; "
            "pass --tracking-uri of the store the study logged to"
        ) from None
    best_run = get_run_facts(study.best_run_id, ws=ws)

    with tempfile.TemporaryDirectory(prefix="galaxy10-report-") as tmp:
        workdir = Path(tmp)
        cfg = logged_run_config(study.best_run_id, ws=ws)
        path = Path(data_path) if data_path is not None else Path(best_run.tags.get("data.path") or "")
        if not str(path) or not path.is_file():
            raise DataError(
                f"the study's data file {str(path) or '(not recorded)'} is missing; pass --data FILE "
                "pointing at the file the study was trained on"
            )
        data = load_training_data(cfg.data, path)
        recorded = best_run.tags.get("data.fingerprint")
        if recorded and recorded != data.fingerprint:
            raise DataError(
                f"{path} has fingerprint {data.fingerprint[:12]} but the study was trained on "
                f"{recorded[:12]}; pass --data with the original file"
            )
        if len(data.test) == 0:
            raise DataError(f"the test split of {path} is empty; nothing to score")
        card = data_card(data, cfg.data.max_images, cfg.data.split_seed)
        if card.synthetic:
            log.warning("report on SYNTHETIC data (%s): the numbers say nothing about real galaxies", path)
        y_true = data.labels[data.test]
        slugs = data.class_slugs
        n_classes = data.num_classes

        base_pred, base_summary = score_baseline_model(data, cfg)
        majority = base_summary["majority_class_name"]
        models = [
            _scored(
                "baseline",
                "Baseline (most frequent class)",
                f"always predicts {majority}",
                None,
                None,
                y_true,
                np.eye(n_classes)[base_pred],
                slugs,
            )
        ]
        probs_by_key: dict[str, np.ndarray] = {}
        log.info(
            "scoring the best CNN (trial %d, %s) on %d test images",
            study.best_number,
            study.best_model_uri,
            len(data.test),
        )
        probs_by_key["cnn"] = score_logged_model(study.best_model_uri, data.path, data.test, ws=ws)
        scored_by = "cross-validated" if study.best_cv_scores else "val"
        models.append(
            _scored(
                "cnn",
                "Best CNN",
                f"study best trial {study.best_number} ({scored_by} {study.metric} {study.best_value:.4f})",
                study.best_run_id,
                study.best_model_uri,
                y_true,
                probs_by_key["cnn"],
                slugs,
            )
        )
        if study.reference_model_uri and study.reference_number != study.best_number:
            log.info(
                "scoring the study's reference trial %d (%s) on the test split",
                study.reference_number,
                study.reference_model_uri,
            )
            probs_by_key["reference"] = score_logged_model(study.reference_model_uri, data.path, data.test, ws=ws)
            models.append(
                _scored(
                    "reference",
                    "Reference trial",
                    f"study trial {study.reference_number}: experiments/configs/reference.yaml as shipped",
                    study.reference_run_id,
                    study.reference_model_uri,
                    y_true,
                    probs_by_key["reference"],
                    slugs,
                )
            )
        if study.refit_model_uri and study.refit_of_trial == study.best_number:
            log.info("scoring the refit of trial %d (%s) on the test split", study.best_number, study.refit_model_uri)
            probs_by_key["refit"] = score_logged_model(study.refit_model_uri, data.path, data.test, ws=ws)
            models.append(
                _scored(
                    "refit",
                    "Refit CNN (train + validation)",
                    f"trial {study.best_number}'s configuration retrained on train + validation",
                    study.refit_run_id,
                    study.refit_model_uri,
                    y_true,
                    probs_by_key["refit"],
                    slugs,
                )
            )
        ensemble = find_ensemble(study_name, ws)
        if ensemble.found and ensemble.model_uri:
            log.info("scoring the ensemble winner %s (%s) on the test split", ensemble.winner_name, ensemble.model_uri)
            probs_by_key["ensemble"] = score_logged_model(ensemble.model_uri, data.path, data.test, ws=ws)
            models.append(
                _scored(
                    "ensemble",
                    "Best ensemble",
                    f"comparison winner {ensemble.winner_name}",
                    ensemble.winner_run_id,
                    ensemble.model_uri,
                    y_true,
                    probs_by_key["ensemble"],
                    slugs,
                )
            )
        else:
            log.info("%s", ensemble.reason)

        extras = score_extra_models(extra_models, data, ws=ws)
        for extra in extras:
            probs_by_key[extra.key] = extra.probs
            models.append(
                _scored(
                    extra.key, extra.label, extra.description, extra.run_id, extra.model_uri, y_true, extra.probs, slugs
                )
            )
        cis = bootstrap_ci(y_true, {m.key: m.y_pred for m in models}, n_classes, n_resamples=n_resamples, seed=seed)
        for m in models:
            m.ci = cis[m.key]
        paired = paired_rows(models, y_true, slugs, n_resamples=n_resamples, seed=seed)
        commit = git_commit()
        report = Report(
            study_name=study_name,
            storage_url=ws.storage_url,
            tracking_uri=ws.tracking_uri,
            parent_run_id=study.parent_run_id,
            experiment_name=parent.experiment_name,
            metric=study.metric,
            counts=study.counts,
            best_trial=study.best_number,
            best_value=study.best_value,
            best_params=study.best_params,
            best_run_id=study.best_run_id,
            data=card,
            models=models,
            ensemble=ensemble,
            n_resamples=n_resamples,
            seed=seed,
            trials=list(study.trials),
            best_cv_scores=study.best_cv_scores,
            pruned_cuts=study.pruned_cuts,
            pareto=study.pareto,
            paired=paired,
            created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            git_commit=commit.get("git.commit", "")[:12] + (" (dirty)" if commit.get("git.dirty") == "true" else ""),
        )
        report.calibration = calibration_summary(study.best_run_id, probs_by_key["cnn"], y_true, ws)
        report.scoring_run_id = log_test_scores(report, experiment_name=parent.experiment_name, ws=ws)
        report.commands = reproduce_commands(
            study,
            ws=ws,
            data_path=str(path),
            out=str(out),
            parent_tags=parent.tags,
            tune_config=_tune_config_path(study.parent_run_id, ws),
            ensemble=ensemble,
        )
        report.notes.extend(ensemble.notes)
        report.pools = pretraining_pools(study, ws)
        for pool in report.pools:
            report.notes.append(
                f"trial {pool['trial']} started from {pool['model']}, pretrained (self-supervised, no "
                f"labels) on {pool['images']} unlabelled images from {pool['sources']} (fingerprint "
                f"{str(pool['fingerprint'])[:12]}); the pool was checked to hold none of this file's "
                "validation or test images"
            )
        for extra in extras:
            report.notes.extend(extra.notes)
            if extra.pool is not None:
                report.pools.append({"trial": None, **extra.pool})
        absent = absent_classes(y_true, slugs)
        if absent:
            report.notes.append(
                f"the test split has no image of {', '.join(absent)}: macro metrics average over the "
                f"{n_classes - len(absent)} classes present"
            )
        if cfg.data.max_images:
            report.notes.append(
                f"the study used only the first {cfg.data.max_images} images of the file "
                f"(data.max_images); all {len(models)} models are scored on the same test images"
            )
        make_figures(report, data=data, probs_by_key=probs_by_key, ws=ws, workdir=workdir)
        write_report_dir(report, out, force=force)
    if log_artifacts:
        log_artifacts_to_run(study.parent_run_id, out, ARTIFACT_DIR, ws=ws)
        set_run_tags(study.parent_run_id, {"report.test_scoring_run": report.scoring_run_id}, ws=ws)
    log.info("report written to %s (test scoring run %s)", out, report.scoring_run_id)
    return report
