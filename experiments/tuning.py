"""Optuna tuning studies: storage, samplers, pruners, resumable multi-process workers, MLflow runs.

The only module in the codebase that imports :mod:`optuna`. A study lives in an RDB storage
(SQLite ``sqlite:///optuna.db`` by default) and is continued by re-running the same command until
``n_trials`` trials are COMPLETE or PRUNED. Workers are separate processes (spawned, so TensorFlow
is never forked); each loads the data once and trains one trial after another. Each trial is one
nested MLflow child run under the study's parent run, created explicitly with the parent-run tag,
never through MLflow's global active-run stack.

A worker that dies leaves its trial RUNNING; Optuna's heartbeat marks it FAIL once its heartbeat is
older than the grace period (checked on start-up and before every trial), its MLflow run is marked
FAILED, and its parameters are queued again (``retry_stale`` times).
"""
from __future__ import annotations

import contextlib
import logging
import sqlite3
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments.search_space import (
    DEFAULT_STORAGE,
    PrunerConfig,
    SamplerConfig,
    TuneConfig,
    space_hash,
)
from pipelines.errors import ConfigError

log = logging.getLogger(__name__)

#: Study user attributes written by this module.
ATTR_SPACE_HASH = "search_space_hash"
ATTR_METRIC = "metric"
ATTR_PARENT_RUN = "mlflow_parent_run_id"
ATTR_EXPERIMENT = "mlflow_experiment_id"
ATTR_TRACKING_URI = "mlflow_tracking_uri"
#: Trial user attribute holding the trial's MLflow child run id.
ATTR_TRIAL_RUN = "mlflow_run_id"

#: How a finished trial's state shows in MLflow's run status.
MLFLOW_STATUS: dict[TrialState, str] = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.PRUNED: "KILLED",
    TrialState.FAIL: "FAILED",
}
#: Trials that count towards ``n_trials``.
COUNTED_STATES: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.PRUNED)
SQLITE_TIMEOUT_S = 120


@contextlib.contextmanager
def _quiet_optuna_warnings() -> Iterator[None]:
    """Hide Optuna's experimental/deprecation warnings for features we use on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:200]


# --------------------------------------------------------------------------------------------------
# Storage


def sqlite_file(url: str) -> Path | None:
    """The database file of an SQLite URL, ``None`` for other databases and in-memory SQLite."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database)


def enable_sqlite_wal(path: Path) -> None:
    """Switch an SQLite file to write-ahead logging (persistent), so readers never block writers."""
    with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)) as conn:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        log.warning("SQLite %s stays in %s journal mode; parallel workers may wait on locks", path, mode)


def open_storage(url: str = DEFAULT_STORAGE, *, heartbeat_interval: int | None = None,
                 grace_period: int | None = None,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                 must_exist: bool = False) -> optuna.storages.RDBStorage:
    """Open (creating tables if needed) the Optuna RDB storage at ``url``.

    SQLite files get WAL mode, a long busy timeout and ``BEGIN IMMEDIATE`` write transactions, so
    several worker processes can share one file. ``heartbeat_interval``/``grace_period`` (seconds)
    enable Optuna's heartbeat; ``on_stale`` runs for each trial failed as stale.

    Raises
    ------
    ConfigError
        If the URL is malformed, its driver is missing or the database cannot be reached.
    """
    url = url.strip()
    hint = f"check the URL and that the database is reachable, or use {DEFAULT_STORAGE}"
    engine_kwargs: dict[str, Any] = {}
    try:
        db_file = sqlite_file(url)
    except Exception as err:  # sqlalchemy.exc.ArgumentError for a malformed URL
        raise ConfigError(f"storage URL {url!r} is malformed ({_first_line(err)}); {hint}") from None
    if url.startswith("sqlite"):
        if db_file is None:
            raise ConfigError(
                f"storage {url!r} is an in-memory SQLite database that worker processes cannot share "
                f"and that is lost on exit; use a file, e.g. {DEFAULT_STORAGE}"
            )
        if not db_file.parent.is_dir():
            raise ConfigError(
                f"cannot open the Optuna storage {url!r}: folder {db_file.parent} does not exist; "
                "create it or point --storage at an existing folder"
            )
        if must_exist and not db_file.is_file():
            raise ConfigError(
                f"no Optuna storage at {db_file}; run galaxy10 tune first or pass --storage URL of an existing study"
            )
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S, "isolation_level": "IMMEDIATE"}}
    try:
        if db_file is not None:
            enable_sqlite_wal(db_file)
        with _quiet_optuna_warnings():
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                grace_period=grace_period, heartbeat_stale_trial_callback=on_stale,
            )
    except (ImportError, ValueError, sqlite3.Error, optuna.exceptions.StorageInternalError) as err:
        raise ConfigError(f"cannot open the Optuna storage {url!r} ({_first_line(err)}); {hint}") from None
    except Exception as err:
        import sqlalchemy.exc

        if isinstance(err, sqlalchemy.exc.SQLAlchemyError):
            raise ConfigError(f"cannot open the Optuna storage {url!r} ({_first_line(err)}); {hint}") from None
        raise


# --------------------------------------------------------------------------------------------------
# Samplers and pruners


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
        with _quiet_optuna_warnings():
            return classes[cfg.name](**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"study.sampler {cfg.name} {kwargs}: {_first_line(err)}; fix the sampler settings") from None


def make_pruner(cfg: PrunerConfig) -> optuna.pruners.BasePruner:
    """Build the configured pruner (median, percentile, successive_halving, hyperband, threshold, none)."""
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
        return classes[cfg.name](**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"study.pruner {cfg.name} {kwargs}: {_first_line(err)}; fix the pruner settings") from None


def describe(cfg: SamplerConfig | PrunerConfig) -> str:
    """``tpe(seed=0, multivariate=True)``: a short label for logs and MLflow params."""
    args = ", ".join(f"{k}={v}" for k, v in sorted(cfg.kwargs.items()))
    return f"{cfg.name}({args})"


# --------------------------------------------------------------------------------------------------
# Studies


def open_study(tune: TuneConfig, storage: optuna.storages.BaseStorage, *, create: bool = True,
               seed_offset: int = 0) -> optuna.Study:
    """Create the study or load it to continue; refuse one made with another search space or metric.

    Raises
    ------
    ConfigError
        If a study of that name exists with a different search-space hash or metric, or (with
        ``create=False``) does not exist.
    """
    cfg = tune.study
    sampler = make_sampler(cfg.sampler, seed_offset=seed_offset)
    pruner = make_pruner(cfg.pruner)
    exists = cfg.name in {s.study_name for s in storage.get_all_studies()}
    if not exists and not create:
        raise ConfigError(f"study {cfg.name!r} not found in {_url(storage)}; run galaxy10 tune first")
    with _quiet_optuna_warnings():
        study = optuna.create_study(study_name=cfg.name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction=cfg.direction, load_if_exists=True)
    wanted = space_hash(tune.space)
    attrs = study.user_attrs
    if ATTR_SPACE_HASH not in attrs:
        study.set_user_attr(ATTR_SPACE_HASH, wanted)
        study.set_user_attr(ATTR_METRIC, cfg.metric)
        study.set_user_attr("search_space", _plain(tune.space.raw))
        return study
    if attrs[ATTR_SPACE_HASH] != wanted:
        raise ConfigError(
            f"study {cfg.name!r} in {_url(storage)} was created with a different search space "
            f"(hash {attrs[ATTR_SPACE_HASH]} vs {wanted}); pass a new --study name or restore the original search_space"
        )
    if attrs.get(ATTR_METRIC, cfg.metric) != cfg.metric:
        raise ConfigError(
            f"study {cfg.name!r} optimises {attrs[ATTR_METRIC]!r}, not {cfg.metric!r}; "
            "pass a new --study name or set study.metric back"
        )
    return study


def _url(storage: optuna.storages.BaseStorage) -> str:
    return str(getattr(storage, "url", storage))


def _plain(value: Any) -> Any:
    """A JSON-serialisable copy (user attrs are stored as JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose heartbeat is older than the grace period FAIL; return their numbers."""
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with _quiet_optuna_warnings():
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    failed = sorted(before - after)
    stale = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in failed]
    if stale:
        log.warning("study %s: marked stale trial(s) %s FAIL (their worker stopped sending heartbeats)",
                    study.study_name, stale)
    return stale


def state_counts(study: optuna.Study) -> dict[str, int]:
    """``{"COMPLETE": 3, "PRUNED": 2, ...}`` for every state that occurs."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def n_counted(study: optuna.Study) -> int:
    """Trials that count towards ``n_trials``: COMPLETE + PRUNED."""
    return len(study.get_trials(deepcopy=False, states=COUNTED_STATES))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial, or ``None`` when there is none yet."""
    try:
        return study.best_trial
    except ValueError:
        return None


@dataclass(frozen=True)
class StudySummary:
    """One line of ``galaxy10 study list``."""

    name: str
    n_trials: int
    counts: Mapping[str, int]
    best_value: float | None
    metric: str | None
    start: str | None


def list_studies(storage: optuna.storages.BaseStorage) -> list[StudySummary]:
    """Every study in ``storage`` with its trial counts and best value."""
    out = []
    for s in storage.get_all_studies():
        trials = storage.get_all_trials(s._study_id, deepcopy=False)
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        complete = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        best = (max(complete) if s.direction == optuna.study.StudyDirection.MAXIMIZE else min(complete)) \
            if complete else None
        starts = [t.datetime_start for t in trials if t.datetime_start is not None]
        out.append(StudySummary(
            name=s.study_name, n_trials=len(trials), counts=counts, best_value=best,
            metric=s.user_attrs.get(ATTR_METRIC),
            start=min(starts).strftime("%Y-%m-%d %H:%M") if starts else None,
        ))
    return out


def load_existing_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Load study ``name`` for reading; raise ``ConfigError`` listing the known names if absent."""
    names = sorted(s.study_name for s in storage.get_all_studies())
    if name not in names:
        raise ConfigError(
            f"study {name!r} not found in {_url(storage)}; known studies: {', '.join(names) or '(none)'}"
        )
    with _quiet_optuna_warnings():
        return optuna.load_study(study_name=name, storage=storage)
