"""Optuna tuning studies: storage, samplers, pruners, resumable multi-process workers, MLflow runs.

The only module in the codebase that imports :mod:`optuna`. A study lives in an RDB storage
(SQLite ``sqlite:///optuna.db`` by default) and is continued by re-running the same command until
``n_trials`` trials are COMPLETE or PRUNED. Workers are separate processes (spawned, so TensorFlow
is never forked); each loads the data once and trains one trial after another. Each trial is one
nested MLflow child run under the study's parent run, created explicitly with the parent-run tag,
never through MLflow's global active-run stack.

A worker that dies leaves its trial RUNNING; Optuna's heartbeat marks it FAIL once its heartbeat is
older than the grace period (checked on start-up and before every trial), its MLflow run is marked
FAILED, and its parameters are queued again (``retry_stale`` times). A tracking server that stays
unreachable past the MLflow client's retries fails the running trial and ends the command with one
line; child runs left RUNNING by trials that ended meanwhile are closed when the study is continued.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import multiprocessing
import os
import queue
import signal
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from experiments.config import check_study_name, plain
from experiments.search_space import (
    DEFAULT_STORAGE,
    PrunerConfig,
    SamplerConfig,
    StudyConfig,
    TuneConfig,
    base_run_dict,
    check_against_config,
    resolve_run_config,
    space_hash,
    suggest,
)
from pipelines import errors
from pipelines.classes import ClassSet
from pipelines.errors import ConfigError, Galaxy10Error

log = logging.getLogger(__name__)

#: Study user attributes written by this module.
ATTR_SPACE_HASH = "search_space_hash"
ATTR_METRIC = "metric"
ATTR_DATA = "data_fingerprint"
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
               seed_offset: int = 0, data: tuple[str, str] | None = None) -> optuna.Study:
    """Create the study or load it to continue; refuse one made with another search space, metric or data.

    ``data`` is ``(fingerprint, file name)`` of the Galaxy10 file this process trains on: the first
    process records it on the study, and a later one (another machine, another day) with a different
    file is refused, so trials on different data never mix in one study.

    Raises
    ------
    ConfigError
        If a study of that name exists with a different search-space hash, metric or data
        fingerprint, or (with ``create=False``) does not exist.
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
    check_study_data(study, data)
    if ATTR_SPACE_HASH not in attrs:
        study.set_user_attr(ATTR_SPACE_HASH, wanted)
        study.set_user_attr(ATTR_METRIC, cfg.metric)
        study.set_user_attr("search_space", plain(tune.space.raw))
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


def check_study_data(study: optuna.Study, data: tuple[str, str] | None) -> None:
    """Record ``data`` = ``(fingerprint, file name)`` on a new study; refuse other data for an existing one."""
    if data is None:
        return
    fingerprint, name = data
    recorded = study.user_attrs.get(ATTR_DATA)
    if recorded is None:
        study.set_user_attr(ATTR_DATA, {"fingerprint": fingerprint, "file": name})
        return
    if recorded.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"study {study.study_name!r} was run on {recorded.get('file')} (fingerprint "
            f"{str(recorded.get('fingerprint'))[:12]}) but this process has {name} (fingerprint {fingerprint[:12]}); "
            "use the same data file on every worker, or pass a new --study name"
        )


def _url(storage: optuna.storages.BaseStorage) -> str:
    return str(getattr(storage, "url", storage))


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


# --------------------------------------------------------------------------------------------------
# Running a study: the coordinator (one per command) and the workers (1..K processes)


@dataclass(frozen=True)
class StudyRun:
    """Everything a worker needs to join a study (picklable: workers are spawned processes)."""

    tune: TuneConfig
    storage_url: str
    tracking_uri: str
    parent_run_id: str
    n_trials: int
    deadline: float | None = None
    data_path: str | None = None
    overrides: tuple[str, ...] = ()
    worker: int = 0
    log_level: int = logging.INFO


@dataclass(frozen=True)
class StudyReport:
    """What one ``galaxy10 tune`` command did and where the study stands."""

    study_name: str
    storage_url: str
    tracking_uri: str
    parent_run_id: str
    experiment_id: str
    counts: Mapping[str, int]
    trials_this_run: int
    stale_failed: tuple[int, ...]
    best_number: int | None
    best_value: float | None
    best_params: Mapping[str, Any]
    best_run_id: str | None
    registered: str | None
    plots: tuple[str, ...]
    notes: tuple[str, ...]
    seconds: float
    refit: str | None = None


class StaleTrialHandler:
    """Runs for every trial failed as stale: marks its MLflow run FAILED, queues its params again."""

    def __init__(self, tracking_uri: str, max_retry: int) -> None:
        self.tracking_uri = tracking_uri
        self.max_retry = max_retry
        self.handled: list[int] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from experiments import tracking

        self.handled.append(trial.number)
        run_id = trial.user_attrs.get(ATTR_TRIAL_RUN)
        if run_id:
            tracking.finish_run(run_id, "FAILED", tracking_uri=self.tracking_uri,
                                tags={"optuna.trial_state": "FAIL",
                                      "optuna.fail_reason": "stale heartbeat: the worker process stopped"})
        if self.max_retry > 0:
            with _quiet_optuna_warnings():
                optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)(study, trial)
            log.warning("trial %d: queued its parameters again (retry of a stale trial)", trial.number)


def _storage_for(run: StudyRun) -> optuna.storages.RDBStorage:
    """The study's storage with heartbeats and the stale-trial handler of ``run``."""
    cfg = run.tune.study
    return open_storage(run.storage_url, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period,
                        on_stale=StaleTrialHandler(run.tracking_uri, cfg.retry_stale))


#: Raised by :func:`pruning_callback` to stop a trial (Optuna marks it PRUNED).
TrialPruned = optuna.TrialPruned


def pruning_callback(trial: optuna.Trial, metric: str) -> Callable[[int, Mapping[str, float]], None]:
    """``epoch_callback`` for ``experiments.training.train``: report ``val_<metric>`` each epoch, prune.

    Raises :data:`TrialPruned` (after reporting) when the study's pruner says the trial is hopeless.
    """

    def report(epoch: int, metrics: Mapping[str, float]) -> None:
        value = float(metrics[f"val_{metric}"])
        trial.report(value, epoch)
        if trial.should_prune():
            raise TrialPruned(f"pruned after epoch {epoch}: val_{metric} = {value:.4f}")

    return report


class _Worker:
    """One worker's state: its study handle, the data it loaded once, and the objective."""

    def __init__(self, run: StudyRun, stop: Any = None) -> None:
        self.run = run
        self.stop = stop  # a multiprocessing Event the coordinator sets on Ctrl-C
        self.storage = _storage_for(run)
        self.study = open_study(run.tune, self.storage, create=False, seed_offset=run.worker)
        self.base = base_run_dict(run.tune)
        self._data: Any = None
        self._data_key: Any = None
        self.trials_run = 0

    def data_for(self, cfg: Any) -> Any:
        """The worker's data, loaded once (again only if a trial changes the data settings)."""
        from experiments.training import load_training_data

        key = (replace(cfg.data, crop=0), self.run.data_path)
        if key != self._data_key:
            self._data = load_training_data(cfg.data, self.run.data_path)
            self._data_key = key
        return self._data

    def objective(self, trial: optuna.Trial) -> float:
        """Train the trial's config; report the per-epoch metric for pruning; return the val metric.

        A tracking server that cannot be reached fails the trial with a one-line ``ConfigError``.
        """
        from experiments import tracking

        with tracking.server_errors(self.run.tracking_uri):
            return self._objective(trial)

    def _objective(self, trial: optuna.Trial) -> float:
        import keras

        from experiments import tracking
        from experiments.training import train

        tune, metric = self.run.tune, self.run.tune.study.metric
        start = time.perf_counter()
        params = suggest(trial, tune.space)
        cfg, overrides = resolve_run_config(tune, params, base=self.base, extra_overrides=self.run.overrides)
        data = self.data_for(cfg)
        trial.set_user_attr("overrides", overrides)
        run_name = f"{tune.study.name}-trial-{trial.number:03d}"
        tags = {"optuna.study": tune.study.name, "optuna.trial_number": trial.number,
                "optuna.storage": self.run.storage_url, "optuna.worker": self.run.worker,
                "optuna.overrides": " ".join(overrides)[:5000]}
        tracker = tracking.MlflowTracker(cfg.experiment_name, run_name, tracking_uri=self.run.tracking_uri,
                                         parent_run_id=self.run.parent_run_id, tags=tags,
                                         killed_on=(optuna.TrialPruned,))

        report = pruning_callback(trial, metric)
        state = "FAIL"
        with tracker:
            trial.set_user_attr(ATTR_TRIAL_RUN, tracker.run_id)
            tracker.log_params({f"optuna.{k}": v for k, v in params.items()})
            try:
                result = train(cfg, tracker, data=data, epoch_callback=report, verbose=0, log_model=False,
                               recall_lookup=functools.partial(tracking.run_val_recall,
                                                               tracking_uri=self.run.tracking_uri))
                value = float(result.val_metrics[metric])
                if self._should_log_model(value):
                    result.model_uri = self._log_model(tracker, result, data, cfg.data.crop)
                tracker.set_tags({"optuna.model_logged": "true" if result.model_uri else "false"})
                state = "COMPLETE"
            except optuna.TrialPruned:
                state = "PRUNED"
                raise
            finally:
                seconds = time.perf_counter() - start
                tracker.set_tags({"optuna.trial_state": state})
                tracker.log_metrics({"trial_seconds": seconds})
                keras.backend.clear_session()
                self.trials_run += 1
        for name in ("accuracy", "balanced_accuracy", "macro_f1"):
            trial.set_user_attr(f"val_{name}", float(result.val_metrics[name]))
        trial.set_user_attr("best_epoch", result.best_epoch)
        if result.model_uri:
            trial.set_user_attr("model_uri", result.model_uri)
        return value

    def _should_log_model(self, value: float) -> bool:
        """Log a trial's model when ``log_models`` is ``all``; for ``top_k`` when it ranks among the
        ``keep_models`` best COMPLETE trials so far; for ``improving`` when it beats every one of them.

        The study's best trial always ranked first when it finished, so its model is always there, and
        under ``top_k`` so are the models of every trial that is among the final top k.
        """
        study_cfg = self.run.tune.study
        if study_cfg.log_models == "all":
            return True
        values = sorted((t.value for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                         if t.value is not None), reverse=True)
        if study_cfg.log_models == "top_k":
            return len(values) < study_cfg.keep_models or value > values[study_cfg.keep_models - 1]
        return not values or value > values[0]

    @staticmethod
    def _log_model(tracker: Any, result: Any, data: Any, crop: int) -> str | None:
        from pipelines.inputs import cropped_array

        example = cropped_array(data.images, crop, data.val[:1]).astype(np.float32)
        return tracker.log_keras_model(result.model, meta=result.meta, input_example=example)

    def loop(self) -> int:
        """Run trials until the study has ``n_trials`` COMPLETE + PRUNED or the deadline passes."""
        run = self.run
        waited = False
        while True:
            if run.deadline is not None and time.time() >= run.deadline:
                log.info("worker %d: time is up", run.worker)
                break
            if self.stop is not None and self.stop.is_set():
                log.info("worker %d: stopping, the command was interrupted", run.worker)
                break
            fail_stale_trials(self.study)
            done = n_counted(self.study)
            if done >= run.n_trials:
                break
            running = len(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            waiting = len(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            if done + running >= run.n_trials and waiting == 0:
                if not waited:
                    log.info("worker %d: %d trial(s) still running elsewhere; waiting for them to finish "
                             "(or to go stale after %d s)", run.worker, running, run.tune.study.grace_period)
                    waited = True
                time.sleep(min(5.0, run.tune.study.heartbeat_interval))
                continue
            waited = False
            with _quiet_optuna_warnings():
                self.study.optimize(self.objective, n_trials=1, gc_after_trial=True)
        return self.trials_run


def _configure_worker_logging(run: StudyRun) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    logging.basicConfig(level=run.log_level, force=True,
                        format=f"%(asctime)s %(levelname)-7s [worker {run.worker}] %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "h5py", "absl", "git"):
        logging.getLogger(noisy).setLevel(max(run.log_level, logging.WARNING))
    route_optuna_logging(run.log_level)


class _UserErrorsWithoutTraceback(logging.Filter):
    """Optuna logs a failed trial's exception with its traceback; a user error's one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], Galaxy10Error):
            record.exc_info, record.exc_text = None, None
        return True


def route_optuna_logging(level: int) -> None:
    """Send Optuna's log records through the root logger (our format) at ``level`` or above."""
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(max(level, logging.INFO))
    for handler in logging.getLogger().handlers:  # logger filters do not reach Optuna's child loggers
        if not any(isinstance(f, _UserErrorsWithoutTraceback) for f in handler.filters):
            handler.addFilter(_UserErrorsWithoutTraceback())


def worker_main(run: StudyRun, stop: Any = None) -> int:
    """Entry point of a spawned worker process: join the study and run trials; return how many."""
    from experiments import tracking

    _configure_worker_logging(run)
    with tracking.server_errors(run.tracking_uri):
        return _Worker(run, stop).loop()


def _worker_entry(run: StudyRun, results: Any, stop: Any) -> None:
    """Spawned process body: run :func:`worker_main` and report the outcome on ``results``."""
    try:
        results.put((run.worker, "ok", worker_main(run, stop), ""))
    except KeyboardInterrupt:
        results.put((run.worker, "interrupted", 0, ""))
    except Galaxy10Error as err:
        results.put((run.worker, type(err).__name__, 0, str(err)))
    except BaseException as err:  # noqa: BLE001 - reported to the coordinator, then re-raised
        log.exception("worker %d crashed", run.worker)
        results.put((run.worker, "crash", 0, f"{type(err).__name__}: {_first_line(err)}"))
        raise


def _stop_workers(procs: list[Any], stop: Any) -> None:
    """After Ctrl-C: let the workers fail their trials and exit; interrupt or end those still running.

    A terminal's Ctrl-C reaches every worker already; a SIGINT sent to the coordinator alone does not,
    and one that lands inside library code may be swallowed, so ``stop`` also tells every worker not
    to start another trial.
    """
    stop.set()
    for p in procs:
        p.join(timeout=5)
    for p in procs:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGINT)
    for p in procs:
        p.join(timeout=60)
    for p in procs:
        if p.is_alive():
            log.warning("worker %s did not stop after Ctrl-C; terminating it (its trial fails as stale)", p.pid)
            p.terminate()
            p.join(timeout=10)


def _death(exitcode: int | None) -> str:
    """How a worker that reported nothing ended: ``killed by SIGKILL; ...`` or ``exit code 1``."""
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return (f"killed by {signal.Signals(-exitcode).name}; its trial fails once its heartbeat is stale "
                    "and is retried")
    return f"exit code {exitcode}"


def _run_workers(run: StudyRun, workers: int) -> tuple[int, list[str]]:
    """Run ``workers`` spawned processes on the study; return (trials run, problems)."""
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold TensorFlow threads
    results = ctx.Queue()
    stop = ctx.Event()
    procs = [ctx.Process(target=_worker_entry, args=(replace(run, worker=i), results, stop),
                         name=f"galaxy10-worker-{i}") for i in range(workers)]
    for p in procs:
        p.start()
    log.info("started %d worker processes: %s", workers, ", ".join(str(p.pid) for p in procs))
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        _stop_workers(procs, stop)
        raise
    outcomes: dict[int, tuple[str, int, str]] = {}
    while True:
        try:
            worker, kind, n, message = results.get(timeout=0.5)
        except queue.Empty:
            break
        outcomes[worker] = (kind, n, message)
    total, problems = 0, []
    for i, p in enumerate(procs):
        kind, n, message = outcomes.get(i, ("died", 0, _death(p.exitcode)))
        total += n
        if kind == "ok":
            continue
        if hasattr(errors, kind) and isinstance(getattr(errors, kind), type):
            raise getattr(errors, kind)(message)  # a user error: one line, same class
        if kind == "interrupted":
            raise KeyboardInterrupt
        problems.append(f"worker {i} {kind} ({message})")
    return total, problems


def _parent_run(study: optuna.Study, tune: TuneConfig, tracking_uri: str, experiment_name: str,
                storage_url: str) -> Any:
    """The study's MLflow parent run: reopened if its id is in the study's user attrs, else created."""
    from experiments import tracking

    run_id = study.user_attrs.get(ATTR_PARENT_RUN)
    parent = tracking.attach_run(run_id, tracking_uri=tracking_uri) if run_id else None
    if parent is not None:
        log.info("continuing study %s: MLflow parent run %s", study.study_name, parent.run_id)
        return parent
    if run_id:
        log.warning("the study's parent run %s is not at %s; starting a new parent run", run_id, tracking_uri)
    parent = tracking.MlflowTracker(experiment_name, f"study-{study.study_name}", tracking_uri=tracking_uri,
                                    tags={"optuna.study": study.study_name, "optuna.role": "study"}).start()
    parent.log_params({"study.name": study.study_name, "study.storage": storage_url,
                       "study.metric": tune.study.metric, "study.direction": tune.study.direction,
                       "study.search_space_hash": space_hash(tune.space)})
    parent.log_text(yaml.safe_dump(plain(tune.space.raw), sort_keys=False), "search_space.yaml")
    if tune.source:
        parent.log_text(Path(tune.source).read_text(), f"tune_config/{Path(tune.source).name}")
    study.set_user_attr(ATTR_PARENT_RUN, parent.run_id)
    study.set_user_attr(ATTR_EXPERIMENT, parent.experiment_id)
    study.set_user_attr(ATTR_TRACKING_URI, tracking_uri)
    return parent


#: Most trials one study may be asked to reach, and most worker processes on one machine (each holds
#: TensorFlow and the resized images in memory).
MAX_TRIALS = 100_000
MAX_WORKERS = 64


def check_targets_against(tune: TuneConfig, base_cfg: Any, classes: ClassSet) -> None:
    """Resolve every class the base config and the search space target against the data's own classes,
    so a Galaxy10 slug on an imported catalog fails with one line before any trial (naming its classes)."""
    from augment.targeting import multipliers_from_targets

    if isinstance(base_cfg.augment.targets, Mapping):
        multipliers_from_targets(base_cfg.augment.targets, classes)
    for p in tune.space.params:
        for value in (p.values if p.kind == "categorical" else ()):
            if p.target == "augment.targets" and isinstance(value, Mapping):
                multipliers_from_targets(value, classes)
        if p.target and p.target.startswith("augment.targets."):
            multipliers_from_targets({p.target.split(".", 2)[2]: 1.0}, classes)


def check_study_limits(study_cfg: StudyConfig) -> None:
    """One ``ConfigError`` line for ``--trials``, ``--workers`` or ``--timeout`` out of range, naming the option."""
    if not 1 <= study_cfg.n_trials <= MAX_TRIALS:
        raise ConfigError(f"--trials {study_cfg.n_trials} is out of range; use 1-{MAX_TRIALS:,} trials (the study "
                          "stops once it has that many COMPLETE or PRUNED trials)")
    if not 1 <= study_cfg.workers <= MAX_WORKERS:
        raise ConfigError(f"--workers {study_cfg.workers} is out of range; use 1-{MAX_WORKERS} worker processes "
                          "(each loads TensorFlow and the images)")
    if study_cfg.timeout is not None and not (math.isfinite(study_cfg.timeout) and study_cfg.timeout > 0):
        raise ConfigError(f"--timeout {study_cfg.timeout:g} must be a positive number of seconds; omit it for no "
                          "time limit")


def run_study(tune: TuneConfig, *, n_trials: int | None = None, timeout: float | None = None,
              workers: int | None = None, storage_url: str | None = None, tracking_uri: str | None = None,
              data_path: str | None = None, overrides: tuple[str, ...] = (),
              log_level: int = logging.INFO) -> StudyReport:
    """Create or continue the study and run trials until it has ``n_trials`` COMPLETE + PRUNED.

    CLI arguments override the YAML's ``study`` section. With ``workers > 1`` that many spawned
    processes share the study; each loads the data once. At the end the best trial's child run is
    tagged, its model registered under the study name with the configured alias, and the
    optimisation plots logged on the parent run. A tracking server that stays unreachable past the
    MLflow client's retries ends the command with one ``ConfigError`` line; re-running continues.
    """
    from experiments import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    with tracking.server_errors(uri):
        return _run_study(tune, n_trials=n_trials, timeout=timeout, workers=workers, storage_url=storage_url,
                          tracking_uri=uri, data_path=data_path, overrides=overrides, log_level=log_level)


def _run_study(tune: TuneConfig, *, n_trials: int | None, timeout: float | None, workers: int | None,
               storage_url: str | None, tracking_uri: str, data_path: str | None, overrides: tuple[str, ...],
               log_level: int) -> StudyReport:
    """:func:`run_study` without the translation of tracking-server failures."""
    from experiments import tracking
    from experiments.config import to_yaml
    from pipelines.paths import resolve_data_path
    from pipelines.reader import data_fingerprint, validate_galaxy10

    started = time.perf_counter()
    route_optuna_logging(log_level)
    study_cfg = tune.study
    study_cfg = replace(
        study_cfg,
        n_trials=study_cfg.n_trials if n_trials is None else int(n_trials),
        timeout=study_cfg.timeout if timeout is None else float(timeout),
        workers=study_cfg.workers if workers is None else int(workers),
        storage=study_cfg.storage if storage_url is None else storage_url,
    )
    check_study_name(study_cfg.name)
    check_study_limits(study_cfg)
    tune = replace(tune, study=study_cfg)
    check_against_config(tune)
    base_cfg, _ = resolve_run_config(tune, {}, extra_overrides=overrides)
    tracking_uri = tracking.resolve_tracking_uri(tracking_uri)
    # A bad data file fails here, before any storage, study or MLflow run is created.
    data_file = resolve_data_path(data_path if data_path is not None else base_cfg.data.path)
    check_targets_against(tune, base_cfg, ClassSet.from_names(validate_galaxy10(data_file).class_names))
    storage = open_storage(study_cfg.storage, heartbeat_interval=study_cfg.heartbeat_interval,
                           grace_period=study_cfg.grace_period,
                           on_stale=StaleTrialHandler(tracking_uri, study_cfg.retry_stale))
    study = open_study(tune, storage, data=(data_fingerprint(data_file), Path(data_file).name))
    stale = fail_stale_trials(study)
    parent = _parent_run(study, tune, tracking_uri, base_cfg.experiment_name, study_cfg.storage)
    close_orphan_runs(study, parent.run_id, tracking_uri)
    db_file = sqlite_file(tracking_uri)
    if db_file is not None and db_file.is_file():
        enable_sqlite_wal(db_file)  # several workers write child runs at once
    parent.set_tags({"study.sampler": describe(study_cfg.sampler), "study.pruner": describe(study_cfg.pruner),
                     "study.n_trials": study_cfg.n_trials, "study.workers": study_cfg.workers,
                     "study.timeout": study_cfg.timeout, "optuna.study": study.study_name})
    parent.log_text(to_yaml(base_cfg), "base_config.yaml")
    before = len(study.get_trials(deepcopy=False))
    log.info("study %s (%s): %d/%d trials COMPLETE+PRUNED; metric val_%s; sampler %s; pruner %s; %d worker(s)",
             study.study_name, study_cfg.storage, n_counted(study), study_cfg.n_trials, study_cfg.metric,
             describe(study_cfg.sampler), describe(study_cfg.pruner), study_cfg.workers)
    run = StudyRun(tune=tune, storage_url=study_cfg.storage, tracking_uri=tracking_uri,
                   parent_run_id=parent.run_id, n_trials=study_cfg.n_trials,
                   deadline=None if study_cfg.timeout is None else time.time() + study_cfg.timeout,
                   data_path=data_path, overrides=tuple(overrides), log_level=log_level)
    problems: list[str] = []
    status = "FAILED"
    try:
        if n_counted(study) < study_cfg.n_trials:
            if study_cfg.workers == 1:
                _Worker(run).loop()
            else:
                from experiments.training import load_training_data

                load_training_data(base_cfg.data, data_path)  # build the split and image cache once, not per worker
                _, problems = _run_workers(run, study_cfg.workers)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            _end_parent(parent, study, status)
    report = _finish(study, tune, parent, tracking_uri, stale=stale, trials_before=before, problems=problems,
                     seconds=time.perf_counter() - started)
    if study_cfg.refit:
        report = replace(report, refit=refit_best(study, tune, tracking_uri=tracking_uri,
                                                  parent_run_id=parent.run_id, data_path=data_path,
                                                  overrides=tuple(overrides)))
    parent.end("FINISHED" if not problems else "FAILED")
    return report


#: Study user attributes of the refit model.
ATTR_REFIT_TRIAL, ATTR_REFIT_RUN, ATTR_REFIT_MODEL = "refit_of_trial", "refit_run_id", "refit_model_uri"
REFIT_ALIAS = "refit"


def refit_best(study: optuna.Study, tune: TuneConfig, *, tracking_uri: str, parent_run_id: str,
               data_path: str | None, overrides: tuple[str, ...] = ()) -> str | None:
    """Train the best trial's configuration on train + validation for its best epoch count; return the
    registered model (``models:/<study>@refit``), or None when there is nothing (new) to refit.

    Like scikit-learn's ``refit=True``: selection used the validation split, the final model uses it
    too. The run is a child of the study's parent run (tag ``optuna.role=refit``); its ``val_*``
    metrics are on images it trained on, so they are tagged ``refit.val_seen=true`` and mean nothing.
    The test split stays untouched (the report scores it). A study whose best trial was already
    refit is not refit again.
    """
    from experiments import tracking
    from experiments.training import load_training_data, train

    best = best_trial(study)
    if best is None or "best_epoch" not in best.user_attrs:
        return None
    if study.user_attrs.get(ATTR_REFIT_TRIAL) == best.number and study.user_attrs.get(ATTR_REFIT_MODEL):
        return study.user_attrs.get("refit_registered")
    cfg, _ = resolve_run_config(tune, dict(best.params), extra_overrides=overrides)
    epochs = int(best.user_attrs["best_epoch"])
    cfg = replace(cfg, train=replace(cfg.train, epochs=epochs, patience=None),
                  run_name=f"{study.study_name}-refit-trial-{best.number:03d}")
    data = load_training_data(cfg.data, data_path, targets=cfg.augment.targets)
    merged = replace(data, train=np.union1d(data.train, data.val))
    log.info("refit: trial %d's configuration on train + validation (%d images) for %d epochs", best.number,
             len(merged.train), epochs)
    tags = {"optuna.study": study.study_name, "optuna.role": "refit", "refit.of_trial": best.number,
            "refit.epochs": epochs, "refit.val_seen": "true"}
    with tracking.MlflowTracker(cfg.experiment_name, cfg.run_name, tracking_uri=tracking_uri,
                                parent_run_id=parent_run_id, tags=tags) as tracker:
        result = train(cfg, tracker, data=merged, verbose=0, restore_best=False,
                       recall_lookup=functools.partial(tracking.run_val_recall, tracking_uri=tracking_uri))
    registered = tracking.register_champion(result.model_uri, study.study_name, alias=REFIT_ALIAS,
                                            run_id=result.run_id, tracking_uri=tracking_uri,
                                            tags={"optuna.study": study.study_name, "refit.of_trial": best.number})
    study.set_user_attr(ATTR_REFIT_TRIAL, best.number)
    study.set_user_attr(ATTR_REFIT_RUN, result.run_id)
    study.set_user_attr(ATTR_REFIT_MODEL, result.model_uri)
    study.set_user_attr("refit_registered", registered)
    return registered


def _end_parent(parent: Any, study: optuna.Study, status: str) -> None:
    """End the parent run of a command that stopped early; if the tracking server is gone, say so and
    leave it (the next run of the command reopens it), so the error that stopped the command is the one shown."""
    from experiments import tracking

    try:
        parent.set_tags(_count_tags(study))
        parent.end(status)
    except Exception as err:  # noqa: BLE001 - only connection failures are swallowed, see below
        if tracking.unreachable_reason(err) is None:
            raise
        log.warning("could not mark the study's parent run %s %s: the tracking server is unreachable; "
                    "re-running the command reopens it", parent.run_id, status)


def close_orphan_runs(study: optuna.Study, parent_run_id: str, tracking_uri: str) -> list[int]:
    """End the child runs left RUNNING by trials that have ended; return their trial numbers.

    A trial's MLflow run is ended before Optuna records the trial's end, so a finished trial with a
    RUNNING run means the run could not be ended (the tracking server was unreachable, or the
    process died in between). The run gets the trial's status (FINISHED, KILLED, FAILED) and a
    ``optuna.closed_late`` tag saying why.
    """
    from experiments import tracking

    finished = {t.number: t for t in study.get_trials(deepcopy=False, states=tuple(MLFLOW_STATUS))}
    closed = []
    for run in tracking.find_runs({}, tracking_uri=tracking_uri, parent_run_id=parent_run_id):
        number = run.tags.get("optuna.trial_number", "")
        trial = finished.get(int(number)) if run.status == "RUNNING" and number.isdigit() else None
        if trial is None:
            continue
        own = trial.user_attrs.get(ATTR_TRIAL_RUN) == run.run_id
        tracking.finish_run(run.run_id, MLFLOW_STATUS[trial.state] if own else "FAILED", tracking_uri=tracking_uri,
                            tags={"optuna.trial_state": trial.state.name,
                                  "optuna.closed_late": f"trial {trial.number} ended {trial.state.name} but its run "
                                                        "was left RUNNING (tracking server unreachable or process "
                                                        "stopped); closed when the study was continued"})
        closed.append(trial.number)
    if closed:
        log.warning("study %s: closed the MLflow runs of ended trial(s) %s that were left RUNNING",
                    study.study_name, sorted(closed))
    return sorted(closed)


def _count_tags(study: optuna.Study) -> dict[str, int]:
    return {f"study.n_{k.lower()}": v for k, v in state_counts(study).items()}


def _finish(study: optuna.Study, tune: TuneConfig, parent: Any, tracking_uri: str, *, stale: list[int],
            trials_before: int, problems: list[str], seconds: float) -> StudyReport:
    """Tag the best trial, register its model, log summary metrics and plots on the parent run."""
    from experiments import tracking

    cfg = tune.study
    counts = state_counts(study)
    parent.set_tags(_count_tags(study))
    best = best_trial(study)
    best_run = best.user_attrs.get(ATTR_TRIAL_RUN) if best is not None else None
    registered = None
    notes = list(problems)
    if best is not None:
        previous = study.user_attrs.get("best_run_id")
        if previous and previous != best_run:
            tracking.set_run_tags(previous, {"optuna.best_trial": "false"}, tracking_uri=tracking_uri)
        if best_run:
            tracking.set_run_tags(best_run, {"optuna.best_trial": "true"}, tracking_uri=tracking_uri)
            study.set_user_attr("best_run_id", best_run)
        parent.set_tags({"best.trial_number": best.number, "best.run_id": best_run or "",
                         **{f"best.{k}": v for k, v in best.params.items()}})
        parent.log_metrics({f"best_val_{cfg.metric}": float(best.value), "n_complete": counts.get("COMPLETE", 0),
                            "n_pruned": counts.get("PRUNED", 0), "n_fail": counts.get("FAIL", 0)},
                           step=len(study.get_trials(deepcopy=False)))
        model_uri = best.user_attrs.get("model_uri")
        if cfg.register_model and model_uri:
            registered = tracking.register_champion(
                model_uri, study.study_name, alias=cfg.model_alias, run_id=best_run, tracking_uri=tracking_uri,
                tags={"optuna.study": study.study_name, "optuna.trial_number": best.number,
                      f"val_{cfg.metric}": f"{best.value:.6f}"})
            parent.set_tags({"best.registered_model": registered})
        elif cfg.register_model:
            notes.append(f"best trial {best.number} has no logged model; nothing registered")
    plots, plot_notes = save_plots(study, parent, cfg.metric)
    notes.extend(plot_notes)
    if notes:
        parent.log_text("\n".join(notes) + "\n", "notes.txt")
    for note in notes:
        log.warning("%s", note)
    return StudyReport(
        study_name=study.study_name, storage_url=cfg.storage, tracking_uri=tracking_uri,
        parent_run_id=parent.run_id, experiment_id=str(parent.experiment_id), counts=counts,
        trials_this_run=len(study.get_trials(deepcopy=False)) - trials_before, stale_failed=tuple(stale),
        best_number=None if best is None else best.number, best_value=None if best is None else float(best.value),
        best_params={} if best is None else dict(best.params), best_run_id=best_run, registered=registered,
        plots=tuple(plots), notes=tuple(notes), seconds=seconds,
    )


def save_plots(study: optuna.Study, parent: Any, metric: str) -> tuple[list[str], list[str]]:
    """Log optimisation history, parameter importances and parallel coordinates PNGs on the parent run.

    Returns (artifact names logged, notes on plots that could not be made and why).
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: the CLI never opens a window
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    target_name = f"val {metric}"
    logged, notes = [], []
    if not complete:
        return [], ["no COMPLETE trial yet: no optimisation plots"]

    def importances() -> Any:
        if len(complete) < 2:
            raise ValueError(f"parameter importances need >= 2 COMPLETE trials, the study has {len(complete)}")
        shared = set.intersection(*(set(t.params) for t in complete))
        varying = sorted(n for n in shared if len({repr(t.params[n]) for t in complete}) > 1)
        if not varying:
            raise ValueError("parameter importances need a parameter that varies across the COMPLETE trials "
                             "(and is set in all of them); none does yet")
        return ovm.plot_param_importances(study, params=varying, target_name=target_name)

    makers: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: ovm.plot_optimization_history(study, target_name=target_name),
        "param_importances": importances,
        "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study, target_name=target_name),
    }
    for name, make in makers.items():
        try:
            with _quiet_optuna_warnings(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                ax = make()
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as err:
            notes.append(f"plot {name} skipped: {_first_line(err)}")
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
        fig.tight_layout()
        parent.log_figure(fig, f"plots/{name}.png")
        plt.close(fig)
        logged.append(f"plots/{name}.png")
    return logged, notes
