"""Shared fixtures: tiny Galaxy10-schema HDF5 files made in ``tmp_path`` (never the real data)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from hypothesis import settings
from PIL import Image

from experiments.tracking.workspace import Workspace

# Hypothesis keeps an example database in ./.hypothesis by default; tests write nothing outside tmp_path.
settings.register_profile("galaxy10", database=None, deadline=None)
settings.load_profile("galaxy10")

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REALSAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "realsamples"


def tiny_images(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Draw simple, class-dependent blobs so a small CNN can learn something in one epoch.

    Class ``k`` gets a Gaussian blob whose axis ratio, size and colour depend on ``k``, at a random
    angle, plus noise. Returns uint8 ``(N, size, size, 3)``.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for i, k in enumerate(labels):
        theta = rng.uniform(0, np.pi)
        q = 1.0 - 0.08 * k
        r = size * (0.08 + 0.01 * (k % 5))
        xr = xx * np.cos(theta) + yy * np.sin(theta)
        yr = -xx * np.sin(theta) + yy * np.cos(theta)
        blob = np.exp(-0.5 * ((xr / r) ** 2 + (yr / (r * q)) ** 2))
        colour = np.array([0.6 + 0.04 * k, 0.7, 1.0 - 0.04 * k], dtype=np.float32)
        img = blob[..., None] * colour * 220 + rng.normal(10, 4, (size, size, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write_galaxy10_h5(
    path: Path,
    n: int = 200,
    size: int = 64,
    seed: int = 0,
    with_coords: bool = True,
    synthetic: bool = True,
    imported_classes: tuple[str, ...] | None = None,
) -> Path:
    """Write a tiny file with the Galaxy10 DECaLS schema and return its path.

    ``imported_classes`` makes it a catalog of those classes as ``galaxy10 data import`` writes it
    (class names and the source folder and labels file in its attributes; not synthetic).
    """
    rng = np.random.default_rng(seed)
    labels = np.resize(np.arange(len(imported_classes) if imported_classes else 10, dtype=np.uint8), n)
    rng.shuffle(labels)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=tiny_images(labels, size, seed), chunks=(1, size, size, 3))
        f.create_dataset("ans", data=labels)
        if with_coords:
            f.create_dataset("ra", data=rng.uniform(0, 360, n))
            f.create_dataset("dec", data=rng.uniform(-10, 30, n))
            f.create_dataset("redshift", data=rng.uniform(0.01, 0.2, n).astype(np.float32))
            f.create_dataset("pxscale", data=np.full(n, 0.262, dtype=np.float32))
        if imported_classes:
            f.attrs.update(
                {
                    "synthetic": False,
                    "source": "import",
                    "class_names": json.dumps(list(imported_classes)),
                    "class_mode": "custom",
                    "source_folder": str(path.parent / "cutouts"),
                    "labels_csv": str(path.parent / "cutouts" / "labels.csv"),
                }
            )
        elif synthetic:
            f.attrs["synthetic"] = True
            f.attrs["generator"] = "tests.conftest.write_galaxy10_h5"
            f.attrs["seed"] = seed
    return path


@pytest.fixture
def make_h5(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_h5(name="x.h5", n=200, size=64, seed=0, ...)`` writes a tiny file in tmp_path."""

    def _make(name: str = "tiny.h5", **kwargs) -> Path:
        return write_galaxy10_h5(tmp_path / name, **kwargs)

    return _make


@pytest.fixture
def tiny_h5(make_h5: Callable[..., Path]) -> Path:
    """A 200-image, 64 px, 10-class file with coordinates, marked synthetic."""
    return make_h5()


@pytest.fixture
def realsamples() -> Path:
    """The shared real DECaLS samples; skips with a reason where they are absent."""
    if not REALSAMPLES.is_dir():
        pytest.skip(f"real samples not found at {REALSAMPLES} (shared/data/realsamples is absent)")
    return REALSAMPLES


@pytest.fixture(autouse=True)
def _isolate_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run every test inside tmp_path so nothing is written into the working tree.

    MLflow keeps its tracking URI in a process-wide global; it is restored after each test so one
    test's store never leaks into the next.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GALAXY10_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with keep_mlflow_tracking_uri():
        yield


def png_bytes(image: np.ndarray) -> bytes:
    """``image`` (uint8 H x W x 3) encoded as PNG."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A few hundred bytes whose PNG header claims ``width x height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@contextlib.contextmanager
def keep_mlflow_tracking_uri() -> Iterator[None]:
    """Undo ``mlflow.set_tracking_uri`` calls made inside the block (MLflow keeps the URI globally)."""
    from mlflow.tracking._tracking_service import utils

    saved, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        utils._tracking_uri = saved
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def count_registry_lookups(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, str], int]:
    """Count ``MlflowClient.get_model_version_by_alias`` / ``get_model_version`` calls per (name, alias or
    version) from now on (the dict fills as the code under test runs)."""
    from mlflow import MlflowClient

    counts: dict[tuple[str, str], int] = {}
    by_alias, by_version = MlflowClient.get_model_version_by_alias, MlflowClient.get_model_version

    def alias(self, name, alias):  # noqa: ANN001, ANN202
        counts[(name, alias)] = counts.get((name, alias), 0) + 1
        return by_alias(self, name, alias)

    def version(self, name, version):  # noqa: ANN001, ANN202
        counts[(name, str(version))] = counts.get((name, str(version)), 0) + 1
        return by_version(self, name, version)

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", alias)
    monkeypatch.setattr(MlflowClient, "get_model_version", version)
    return counts


#: The search space of the tiny tuning configs: learning rate and dropout.
TINY_SPACE = {
    "train.learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
}


def tiny_tune_yaml(
    path: Path,
    *,
    experiment: str,
    name: str,
    n_trials: int,
    epochs: int = 2,
    pruner: object = "none",
    heartbeat_interval: int = 1,
    grace_period: int = 3,
    refit: bool = False,
    log_models: str = "improving",
    cv_folds: object = 0,
    reference_trial: bool = False,
    **study: object,
) -> Path:
    """Write a tiny tuning config to ``path``: 48 px / crop 32, a two-layer CNN, no augmentation,
    TPE (seed 0, 2 start-up trials), heartbeats, :data:`TINY_SPACE`; ``study`` adds study keys.
    The final refit and cross-validation are off and only improving trials log models unless asked for
    (each costs every test time; their own tests ask), and so is the reference recipe as trial 0 (its full
    budget takes minutes)."""
    run = {
        "experiment_name": experiment,
        "data": {"size": 48, "crop": 32},
        "augment": {"policy": "none"},
        "model": {"filters": [8, 16], "dense_units": 16},
        "train": {"epochs": epochs, "batch_size": 32, "patience": None, "monitor": "val_accuracy"},
    }
    doc = {
        "run": run,
        "study": {
            "name": name,
            "n_trials": n_trials,
            "pruner": pruner,
            "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "refit": refit,
            "log_models": log_models,
            "cv_folds": cv_folds,
            "reference_trial": reference_trial,
            **study,
        },
        "search_space": TINY_SPACE,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass(frozen=True)
class TinyStudy:
    """A real tiny Optuna study with an MLflow store, made by :func:`tiny_study_in`."""

    root: Path
    data: Path
    tracking_uri: str
    storage: str
    parent_run_id: str
    best_run_id: str | None
    best_model_uri: str | None

    @property
    def ws(self) -> Workspace:
        """A workspace of the study's stores (a new one each time: nothing memoised between uses)."""
        return Workspace(tracking_uri=self.tracking_uri, storage_url=self.storage)


@contextlib.contextmanager
def tiny_study_in(
    root: Path,
    *,
    n_images: int = 400,
    n_trials: int = 3,
    log_all_models: bool = True,
    refit: bool = False,
    search_space: dict | None = None,
    imported_classes: tuple[str, ...] | None = None,
    **study_keys: object,
) -> Iterator[TinyStudy]:
    """A study ``tiny`` of one-epoch smoke trials on a synthetic file in ``root``, via the tuning code.

    With ``log_all_models`` every trial logs its model (ensembles need them), else only the top 3;
    ``refit`` refits the best configuration on train + validation; ``search_space`` replaces the default
    (``model.dropout`` only); ``imported_classes`` studies an imported catalog of those classes. The block
    runs with cwd, cache and tracking URI in ``root``.
    """
    from experiments.settings.tune import parse_tune_config
    from experiments.tuning.run import run_study
    from experiments.tuning.storage import open_storage
    from experiments.tuning.study import load_existing_study

    smoke = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    storage = f"sqlite:///{root / 'optuna.db'}"
    with keep_mlflow_tracking_uri(), pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("GALAXY10_CACHE", str(root / "cache"))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        data = write_galaxy10_h5(root / "tiny.h5", n=n_images, imported_classes=imported_classes)
        study = {
            "name": "tiny",
            "n_trials": n_trials,
            "storage": storage,
            "pruner": "none",
            "refit": refit,
            "cv_folds": 0,
            "reference_trial": False,
            **({"log_models": "all"} if log_all_models else {}),
            **study_keys,
        }
        tune = parse_tune_config(
            {
                "base": str(smoke),
                "run": {
                    "train": {"epochs": 1},
                    "data": {"max_images": n_images},
                    # smoke.yaml targets Galaxy10's disturbed class
                    **({"augment": {"targets": None}} if imported_classes else {}),
                },
                "study": study,
                "search_space": search_space or {"model.dropout": {"type": "float", "low": 0.0, "high": 0.5}},
            }
        )
        result = run_study(tune, ws=Workspace.of(uri), data_path=str(data))
        best = load_existing_study("tiny", open_storage(storage)).best_trial
        yield TinyStudy(
            root, data, uri, storage, result.parent_run_id, result.best_run_id, best.user_attrs.get("model_uri")
        )


@dataclass(frozen=True)
class SmokeModel:
    """A model trained once per session with ``smoke.yaml`` on a tiny file, logged and registered."""

    tracking_uri: str
    run_id: str
    model_uri: str
    registered_name: str
    data_path: Path

    @property
    def ws(self) -> Workspace:
        """A workspace of the model's store (a new one each time: nothing memoised between uses)."""
        return Workspace(tracking_uri=self.tracking_uri)


@pytest.fixture(scope="session")
def smoke_model(tmp_path_factory: pytest.TempPathFactory) -> SmokeModel:
    """Train ``experiments/configs/smoke.yaml`` on a tiny file, log it to MLflow, register ``@champion``.

    Everything (data, cache, sqlite store, artifacts) lives in one session temp folder.
    """
    from experiments.settings.run import load_config
    from experiments.tracking.mlflow_tracker import MlflowTracker
    from experiments.tracking.model_registry import register_champion
    from experiments.training import TrainOptions, prepare_run, train

    root = tmp_path_factory.mktemp("smoke_model")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with keep_mlflow_tracking_uri(), pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("GALAXY10_CACHE", str(root / "cache"))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        data = write_galaxy10_h5(root / "tiny.h5")
        cfg = load_config(
            Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml", [f"data.path={data}"]
        )
        with MlflowTracker(cfg.experiment_name, cfg.run_name, ws=Workspace.of(uri)) as tracker:
            result = train(prepare_run(cfg), tracker, TrainOptions(verbose=0))
        name = "smoke-study"
        register_champion(result.model_uri, name, run_id=result.run_id, ws=Workspace.of(uri))
    return SmokeModel(uri, result.run_id, result.model_uri, name, data)
