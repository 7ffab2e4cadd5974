"""Logged models back for prediction: Keras bundles (``safe_mode``) and pyfunc ensembles."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, NamedTuple

import mlflow
from mlflow.exceptions import MlflowException

from experiments.tracking.base import META_KEYS
from experiments.tracking.store import get_tracking_uri, mlflow_client
from models.layers import register_custom_layers
from pipelines.errors import ModelError, first_line


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
        raise ModelError(f"cannot find model {model_uri} at {get_tracking_uri()} ({first_line(err)}); "
                         "check the run id / name@alias and --tracking-uri") from None


def load_model_bundle(model_uri: str) -> ModelBundle:
    """Reload a Keras model logged by training, safely (Keras ``safe_mode=True``), with its metadata."""
    import mlflow.keras

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
        raise ModelError(f"cannot load model {model_uri} ({first_line(err)}); it may be damaged or from an "
                         "incompatible Keras version") from None
    return ModelBundle(model, meta)


def _info_from_uri(model_uri: str, info: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"run_id": info.run_id, "model_id": getattr(info, "model_id", None)}
    if model_uri.startswith("models:/"):
        ref = model_uri[len("models:/"):]
        client = mlflow_client()
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
            tags = mlflow_client().get_run(out["run_id"]).data.tags
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
            raise ModelError(f"cannot load model {model_uri} ({first_line(err)})") from None
        return LoadedModel(model_uri, "pyfunc", pyfunc, dict(info.metadata or {}), facts)
    raise ModelError(f"model {model_uri} has flavours {', '.join(flavors) or 'none'}; galaxy10 predicts with "
                     "Keras models or pyfunc ensembles")
