"""Which tracking store: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``.

MLflow 3 refuses a ``./mlruns`` file store; a remote ``http(s)://`` server works the same way.

One mechanism for the store: library code takes a :class:`~experiments.tracking.workspace.Workspace`
(its one client reads and writes the workspace's store explicitly). MLflow's process-wide default is set
once per process, by the entry point (:func:`set_tracking_uri`, called by ``galaxy10``'s ``main``); the
one MLflow call that reads only that default - logging a model - checks first that it is the workspace's
store (:func:`require_default_store`). No library call changes the default.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow

from core.errors import ConfigError
from core.paths import sqlite_file

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

    Called once per process, by its entry point (``galaxy10``'s ``main``); library code takes a
    :class:`~experiments.tracking.workspace.Workspace` and never changes the default.
    """
    resolved = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    return resolved


def _store_key(uri: str) -> str:
    """A store's identity: an SQLite file's absolute path, else the URI."""
    database = sqlite_file(uri)
    return "sqlite:" + str(database.resolve()) if database is not None else uri.rstrip("/")


def require_default_store(uri: str) -> None:
    """Check that MLflow's process-wide default is the store ``uri``.

    MLflow logs a model (``Model.log``) only to the default store, and a library call never changes that
    default (only the entry point does, with :func:`set_tracking_uri`); a library caller that logs models to
    another store than its process's gets one ``ConfigError`` line instead of a model in the wrong store.
    """
    current = mlflow.get_tracking_uri()
    if _store_key(current) != _store_key(uri):
        raise ConfigError(
            f"MLflow's default store is {current}, but this workspace logs models to {uri}; a program "
            "that logs models sets the default once at its entry (experiments.tracking.store."
            "set_tracking_uri(ws.tracking_uri)), as galaxy10 does"
        )


def require_tracking_store(uri: str | None = None) -> str:
    """Resolve the tracking URI and check that an SQLite store file really exists there.

    Raises
    ------
    ConfigError
        If the URI names an SQLite file that does not exist (MLflow would silently create an empty one).
    """
    resolved = resolve_tracking_uri(uri)
    database = sqlite_file(resolved)
    if database is not None and not database.is_file():
        raise ConfigError(
            f"no MLflow tracking database at {database}; run `galaxy10 tune` first or pass "
            "--tracking-uri of the store the study logged to"
        )
    return resolved


@contextlib.contextmanager
def quiet_artifact_downloads() -> Iterator[None]:
    """No MLflow download progress bar on stderr inside the block (a model's or an artifact's few files)."""
    saved = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = saved
