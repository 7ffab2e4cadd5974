"""Where data and generated files live by default."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR = Path("data")
REAL_FILENAME = "Galaxy10_DECals.h5"
SYNTH_FILENAME = "galaxy10_synthetic.h5"
ZENODO_URL = "https://zenodo.org/records/10845026"
#: Where Optuna studies live unless a config or ``--storage`` says otherwise.
DEFAULT_STORAGE = "sqlite:///optuna.db"
#: The MLflow store's SQLite file (in the working folder) unless ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``.
DEFAULT_TRACKING_DB = "mlflow.db"


def real_data_path(data_dir: Path = DATA_DIR) -> Path:
    """Path where users put the official ``Galaxy10_DECals.h5``."""
    return Path(data_dir) / REAL_FILENAME


def synthetic_data_path(data_dir: Path = DATA_DIR) -> Path:
    """Path of the platform's own synthetic default set."""
    return Path(data_dir) / SYNTH_FILENAME


def resolve_data_path(path: str | os.PathLike | None = None, data_dir: Path = DATA_DIR) -> Path:
    """Return ``path`` if given, else the real file if present, else the synthetic default path.

    The synthetic path is returned even when it does not exist yet; callers validate it and the
    error tells the user to run ``galaxy10 data synth``.
    """
    if path is not None:
        return Path(path)
    real = real_data_path(data_dir)
    return real if real.exists() else synthetic_data_path(data_dir)


def default_cache_dir() -> Path:
    """Cache folder for preprocessed arrays and embeddings (``GALAXY10_CACHE`` overrides)."""
    return Path(os.environ.get("GALAXY10_CACHE", DATA_DIR / "cache"))


def sqlite_file(url: str) -> Path | None:
    """The database file of an SQLite URL (MLflow store or Optuna storage), ``None`` for other databases and
    in-memory SQLite."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database)
