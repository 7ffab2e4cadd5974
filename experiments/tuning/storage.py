"""Study storages: SQLite files (WAL, long timeouts) and server databases, with heartbeats."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from core.errors import ConfigError, first_line
from core.paths import DEFAULT_STORAGE, sqlite_file

log = logging.getLogger(__name__)


SQLITE_TIMEOUT_S = 120


@contextlib.contextmanager
def quiet_optuna_warnings() -> Iterator[None]:
    """Hide Optuna's experimental/deprecation warnings for features we use on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def enable_sqlite_wal(path: Path) -> None:
    """Switch an SQLite file to write-ahead logging (persistent), so readers never block writers."""
    with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)) as conn:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        log.warning("SQLite %s stays in %s journal mode; parallel workers may wait on locks", path, mode)


def open_storage(
    url: str = DEFAULT_STORAGE,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    must_exist: bool = False,
) -> optuna.storages.RDBStorage:
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
        raise ConfigError(f"storage URL {url!r} is malformed ({first_line(err)}); {hint}") from None
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
        with quiet_optuna_warnings():
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=on_stale,
            )
    except (ImportError, ValueError, sqlite3.Error, optuna.exceptions.StorageInternalError) as err:
        raise ConfigError(f"cannot open the Optuna storage {url!r} ({first_line(err)}); {hint}") from None
    except Exception as err:
        import sqlalchemy.exc

        if isinstance(err, sqlalchemy.exc.SQLAlchemyError):
            raise ConfigError(f"cannot open the Optuna storage {url!r} ({first_line(err)}); {hint}") from None
        raise


def storage_url_of(storage: optuna.storages.BaseStorage) -> str:
    return str(getattr(storage, "url", storage))
