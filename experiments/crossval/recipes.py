"""One recipe on one fold: train on the fold's training images, predict its held-out images."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from experiments.crossval.folds import Fold, Recipe, inner_validation
from experiments.settings.run import RunConfig
from experiments.settings.tune import TuneConfig
from experiments.tracking.workspace import Workspace
from pipelines.dataset import TrainData

log = logging.getLogger(__name__)

#: Shares of a tuning recipe's budget given to ``tune --budget`` and ``ensemble --budget`` (as the catalog path's
#: benchmark gives them; the rest is predicting the held-out images and start-up).
TUNE_SHARE, ENSEMBLE_SHARE = 0.82, 0.08
#: The ensemble comparison a tuning recipe runs after its study.
ENSEMBLE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ensemble.yaml"


def ensemble_config() -> tuple[Any, str]:
    """The shipped ensemble config a tuning recipe's comparison runs (validated) and its text."""
    from experiments.settings.ensemble import config_from_dict, read_config_yaml

    return config_from_dict(read_config_yaml(ENSEMBLE_CONFIG)), ENSEMBLE_CONFIG.read_text(encoding="utf-8")


@dataclass(frozen=True)
class FoldResult:
    """A recipe's probabilities on a fold's held-out images and what made them."""

    probs: np.ndarray
    seconds: float
    facts: dict[str, Any]


def run_train_recipe(
    cfg: RunConfig, data: TrainData, fold: Fold, *, seed: int, tracker: Any, lookups: dict[str, Any]
) -> FoldResult:
    """A run config trained on the fold's training images (a stratified share of them for validation:
    early stopping and calibration), its restored best weights scored on the held-out images."""
    from experiments.training import TrainOptions, predict_probs, prepare_run, train

    started = time.perf_counter()
    tr, va = inner_validation(data.labels, fold.train, cfg.data.val_fraction or 0.1, seed=seed + 1000 * fold.r + fold.k)
    fold_data = replace(data, train=tr, val=va, test=fold.test)
    result = train(prepare_run(cfg, fold_data, **lookups), tracker, TrainOptions(log_model=False, verbose=0))
    probs = predict_probs(result.model, fold_data, fold.test, crop=cfg.data.crop, tta=cfg.augment.tta)
    return FoldResult(
        probs, time.perf_counter() - started, {"best_epoch": result.best_epoch, "n_train": len(tr), "n_val": len(va)}
    )


def run_tune_recipe(
    tune: TuneConfig,
    recipe: Recipe,
    source: Path,
    fold: Fold,
    *,
    budget: float,
    study_name: str,
    workdir: Path,
    ws: Workspace,
    seed: int,
    ensemble: Any,
) -> FoldResult:
    """The catalog path on the fold's training images: ``tune --budget`` (82% of ``budget``) on a file of those
    images (the study splits it as it splits any file), ``ensemble --budget`` (8%), and the champion it registers
    predicts the held-out images from the source file. ``ensemble``: the comparison's ``EnsembleConfig``, read
    once per evaluation (:func:`ensemble_config`)."""
    from experiments.ensembling.comparison import run_comparison
    from experiments.serving.predictor import load_predictor, predict_file_rows
    from experiments.tuning.run import run_study
    from pipelines.subset import write_subset

    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    fold_file = workdir / f"{recipe.name}-{fold.cell}.h5"
    write_subset(source, fold.train, fold_file, note=f"galaxy10 evaluate: training images of fold {fold.cell}")
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    try:
        tune = replace(tune, study=replace(tune.study, name=study_name))
        overrides = (f"data.split_seed={seed}",)
        tune_budget, pretrained = TUNE_SHARE * budget, None
        if tune.study.unlabeled:  # the catalog path with a pool: pretraining comes out of the tuning share
            from experiments.settings.tune import unlabeled_inputs
            from experiments.tuning.unlabeled import pretrain_for_study
            from pipelines.reader import Galaxy10File

            with Galaxy10File(source) as f:
                held_out = np.asarray(f.images(fold.test))
            pretrained, tune_budget = pretrain_for_study(
                tune,
                unlabeled_inputs(tune),
                data_path=str(fold_file),
                overrides=overrides,
                epochs=30,
                budget=tune_budget,
                ws=ws,
                held_out=held_out,
            )
        study = run_study(
            tune,
            storage_url=storage,
            ws=ws,
            data_path=str(fold_file),
            budget=tune_budget,
            overrides=overrides,
            pretrained=pretrained,
        )
        comparison = run_comparison(
            study_name, ensemble, storage_url=storage, ws=ws, data_path=fold_file, budget=ENSEMBLE_SHARE * budget
        )
        model_uri = comparison.model_uris[comparison.winner]
        probs = predict_file_rows(load_predictor(model_uri, ws=ws), source, fold.test)
    finally:
        for stale in (fold_file, fold_file.with_suffix(".split.json"), *workdir.glob(f".{fold_file.name}*")):
            stale.unlink(missing_ok=True)
    return FoldResult(
        np.asarray(probs, dtype=np.float32),
        time.perf_counter() - started,
        {
            "study": study_name,
            "plan": study.plan,
            "best_trial": study.best_number,
            "champion": comparison.winner,
            "champion_uri": model_uri,
            "storage": storage,
            "budget_seconds": round(budget, 1),
        },
    )
