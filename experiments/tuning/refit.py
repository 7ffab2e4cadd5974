"""Refit: the best trial's configuration trained on train + validation for its measured epochs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import optuna

from experiments.settings.trial import trial_run_config
from experiments.settings.tune import TuneConfig
from experiments.tracking.lookups import training_lookups
from experiments.tracking.mlflow_tracker import MlflowTracker
from experiments.tracking.model_registry import register_champion
from experiments.tracking.runs import run_metrics
from experiments.tracking.workspace import Workspace
from experiments.training import TrainOptions, load_training_data, prepare_run, train
from experiments.tuning.study import best_trial

log = logging.getLogger(__name__)


#: Study user attributes of the refit model.
ATTR_REFIT_TRIAL, ATTR_REFIT_RUN, ATTR_REFIT_MODEL = "refit_of_trial", "refit_run_id", "refit_model_uri"
REFIT_ALIAS = "refit"


def refit_epochs(trial_attrs: Mapping[str, Any]) -> tuple[int, str]:
    """``(epochs, where they come from)`` for refitting a trial: the mean best epoch of its cross-validation
    folds when it was cross-validated (each fold chose its epoch on images it did not train on), else the
    best checkpoint of its single validation split."""
    folds = trial_attrs.get("cv_best_epochs")
    if folds:
        epochs = max(1, int(round(float(np.mean(folds)))))
        return epochs, f"mean best epoch of its {len(folds)} folds {list(folds)}"
    return int(trial_attrs["best_epoch"]), "its best validation checkpoint"


def refit_temperature(trial_attrs: Mapping[str, Any], ws: Workspace) -> tuple[float, str]:
    """The refit's calibration temperature: its trial's (fitted on validation images the trial never trained
    on), since the refit trains on the validation split itself; 1.0 (uncalibrated) when the trial has none."""
    run_id = trial_attrs.get("mlflow_run_id")
    value = run_metrics(run_id, ws=ws).get("temperature") if run_id else None
    if value is None or not np.isfinite(value) or value <= 0:
        return 1.0, "none (the trial logged no temperature)"
    return float(value), f"trial run {run_id}"


def refit_best(
    study: optuna.Study,
    tune: TuneConfig,
    *,
    ws: Workspace,
    parent_run_id: str,
    data_path: str | None,
    overrides: tuple[str, ...] = (),
) -> str | None:
    """Train the best trial's configuration on train + validation for its best epoch count; return the
    registered model (``models:/<study>@refit``), or None when there is nothing (new) to refit.

    Like scikit-learn's ``refit=True``: selection used the validation split, the final model uses it
    too. The run is a child of the study's parent run (tag ``optuna.role=refit``); its ``val_*``
    metrics are on images it trained on, so they are tagged ``refit.val_seen=true`` and mean nothing.
    The test split stays untouched (the report scores it). A study whose best trial was already
    refit is not refit again.
    """

    best = best_trial(study)
    if best is None or "best_epoch" not in best.user_attrs:
        return None
    if study.user_attrs.get(ATTR_REFIT_TRIAL) == best.number and study.user_attrs.get(ATTR_REFIT_MODEL):
        return study.user_attrs.get("refit_registered")
    cfg, _ = trial_run_config(tune, best, extra_overrides=overrides)
    epochs, source = refit_epochs(best.user_attrs)
    cfg = replace(
        cfg,
        train=replace(cfg.train, epochs=epochs, patience=None),
        run_name=f"{study.study_name}-refit-trial-{best.number:03d}",
    )
    data = load_training_data(cfg.data, data_path, targets=cfg.augment.targets)
    merged = replace(data, train=np.union1d(data.train, data.val))
    log.info(
        "refit: trial %d's configuration on train + validation (%d images) for %d epochs (%s)",
        best.number,
        len(merged.train),
        epochs,
        source,
    )
    temperature, t_source = refit_temperature(best.user_attrs, ws)
    tags = {
        "optuna.study": study.study_name,
        "optuna.role": "refit",
        "refit.of_trial": best.number,
        "refit.epochs": epochs,
        "refit.epochs_from": source,
        "refit.val_seen": "true",
        "refit.temperature_from": t_source,
    }
    with MlflowTracker(cfg.experiment_name, cfg.run_name, ws=ws, parent_run_id=parent_run_id, tags=tags) as tracker:
        result = train(
            prepare_run(cfg, merged, **training_lookups(ws)),
            tracker,
            TrainOptions(verbose=0, restore_best=False, temperature=temperature),
        )
    registered = register_champion(
        result.model_uri,
        study.study_name,
        alias=REFIT_ALIAS,
        run_id=result.run_id,
        ws=ws,
        tags={"optuna.study": study.study_name, "refit.of_trial": best.number},
    )
    study.set_user_attr(ATTR_REFIT_TRIAL, best.number)
    study.set_user_attr(ATTR_REFIT_RUN, result.run_id)
    study.set_user_attr(ATTR_REFIT_MODEL, result.model_uri)
    study.set_user_attr("refit_registered", registered)
    return registered
