"""The ensemble comparison's configuration (``experiments/configs/ensemble.yaml``) as frozen dataclasses.

Every section and key is validated on load; an unknown key, a wrong type or a bad value raises
:class:`~core.errors.ConfigError` naming the dotted key and what is allowed. Second-stage
hyper-parameters are checked against the estimators themselves (:mod:`ensembles.second_stage`).
The optional ``tune.search_space`` uses the tuning search-space syntax and is validated by
``experiments/`` (which owns Optuna).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.yaml_io import plain
from ensembles.second_stage import MODEL_NAMES, WEIGHTABLE, resolve_params
from ensembles.stacking import META_LEARNERS
from ensembles.voting import WEIGHT_METHODS
from experiments.settings.checks import (
    as_bool,
    as_choice,
    as_int,
    as_mapping,
    as_positive_number,
    auto_or_bool,
    check_keys,
    read_config,
)

MODES: tuple[str, ...] = ("crossfit", "val_cv")
SELECT_METRICS: tuple[str, ...] = ("study", "accuracy", "balanced_accuracy", "macro_f1")
CLASS_WEIGHTINGS: tuple[str, ...] = ("auto", "balanced", "none")
#: Selection metrics for which ``class_weights: auto`` weights the classes equally.
BALANCED_METRICS: tuple[str, ...] = ("balanced_accuracy", "macro_f1")
TUNE_METRICS: tuple[str, ...] = ("log_loss", "accuracy")
#: Metrics the champion rule can guard (those a paired bootstrap computes).
GUARD_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1")


@dataclass(frozen=True)
class CrossfitConfig:
    """``crossfit`` mode: K folds of the training split; ``epochs`` null keeps the recipe's epochs."""

    folds: int = 3
    epochs: int | None = None


@dataclass(frozen=True)
class EmbeddingConfig:
    """How embeddings are computed: 8-view TTA averaging and the forward-pass batch size."""

    tta: bool = False
    batch_size: int = 256


@dataclass(frozen=True)
class VoteConfig:
    """CNN voting over the study's ``top_k`` trials: equal-weight soft vote, and a weighted one.

    ``weighted``: ``log_loss`` (weights minimise validation log loss), ``accuracy`` (proportional
    to each member's validation accuracy) or null (no weighted vote).
    """

    top_k: int = 3
    weighted: str | None = "log_loss"


@dataclass(frozen=True)
class StackConfig:
    """Stacking of the CNN with each listed second stage.

    ``meta``: ``logistic`` (a multinomial logistic regression on both models' log-probabilities, inverse
    L2 strength ``C``) or ``blend`` (one weight chosen by out-of-fold log loss).
    """

    second_stage: tuple[str, ...] = ()
    meta: str = "logistic"
    C: float = 1.0


@dataclass(frozen=True)
class TuneSpec:
    """Optional Optuna tuning of second stages (0 trials: use the configured values as they are)."""

    n_trials: int = 0
    metric: str = "log_loss"
    search_space: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EnsembleConfig:
    """The whole comparison: which candidates, how they are fit honestly, how the winner is chosen.

    ``n_jobs``: threads of each second-stage fit and of the BLAS/OpenMP pools during those fits
    (null: 1, which is fastest when the cores are shared). ``select_metric``: ``study`` (default: the
    metric the study optimised) or a metric name; a candidate replaces ``cnn-best`` as champion only
    when it leads by more than the paired-bootstrap standard error of the difference.
    ``class_weights``: how second stages weight the classes in their fit - ``none`` (default: by their
    counts), ``balanced`` (equally) or ``auto`` (equally when the selection metric is balanced accuracy or
    macro-F1). ``prior_correction``: add a ``<candidate>+prior`` twin of every second-stage and stacking
    candidate whose probabilities are divided by the training class shares - ``auto`` (default: when the
    selection metric is balanced accuracy or macro-F1), ``true`` or ``false``. ``accuracy_guard``: when
    the selection metric is not accuracy, a candidate must also not lose validation accuracy to
    ``cnn-best`` beyond the guard margin to become champion (default true; false drops accuracy from the
    guard metrics). ``guard_metrics``: the metrics (besides the selection metric, always judged) on which a
    candidate must be non-inferior to ``cnn-best`` - the lower end of the paired interval of the difference
    above ``-guard_margin`` (default ``[accuracy]``, margin 0.01). ``confidence``: the level of the paired
    intervals before the Bonferroni correction for the number of candidates (default 0.95); see
    ``experiments.ensembling.champion``.
    ``pretrained``: a self-supervised model (``galaxy10 pretrain``, e.g. ``pretrain-d4_cnn@pretrained``) whose
    frozen embeddings of the training split every second stage is also fit on (``pre-<name>`` candidates).
    ``oof_selection``: in ``crossfit`` mode, judge the candidates that have out-of-fold predictions on the
    training split (the fold CNNs' average, second stages, stacks, their prior twins) on those *and* the
    validation split against ``cnn-best``'s recipe (its fold CNNs out-of-fold, itself on validation): about
    ``1 / val_fraction`` times the images of every class behind the champion rule (default true).
    """

    mode: str = "val_cv"
    seed: int = 0
    select_metric: str = "study"
    class_weights: str = "none"
    prior_correction: bool | str = "auto"
    accuracy_guard: bool = True
    guard_metrics: tuple[str, ...] = ("accuracy",)
    guard_margin: float = 0.01
    confidence: float = 0.95
    oof_selection: bool = True
    cv_folds: int = 5
    n_jobs: int | None = None
    alias: str = "champion"
    pretrained: str | None = None
    crossfit: CrossfitConfig = field(default_factory=CrossfitConfig)
    embeddings: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    vote: VoteConfig = field(default_factory=VoteConfig)
    second_stage: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {"logreg": {}, "xgboost": {}})
    stack: StackConfig = field(default_factory=StackConfig)
    tune: TuneSpec = field(default_factory=TuneSpec)


def balanced_second_stages(cfg: EnsembleConfig, select_metric: str) -> bool:
    """Whether second stages weight the classes equally, given the resolved selection metric."""
    if cfg.class_weights == "auto":
        return select_metric in BALANCED_METRICS
    return cfg.class_weights == "balanced"


def prior_twins(cfg: EnsembleConfig, select_metric: str) -> bool:
    """Whether the comparison adds prior-corrected twins, given the resolved selection metric."""
    if cfg.prior_correction == "auto":
        return select_metric in BALANCED_METRICS
    return bool(cfg.prior_correction)


def config_from_dict(raw: Mapping[str, Any] | None) -> EnsembleConfig:
    """Validate a raw mapping (missing keys take defaults) into an :class:`EnsembleConfig`."""
    raw = as_mapping("(top level)", raw)
    check_keys("", raw, EnsembleConfig)
    d = EnsembleConfig()
    cf = as_mapping("crossfit", raw.get("crossfit"))
    check_keys("crossfit", cf, CrossfitConfig)
    em = as_mapping("embeddings", raw.get("embeddings"))
    check_keys("embeddings", em, EmbeddingConfig)
    vo = as_mapping("vote", raw.get("vote"))
    check_keys("vote", vo, VoteConfig)
    st = as_mapping("stack", raw.get("stack"))
    check_keys("stack", st, StackConfig)
    tu = as_mapping("tune", raw.get("tune"))
    check_keys("tune", tu, TuneSpec)

    second_raw = raw.get("second_stage", d.second_stage)
    second_raw = as_mapping("second_stage", second_raw)
    second: dict[str, dict[str, Any]] = {}
    for name, params in second_raw.items():
        if name not in MODEL_NAMES:
            raise ConfigError(f"unknown config key second_stage.{name}; second-stage models: {', '.join(MODEL_NAMES)}")
        second[str(name)] = resolve_params(
            str(name), as_mapping(f"second_stage.{name}", params), where=f"second_stage.{name}"
        )

    stack_with = st.get("second_stage", [])
    if isinstance(stack_with, str):
        stack_with = [stack_with]
    if not isinstance(stack_with, (list, tuple)):
        raise ConfigError(f"config key stack.second_stage={stack_with!r} must be a list of second-stage names")
    for name in stack_with:
        if name not in second:
            raise ConfigError(
                f"config key stack.second_stage names {name!r}, which is not configured under "
                f"second_stage; add it there (configured: {', '.join(second) or 'none'}) or remove it"
            )
    C = as_positive_number("stack.C", st.get("C", StackConfig().C))

    if raw.get("class_weights") == "balanced" and set(second) - WEIGHTABLE:
        raise ConfigError(
            f"config key class_weights=balanced, but second stage "
            f"{', '.join(sorted(set(second) - WEIGHTABLE))} cannot weight classes; remove it from "
            "second_stage or set class_weights: auto or none"
        )
    guards = raw.get("guard_metrics", list(d.guard_metrics))
    if isinstance(guards, str):
        guards = [guards]
    if not isinstance(guards, (list, tuple)):
        raise ConfigError(
            f"config key guard_metrics={guards!r} must be a list of metrics from "
            f"{', '.join(GUARD_METRICS)} (e.g. [accuracy])"
        )
    for g in guards:
        as_choice("guard_metrics", g, GUARD_METRICS)
    margin = raw.get("guard_margin", d.guard_margin)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise ConfigError(
            f"config key guard_margin={margin!r} must be a number from 0 to below 1 (e.g. 0.01: a "
            "candidate may trail cnn-best by at most one point on a guard metric)"
        )
    confidence = raw.get("confidence", d.confidence)
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.5 <= confidence < 1:
        raise ConfigError(f"config key confidence={confidence!r} must be a level from 0.5 to below 1 (e.g. 0.95)")
    alias = raw.get("alias", d.alias)
    if not isinstance(alias, str) or not alias.isidentifier():
        raise ConfigError(f"config key alias={alias!r} is not allowed; give a simple name like champion")
    space = as_mapping("tune.search_space", tu.get("search_space"))
    n_trials = as_int("tune.n_trials", tu.get("n_trials", 0), 0)
    if n_trials and not space:
        raise ConfigError(
            "config key tune.n_trials > 0 needs tune.search_space; add e.g. "
            "{xgboost.max_depth: {type: int, low: 2, high: 6}} or set n_trials: 0"
        )
    return EnsembleConfig(
        mode=as_choice("mode", raw.get("mode", d.mode), MODES),
        seed=as_int("seed", raw.get("seed", d.seed), 0),
        select_metric=as_choice("select_metric", raw.get("select_metric", d.select_metric), SELECT_METRICS),
        class_weights=as_choice("class_weights", raw.get("class_weights", d.class_weights), CLASS_WEIGHTINGS),
        prior_correction=auto_or_bool("prior_correction", raw.get("prior_correction", d.prior_correction)),
        accuracy_guard=as_bool("accuracy_guard", raw.get("accuracy_guard", d.accuracy_guard)),
        guard_metrics=tuple(str(g) for g in guards),
        guard_margin=float(margin),
        confidence=float(confidence),
        oof_selection=as_bool("oof_selection", raw.get("oof_selection", d.oof_selection)),
        cv_folds=as_int("cv_folds", raw.get("cv_folds", d.cv_folds), 2, 20),
        n_jobs=as_int("n_jobs", raw.get("n_jobs", d.n_jobs), 1, 256, nullable=True),
        alias=alias,
        pretrained=_pretrained_ref(raw.get("pretrained")),
        crossfit=CrossfitConfig(
            folds=as_int("crossfit.folds", cf.get("folds", 3), 2, 20),
            epochs=as_int("crossfit.epochs", cf.get("epochs"), 1, 10000, nullable=True),
        ),
        embeddings=EmbeddingConfig(
            tta=as_bool("embeddings.tta", em.get("tta", False)),
            batch_size=as_int("embeddings.batch_size", em.get("batch_size", 256), 1, 8192),
        ),
        vote=VoteConfig(
            top_k=as_int("vote.top_k", vo.get("top_k", 3), 1, 50),
            weighted=as_choice("vote.weighted", vo.get("weighted", "log_loss"), WEIGHT_METHODS, nullable=True),
        ),
        second_stage=second,
        stack=StackConfig(
            second_stage=tuple(str(s) for s in stack_with),
            C=float(C),
            meta=as_choice("stack.meta", st.get("meta", StackConfig().meta), META_LEARNERS),
        ),
        tune=TuneSpec(
            n_trials=n_trials,
            metric=as_choice("tune.metric", tu.get("metric", "log_loss"), TUNE_METRICS),
            search_space=dict(space),
        ),
    )


def _pretrained_ref(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"config key pretrained={value!r} must name a model, e.g. pretrain-d4_cnn@pretrained, or be null"
        )
    return value.strip()


def read_config_yaml(path: str | Path) -> dict[str, Any]:
    """Read an ensemble YAML as a raw mapping (an empty file is the defaults)."""
    return read_config(
        path,
        what="ensemble config",
        example="experiments/configs/ensemble.yaml",
        holds="settings (mode, vote, second_stage, ...)",
    )


def to_dict(cfg: EnsembleConfig) -> dict[str, Any]:
    """Plain nested dict of ``cfg`` (for logging as YAML/params)."""
    return plain(cfg)
