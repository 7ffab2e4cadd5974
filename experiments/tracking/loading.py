"""Logged models back: Keras bundles (loaded with ``safe_mode``) and pyfunc ensembles.

A ``--model`` value is a :class:`~experiments.tracking.workspace.ModelRef` (parsed once); the workspace
resolves a registered name once (:meth:`Workspace.resolve`: one registry call, which also gives the
version, alias and run for the model card); the model's files are downloaded once from the workspace's
store (explicitly: MLflow's process-wide default is not read) and loaded once.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
from mlflow.exceptions import MlflowException

from core.errors import ModelError, first_line
from experiments.tracking.base import META_KEYS
from experiments.tracking.store import quiet_artifact_downloads
from experiments.tracking.workspace import ModelRef, ResolvedModel, Workspace
from models.layers import register_custom_layers


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


def parse_model_ref(ref: str) -> str:
    """The MLflow model URI of a ``--model`` value (see :meth:`ModelRef.parse`)."""
    return ModelRef.parse(ref).uri


def _artifact_location(ws: Workspace, source: str) -> str:
    """Where a model's files are, asked of the workspace's store: a logged model (``models:/<model id>``) or a
    run's model (``runs:/<run id>/<name>``: the logged model of that name the run produced, else the run's
    own artifact folder, as MLflow 2 stored it)."""
    if source.startswith("models:/"):
        return ws.client.get_logged_model(source[len("models:/") :]).artifact_location
    if source.startswith("runs:/"):
        run_id, _, name = source[len("runs:/") :].partition("/")
        run = ws.client.get_run(run_id)
        logged = ws.client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        named = [m for m in logged if m.name == name]
        if named:
            return max(named, key=lambda m: m.creation_timestamp or 0).artifact_location
        return f"{run.info.artifact_uri.rstrip('/')}/{name}"
    return source


def _download(ws: Workspace, source: str, shown: str) -> Path:
    """The model's files in a folder of this process (MLflow's own loaders download the same way), read from
    the workspace's store explicitly - MLflow's process-wide default is not consulted."""
    if Path(source).exists():
        return Path(source)
    folder = Path(tempfile.mkdtemp(prefix="galaxy10-model-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    try:
        location = _artifact_location(ws, source)
        with quiet_artifact_downloads():
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(folder), tracking_uri=ws.tracking_uri
            )
        return Path(local)
    except (MlflowException, OSError) as err:
        raise ModelError(
            f"cannot find model {shown} at {ws.tracking_uri} ({first_line(err)}); check the run id / "
            "name@alias and --tracking-uri"
        ) from None


def _model_info(local: Path, shown: str) -> Any:
    try:
        return mlflow.models.Model.load(str(local))
    except (MlflowException, OSError) as err:
        raise ModelError(
            f"{shown} is not an MLflow model ({first_line(err)}); pass a model logged by galaxy10"
        ) from None


def _load_keras_bundle(local: Path, info: Any, shown: str) -> ModelBundle:
    import mlflow.keras

    if "keras" not in (info.flavors or {}):
        raise ModelError(
            f"model {shown} has no keras flavour (it has {', '.join(info.flavors or {})}); "
            "pass a model logged by `galaxy10 train`"
        )
    meta = dict(info.metadata or {})
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ModelError(
            f"model {shown} lacks prediction metadata ({', '.join(missing)}); re-log it with `galaxy10 train`"
        )
    try:
        register_custom_layers()  # backbones' own layers (e.g. D4 group convolutions) must be known to Keras
        model = mlflow.keras.load_model(str(local), load_model_kwargs={"safe_mode": True, "compile": False})
    except (MlflowException, OSError, ValueError, TypeError) as err:
        raise ModelError(
            f"cannot load model {shown} ({first_line(err)}); it may be damaged or from an incompatible Keras version"
        ) from None
    return ModelBundle(model, meta)


def _run_facts(ws: Workspace, resolved: ResolvedModel, info: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"run_id": info.run_id, "model_id": getattr(info, "model_id", None), **resolved.facts()}
    out["run_id"] = out.get("run_id") or info.run_id
    if out.get("run_id"):
        with contextlib.suppress(MlflowException):
            tags = ws.client.get_run(out["run_id"]).data.tags
            if "data.synthetic" in tags:
                out["synthetic"] = tags["data.synthetic"] == "true"
            if "data.provenance" in tags:
                out["provenance"] = tags["data.provenance"]
    return out


def load_prediction_model(ref: ModelRef | str, *, ws: Workspace) -> LoadedModel:
    """Load a logged model for prediction: Keras bundles or generic pyfunc models (ensembles). The reference
    is resolved once (:meth:`Workspace.resolve`), the model's files read once, the model loaded once."""
    ref = ModelRef.parse(ref)
    resolved = ws.resolve(ref)
    local = _download(ws, resolved.source, ref.uri)
    info = _model_info(local, ref.uri)
    flavors = info.flavors or {}
    facts = _run_facts(ws, resolved, info)
    if "keras" in flavors:
        bundle = _load_keras_bundle(local, info, ref.uri)
        return LoadedModel(ref.uri, "keras", bundle, bundle.meta, facts)
    if "python_function" in flavors:
        import mlflow.pyfunc

        try:
            pyfunc = mlflow.pyfunc.load_model(str(local))
        except (MlflowException, OSError, ValueError, ImportError) as err:
            raise ModelError(f"cannot load model {ref.uri} ({first_line(err)})") from None
        return LoadedModel(ref.uri, "pyfunc", pyfunc, dict(info.metadata or {}), facts)
    raise ModelError(
        f"model {ref.uri} has flavours {', '.join(flavors) or 'none'}; galaxy10 predicts with "
        "Keras models or pyfunc ensembles"
    )


def load_keras_model(ref: ModelRef | str, *, ws: Workspace) -> ModelBundle:
    """The logged Keras model ``ref`` (NAME@alias, run id, ``models:/...``) and its metadata (``model.init_from``)."""
    ref = ModelRef.parse(ref)
    local = _download(ws, ws.resolve(ref).source, ref.uri)
    return _load_keras_bundle(local, _model_info(local, ref.uri), ref.uri)
