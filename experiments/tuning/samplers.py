"""Samplers and pruners built from the study config."""

from __future__ import annotations

import optuna

from core.errors import ConfigError, first_line
from experiments.settings.tune import PrunerConfig, SamplerConfig
from experiments.tuning.pruning import FloorPruner
from experiments.tuning.storage import quiet_optuna_warnings


def make_sampler(cfg: SamplerConfig, *, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """Build the configured sampler; ``seed_offset`` gives each parallel worker its own stream."""
    kwargs = dict(cfg.kwargs)
    if kwargs.get("seed") is not None:
        kwargs["seed"] = int(kwargs["seed"]) + seed_offset
    classes = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "qmc": optuna.samplers.QMCSampler,
    }
    if cfg.name == "tpe":
        kwargs.setdefault("multivariate", True)
    if cfg.name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError("study.sampler cmaes needs the 'cmaes' package; pip install cmaes or use tpe") from None
    try:
        with quiet_optuna_warnings():
            return classes[cfg.name](**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"study.sampler {cfg.name} {kwargs}: {first_line(err)}; fix the sampler settings") from None


def make_pruner(cfg: PrunerConfig) -> optuna.pruners.BasePruner:
    """Build the configured pruner (median, percentile, successive_halving, hyperband, threshold, none),
    wrapped in the epoch floor of :class:`experiments.tuning.pruning.FloorPruner`."""
    classes = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "threshold": optuna.pruners.ThresholdPruner,
        "none": optuna.pruners.NopPruner,
    }
    kwargs = dict(cfg.kwargs)
    if cfg.name == "percentile":
        kwargs.setdefault("percentile", 50.0)
    try:
        base = classes[cfg.name](**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"study.pruner {cfg.name} {kwargs}: {first_line(err)}; fix the pruner settings") from None
    return base if cfg.name == "none" else FloorPruner(base, cfg.min_epochs)


def describe(cfg: SamplerConfig | PrunerConfig) -> str:
    """``tpe(seed=0, multivariate=True)``: a short label for logs and MLflow params."""
    kwargs = dict(cfg.kwargs)
    if isinstance(cfg, PrunerConfig) and cfg.name != "none":
        kwargs["min_epochs"] = cfg.min_epochs
    args = ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
    return f"{cfg.name}({args})"
