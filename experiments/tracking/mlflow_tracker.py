""":class:`MlflowTracker`: one MLflow run through an explicit client and run id.

Never through MLflow's global active-run stack, so several runs (tuning trials, nested runs) can be
open in one process. Models are logged with the ``mlflow.keras`` flavour (MLflow 3 LoggedModels named
``model``), a tensor signature, an input example and metadata holding what prediction needs.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from core.errors import ConfigError, ModelError, first_line
from experiments.tracking.base import META_ARTIFACT, META_KEYS, MODEL_NAME
from experiments.tracking.faults import unreachable_error, unreachable_reason
from experiments.tracking.store import require_default_store
from experiments.tracking.workspace import Workspace

log = logging.getLogger(__name__)


_BATCH = 100  # MLflow's per-request limit on params/tags/metrics


def chunks(items: list, size: int = _BATCH) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _pip_requirements() -> list[str]:
    """Pinned requirements of a logged Keras model (saves MLflow's slow requirement inference)."""
    reqs = []
    for name in ("tensorflow-cpu", "tensorflow", "keras", "numpy", "mlflow"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            reqs.append(f"{name}=={importlib.metadata.version(name)}")
    return reqs


class MlflowTracker:
    """One MLflow run, opened as a context manager.

    Parameters
    ----------
    experiment_name
        Created if missing.
    run_name
        Display name of the run.
    ws
        The workspace whose store and client the run uses.
    parent_run_id
        Makes this a nested (child) run of that run.
    tags
        Extra tags set when the run is created.

    On leaving the block the run ends ``FINISHED``; ``KILLED`` on ``KeyboardInterrupt`` or an
    exception listed in ``killed_on`` (e.g. a pruning exception); ``FAILED`` on any other exception,
    which propagates unchanged.
    """

    def __init__(
        self,
        experiment_name: str,
        run_name: str | None = None,
        *,
        ws: Workspace,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        killed_on: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.ws = ws
        self.parent_run_id = parent_run_id
        self.initial_tags = dict(tags or {})
        self.killed_on = killed_on
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.client = ws.client

    @property
    def tracking_uri(self) -> str:
        return self.ws.tracking_uri

    # --- run life cycle ------------------------------------------------------------------
    def start(self) -> MlflowTracker:
        """Create the run (and the experiment if needed)."""
        try:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment_name)
            tags = {k: str(v) for k, v in self.initial_tags.items()}
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.run_name)
        except MlflowException as err:
            if unreachable_reason(err) is not None:
                raise unreachable_error(self.tracking_uri, unreachable_reason(err)) from None
            raise ConfigError(
                f"cannot start an MLflow run at {self.tracking_uri} ({first_line(err)}); "
                "check --tracking-uri / MLFLOW_TRACKING_URI"
            ) from None
        self.run_id = run.info.run_id
        log.info(
            "MLflow run %s (%s) in experiment %r at %s",
            self.run_id,
            run.info.run_name,
            self.experiment_name,
            self.tracking_uri,
        )
        return self

    def end(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED, KILLED)."""
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> MlflowTracker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt) or (self.killed_on and issubclass(exc_type, self.killed_on)):
            status = "KILLED"
        else:
            status = "FAILED"
        self.end(status)

    def _need_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("MlflowTracker used before start(); use it as a context manager")
        return self.run_id

    # --- logging -------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values as strings), in batches of 100."""
        run_id = self._need_run()
        items = [Param(k, str(v)) for k, v in params.items()]
        for chunk in chunks(items):
            self.client.log_batch(run_id, params=chunk, synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values as strings)."""
        run_id = self._need_run()
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for chunk in chunks(items):
            self.client.log_batch(run_id, tags=chunk, synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics at ``step`` (non-finite values are skipped with a warning)."""
        run_id = self._need_run()
        now = int(time.time() * 1000)
        items = []
        for k, v in metrics.items():
            if not np.isfinite(v):
                log.warning("metric %s=%s is not finite; not logged", k, v)
                continue
            items.append(Metric(k, float(v), now, int(step or 0)))
        for chunk in chunks(items):
            self.client.log_batch(run_id, metrics=chunk, synchronous=True)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` as a run artifact."""
        self.client.log_text(self._need_run(), text, artifact_file)

    def log_dict(self, payload: Mapping[str, Any], artifact_file: str) -> None:
        """Write ``payload`` as a JSON (or YAML by suffix) run artifact."""
        self.client.log_dict(self._need_run(), dict(payload), artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Write a matplotlib figure as a run artifact."""
        self.client.log_figure(self._need_run(), figure, artifact_file)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a local file."""
        self.client.log_artifact(self._need_run(), str(local_path), artifact_path)

    def log_keras_model(self, model: Any, *, meta: Mapping[str, Any], input_example: np.ndarray) -> str:
        """Log ``model`` (``mlflow.keras`` flavour) as ``model`` with signature, example and metadata.

        Returns the model URI (``models:/<model_id>``); ``runs:/<run_id>/model`` also resolves.
        """

        run_id = self._need_run()
        missing = [k for k in META_KEYS if k not in meta]
        if missing:
            raise ModelError(f"model metadata lacks {', '.join(missing)}; prediction would not work")
        example = np.asarray(input_example, dtype=np.float32)
        in_shape = (-1, *model.input_shape[1:])
        out_shape = (-1, *model.output_shape[1:])
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), in_shape, "image")]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), out_shape, "probabilities")]),
        )
        plain_meta = json.loads(json.dumps(dict(meta)))
        require_default_store(self.tracking_uri)  # Model.log writes to MLflow's default store only
        with _experiment_env(self.experiment_id), warnings.catch_warnings(), _quiet_keras_progress():
            # MLflow's serving check calls the model with a list of one input; Keras warns about it.
            warnings.filterwarnings("ignore", message="The structure of `inputs`", category=UserWarning)
            info = Model.log(
                artifact_path=None,
                name=MODEL_NAME,
                flavor=_KerasFlavor,
                model=model,
                run_id=run_id,
                signature=signature,
                input_example=example,
                metadata=plain_meta,
                pip_requirements=_pip_requirements(),
            )
        self.log_dict(plain_meta, META_ARTIFACT)
        log.info("logged model %s (run %s)", info.model_uri, run_id)
        return info.model_uri


@contextlib.contextmanager
def _quiet_keras_progress() -> Iterator[None]:
    """No Keras progress bar on stdout while MLflow checks a logged model by predicting its input example
    (the bar's ANSI codes land in piped output such as ``galaxy10 tune | tee log``)."""
    from keras.utils import disable_interactive_logging, enable_interactive_logging, is_interactive_logging_enabled

    was_on = is_interactive_logging_enabled()
    disable_interactive_logging()
    try:
        yield
    finally:
        if was_on:
            enable_interactive_logging()


@contextlib.contextmanager
def _experiment_env(experiment_id: str | None) -> Iterator[None]:
    """Point MLflow's experiment resolution at ``experiment_id`` for the block.

    ``Model.log`` puts the LoggedModel in the fluent "current" experiment (the Default one when no
    run is active), not the run's; the environment variable is how to say which without starting a
    global active run.
    """
    saved = {k: os.environ.get(k) for k in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
    if experiment_id is not None:
        os.environ["MLFLOW_EXPERIMENT_ID"] = str(experiment_id)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _KerasFlavor:
    """``mlflow.keras`` whose ``save_model`` first creates the model folder.

    MLflow 3.17's ``mlflow.keras.save_model`` writes the input example before it creates the folder,
    so ``mlflow.keras.log_model(..., input_example=...)`` fails with FileNotFoundError.
    """

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        import mlflow.keras

        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def attach_run(run_id: str, *, ws: Workspace) -> MlflowTracker | None:
    """A started :class:`MlflowTracker` bound to the existing run ``run_id``, set RUNNING again.

    Returns None when the run does not exist at this tracking URI (or was deleted).
    """
    client = ws.client
    try:
        run = client.get_run(run_id)
        experiment = client.get_experiment(run.info.experiment_id)
    except MlflowException:
        return None
    if run.info.lifecycle_stage != "active":
        return None
    tracker = MlflowTracker(experiment.name, run.info.run_name, ws=ws)
    tracker.run_id = run_id
    tracker.experiment_id = run.info.experiment_id
    client.update_run(run_id, status="RUNNING")
    return tracker
