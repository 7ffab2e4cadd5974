"""The tracker protocol, :class:`NullTracker` and run provenance (git commit, package versions).

mlflow-free: training, tuning workers and tests import this without MLflow.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Artifact name of the logged Keras model inside a run (``runs:/<run_id>/model``).
MODEL_NAME = "model"
#: Run artifact with the prediction metadata (the same dict is the model's MLmodel ``metadata``).
META_ARTIFACT = "model_meta.json"
#: Keys prediction needs from a model's metadata.
META_KEYS: tuple[str, ...] = (
    "size",
    "crop",
    "preprocess_version",
    "class_names",
    "class_slugs",
    "data_fingerprint",
    "synthetic",
    "provenance",
    "tta",
)
#: Packages whose versions are tagged on every run (``version.<name>``).
VERSIONED_PACKAGES: tuple[str, ...] = (
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "numpy",
    "albumentations",
    "scikit-learn",
    "mlflow",
    "optuna",
    "galaxy10-platform",
)


def git_commit(path: str | Path | None = None) -> dict[str, str]:
    """``{git.commit, git.dirty}`` of the source tree holding this package; empty if not a git repo."""
    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.commit": commit, "git.dirty": "true" if dirty else "false"} if commit else {}


def package_versions(names: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    """``{version.<package>: version}`` for the installed packages among ``names``."""
    out = {}
    for name in names:
        try:
            out[f"version.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


@runtime_checkable
class Tracker(Protocol):
    """What training logs through. Keys are strings; metric steps are epochs (1-based)."""

    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_dict(self, payload: Mapping[str, Any], artifact_file: str) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_keras_model(self, model: Any, *, meta: Mapping[str, Any], input_example: np.ndarray) -> str | None: ...


@dataclass
class NullTracker:
    """A tracker that keeps everything in memory and writes nothing (core code, tests, dry runs)."""

    run_id: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int | None, float]]] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    model_meta: dict[str, Any] | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Remember ``params`` as strings."""
        self.params.update({k: str(v) for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Remember ``tags`` as strings."""
        self.tags.update({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Append each metric to its history."""
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append((step, float(v)))

    def latest(self, key: str) -> float:
        """The last value logged for ``key``."""
        return self.metrics[key][-1][1]

    def log_text(self, text: str, artifact_file: str) -> None:
        """Remember the text."""
        self.artifacts[artifact_file] = text

    def log_dict(self, payload: Mapping[str, Any], artifact_file: str) -> None:
        """Remember the dict."""
        self.artifacts[artifact_file] = dict(payload)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Remember that a figure was made (not the figure: it would hold memory)."""
        self.artifacts[artifact_file] = type(figure).__name__

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Remember the file's name."""
        name = Path(local_path).name
        self.artifacts[f"{artifact_path}/{name}" if artifact_path else name] = str(local_path)

    def log_keras_model(self, model: Any, *, meta: Mapping[str, Any], input_example: np.ndarray) -> str | None:
        """Remember the metadata; no model is stored."""
        self.model_meta = dict(meta)
        return None
