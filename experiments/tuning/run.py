"""The coordinator behind ``galaxy10 tune``: parent run, workers, stale trials, the best model, plots."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from augment.targeting import multipliers_from_targets
from core.errors import ConfigError
from core.paths import resolve_data_path, sqlite_file
from experiments.names import check_study_name
from experiments.settings.run import RunConfig, plain, to_yaml
from experiments.settings.search_space import space_hash
from experiments.settings.trial import check_against_config, resolve_run_config
from experiments.settings.tune import ATTR_REFERENCE, StudyConfig, TuneConfig
from experiments.tracking.faults import server_errors, unreachable_reason
from experiments.tracking.mlflow_tracker import MlflowTracker, attach_run
from experiments.tracking.model_registry import register_champion
from experiments.tracking.runs import find_runs, finish_run, set_run_tags
from experiments.tracking.workspace import Workspace
from experiments.training import load_training_data
from experiments.tuning.budget import plan_for_study
from experiments.tuning.objective import StaleTrialHandler, StudyRun, TrialWorker
from experiments.tuning.plots import save_plots
from experiments.tuning.refit import refit_best
from experiments.tuning.samplers import describe
from experiments.tuning.storage import enable_sqlite_wal, open_storage
from experiments.tuning.study import (
    ATTR_EXPERIMENT,
    ATTR_PARENT_RUN,
    ATTR_TRACKING_URI,
    ATTR_TRIAL_RUN,
    MLFLOW_STATUS,
    best_trial,
    count_tags,
    fail_stale_trials,
    n_counted,
    open_study,
    state_counts,
    trial_value,
)
from experiments.tuning.workers import route_optuna_logging, run_workers
from pipelines.classes import ClassSet
from pipelines.reader import data_fingerprint, validate_galaxy10

log = logging.getLogger(__name__)

#: Most trials a ``--budget`` plan starts (``study.n_trials`` or ``--trials`` cap it too).
MAX_BUDGET_TRIALS = 50


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
    plan: str | None = None  # what --budget planned


def _parent_run(study: optuna.Study, tune: TuneConfig, ws: Workspace, experiment_name: str) -> Any:
    """The study's MLflow parent run: reopened if its id is in the study's user attrs, else created."""

    run_id = study.user_attrs.get(ATTR_PARENT_RUN)
    parent = attach_run(run_id, ws=ws) if run_id else None
    if parent is not None:
        log.info("continuing study %s: MLflow parent run %s", study.study_name, parent.run_id)
        return parent
    if run_id:
        log.warning("the study's parent run %s is not at %s; starting a new parent run", run_id, ws.tracking_uri)
    parent = MlflowTracker(
        experiment_name,
        f"study-{study.study_name}",
        ws=ws,
        tags={"optuna.study": study.study_name, "optuna.role": "study"},
    ).start()
    parent.log_params(
        {
            "study.name": study.study_name,
            "study.storage": ws.study_storage(),
            "study.metric": tune.study.metric,
            "study.direction": tune.study.direction,
            "study.search_space_hash": space_hash(tune.space),
        }
    )
    parent.log_text(yaml.safe_dump(plain(tune.space.raw), sort_keys=False), "search_space.yaml")
    if tune.source:
        parent.log_text(Path(tune.source).read_text(), f"tune_config/{Path(tune.source).name}")
    study.set_user_attr(ATTR_PARENT_RUN, parent.run_id)
    study.set_user_attr(ATTR_EXPERIMENT, parent.experiment_id)
    study.set_user_attr(ATTR_TRACKING_URI, ws.tracking_uri)
    return parent


#: Most trials one study may be asked to reach, and most worker processes on one machine (each holds
#: TensorFlow and the resized images in memory).
MAX_TRIALS = 100_000
MAX_WORKERS = 64


def check_targets_against(tune: TuneConfig, base_cfg: RunConfig, classes: ClassSet) -> None:
    """Resolve every class the base config and the search space target against the data's own classes,
    so a Galaxy10 slug on an imported catalog fails with one line before any trial (naming its classes)."""

    if isinstance(base_cfg.augment.targets, Mapping):
        multipliers_from_targets(base_cfg.augment.targets, classes)
    for p in tune.space.params:
        for value in p.values if p.kind == "categorical" else ():
            if p.target == "augment.targets" and isinstance(value, Mapping):
                multipliers_from_targets(value, classes)
        if p.target and p.target.startswith("augment.targets."):
            multipliers_from_targets({p.target.split(".", 2)[2]: 1.0}, classes)


def check_study_limits(study_cfg: StudyConfig) -> None:
    """One ``ConfigError`` line for ``--trials``, ``--workers`` or ``--timeout`` out of range, naming the option."""
    if not 1 <= study_cfg.n_trials <= MAX_TRIALS:
        raise ConfigError(
            f"--trials {study_cfg.n_trials} is out of range; use 1-{MAX_TRIALS:,} trials (the study "
            "stops once it has that many COMPLETE or PRUNED trials)"
        )
    if not 1 <= study_cfg.workers <= MAX_WORKERS:
        raise ConfigError(
            f"--workers {study_cfg.workers} is out of range; use 1-{MAX_WORKERS} worker processes "
            "(each loads TensorFlow and the images)"
        )
    if study_cfg.timeout is not None and not (math.isfinite(study_cfg.timeout) and study_cfg.timeout > 0):
        raise ConfigError(
            f"--timeout {study_cfg.timeout:g} must be a positive number of seconds; omit it for no time limit"
        )


def run_study(
    tune: TuneConfig,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    workers: int | None = None,
    ws: Workspace,
    data_path: str | None = None,
    overrides: tuple[str, ...] = (),
    log_level: int = logging.INFO,
    budget: float | None = None,
    pretrained: str | None = None,
) -> StudyReport:
    """Create or continue the study and run trials until it has ``n_trials`` COMPLETE + PRUNED.

    CLI arguments override the YAML's ``study`` section. With ``workers > 1`` that many spawned
    processes share the study; each loads the data once. At the end the best trial's child run is
    tagged, its model registered under the study name with the configured alias, and the
    optimisation plots logged on the parent run. A tracking server that stays unreachable past the
    MLflow client's retries ends the command with one ``ConfigError`` line; re-running continues.
    ``budget`` (seconds): measure this machine's speed and plan folds, trials and the refit to fit it
    (:mod:`experiments.tuning.budget`); the plan replaces ``n_trials``, ``timeout``, ``cv_folds`` and
    ``refit`` and is in the report's ``plan``. ``pretrained``: a self-supervised model the study's first start
    point is also fine-tuned from (``galaxy10 tune --unlabeled``).
    """

    with server_errors(ws.tracking_uri):
        return _run_study(
            tune,
            n_trials=n_trials,
            timeout=timeout,
            workers=workers,
            ws=ws,
            data_path=data_path,
            overrides=overrides,
            log_level=log_level,
            budget=budget,
            pretrained=pretrained,
        )


def _run_study(
    tune: TuneConfig,
    *,
    n_trials: int | None,
    timeout: float | None,
    workers: int | None,
    ws: Workspace,
    data_path: str | None,
    overrides: tuple[str, ...],
    log_level: int,
    budget: float | None = None,
    pretrained: str | None = None,
) -> StudyReport:
    """:func:`run_study` without the translation of tracking-server failures."""

    started = time.perf_counter()
    route_optuna_logging(log_level)
    study_cfg = tune.study
    study_cfg = replace(
        study_cfg,
        n_trials=study_cfg.n_trials if n_trials is None else int(n_trials),
        timeout=study_cfg.timeout if timeout is None else float(timeout),
        workers=study_cfg.workers if workers is None else int(workers),
        storage=ws.study_storage(study_cfg.storage),
    )
    check_study_name(study_cfg.name)
    check_study_limits(study_cfg)
    tune = replace(tune, study=study_cfg)
    check_against_config(tune)
    base_cfg, _ = resolve_run_config(tune, {}, extra_overrides=overrides)
    ws = ws.with_storage(study_cfg.storage)
    # A bad data file fails here, before any storage, study or MLflow run is created.
    data_file = resolve_data_path(data_path if data_path is not None else base_cfg.data.path)
    check_targets_against(tune, base_cfg, ClassSet.from_names(validate_galaxy10(data_file).class_names))
    storage = open_storage(
        study_cfg.storage,
        heartbeat_interval=study_cfg.heartbeat_interval,
        grace_period=study_cfg.grace_period,
        on_stale=StaleTrialHandler(ws, study_cfg.retry_stale),
    )
    study = open_study(tune, storage, data=(data_fingerprint(data_file), Path(data_file).name), pretrained=pretrained)
    stale = fail_stale_trials(study)
    plan = None
    if budget is not None:
        reference_waiting = any(
            t.user_attrs.get(ATTR_REFERENCE) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        )
        plan = plan_for_study(
            tune,
            data_path=data_path,
            budget_s=budget,
            with_reference=reference_waiting,
            max_trials=max(1, min(study_cfg.n_trials - n_counted(study), MAX_BUDGET_TRIALS)),
            overrides=tuple(overrides),
            ws=ws,
        )
        log.info("plan: %s", plan.describe())
        study_cfg = replace(
            study_cfg,
            n_trials=n_counted(study) + plan.n_trials,
            timeout=plan.deadline_s,
            cv_folds=plan.folds,
            refit=plan.refit,
        )
        run_section = dict(tune.run)
        if plan.epochs is not None:  # the tuned trials' epochs, cut to fit (the reference keeps its own)
            run_section["train"] = {**dict(run_section.get("train") or {}), "epochs": plan.epochs}
        tune = replace(tune, study=study_cfg, run=run_section)
    parent = _parent_run(study, tune, ws, base_cfg.experiment_name)
    close_orphan_runs(study, parent.run_id, ws)
    db_file = sqlite_file(ws.tracking_uri)
    if db_file is not None and db_file.is_file():
        enable_sqlite_wal(db_file)  # several workers write child runs at once
    parent.set_tags(
        {
            "study.sampler": describe(study_cfg.sampler),
            "study.pruner": describe(study_cfg.pruner),
            "study.n_trials": study_cfg.n_trials,
            "study.workers": study_cfg.workers,
            "study.timeout": study_cfg.timeout,
            "optuna.study": study.study_name,
        }
    )
    parent.log_text(to_yaml(base_cfg), "base_config.yaml")
    if plan is not None:
        parent.set_tags({"study.budget_s": f"{plan.budget_s:.0f}", "study.plan": plan.describe()[:5000]})
    before = len(study.get_trials(deepcopy=False, states=tuple(s for s in TrialState if s != TrialState.WAITING)))
    log.info(
        "study %s (%s): %d/%d trials COMPLETE+PRUNED; metric val_%s; sampler %s; pruner %s; %d worker(s)",
        study.study_name,
        study_cfg.storage,
        n_counted(study),
        study_cfg.n_trials,
        study_cfg.metric,
        describe(study_cfg.sampler),
        describe(study_cfg.pruner),
        study_cfg.workers,
    )
    run = StudyRun(
        tune=tune,
        ws=ws,
        parent_run_id=parent.run_id,
        n_trials=study_cfg.n_trials,
        deadline=None if study_cfg.timeout is None else time.time() + study_cfg.timeout,
        data_path=data_path,
        overrides=tuple(overrides),
        log_level=log_level,
    )
    problems: list[str] = []
    status = "FAILED"
    try:
        if n_counted(study) < study_cfg.n_trials:
            if study_cfg.workers == 1:
                TrialWorker(run).loop()
            else:
                load_training_data(base_cfg.data, data_path)  # build the split and image cache once, not per worker
                _, problems = run_workers(run, study_cfg.workers)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            end_parent_run(parent, study, status)
    report = _finish(
        study,
        tune,
        parent,
        ws,
        stale=stale,
        trials_before=before,
        problems=problems,
        seconds=time.perf_counter() - started,
    )
    if plan is not None:
        report = replace(report, plan=plan.describe())
    if study_cfg.refit:
        report = replace(
            report,
            refit=refit_best(
                study, tune, ws=ws, parent_run_id=parent.run_id, data_path=data_path, overrides=tuple(overrides)
            ),
        )
    parent.end("FINISHED" if not problems else "FAILED")
    return report


def end_parent_run(parent: Any, study: optuna.Study, status: str) -> None:
    """End the parent run of a command that stopped early; if the tracking server is gone, say so and
    leave it (the next run of the command reopens it), so the error that stopped the command is the one shown."""

    try:
        parent.set_tags(count_tags(study))
        parent.end(status)
    except Exception as err:  # noqa: BLE001 - only connection failures are swallowed, see below
        if unreachable_reason(err) is None:
            raise
        log.warning(
            "could not mark the study's parent run %s %s: the tracking server is unreachable; "
            "re-running the command reopens it",
            parent.run_id,
            status,
        )


def close_orphan_runs(study: optuna.Study, parent_run_id: str, ws: Workspace) -> list[int]:
    """End the child runs left RUNNING by trials that have ended; return their trial numbers.

    A trial's MLflow run is ended before Optuna records the trial's end, so a finished trial with a
    RUNNING run means the run could not be ended (the tracking server was unreachable, or the
    process died in between). The run gets the trial's status (FINISHED, KILLED, FAILED) and a
    ``optuna.closed_late`` tag saying why.
    """

    finished = {t.number: t for t in study.get_trials(deepcopy=False, states=tuple(MLFLOW_STATUS))}
    closed = []
    for run in find_runs({}, ws=ws, parent_run_id=parent_run_id):
        number = run.tags.get("optuna.trial_number", "")
        trial = finished.get(int(number)) if run.status == "RUNNING" and number.isdigit() else None
        if trial is None:
            continue
        own = trial.user_attrs.get(ATTR_TRIAL_RUN) == run.run_id
        finish_run(
            run.run_id,
            MLFLOW_STATUS[trial.state] if own else "FAILED",
            ws=ws,
            tags={
                "optuna.trial_state": trial.state.name,
                "optuna.closed_late": f"trial {trial.number} ended {trial.state.name} but its run "
                "was left RUNNING (tracking server unreachable or process "
                "stopped); closed when the study was continued",
            },
        )
        closed.append(trial.number)
    if closed:
        log.warning(
            "study %s: closed the MLflow runs of ended trial(s) %s that were left RUNNING",
            study.study_name,
            sorted(closed),
        )
    return sorted(closed)


def _finish(
    study: optuna.Study,
    tune: TuneConfig,
    parent: Any,
    ws: Workspace,
    *,
    stale: list[int],
    trials_before: int,
    problems: list[str],
    seconds: float,
) -> StudyReport:
    """Tag the best trial, register its model, log summary metrics and plots on the parent run."""

    cfg = tune.study
    counts = state_counts(study)
    parent.set_tags(count_tags(study))
    best = best_trial(study)
    best_run = best.user_attrs.get(ATTR_TRIAL_RUN) if best is not None else None
    registered = None
    notes = list(problems)
    if best is not None:
        previous = study.user_attrs.get("best_run_id")
        if previous and previous != best_run:
            set_run_tags(previous, {"optuna.best_trial": "false"}, ws=ws)
        if best_run:
            set_run_tags(best_run, {"optuna.best_trial": "true"}, ws=ws)
            study.set_user_attr("best_run_id", best_run)
        parent.set_tags(
            {
                "best.trial_number": best.number,
                "best.run_id": best_run or "",
                **{f"best.{k}": v for k, v in best.params.items()},
            }
        )
        parent.log_metrics(
            {
                f"best_val_{cfg.metric}": float(trial_value(best)),
                "n_complete": counts.get("COMPLETE", 0),
                "n_pruned": counts.get("PRUNED", 0),
                "n_fail": counts.get("FAIL", 0),
            },
            step=len(study.get_trials(deepcopy=False)),
        )
        model_uri = best.user_attrs.get("model_uri")
        if cfg.register_model and model_uri:
            registered = register_champion(
                model_uri,
                study.study_name,
                alias=cfg.model_alias,
                run_id=best_run,
                ws=ws,
                tags={
                    "optuna.study": study.study_name,
                    "optuna.trial_number": best.number,
                    f"val_{cfg.metric}": f"{trial_value(best):.6f}",
                },
            )
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
        study_name=study.study_name,
        storage_url=cfg.storage,
        tracking_uri=ws.tracking_uri,
        parent_run_id=parent.run_id,
        experiment_id=str(parent.experiment_id),
        counts=counts,
        trials_this_run=len(
            study.get_trials(deepcopy=False, states=tuple(s for s in TrialState if s != TrialState.WAITING))
        )
        - trials_before,
        stale_failed=tuple(stale),
        best_number=None if best is None else best.number,
        best_value=None if best is None else float(trial_value(best)),
        best_params={} if best is None else dict(best.params),
        best_run_id=best_run,
        registered=registered,
        plots=tuple(plots),
        notes=tuple(notes),
        seconds=seconds,
    )
