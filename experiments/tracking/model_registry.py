"""The MLflow Model Registry: champions by alias."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

from mlflow.exceptions import MlflowException

from core.errors import ModelError, first_line
from experiments.tracking.workspace import ModelRef, Workspace

log = logging.getLogger(__name__)


def default_champion_uri(alias: str = "champion", *, ws: Workspace) -> str | None:
    """``models:/<name>@<alias>`` of the most recently updated registered model with ``alias`` in the
    workspace's store."""
    client = ws.client
    best: tuple[int, str] | None = None
    try:
        page = client.search_registered_models(max_results=1000)
    except MlflowException as err:
        raise ModelError(f"cannot list registered models at {ws.tracking_uri} ({first_line(err)})") from None
    for rm in page:
        if alias in (rm.aliases or {}):
            stamp = int(rm.last_updated_timestamp or 0)
            if best is None or stamp > best[0]:
                best = (stamp, f"models:/{rm.name}@{alias}")
    return None if best is None else best[1]


def register_champion(
    model_uri: str,
    name: str,
    *,
    alias: str = "champion",
    run_id: str | None = None,
    ws: Workspace,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """Register ``model_uri`` as a new version of model ``name`` and point ``alias`` at it (through the
    workspace's client: MLflow's process-wide default is not read).

    When ``alias`` already points at a version of ``run_id``'s model nothing new is registered.
    Returns ``models:/<name>@<alias>``.
    """
    uri = ws.tracking_uri
    client = ws.client
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    if current is not None and run_id is not None and current.run_id == run_id:
        return f"models:/{name}@{alias}"
    try:
        version = _create_version(ws, model_uri, name, run_id, {k: str(v) for k, v in (tags or {}).items()})
        client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as err:
        raise ModelError(
            f"cannot register {model_uri} as {name!r} at {uri} ({first_line(err)}); "
            "check --tracking-uri supports the Model Registry"
        ) from None
    log.info("registered %s as %s version %s, alias %s", model_uri, name, version.version, alias)
    return f"models:/{name}@{alias}"


def _create_version(ws: Workspace, model_uri: str, name: str, run_id: str | None, tags: dict[str, str]) -> Any:
    """A new version of ``name`` for a logged model (``models:/<model id>``, or a registered reference resolved
    to one first) or a run's model (``runs:/...``), as ``mlflow.register_model`` makes it."""
    source = ws.resolve(model_uri).source if ModelRef.parse(model_uri).registered else model_uri
    model_id = source[len("models:/") :] if source.startswith("models:/") and "/" not in source[8:] else None
    if model_id is not None:  # the store reads the version's files at their own location, not via a models:/ URI
        logged = ws.client.get_logged_model(model_id)
        source, run_id = logged.artifact_location, run_id or logged.source_run_id
    try:
        ws.client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return ws.client.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id)
