"""Which tracking store: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``.

MLflow 3 refuses a ``./mlruns`` file store; a remote ``http(s)://`` server works the same way.
"""
from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from sqlalchemy.engine import make_url

from pipelines.errors import ConfigError

DEFAULT_DB = "mlflow.db"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    if uri:
        uri = uri.strip()
        if not uri:
            raise ConfigError("empty --tracking-uri; pass e.g. sqlite:///mlflow.db or http://host:5000")
        if uri.startswith("file:") or (("://" not in uri) and not uri.startswith("databricks")):
            raise ConfigError(
                f"tracking URI {uri!r} is a file store, which MLflow 3 refuses; use sqlite:///mlflow.db "
                "or an http(s):// server"
            )
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def set_tracking_uri(uri: str | None = None) -> str:
    """Resolve the tracking URI (see :func:`resolve_tracking_uri`), make it MLflow's default, return it."""
    resolved = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    return resolved


def get_tracking_uri() -> str:
    """The tracking URI MLflow uses now (after :func:`set_tracking_uri`, else the resolved default)."""
    if mlflow.is_tracking_uri_set():
        return mlflow.get_tracking_uri()
    return set_tracking_uri(None)


def mlflow_client(uri: str | None = None) -> MlflowClient:
    return MlflowClient(uri or get_tracking_uri())


def require_tracking_store(uri: str | None = None) -> str:
    """Resolve the tracking URI and check that an SQLite store file really exists there.

    Raises
    ------
    ConfigError
        If the URI names an SQLite file that does not exist (MLflow would silently create an empty one).
    """
    resolved = resolve_tracking_uri(uri)
    if resolved.startswith("sqlite:"):
        database = make_url(resolved).database
        if database and database != ":memory:" and not Path(database).is_file():
            raise ConfigError(f"no MLflow tracking database at {database}; run `galaxy10 tune` first or pass "
                              "--tracking-uri of the store the study logged to")
    return resolved
