"""Reading and updating runs that already exist: metrics, facts, searches, artifacts, tags, status."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from core.errors import ConfigError, ModelError, first_line
from experiments.settings.run import from_dict
from experiments.tracking.mlflow_tracker import chunks
from experiments.tracking.store import quiet_artifact_downloads
from experiments.tracking.workspace import Workspace


def run_metrics(run_id: str, *, ws: Workspace) -> dict[str, float]:
    """The latest value of every metric of run ``run_id``."""
    uri = ws.tracking_uri
    try:
        run = ws.client.get_run(run_id)
    except MlflowException as err:
        raise ModelError(
            f"MLflow run {run_id!r} not found at {uri} ({first_line(err)}); "
            "pass the id of a finished `galaxy10 train` run"
        ) from None
    return dict(run.data.metrics)


def run_val_recall(run_id: str, class_slugs: Sequence[str], *, ws: Workspace) -> np.ndarray:
    """Per-class validation recall (``val_recall_<slug>``) of an earlier run, in label order."""
    metrics = run_metrics(run_id, ws=ws)
    missing = [s for s in class_slugs if f"val_recall_{s}" not in metrics]
    if missing:
        raise ConfigError(
            f"run {run_id} has no val_recall_ metric for {', '.join(missing)}; use augment.auto_from_run with "
            "a finished `galaxy10 train` run"
        )
    return np.array([metrics[f"val_recall_{s}"] for s in class_slugs], dtype=np.float64)


def finish_run(run_id: str, status: str, *, ws: Workspace, tags: Mapping[str, Any] | None = None) -> None:
    """Set ``tags`` on run ``run_id`` and end it with ``status`` (FINISHED, FAILED, KILLED)."""
    client = ws.client
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, str(value))
    client.set_terminated(run_id, status=status)


def set_run_tags(run_id: str, tags: Mapping[str, Any], *, ws: Workspace) -> None:
    """Set ``tags`` on run ``run_id`` (which may be finished)."""
    client = ws.client
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


@dataclass(frozen=True)
class RunFacts:
    """A finished run as plain data: identity, status, params, tags and latest metric values."""

    run_id: str
    run_name: str
    experiment_id: str
    experiment_name: str
    status: str
    start_time: int | None
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]


def _facts(client: MlflowClient, run: Any) -> RunFacts:
    try:
        experiment_name = client.get_experiment(run.info.experiment_id).name
    except MlflowException:
        experiment_name = ""
    return RunFacts(
        run_id=run.info.run_id,
        run_name=run.info.run_name or "",
        experiment_id=run.info.experiment_id,
        experiment_name=experiment_name,
        status=run.info.status,
        start_time=run.info.start_time,
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
    )


def get_run_facts(run_id: str, *, ws: Workspace) -> RunFacts:
    """:class:`RunFacts` of run ``run_id``; ``ModelError`` naming the store if it is not there."""
    uri, client = ws.tracking_uri, ws.client
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ModelError(
            f"MLflow run {run_id} not found at {uri} ({first_line(err)}); pass the --tracking-uri the study logged to"
        ) from None
    return _facts(client, run)


def find_runs(tags: Mapping[str, str], *, ws: Workspace, parent_run_id: str | None = None) -> list[RunFacts]:
    """Active runs of every experiment whose tags equal ``tags`` (newest first)."""
    uri, client = ws.tracking_uri, ws.client
    wanted = dict(tags)
    if parent_run_id is not None:
        wanted["mlflow.parentRunId"] = parent_run_id
    clauses = [f"tags.`{k}` = '{str(v).replace(chr(39), '')}'" for k, v in wanted.items()]
    try:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
        runs = (
            client.search_runs(
                experiment_ids,
                filter_string=" and ".join(clauses),
                order_by=["attributes.start_time DESC"],
                max_results=1000,
            )
            if experiment_ids
            else []
        )
    except MlflowException as err:
        raise ConfigError(f"cannot search MLflow runs at {uri} ({first_line(err)}); check --tracking-uri") from None
    return [_facts(client, r) for r in runs]


def metric_histories(run_id: str, keys: Sequence[str], *, ws: Workspace) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` sorted by step (last value per step) for the keys the run has."""
    client = ws.client
    out: dict[str, list[tuple[int, float]]] = {}
    for key in keys:
        try:
            history = client.get_metric_history(run_id, key)
        except MlflowException:
            continue
        by_step: dict[int, tuple[int, float]] = {}
        for m in history:
            if m.step not in by_step or m.timestamp >= by_step[m.step][0]:
                by_step[m.step] = (m.timestamp, float(m.value))
        if by_step:
            out[key] = [(step, by_step[step][1]) for step in sorted(by_step)]
    return out


def list_run_artifacts(run_id: str, path: str | None = None, *, ws: Workspace) -> list[str]:
    """Paths of the files (not folders) directly under ``path`` in run ``run_id``'s artifacts."""
    client = ws.client
    try:
        return [f.path for f in client.list_artifacts(run_id, path) if not f.is_dir]
    except (MlflowException, OSError):
        return []


def download_run_artifact(run_id: str, path: str, dst: str | Path, *, ws: Workspace) -> Path:
    """Download artifact ``path`` of run ``run_id`` into folder ``dst``; return the local path."""
    try:
        with quiet_artifact_downloads():
            return Path(ws.client.download_artifacts(run_id, path, str(dst)))
    except (MlflowException, OSError) as err:
        raise ModelError(
            f"cannot download artifact {path} of run {run_id} ({first_line(err)}); "
            "check the run still exists at --tracking-uri"
        ) from None


def logged_run_config(run_id: str, *, ws: Workspace) -> Any:
    """The resolved ``RunConfig`` a training run logged as ``config.yaml``."""

    with tempfile.TemporaryDirectory(prefix="galaxy10-config-") as tmp:
        local = download_run_artifact(run_id, "config.yaml", tmp, ws=ws)
        return from_dict(yaml.safe_load(local.read_text()))


def log_artifacts_to_run(
    run_id: str, local_dir: str | Path, artifact_path: str | None = None, *, ws: Workspace
) -> None:
    """Upload every file under ``local_dir`` to run ``run_id`` (which may be finished)."""
    ws.client.log_artifacts(run_id, str(local_dir), artifact_path)


def log_metrics_to_run(run_id: str, metrics: Mapping[str, float], *, step: int = 0, ws: Workspace) -> None:
    """Log ``metrics`` on run ``run_id`` (which may be finished); non-finite values are skipped."""
    client = ws.client
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if np.isfinite(v)]
    for chunk in chunks(items):
        client.log_batch(run_id, metrics=chunk, synchronous=True)
