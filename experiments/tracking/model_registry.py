"""The MLflow Model Registry: champions by alias."""
from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from core.errors import ModelError, first_line
from experiments.tracking.store import (
    fluent_store,
    get_tracking_uri,
    mlflow_client,
    resolve_tracking_uri,
)

log = logging.getLogger(__name__)


def default_champion_uri(alias: str = "champion", *, tracking_uri: str | None = None) -> str | None:
    """``models:/<name>@<alias>`` of the most recently updated registered model with ``alias`` in the store
    ``tracking_uri`` (None: the process's store)."""
    client = mlflow_client(tracking_uri)
    best: tuple[int, str] | None = None
    try:
        page = client.search_registered_models(max_results=1000)
    except MlflowException as err:
        raise ModelError(f"cannot list registered models at {get_tracking_uri(tracking_uri)} "
                         f"({first_line(err)})") from None
    for rm in page:
        if alias in (rm.aliases or {}):
            stamp = int(rm.last_updated_timestamp or 0)
            if best is None or stamp > best[0]:
                best = (stamp, f"models:/{rm.name}@{alias}")
    return None if best is None else best[1]


def register_champion(model_uri: str, name: str, *, alias: str = "champion", run_id: str | None = None,
                      tracking_uri: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
    """Register ``model_uri`` as a new version of model ``name`` and point ``alias`` at it.

    When ``alias`` already points at a version of ``run_id``'s model nothing new is registered.
    Returns ``models:/<name>@<alias>``.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    if current is not None and run_id is not None and current.run_id == run_id:
        return f"models:/{name}@{alias}"
    try:
        with fluent_store(uri), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()})
        client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as err:
        raise ModelError(f"cannot register {model_uri} as {name!r} at {uri} ({first_line(err)}); "
                         "check --tracking-uri supports the Model Registry") from None
    log.info("registered %s as %s version %s, alias %s", model_uri, name, version.version, alias)
    return f"models:/{name}@{alias}"


def registered_alias_version(name: str, alias: str, *, tracking_uri: str | None = None) -> dict[str, str] | None:
    """``{name, version, run_id, source}`` of registered model ``name@alias``; None when there is none."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return {"name": name, "version": str(mv.version), "run_id": mv.run_id or "", "source": mv.source or ""}
