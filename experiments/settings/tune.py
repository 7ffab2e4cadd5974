"""A tuning YAML as data: the base run config, the study settings and the search space, and the run
config each trial trains (the study's reference trial trains ``reference.yaml`` as shipped).

``search_space`` holds the space itself (parameters, conditions, ``suggest``); this module holds
everything else a tuning YAML says and turns a trial's parameters into a validated ``RunConfig``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.paths import DEFAULT_STORAGE
from experiments.names import check_study_name
from experiments.settings.checks import as_bool, as_choice, as_int, check_keys, read_config
from experiments.settings.search_space import Scalar, SearchSpace, _is_number, parse_search_space

#: Objective metrics (scored on the validation split) and the per-epoch metric name pruning reads.
METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1")

#: Samplers and the keyword arguments each accepts from the YAML.
SAMPLER_ARGS: dict[str, tuple[str, ...]] = {
    "tpe": ("seed", "n_startup_trials", "multivariate", "group", "constant_liar", "n_ei_candidates"),
    "random": ("seed",),
    "cmaes": ("seed", "n_startup_trials", "sigma0", "restart_strategy", "popsize", "with_margin"),
    "qmc": ("seed", "qmc_type", "scramble"),
}

#: Pruners and the keyword arguments each accepts from the YAML.
PRUNER_ARGS: dict[str, tuple[str, ...]] = {
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials", "min_epochs"),
    "percentile": ("percentile", "n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials", "min_epochs"),
    "successive_halving": (
        "min_resource",
        "reduction_factor",
        "min_early_stopping_rate",
        "bootstrap_count",
        "min_epochs",
    ),
    "hyperband": ("min_resource", "max_resource", "reduction_factor", "bootstrap_count", "min_epochs"),
    "threshold": ("lower", "upper", "n_warmup_steps", "interval_steps", "min_epochs"),
    "none": ("min_epochs",),
}

STUDY_KEYS: tuple[str, ...] = (
    "name",
    "metric",
    "n_trials",
    "timeout",
    "workers",
    "storage",
    "sampler",
    "pruner",
    "heartbeat_interval",
    "grace_period",
    "retry_stale",
    "log_models",
    "keep_models",
    "register_model",
    "model_alias",
    "refit",
    "cv_folds",
    "reference_trial",
    "start_points",
    "speed_objective",
    "unlabeled",
)
#: Trial user attribute that marks the study's reference trial (trial 0 of a new study).
ATTR_REFERENCE = "reference_recipe"
#: Trial attribute naming the pretrained model a trial starts from (``galaxy10 tune --unlabeled``).
ATTR_INIT_FROM = "init_from"
#: ``study.cv_folds: auto`` cross-validates when the validation split is smaller than this (images).
CV_AUTO_BELOW_VAL = 500
#: Folds ``auto`` uses on such a split.
CV_AUTO_FOLDS = 3
MAX_CV_FOLDS = 20
#: Which trials log their Keras model: those that beat every earlier COMPLETE trial, or all.
LOG_MODELS: tuple[str, ...] = ("top_k", "improving", "all")
TUNE_KEYS: tuple[str, ...] = ("base", "run", "study", "search_space")


@dataclass(frozen=True)
class SamplerConfig:
    """Which Optuna sampler to use and its keyword arguments (seeded TPE by default)."""

    name: str = "tpe"
    kwargs: Mapping[str, Any] = field(default_factory=lambda: {"seed": 0, "multivariate": True})


@dataclass(frozen=True)
class PrunerConfig:
    """Which Optuna pruner to use and its keyword arguments (median by default)."""

    name: str = "median"
    kwargs: Mapping[str, Any] = field(default_factory=lambda: {"n_startup_trials": 3, "n_warmup_steps": 1})
    #: No trial is pruned before this epoch of a fit: ``auto`` = the epochs the COMPLETE trials needed
    #: to reach their best (``experiments.tuning.pruning``), or an integer.
    min_epochs: int | str = "auto"


@dataclass(frozen=True)
class StudyConfig:
    """Study settings from the YAML ``study`` section (CLI flags override some of them).

    ``n_trials`` counts COMPLETE + PRUNED trials over the study's whole life (re-running continues
    until it is reached); ``timeout`` is wall seconds for one command; ``heartbeat_interval`` and
    ``grace_period`` (seconds) decide when a RUNNING trial whose worker died is failed;
    ``retry_stale`` is how many times such a trial's parameters are queued again. ``log_models``:
    ``top_k`` (default) logs a trial's model when it ranks among the ``keep_models`` best COMPLETE
    trials so far (so the top-k trials an ensemble votes with have models; 3 = the ensemble's default
    ``vote.top_k``), ``improving`` only when it beats every earlier COMPLETE trial (the best trial's
    model is always logged), ``all`` every COMPLETE trial's model. ``refit`` (default true): once the
    trials are done, the best trial's configuration is trained again on train + validation for the
    epochs its best checkpoint took, logged as its own run and registered under the study's name with
    alias ``refit`` (scikit-learn's ``refit=True``); the report scores it on test. ``cv_folds``: a trial's
    value is the mean of its metric over K stratified folds of the train split (each fold trained on the
    other K-1), pruned on the running mean; then the trial trains once more on the whole train split for its
    logged model and validation metrics, so ensembles keep a clean validation split. ``0`` scores on the
    validation split alone; ``auto`` (default) uses 3 folds when the validation split holds fewer than 500
    images (there one image moves accuracy by 0.2 points or more and a rare class by much more, so a single
    split ranks trials by noise) and 0 above (the K+1 trainings per trial would not pay).
    ``reference_trial`` (default true): a new study's trial 0 is the shipped reference recipe
    (``experiments/configs/reference.yaml``) at its own full budget, scored like every trial, so the best
    trial can only improve on it by the study's own estimate. ``start_points``: parameter sets (labels, as
    in ``search_space``) a new study tries first, after the reference (Optuna ``enqueue_trial``); a
    parameter a point leaves out is sampled. ``speed_objective`` (default false): a multi-objective study
    that maximises the metric and the trained model's inference images/s together (Optuna's sampler sees
    both; the best trial is still the best by the metric, the report draws the Pareto front); Optuna cannot
    prune multi-objective trials, so it needs ``pruner: none``. ``unlabeled``: unlabelled inputs (paths relative
    to the tuning YAML) the study's first start point is pretrained on before the trials (``galaxy10 tune
    --unlabeled`` gives them on the command line instead).
    """

    name: str
    metric: str = "accuracy"
    n_trials: int = 20
    timeout: float | None = None
    workers: int = 1
    storage: str = DEFAULT_STORAGE
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    heartbeat_interval: int = 20
    grace_period: int = 60
    retry_stale: int = 1
    log_models: str = "top_k"
    keep_models: int = 3
    register_model: bool = True
    model_alias: str = "champion"
    refit: bool = True
    cv_folds: int | str = "auto"
    reference_trial: bool = True
    start_points: tuple[Mapping[str, Scalar], ...] = ()
    speed_objective: bool = False
    unlabeled: tuple[str, ...] = ()

    def folds_for(self, n_val: int) -> int:
        """The folds to use when the validation split holds ``n_val`` images (0 = no cross-validation)."""
        if self.cv_folds == "auto":
            return CV_AUTO_FOLDS if n_val < CV_AUTO_BELOW_VAL else 0
        return int(self.cv_folds)

    @property
    def direction(self) -> str:
        """All objective metrics are maximised."""
        return "maximize"

    @property
    def directions(self) -> list[str]:
        """The study's objectives' directions: the metric, then images/s with ``speed_objective``."""
        return ["maximize", "maximize"] if self.speed_objective else ["maximize"]


@dataclass(frozen=True)
class TuneConfig:
    """A parsed tuning YAML: the base run config (raw mapping), study settings and search space."""

    base: str | None
    run: Mapping[str, Any]
    study: StudyConfig
    space: SearchSpace
    source: str | None = None


def _positive_int(where: str, value: Any, *, allow_zero: bool = False) -> int:
    return as_int(where, value, 0 if allow_zero else 1)


def _named_kwargs(where: str, raw: Any, table: Mapping[str, tuple[str, ...]], default: Any) -> tuple[str, dict]:
    if raw is None:
        return default.name, dict(default.kwargs)
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config key {where}={raw!r} has the wrong type; give a name or a mapping with 'name'")
    name = raw.get("name", default.name)
    if name not in table:
        as_choice(f"{where}.name", name, table)
    kwargs = {str(k): v for k, v in raw.items() if k != "name"}
    check_keys(where, kwargs, ("name", *table[name]))
    return name, kwargs


def pruner_name(raw: Any) -> str:
    """The pruner a raw ``study.pruner`` value names (the default, median, when it names none)."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, Mapping):
        return str(raw.get("name", PrunerConfig().name))
    return PrunerConfig().name


def parse_study(raw: Any, default_name: str) -> StudyConfig:
    """Validate the ``study`` section; raise ``ConfigError`` naming the bad key."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config key study={raw!r} has the wrong type; give a mapping of settings")
    check_keys("study", raw, STUDY_KEYS)
    name = check_study_name(raw.get("name", default_name), "study.name")
    metric = raw.get("metric", "accuracy")
    if metric not in METRICS:
        raise ConfigError(f"config key study.metric={metric!r} is not allowed; use one of: {', '.join(METRICS)}")
    timeout = raw.get("timeout")
    if timeout is not None and (not _is_number(timeout) or timeout <= 0):
        raise ConfigError(f"config key study.timeout={timeout!r} must be a positive number of seconds or null")
    storage = raw.get("storage", DEFAULT_STORAGE)
    if not isinstance(storage, str) or "://" not in storage:
        raise ConfigError(f"config key study.storage={storage!r} is not a database URL; use e.g. {DEFAULT_STORAGE}")
    s_name, s_kwargs = _named_kwargs("study.sampler", raw.get("sampler"), SAMPLER_ARGS, SamplerConfig())
    p_name, p_kwargs = _named_kwargs("study.pruner", raw.get("pruner"), PRUNER_ARGS, PrunerConfig())
    min_epochs = p_kwargs.pop("min_epochs", "auto")
    if min_epochs != "auto" and (not isinstance(min_epochs, int) or isinstance(min_epochs, bool) or min_epochs < 0):
        raise ConfigError(
            f"config key study.pruner.min_epochs={min_epochs!r} must be auto (the epochs finished"
            f" trials needed "
            "to reach their best) or a whole number of epochs"
        )
    speed_objective = as_bool("study.speed_objective", raw.get("speed_objective", False))
    if speed_objective and pruner_name(raw.get("pruner")) != "none":
        raise ConfigError(
            "config key study.speed_objective=true makes a multi-objective study, whose trials Optuna "
            "cannot prune; set study.pruner: none as well"
        )
    interval = _positive_int("study.heartbeat_interval", raw.get("heartbeat_interval", 20))
    grace = _positive_int("study.grace_period", raw.get("grace_period", 3 * interval))
    if grace <= interval:
        raise ConfigError(
            f"config key study.grace_period={grace} must exceed study.heartbeat_interval={interval} "
            "(a live worker would look dead); make it at least twice the interval"
        )
    log_models = raw.get("log_models", "top_k")
    as_choice("study.log_models", log_models, LOG_MODELS)
    register = as_bool("study.register_model", raw.get("register_model", True))
    alias = raw.get("model_alias", "champion")
    if not isinstance(alias, str) or not alias.isidentifier():
        raise ConfigError(f"config key study.model_alias={alias!r} must be a simple name like champion")
    cv_folds = raw.get("cv_folds", "auto")
    if cv_folds != "auto" and (
        not isinstance(cv_folds, int)
        or isinstance(cv_folds, bool)
        or cv_folds == 1
        or not 0 <= cv_folds <= MAX_CV_FOLDS
    ):
        raise ConfigError(
            f"config key study.cv_folds={cv_folds!r} must be auto, 0 (the validation split alone) or"
            f" an integer "
            f"2-{MAX_CV_FOLDS}"
        )
    return StudyConfig(
        name=name.strip(),
        metric=metric,
        n_trials=_positive_int("study.n_trials", raw.get("n_trials", 20)),
        timeout=None if timeout is None else float(timeout),
        workers=_positive_int("study.workers", raw.get("workers", 1)),
        storage=storage,
        sampler=SamplerConfig(s_name, s_kwargs),
        pruner=PrunerConfig(p_name, p_kwargs, min_epochs),
        heartbeat_interval=interval,
        grace_period=grace,
        retry_stale=_positive_int("study.retry_stale", raw.get("retry_stale", 1), allow_zero=True),
        log_models=log_models,
        keep_models=_positive_int("study.keep_models", raw.get("keep_models", 3)),
        register_model=register,
        model_alias=alias,
        refit=as_bool("study.refit", raw.get("refit", True)),
        cv_folds=cv_folds,
        reference_trial=as_bool("study.reference_trial", raw.get("reference_trial", True)),
        start_points=_start_points(raw.get("start_points")),
        speed_objective=speed_objective,
        unlabeled=_unlabeled(raw.get("unlabeled")),
    )


def _unlabeled(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in items):
        raise ConfigError(
            f"config key study.unlabeled={raw!r} must be a path or a list of paths (HDF5 files, folders, "
            "CSV/Parquet lists) of unlabelled images"
        )
    return tuple(items)


def unlabeled_inputs(tune: TuneConfig) -> list[str]:
    """``study.unlabeled`` resolved against the tuning YAML's folder (absolute paths stay)."""
    folder = Path(tune.source).parent if tune.source else Path.cwd()
    return [str(p if Path(p).is_absolute() else folder / p) for p in tune.study.unlabeled]


def _start_points(raw: Any) -> tuple[dict[str, Scalar], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not all(isinstance(p, Mapping) for p in raw):
        raise ConfigError(
            f"config key study.start_points={raw!r} must be a list of mappings, e.g. [{{model.name: d4_cnn}}]"
        )
    return tuple({str(k): v for k, v in point.items()} for point in raw)


def check_start_points(study: StudyConfig, space: SearchSpace) -> None:
    """Each start point names search-space parameters, with a choice (or a number in range) each."""
    for i, point in enumerate(study.start_points):
        for name, value in point.items():
            if name not in space.names:
                raise ConfigError(
                    f"unknown config key study.start_points[{i}].{name}: not a search_space"
                    f" parameter; use one of: "
                    f"{', '.join(space.names)}"
                )
            spec = space[name]
            if spec.kind == "categorical" and value not in spec.labels:
                raise ConfigError(
                    f"config key study.start_points[{i}].{name}={value!r} is not allowed; use one of"
                    f" its choices "
                    f"{list(spec.labels)}"
                )
            if spec.kind != "categorical" and (not _is_number(value) or not spec.low <= value <= spec.high):
                raise ConfigError(
                    f"config key study.start_points[{i}].{name}={value!r} is not allowed; give a"
                    f" number in "
                    f"[{spec.low}, {spec.high}]"
                )


def parse_tune_config(raw: Any, *, default_name: str = "galaxy10-study", source: str | None = None) -> TuneConfig:
    """Validate a whole tuning mapping (``base``, ``run``, ``study``, ``search_space``)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a tuning config must be a mapping with {', '.join(TUNE_KEYS)}; got {type(raw).__name__}")
    check_keys("", raw, TUNE_KEYS)
    base = raw.get("base")
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"config key base={base!r} has the wrong type; give the path of a run config YAML or null")
    run = raw.get("run") or {}
    if not isinstance(run, Mapping):
        raise ConfigError(f"config key run={run!r} has the wrong type; give a mapping of run-config settings")
    study = parse_study(raw.get("study"), default_name)
    space = parse_search_space(raw.get("search_space"))
    check_start_points(study, space)
    return TuneConfig(base=base, run=dict(run), study=study, space=space, source=source)


def load_tune_config(path: str | Path) -> TuneConfig:
    """Read and validate a tuning YAML; the study name defaults to the file's stem."""
    p = Path(path)
    raw = read_config(
        p,
        what="tuning config",
        example="experiments/configs/tune_quick.yaml",
        holds="sections (base, run, study, search_space)",
    )
    default_name = re.sub(r"[^A-Za-z0-9_.-]+", "-", p.stem).strip("-.") or "galaxy10-study"
    return parse_tune_config(raw, default_name=default_name, source=str(p))


# --------------------------------------------------------------------------------------------------
# From suggested parameters to a validated RunConfig
