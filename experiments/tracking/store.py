"""Which tracking store: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``.

MLflow 3 refuses a ``./mlruns`` file store; a remote ``http(s)://`` server works the same way.

One mechanism for the store: library code passes the URI explicitly (``MlflowClient(uri)``). MLflow's
process-wide default is set once per process, by the entry point (:func:`set_tracking_uri`, called by
``galaxy10``'s ``main``); the few MLflow calls that only read that default (logging, registering and
loading models) run inside :func:`fluent_store`, which points it at the caller's store for the block
and puts it back afterwards - a library call never changes the process's store.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from sqlalchemy.engine import make_url

from core.errors import ConfigError

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
    """Resolve the tracking URI (see :func:`resolve_tracking_uri`), make it this process's default, return it.

    Called once per process, by its entry point; library code passes URIs and uses :func:`fluent_store`.
    """
    resolved = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    return resolved


def get_tracking_uri(uri: str | None = None) -> str:
    """``uri`` resolved (:func:`resolve_tracking_uri`) when given; else the store MLflow's default points at
    now (set by the entry point or a :func:`fluent_store` block), else the resolved default."""
    if uri:
        return resolve_tracking_uri(uri)
    if mlflow.is_tracking_uri_set():
        return mlflow.get_tracking_uri()
    return resolve_tracking_uri(None)


@contextlib.contextmanager
def fluent_store(uri: str | None = None) -> Iterator[str]:
    """Point MLflow's process-wide default at ``uri`` (None: the current store) for the block, then put the
    previous default back; yields the resolved URI.

    For the MLflow calls that read only the default (``Model.log``, ``mlflow.register_model``,
    ``mlflow.models.get_model_info``, ``mlflow.*.load_model`` of ``models:/`` and ``runs:/`` URIs).
    """
    target = get_tracking_uri(uri)
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    if previous == target:
        yield target
        return
    mlflow.set_tracking_uri(target)
    try:
        yield target
    finally:
        mlflow.set_tracking_uri(previous)  # None: no default again (MLflow clears its environment variable)


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
