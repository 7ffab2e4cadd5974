"""MLflow at the edge: the only module in the codebase that imports :mod:`mlflow`.

Training receives a :class:`Tracker` (a small protocol) and never sees MLflow. :class:`NullTracker`
keeps what was logged in memory (core code and tests run without a server); :class:`MlflowTracker`
writes to a tracking server through an explicit :class:`mlflow.MlflowClient` and run id, never
through MLflow's global active-run stack, so several runs (tuning trials, nested runs) can be open
in one process.

Tracking URI: ``--tracking-uri`` if given, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``
in the current folder (MLflow 3 refuses a ``./mlruns`` file store). A remote ``http(s)://`` server
works the same way.

Models are logged with the ``mlflow.keras`` flavour (MLflow 3 "LoggedModel" entities, named
``model``), a tensor signature, an input example and ``metadata`` holding everything prediction
needs (:data:`META_KEYS`); :func:`load_model_bundle` reloads one with Keras ``safe_mode=True`` and
:func:`predict_images` classifies raw uint8 images of any size.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from pipelines.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
#: Artifact name of the logged Keras model inside a run (``runs:/<run_id>/model``).
MODEL_NAME = "model"
#: Run artifact with the prediction metadata (the same dict is the model's MLmodel ``metadata``).
META_ARTIFACT = "model_meta.json"
#: Keys prediction needs from a model's metadata.
META_KEYS: tuple[str, ...] = ("size", "crop", "preprocess_version", "class_names", "class_slugs",
                              "data_fingerprint", "synthetic", "provenance", "tta")
#: Packages whose versions are tagged on every run (``version.<name>``).
VERSIONED_PACKAGES: tuple[str, ...] = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "albumentations",
                                       "scikit-learn", "mlflow", "optuna", "galaxy10-platform")
_BATCH = 100  # MLflow's per-request limit on params/tags/metrics


# --------------------------------------------------------------------------------------------
# Tracking URI
# --------------------------------------------------------------------------------------------
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


def _client(uri: str | None = None) -> MlflowClient:
    return MlflowClient(uri or get_tracking_uri())


# --------------------------------------------------------------------------------------------
# Run facts: git commit, package versions
# --------------------------------------------------------------------------------------------
def git_commit(path: str | Path | None = None) -> dict[str, str]:
    """``{git.commit, git.dirty}`` of the source tree holding this package; empty if not a git repo."""
    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
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


# --------------------------------------------------------------------------------------------
# The tracker protocol and its two implementations
# --------------------------------------------------------------------------------------------
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


def _chunks(items: list, size: int = _BATCH) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _pip_requirements() -> list[str]:
    """Pinned requirements of a logged Keras model (saves MLflow's slow requirement inference)."""
    reqs = []
    for name in ("tensorflow-cpu", "tensorflow", "keras", "numpy", "mlflow"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            reqs.append(f"{name}=={importlib.metadata.version(name)}")
    return reqs


class MlflowTracker:
    """One MLflow run, opened as a context manager.

    Parameters
    ----------
    experiment_name
        Created if missing.
    run_name
        Display name of the run.
    tracking_uri
        See :func:`resolve_tracking_uri`.
    parent_run_id
        Makes this a nested (child) run of that run.
    tags
        Extra tags set when the run is created.

    On leaving the block the run ends ``FINISHED``; ``KILLED`` on ``KeyboardInterrupt`` or an
    exception listed in ``killed_on`` (e.g. a pruning exception); ``FAILED`` on any other exception,
    which propagates unchanged.
    """

    def __init__(self, experiment_name: str, run_name: str | None = None, *, tracking_uri: str | None = None,
                 parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None,
                 killed_on: tuple[type[BaseException], ...] = ()) -> None:
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.parent_run_id = parent_run_id
        self.initial_tags = dict(tags or {})
        self.killed_on = killed_on
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.client = MlflowClient(self.tracking_uri)

    # --- run life cycle ------------------------------------------------------------------
    def start(self) -> MlflowTracker:
        """Create the run (and the experiment if needed)."""
        mlflow.set_tracking_uri(self.tracking_uri)  # model logging resolves the URI globally
        try:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment_name)
            tags = {k: str(v) for k, v in self.initial_tags.items()}
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.run_name)
        except MlflowException as err:
            if unreachable_reason(err) is not None:
                raise unreachable_error(self.tracking_uri, unreachable_reason(err)) from None
            raise ConfigError(f"cannot start an MLflow run at {self.tracking_uri} ({_first_line(err)}); "
                              "check --tracking-uri / MLFLOW_TRACKING_URI") from None
        self.run_id = run.info.run_id
        log.info("MLflow run %s (%s) in experiment %r at %s", self.run_id, run.info.run_name,
                 self.experiment_name, self.tracking_uri)
        return self

    def end(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED, KILLED)."""
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> MlflowTracker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt) or (self.killed_on and issubclass(exc_type, self.killed_on)):
            status = "KILLED"
        else:
            status = "FAILED"
        self.end(status)

    def _need_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("MlflowTracker used before start(); use it as a context manager")
        return self.run_id

    # --- logging -------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values as strings), in batches of 100."""
        run_id = self._need_run()
        items = [Param(k, str(v)) for k, v in params.items()]
        for chunk in _chunks(items):
            self.client.log_batch(run_id, params=chunk, synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values as strings)."""
        run_id = self._need_run()
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for chunk in _chunks(items):
            self.client.log_batch(run_id, tags=chunk, synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics at ``step`` (non-finite values are skipped with a warning)."""
        run_id = self._need_run()
        now = int(time.time() * 1000)
        items = []
        for k, v in metrics.items():
            if not np.isfinite(v):
                log.warning("metric %s=%s is not finite; not logged", k, v)
                continue
            items.append(Metric(k, float(v), now, int(step or 0)))
        for chunk in _chunks(items):
            self.client.log_batch(run_id, metrics=chunk, synchronous=True)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` as a run artifact."""
        self.client.log_text(self._need_run(), text, artifact_file)

    def log_dict(self, payload: Mapping[str, Any], artifact_file: str) -> None:
        """Write ``payload`` as a JSON (or YAML by suffix) run artifact."""
        self.client.log_dict(self._need_run(), dict(payload), artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Write a matplotlib figure as a run artifact."""
        self.client.log_figure(self._need_run(), figure, artifact_file)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a local file."""
        self.client.log_artifact(self._need_run(), str(local_path), artifact_path)

    def log_keras_model(self, model: Any, *, meta: Mapping[str, Any], input_example: np.ndarray) -> str:
        """Log ``model`` (``mlflow.keras`` flavour) as ``model`` with signature, example and metadata.

        Returns the model URI (``models:/<model_id>``); ``runs:/<run_id>/model`` also resolves.
        """
        import mlflow.keras
        from mlflow.models import Model, ModelSignature
        from mlflow.types.schema import Schema, TensorSpec

        run_id = self._need_run()
        missing = [k for k in META_KEYS if k not in meta]
        if missing:
            raise ModelError(f"model metadata lacks {', '.join(missing)}; prediction would not work")
        example = np.asarray(input_example, dtype=np.float32)
        in_shape = (-1, *model.input_shape[1:])
        out_shape = (-1, *model.output_shape[1:])
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), in_shape, "image")]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), out_shape, "probabilities")]))
        plain_meta = json.loads(json.dumps(dict(meta)))
        mlflow.set_tracking_uri(self.tracking_uri)
        with _experiment_env(self.experiment_id), warnings.catch_warnings(), _quiet_keras_progress():
            # MLflow's serving check calls the model with a list of one input; Keras warns about it.
            warnings.filterwarnings("ignore", message="The structure of `inputs`", category=UserWarning)
            info = Model.log(artifact_path=None, name=MODEL_NAME, flavor=_KerasFlavor, model=model,
                             run_id=run_id, signature=signature, input_example=example, metadata=plain_meta,
                             pip_requirements=_pip_requirements())
        self.log_dict(plain_meta, META_ARTIFACT)
        log.info("logged model %s (run %s)", info.model_uri, run_id)
        return info.model_uri


@contextlib.contextmanager
def _quiet_keras_progress() -> Iterator[None]:
    """No Keras progress bar on stdout while MLflow checks a logged model by predicting its input example
    (the bar's ANSI codes land in piped output such as ``galaxy10 tune | tee log``)."""
    from keras.utils import disable_interactive_logging, enable_interactive_logging, is_interactive_logging_enabled

    was_on = is_interactive_logging_enabled()
    disable_interactive_logging()
    try:
        yield
    finally:
        if was_on:
            enable_interactive_logging()


@contextlib.contextmanager
def _experiment_env(experiment_id: str | None) -> Iterator[None]:
    """Point MLflow's experiment resolution at ``experiment_id`` for the block.

    ``Model.log`` puts the LoggedModel in the fluent "current" experiment (the Default one when no
    run is active), not the run's; the environment variable is how to say which without starting a
    global active run.
    """
    saved = {k: os.environ.get(k) for k in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
    if experiment_id is not None:
        os.environ["MLFLOW_EXPERIMENT_ID"] = str(experiment_id)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _KerasFlavor:
    """``mlflow.keras`` whose ``save_model`` first creates the model folder.

    MLflow 3.17's ``mlflow.keras.save_model`` writes the input example before it creates the folder,
    so ``mlflow.keras.log_model(..., input_example=...)`` fails with FileNotFoundError.
    """

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        import mlflow.keras

        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --------------------------------------------------------------------------------------------
# Reading runs back
# --------------------------------------------------------------------------------------------
def run_metrics(run_id: str, *, tracking_uri: str | None = None) -> dict[str, float]:
    """The latest value of every metric of run ``run_id``."""
    try:
        run = _client(resolve_tracking_uri(tracking_uri) if tracking_uri else None).get_run(run_id)
    except MlflowException as err:
        raise ModelError(f"MLflow run {run_id!r} not found at {get_tracking_uri()} ({_first_line(err)}); "
                         "pass the id of a finished `galaxy10 train` run") from None
    return dict(run.data.metrics)


def run_val_recall(run_id: str, class_slugs: Sequence[str], *, tracking_uri: str | None = None) -> np.ndarray:
    """Per-class validation recall (``val_recall_<slug>``) of an earlier run, in label order."""
    metrics = run_metrics(run_id, tracking_uri=tracking_uri)
    missing = [s for s in class_slugs if f"val_recall_{s}" not in metrics]
    if missing:
        raise ConfigError(
            f"run {run_id} has no val_recall_ metric for {', '.join(missing)}; use augment.auto_from_run with "
            "a finished `galaxy10 train` run"
        )
    return np.array([metrics[f"val_recall_{s}"] for s in class_slugs], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Loading models for prediction
# --------------------------------------------------------------------------------------------
class ModelBundle(NamedTuple):
    """A reloaded Keras model and its prediction metadata (unpacks as ``model, meta``)."""

    model: Any
    meta: dict[str, Any]


@dataclass(frozen=True)
class LoadedModel:
    """What :func:`load_prediction_model` returns: flavour, model object, metadata, run facts."""

    uri: str
    kind: str  # "keras" or "pyfunc"
    model: Any  # ModelBundle for keras, a pyfunc model otherwise
    meta: dict[str, Any]
    info: dict[str, Any]


def _model_info(model_uri: str) -> Any:
    try:
        return mlflow.models.get_model_info(model_uri)
    except (MlflowException, OSError) as err:
        raise ModelError(f"cannot find model {model_uri} at {get_tracking_uri()} ({_first_line(err)}); "
                         "check the run id / name@alias and --tracking-uri") from None


def load_model_bundle(model_uri: str) -> ModelBundle:
    """Reload a Keras model logged by training, safely (Keras ``safe_mode=True``), with its metadata."""
    import mlflow.keras

    from models.layers import register_custom_layers

    info = _model_info(model_uri)
    if "keras" not in (info.flavors or {}):
        raise ModelError(f"model {model_uri} has no keras flavour (it has {', '.join(info.flavors or {})}); "
                         "pass a model logged by `galaxy10 train`")
    meta = dict(info.metadata or {})
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ModelError(f"model {model_uri} lacks prediction metadata ({', '.join(missing)}); "
                         "re-log it with `galaxy10 train`")
    try:
        register_custom_layers()  # backbones' own layers (e.g. D4 group convolutions) must be known to Keras
        model = mlflow.keras.load_model(model_uri, load_model_kwargs={"safe_mode": True, "compile": False})
    except (MlflowException, OSError, ValueError, TypeError) as err:
        raise ModelError(f"cannot load model {model_uri} ({_first_line(err)}); it may be damaged or from an "
                         "incompatible Keras version") from None
    return ModelBundle(model, meta)


def predict_images(bundle: ModelBundle | tuple[Any, Mapping[str, Any]], images: Any, *,
                   batch_size: int = 256) -> np.ndarray:
    """Class probabilities ``(N, C)`` float32 for uint8 RGB images of any size.

    Images go through ``pipelines.preprocess.prepare_images`` (square crop, resize to the model's
    ``size``, centre crop to ``crop``); with ``tta`` in the metadata the 8 D4 views are averaged.
    """
    from pipelines.preprocess import prepare_images

    model, meta = bundle
    crops = prepare_images(images, size=int(meta["size"]), crop=int(meta["crop"]))

    def predict_fn(x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(x.astype(np.float32), batch_size=batch_size, verbose=0))

    if meta.get("tta"):
        from augment.tta import tta_predict

        return tta_predict(predict_fn, crops, batch_size=batch_size)
    return predict_fn(crops).astype(np.float32)


def _info_from_uri(model_uri: str, info: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"run_id": info.run_id, "model_id": getattr(info, "model_id", None)}
    if model_uri.startswith("models:/"):
        ref = model_uri[len("models:/"):]
        client = _client()
        with contextlib.suppress(MlflowException):
            if "@" in ref:
                name, alias = ref.split("@", 1)
                mv = client.get_model_version_by_alias(name, alias)
                out.update(name=name, version=str(mv.version), alias=alias, run_id=mv.run_id or info.run_id)
            elif "/" in ref:
                name, version = ref.rsplit("/", 1)
                out.update(name=name, version=version)
    if out.get("run_id"):
        with contextlib.suppress(MlflowException):
            tags = _client().get_run(out["run_id"]).data.tags
            if "data.synthetic" in tags:
                out["synthetic"] = tags["data.synthetic"] == "true"
            if "data.provenance" in tags:
                out["provenance"] = tags["data.provenance"]
    return out


def load_prediction_model(model_uri: str) -> LoadedModel:
    """Load a logged model for prediction: Keras bundles or generic pyfunc models (ensembles)."""
    info = _model_info(model_uri)
    flavors = info.flavors or {}
    facts = _info_from_uri(model_uri, info)
    if "keras" in flavors:
        bundle = load_model_bundle(model_uri)
        return LoadedModel(model_uri, "keras", bundle, bundle.meta, facts)
    if "python_function" in flavors:
        try:
            pyfunc = mlflow.pyfunc.load_model(model_uri)
        except (MlflowException, OSError, ValueError, ImportError) as err:
            raise ModelError(f"cannot load model {model_uri} ({_first_line(err)})") from None
        return LoadedModel(model_uri, "pyfunc", pyfunc, dict(info.metadata or {}), facts)
    raise ModelError(f"model {model_uri} has flavours {', '.join(flavors) or 'none'}; galaxy10 predicts with "
                     "Keras models or pyfunc ensembles")


def default_champion_uri(alias: str = "champion") -> str | None:
    """``models:/<name>@<alias>`` of the most recently updated registered model with ``alias``."""
    client = _client()
    best: tuple[int, str] | None = None
    try:
        page = client.search_registered_models(max_results=1000)
    except MlflowException as err:
        raise ModelError(f"cannot list registered models at {get_tracking_uri()} ({_first_line(err)})") from None
    for rm in page:
        if alias in (rm.aliases or {}):
            stamp = int(rm.last_updated_timestamp or 0)
            if best is None or stamp > best[0]:
                best = (stamp, f"models:/{rm.name}@{alias}")
    return None if best is None else best[1]


@contextlib.contextmanager
def temporary_artifact_dir() -> Iterator[Path]:
    """A temporary folder for files about to be uploaded as artifacts."""
    with tempfile.TemporaryDirectory(prefix="galaxy10-artifacts-") as tmp:
        yield Path(tmp)


# ============================================================================================
# Tuning studies (added by the tuning engineer for experiments/tuning.py): reopening a study's
# parent run by id, finishing/tagging runs by id, and the Model Registry. Nothing above changes.
# ============================================================================================
def attach_run(run_id: str, *, tracking_uri: str | None = None) -> MlflowTracker | None:
    """A started :class:`MlflowTracker` bound to the existing run ``run_id``, set RUNNING again.

    Returns None when the run does not exist at this tracking URI (or was deleted).
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
        experiment = client.get_experiment(run.info.experiment_id)
    except MlflowException:
        return None
    if run.info.lifecycle_stage != "active":
        return None
    tracker = MlflowTracker(experiment.name, run.info.run_name, tracking_uri=uri)
    tracker.run_id = run_id
    tracker.experiment_id = run.info.experiment_id
    mlflow.set_tracking_uri(uri)
    client.update_run(run_id, status="RUNNING")
    return tracker


def finish_run(run_id: str, status: str, *, tracking_uri: str | None = None,
               tags: Mapping[str, Any] | None = None) -> None:
    """Set ``tags`` on run ``run_id`` and end it with ``status`` (FINISHED, FAILED, KILLED)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, str(value))
    client.set_terminated(run_id, status=status)


def set_run_tags(run_id: str, tags: Mapping[str, Any], *, tracking_uri: str | None = None) -> None:
    """Set ``tags`` on run ``run_id`` (which may be finished)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


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
    mlflow.set_tracking_uri(uri)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()})
        client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as err:
        raise ModelError(f"cannot register {model_uri} as {name!r} at {uri} ({_first_line(err)}); "
                         "check --tracking-uri supports the Model Registry") from None
    log.info("registered %s as %s version %s, alias %s", model_uri, name, version.version, alias)
    return f"models:/{name}@{alias}"


# ============================================================================================
# Reports (added by the reports engineer for experiments/report.py): reading finished runs back
# (tags, params, metric histories, artifacts), finding runs by tag, and logging onto finished runs.
# Nothing above changes.
# ============================================================================================
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


def require_tracking_store(uri: str | None = None) -> str:
    """Resolve the tracking URI and check that an SQLite store file really exists there.

    Raises
    ------
    ConfigError
        If the URI names an SQLite file that does not exist (MLflow would silently create an empty one).
    """
    resolved = resolve_tracking_uri(uri)
    if resolved.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        database = make_url(resolved).database
        if database and database != ":memory:" and not Path(database).is_file():
            raise ConfigError(f"no MLflow tracking database at {database}; run `galaxy10 tune` first or pass "
                              "--tracking-uri of the store the study logged to")
    return resolved


def _facts(client: MlflowClient, run: Any) -> RunFacts:
    try:
        experiment_name = client.get_experiment(run.info.experiment_id).name
    except MlflowException:
        experiment_name = ""
    return RunFacts(run_id=run.info.run_id, run_name=run.info.run_name or "", experiment_id=run.info.experiment_id,
                    experiment_name=experiment_name, status=run.info.status, start_time=run.info.start_time,
                    params=dict(run.data.params), tags=dict(run.data.tags), metrics=dict(run.data.metrics))


def get_run_facts(run_id: str, *, tracking_uri: str | None = None) -> RunFacts:
    """:class:`RunFacts` of run ``run_id``; ``ModelError`` naming the store if it is not there."""
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ModelError(f"MLflow run {run_id} not found at {uri} ({_first_line(err)}); "
                         "pass the --tracking-uri the study logged to") from None
    return _facts(client, run)


def find_runs(tags: Mapping[str, str], *, tracking_uri: str | None = None,
              parent_run_id: str | None = None) -> list[RunFacts]:
    """Active runs of every experiment whose tags equal ``tags`` (newest first)."""
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    wanted = dict(tags)
    if parent_run_id is not None:
        wanted["mlflow.parentRunId"] = parent_run_id
    clauses = [f"tags.`{k}` = '{str(v).replace(chr(39), '')}'" for k, v in wanted.items()]
    try:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiment_ids, filter_string=" and ".join(clauses),
                                  order_by=["attributes.start_time DESC"], max_results=1000) if experiment_ids else []
    except MlflowException as err:
        raise ConfigError(f"cannot search MLflow runs at {uri} ({_first_line(err)}); check --tracking-uri") from None
    return [_facts(client, r) for r in runs]


def metric_histories(run_id: str, keys: Sequence[str], *,
                     tracking_uri: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` sorted by step (last value per step) for the keys the run has."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
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


def list_run_artifacts(run_id: str, path: str | None = None, *, tracking_uri: str | None = None) -> list[str]:
    """Paths of the files (not folders) directly under ``path`` in run ``run_id``'s artifacts."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    try:
        return [f.path for f in client.list_artifacts(run_id, path) if not f.is_dir]
    except (MlflowException, OSError):
        return []


def download_run_artifact(run_id: str, path: str, dst: str | Path, *, tracking_uri: str | None = None) -> Path:
    """Download artifact ``path`` of run ``run_id`` into folder ``dst``; return the local path."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    saved = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one small file: no progress bar on stderr
    try:
        return Path(client.download_artifacts(run_id, path, str(dst)))
    except (MlflowException, OSError) as err:
        raise ModelError(f"cannot download artifact {path} of run {run_id} ({_first_line(err)}); "
                         "check the run still exists at --tracking-uri") from None
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = saved


def logged_run_config(run_id: str, *, tracking_uri: str | None = None) -> Any:
    """The resolved ``RunConfig`` a training run logged as ``config.yaml``."""
    import tempfile

    import yaml

    from experiments.config import from_dict

    with tempfile.TemporaryDirectory(prefix="galaxy10-config-") as tmp:
        local = download_run_artifact(run_id, "config.yaml", tmp, tracking_uri=tracking_uri)
        return from_dict(yaml.safe_load(local.read_text()))


def log_artifacts_to_run(run_id: str, local_dir: str | Path, artifact_path: str | None = None, *,
                         tracking_uri: str | None = None) -> None:
    """Upload every file under ``local_dir`` to run ``run_id`` (which may be finished)."""
    MlflowClient(resolve_tracking_uri(tracking_uri)).log_artifacts(run_id, str(local_dir), artifact_path)


def log_metrics_to_run(run_id: str, metrics: Mapping[str, float], *, step: int = 0,
                       tracking_uri: str | None = None) -> None:
    """Log ``metrics`` on run ``run_id`` (which may be finished); non-finite values are skipped."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if np.isfinite(v)]
    for chunk in _chunks(items):
        client.log_batch(run_id, metrics=chunk, synchronous=True)


def registered_alias_version(name: str, alias: str, *, tracking_uri: str | None = None) -> dict[str, str] | None:
    """``{name, version, run_id, source}`` of registered model ``name@alias``; None when there is none."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return {"name": name, "version": str(mv.version), "run_id": mv.run_id or "", "source": mv.source or ""}


# ============================================================================================
# Ensembles (added by the ensembles engineer for experiments/ensemble_runner.py): logging an
# ensemble as an MLflow pyfunc model ("models from code": no pickled Python objects) that
# predicts class probabilities from raw uint8 images. Nothing above changes.
# ============================================================================================
#: The pyfunc model's code, written next to the model at log time (MLflow "models from code").
ENSEMBLE_MODEL_CODE = '''\
"""Galaxy10 ensemble as an MLflow pyfunc model: raw uint8 images (N, H, W, 3) -> probabilities (N, C)."""
import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class Galaxy10Ensemble(PythonModel):
    def load_context(self, context):
        from ensembles.serving import load_ensemble

        self.ensemble = load_ensemble(context.artifacts["ensemble"])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return self.ensemble.predict_proba(np.asarray(model_input, dtype=np.uint8))


mlflow.models.set_model(Galaxy10Ensemble())
'''
#: Artifact key (and folder name) of the saved ensemble inside the pyfunc model.
ENSEMBLE_ARTIFACT = "ensemble"


def _pyfunc_requirements() -> list[str]:
    reqs = _pip_requirements()
    for name in ("scikit-learn", "xgboost", "xgboost-cpu", "joblib", "opencv-python-headless", "scipy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            reqs.append(f"{name}=={importlib.metadata.version(name)}")
    return reqs


def log_ensemble_model(tracker: MlflowTracker, ensemble_dir: str | Path, *, meta: Mapping[str, Any],
                       input_example: np.ndarray, n_classes: int) -> str:
    """Log a saved ensemble folder (``ensembles.serving.save_ensemble``) as the run's pyfunc ``model``.

    The model takes uint8 images ``(N, H, W, 3)`` of any size (signature ``(-1, -1, -1, 3)``) and
    returns float32 probabilities ``(N, n_classes)``; ``meta`` (size, crop, class names, ...) is the
    model's MLmodel ``metadata`` and the run artifact ``model_meta.json``. Returns the model URI.
    """
    import mlflow.pyfunc
    from mlflow.models import Model, ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    run_id = tracker._need_run()
    example = np.asarray(input_example, dtype=np.uint8)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(n_classes)),
                                                          "probabilities")]))
    plain_meta = json.loads(json.dumps(dict(meta)))
    mlflow.set_tracking_uri(tracker.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="galaxy10-pyfunc-") as tmp:
        code = Path(tmp) / "galaxy10_ensemble_model.py"
        code.write_text(ENSEMBLE_MODEL_CODE)
        try:
            with _experiment_env(tracker.experiment_id), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The structure of `inputs`", category=UserWarning)
                info = Model.log(artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id,
                                 python_model=str(code), artifacts={ENSEMBLE_ARTIFACT: str(ensemble_dir)},
                                 signature=signature, input_example=example, metadata=plain_meta,
                                 pip_requirements=_pyfunc_requirements())
        except MlflowException as err:
            raise ModelError(f"cannot log the ensemble model to run {run_id} ({_first_line(err)})") from None
    tracker.log_dict(plain_meta, META_ARTIFACT)
    log.info("logged ensemble model %s (run %s)", info.model_uri, run_id)
    return info.model_uri


# ============================================================================================
# Faults (added with tests/test_faults.py): a tracking server that goes away mid-command.
# ============================================================================================
def unreachable_reason(err: BaseException) -> str | None:
    """Why the tracking server could not be reached (``connection refused``, ``timed out``), or None
    when ``err`` (or what it was raised from) is not a connection failure."""
    import requests

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, requests.exceptions.Timeout):
            return "timed out"
        if isinstance(current, requests.exceptions.ConnectionError):
            return "connection refused" if "refused" in str(current).lower() else "connection failed"
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def server_errors(uri: str) -> Iterator[None]:
    """Turn a failure to reach the tracking server inside the block into one :class:`ConfigError` line.

    MLflow's client retries each request first (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default 7, with
    exponential backoff: about 6 minutes of "Retrying" warnings), so a server that comes back within
    that window is ridden out. Other MLflow errors propagate unchanged.
    """
    import requests

    try:
        yield
    except (MlflowException, requests.exceptions.RequestException) as err:
        reason = unreachable_reason(err)
        if reason is None:
            raise
        raise unreachable_error(uri, reason) from None


def unreachable_error(uri: str, reason: str) -> ConfigError:
    """The one-line error for a tracking server that did not answer."""
    return ConfigError(f"MLflow tracking server {uri} is unreachable ({reason}, after the client's retries); "
                       "start it again or fix --tracking-uri / MLFLOW_TRACKING_URI, then re-run the same "
                       "command to continue")
