"""Optional Optuna tuning of the second stages (cross-validated on what they are fit on)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError
from ensembles.crossfit import cv_predict_proba, cv_splits
from ensembles.second_stage import allowed_params, resolve_params
from experiments.ensembling.context import BuildContext, second_stage_factory
from experiments.settings.ensemble import EnsembleConfig
from experiments.settings.search_space import assignments, parse_search_space, suggest
from experiments.settings.tune import PrunerConfig, SamplerConfig, StudyConfig, TuneConfig
from experiments.training.evaluation import classification_metrics
from experiments.tuning.storage import open_storage
from experiments.tuning.study import open_study
from experiments.tuning.workers import route_optuna_logging

log = logging.getLogger(__name__)


def space_for(cfg: EnsembleConfig) -> dict[str, Any]:
    """``{model: SearchSpace}`` from ``tune.search_space`` (keys ``<model>.<param>``), validated."""

    by_model: dict[str, dict[str, Any]] = {}
    for key, spec in cfg.tune.search_space.items():
        model, _, param = str(key).partition(".")
        if model not in cfg.second_stage or not param:
            raise ConfigError(
                f"config key tune.search_space.{key} must be <model>.<param> with a model configured "
                f"under second_stage ({', '.join(cfg.second_stage) or 'none'})"
            )
        if param not in allowed_params(model):
            raise ConfigError(
                f"unknown config key tune.search_space.{key}; allowed keys for {model}: "
                f"{', '.join(allowed_params(model))}"
            )
        spec = dict(spec) if isinstance(spec, Mapping) else spec
        if isinstance(spec, dict):
            spec.setdefault("target", param)
        by_model.setdefault(model, {})[param] = spec
    return {m: parse_search_space(raw) for m, raw in by_model.items()}


def tuned_models(cfg: EnsembleConfig) -> set[str]:
    return {str(k).partition(".")[0] for k in cfg.tune.search_space}


def validate_config(cfg: EnsembleConfig) -> None:
    """Checks of the parts of the ensemble config that ``experiments/`` owns (the tuning space)."""
    space_for(cfg)


def tune_second_stage(
    name: str,
    base: Mapping[str, Any],
    space: Any,
    fit_sets: Sequence[tuple[np.ndarray, np.ndarray]],
    cfg: EnsembleConfig,
    n_classes: int,
    *,
    balanced: bool = False,
) -> tuple[dict[str, Any], float]:
    """Small Optuna study (seeded TPE, through :mod:`experiments.tuning`) over ``space`` for ``name``.

    The objective is the cross-validated ``tune.metric`` averaged over ``fit_sets`` (each an
    ``(X, y)`` the second stage is fit on); the study lives in a throw-away SQLite file. Returns
    (best params, best objective: accuracy, or minus the log loss).
    """

    def objective(trial: Any) -> float:
        params = resolve_params(name, {**base, **assignments(space, suggest(trial, space))})
        scores = []
        for X, y in fit_sets:
            probs = cv_predict_proba(
                second_stage_factory(name, params, cfg, balanced),
                X,
                y,
                n_classes,
                cv_splits(y, cfg.cv_folds, seed=cfg.seed),
            )
            m = classification_metrics(y, probs, [str(i) for i in range(n_classes)])
            scores.append(-m["log_loss"] if cfg.tune.metric == "log_loss" else m["accuracy"])
        return float(np.mean(scores))

    study_cfg = StudyConfig(
        name=f"second-stage-{name}",
        n_trials=cfg.tune.n_trials,
        sampler=SamplerConfig("tpe", {"seed": cfg.seed, "multivariate": True}),
        pruner=PrunerConfig("none", {}),
    )
    with tempfile.TemporaryDirectory(prefix="galaxy10-tune-") as tmp:
        route_optuna_logging(logging.WARNING)
        storage = open_storage(f"sqlite:///{Path(tmp) / 'second_stage.db'}")
        study = open_study(TuneConfig(base=None, run={}, study=study_cfg, space=space), storage)
        study.optimize(objective, n_trials=cfg.tune.n_trials)
        best_params, best_value = dict(study.best_params), float(study.best_value)
        storage.engine.dispose()
    best = resolve_params(name, {**base, **assignments(space, best_params)})
    log.info(
        "tuned %s over %d trials: %s (cv %s %.4f)", name, cfg.tune.n_trials, best, cfg.tune.metric, abs(best_value)
    )
    return best, best_value


def tuned_params(ctx: BuildContext, fit_sets: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, Any]]:
    params = {name: dict(p) for name, p in ctx.cfg.second_stage.items()}
    if ctx.cfg.tune.n_trials <= 0:
        return params
    for name, space in space_for(ctx.cfg).items():
        params[name], _ = tune_second_stage(
            name, params[name], space, fit_sets, ctx.cfg, ctx.n_classes, balanced=ctx.balanced
        )
    return params
