"""One worker's side of a study: the data loaded once, the objective, pruning, stale trials."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from sklearn.model_selection import StratifiedKFold

from experiments.settings.run import RunConfig
from experiments.settings.search_space import suggest
from experiments.settings.trial import base_run_dict, trial_run_config
from experiments.settings.tune import ATTR_REFERENCE, TuneConfig
from experiments.tracking.base import NullTracker
from experiments.tracking.faults import server_errors
from experiments.tracking.lookups import training_lookups
from experiments.tracking.mlflow_tracker import MlflowTracker
from experiments.tracking.runs import finish_run
from experiments.tracking.workspace import Workspace
from experiments.training import TrainOptions, inference_images_per_second, load_training_data, prepare_run, train
from experiments.tuning.pruning import step_of
from experiments.tuning.storage import open_storage, quiet_optuna_warnings
from experiments.tuning.study import ATTR_SPEED, ATTR_TRIAL_RUN, fail_stale_trials, n_counted, open_study, trial_value
from pipelines.dataset import TrainData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyRun:
    """Everything a worker needs to join a study (picklable: workers are spawned processes)."""

    tune: TuneConfig
    ws: Workspace  # the study's storage settled (``Workspace.with_storage``)
    parent_run_id: str
    n_trials: int
    deadline: float | None = None
    data_path: str | None = None
    overrides: tuple[str, ...] = ()
    worker: int = 0
    log_level: int = logging.INFO


class StaleTrialHandler:
    """Runs for every trial failed as stale: marks its MLflow run FAILED, queues its params again."""

    def __init__(self, ws: Workspace, max_retry: int) -> None:
        self.ws = ws
        self.max_retry = max_retry
        self.handled: list[int] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.handled.append(trial.number)
        run_id = trial.user_attrs.get(ATTR_TRIAL_RUN)
        if run_id:
            finish_run(
                run_id,
                "FAILED",
                ws=self.ws,
                tags={
                    "optuna.trial_state": "FAIL",
                    "optuna.fail_reason": "stale heartbeat: the worker process stopped",
                },
            )
        if self.max_retry > 0:
            with quiet_optuna_warnings():
                optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)(study, trial)
            log.warning("trial %d: queued its parameters again (retry of a stale trial)", trial.number)


def storage_for(run: StudyRun) -> optuna.storages.RDBStorage:
    """The study's storage with heartbeats and the stale-trial handler of ``run``."""
    cfg = run.tune.study
    return open_storage(
        run.ws.study_storage(),
        heartbeat_interval=cfg.heartbeat_interval,
        grace_period=cfg.grace_period,
        on_stale=StaleTrialHandler(run.ws, cfg.retry_stale),
    )


#: Raised by :func:`pruning_callback` to stop a trial (Optuna marks it PRUNED).
TrialPruned = optuna.TrialPruned


def cross_validate(
    cfg: RunConfig,
    data: TrainData,
    folds: int,
    trial: optuna.Trial,
    metric: str,
    tracker: Any,
    *,
    prune: bool = True,
    **train_kwargs: Any,
) -> list[float]:
    """``val_<metric>`` of ``folds`` stratified folds of the train split, each trained on the others.

    Pruning sees the running mean: after epoch ``e`` of fold ``k`` it gets the mean of the finished folds
    and the current epoch's value at step ``pruning.step_of(k, e)`` (equal for every trial at that fold
    and epoch, whatever its epoch budget). Logged on the trial's run: ``cv_fold_<metric>``
    and ``cv_fold_best_epoch`` per fold (step = fold), ``cv_<metric>_mean``, ``cv_<metric>_std`` and
    ``cv_<metric>_se``; the folds' best epochs are the trial's user attribute ``cv_best_epochs``.
    """
    import keras

    labels = data.labels[data.train]
    present = np.bincount(labels)
    smallest = int(present[present > 0].min()) if present.any() else 0
    if smallest < folds:
        log.warning(
            "study.cv_folds=%d but a class has only %d training image(s): its folds are unstratified", folds, smallest
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.train.seed)
    scores: list[float] = []
    accuracies: list[float] = []
    best_epochs: list[int] = []
    trial.set_user_attr("cv_folds", folds)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        parts = list(splitter.split(np.zeros(len(labels)), labels))
    for k, (inner, held) in enumerate(parts):
        fold_data = replace(data, train=data.train[inner], val=data.train[held])

        def report(epoch: int, metrics: Mapping[str, float], k: int = k) -> None:
            running = (sum(scores) + float(metrics[f"val_{metric}"])) / (k + 1)
            trial.report(running, step_of(k, epoch))
            if trial.should_prune():
                raise TrialPruned(
                    f"pruned in fold {k + 1}/{folds}, epoch {epoch}: running mean val_{metric} = {running:.4f}"
                )

        result = train(
            prepare_run(cfg, fold_data, **train_kwargs),
            NullTracker(),
            TrainOptions(epoch_callback=report if prune else None, verbose=0, log_model=False),
        )
        scores.append(float(result.val_metrics[metric]))
        accuracies.append(float(result.val_metrics["accuracy"]) * len(held))
        best_epochs.append(int(result.best_epoch))
        tracker.log_metrics({f"cv_fold_{metric}": scores[-1], "cv_fold_best_epoch": best_epochs[-1]}, step=k + 1)
        log.info("trial %d fold %d/%d: val_%s %.4f", trial.number, k + 1, folds, metric, scores[-1])
        keras.backend.clear_session()
    std = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
    tracker.log_metrics(
        {
            f"cv_{metric}_mean": float(np.mean(scores)),
            f"cv_{metric}_std": std,
            f"cv_{metric}_se": std / np.sqrt(len(scores)),
        }
    )
    tracker.set_tags({"optuna.cv_folds": folds})
    trial.set_user_attr("cv_best_epochs", best_epochs)  # what the refit trains for (their mean)
    trial.set_user_attr("cv_accuracy", sum(accuracies) / len(labels))  # every train image scored once
    return scores


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


#: Seconds a worker waits for the trial claim; another worker holds it for milliseconds unless it died.
CLAIM_TIMEOUT_S = 30


class TrialWorker:
    """One worker's state: its study handle, the data it loaded once, and the objective."""

    def __init__(self, run: StudyRun, stop: Any = None, claim: Any = None) -> None:
        self.run = run
        self.stop = stop  # a multiprocessing Event the coordinator sets on Ctrl-C
        # Held from the budget check until the trial exists (released as the objective starts), so two
        # workers of one command never both take the study's last trial (a multiprocessing Lock).
        self.claim = claim if claim is not None else threading.Lock()
        self._claimed = False
        self.storage = storage_for(run)
        self.study = open_study(run.tune, self.storage, create=False, seed_offset=run.worker)
        self.base = base_run_dict(run.tune)
        self._data: Any = None
        self._data_key: Any = None
        self.trials_run = 0

    def data_for(self, cfg: RunConfig) -> TrainData:
        """The worker's data, loaded once (again only if a trial changes the data settings)."""

        key = (replace(cfg.data, crop=0), self.run.data_path)
        if key != self._data_key:
            self._data = load_training_data(cfg.data, self.run.data_path)
            self._data_key = key
        return self._data

    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        """Train the trial's config; report the per-epoch metric for pruning; return the val metric.

        A tracking server that cannot be reached fails the trial with a one-line ``ConfigError``.
        """

        with server_errors(self.run.ws.tracking_uri):
            return self._objective(trial)

    def _release_claim(self) -> None:
        if self._claimed:
            self._claimed = False
            self.claim.release()

    def _objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        import keras

        self._release_claim()  # the trial is RUNNING now: the other workers count it

        tune, metric = self.run.tune, self.run.tune.study.metric
        start = time.perf_counter()
        reference = bool(trial.user_attrs.get(ATTR_REFERENCE))  # trial 0: reference.yaml as shipped
        params = {} if reference else suggest(trial, tune.space)
        cfg, overrides = trial_run_config(tune, trial, base=self.base, extra_overrides=self.run.overrides)
        data = self.data_for(cfg)
        trial.set_user_attr("overrides", overrides)
        run_name = f"{tune.study.name}-trial-{trial.number:03d}" + ("-reference" if reference else "")
        tags = {
            "optuna.study": tune.study.name,
            "optuna.trial_number": trial.number,
            "optuna.storage": self.run.ws.study_storage(),
            "optuna.worker": self.run.worker,
            "optuna.overrides": " ".join(overrides)[:5000],
            "optuna.reference": str(reference).lower(),
        }
        tracker = MlflowTracker(
            cfg.experiment_name,
            run_name,
            ws=self.run.ws,
            parent_run_id=self.run.parent_run_id,
            tags=tags,
            killed_on=(optuna.TrialPruned,),
        )

        multi = tune.study.speed_objective  # Optuna cannot prune multi-objective trials
        report = None if multi else pruning_callback(trial, metric)
        state = "FAIL"
        with tracker:
            trial.set_user_attr(ATTR_TRIAL_RUN, tracker.run_id)
            tracker.log_params({f"optuna.{k}": v for k, v in params.items()})
            lookups = training_lookups(self.run.ws)
            folds = tune.study.folds_for(len(data.val))
            try:
                if folds:
                    cv = cross_validate(cfg, data, folds, trial, metric, tracker, prune=not multi, **lookups)
                    trial.set_user_attr("cv_scores", [round(v, 6) for v in cv])
                    report = None  # the whole-train fit below only gives the model; pruning saw the folds
                result = train(
                    prepare_run(cfg, data, **lookups),
                    tracker,
                    TrainOptions(epoch_callback=report, verbose=0, log_model=False),
                )
                value = float(np.mean(cv)) if folds else float(result.val_metrics[metric])
                speed = inference_images_per_second(result.model, data, crop=cfg.data.crop, tta=cfg.augment.tta)
                tracker.log_metrics({"inference_images_per_second": speed})
                if reference or self._should_log_model(value):  # the reference: an ensemble candidate
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
        trial.set_user_attr("scored_images", len(data.train) if folds else len(data.val))  # behind the value
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr(ATTR_SPEED, round(speed, 3))  # the Pareto front of metric and speed (report)
        if result.model_uri:
            trial.set_user_attr("model_uri", result.model_uri)
        return (value, speed) if multi else value

    def _should_log_model(self, value: float) -> bool:
        """Log a trial's model when ``log_models`` is ``all``; for ``top_k`` when it ranks among the
        ``keep_models`` best COMPLETE trials so far; for ``improving`` when it beats every one of them.

        The study's best trial always ranked first when it finished, so its model is always there, and
        under ``top_k`` so are the models of every trial that is among the final top k.
        """
        study_cfg = self.run.tune.study
        if study_cfg.log_models == "all":
            return True
        values = sorted(
            (
                v
                for v in (trial_value(t) for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
                if v is not None
            ),
            reverse=True,
        )
        if study_cfg.log_models == "top_k":
            return len(values) < study_cfg.keep_models or value > values[study_cfg.keep_models - 1]
        return not values or value > values[0]

    @staticmethod
    def _log_model(tracker: Any, result: Any, data: TrainData, crop: int) -> str | None:
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
            self._claimed = self.claim.acquire(timeout=CLAIM_TIMEOUT_S)
            if not self._claimed:  # its holder died between the check and its trial (a SIGKILL)
                log.warning(
                    "worker %d: another worker held the trial claim for %d s; checking the budget without it",
                    run.worker,
                    CLAIM_TIMEOUT_S,
                )
            try:
                fail_stale_trials(self.study)
                done = n_counted(self.study)
                if done >= run.n_trials:
                    break
                running = len(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
                waiting = len(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
                if done + running >= run.n_trials and waiting == 0:
                    self._release_claim()
                    if not waited:
                        log.info(
                            "worker %d: %d trial(s) still running elsewhere; waiting for them to finish "
                            "(or to go stale after %d s)",
                            run.worker,
                            running,
                            run.tune.study.grace_period,
                        )
                        waited = True
                    time.sleep(min(5.0, run.tune.study.heartbeat_interval))
                    continue
                waited = False
                with quiet_optuna_warnings():
                    self.study.optimize(self.objective, n_trials=1, gc_after_trial=True)
            finally:
                self._release_claim()
        return self.trials_run
