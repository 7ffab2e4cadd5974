"""Model references and logged models: the one place that knows MLflow's model URI forms.

A ``--model`` value is parsed once (:func:`parse_model_ref`: ``NAME@alias``, a run id, ``runs:/``,
``models:/``, a local folder), a registered name is looked up once in the registry
(:func:`resolve_model`: one ``get_model_version_by_alias`` / ``get_model_version`` call, which also
gives the version, alias and run for the model card), and the model is loaded once from the version's own
logged-model URI (Keras bundles with ``safe_mode``, or pyfunc ensembles). The public functions take the
store as ``tracking_uri`` (None: the process's store) and read it inside one
:func:`experiments.tracking.store.fluent_store` block.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
from mlflow.exceptions import MlflowException

from core.errors import ModelError, first_line
from experiments.tracking.base import META_KEYS
from experiments.tracking.store import fluent_store, get_tracking_uri, mlflow_client, require_tracking_store
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


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_NAME_ALIAS = re.compile(r"^(?P<name>[^@/:\s]+(?:[^@:\s]*[^@/:\s])?)@(?P<alias>[A-Za-z0-9_-]+)$")


def parse_model_ref(ref: str) -> str:
    """Turn a ``--model`` value into an MLflow model URI.

    ``NAME@alias`` -> ``models:/NAME@alias``; a bare 32-hex run id -> ``runs:/<id>/model``;
    ``models:/...``, ``runs:/...`` and other URIs pass through.
    """
    ref = ref.strip()
    if not ref:
        raise ModelError("empty --model; pass NAME@alias, a run id, runs:/<id>/model or models:/...")
    if "://" in ref or ref.startswith(("models:/", "runs:/")):
        return ref
    if _RUN_ID.match(ref):
        return f"runs:/{ref}/model"
    match = _NAME_ALIAS.match(ref)
    if match:
        return f"models:/{match['name']}@{match['alias']}"
    if Path(ref).exists():  # a local MLflow model folder
        return ref
    raise ModelError(f"cannot read model reference {ref!r}; use NAME@alias (e.g. my-study@champion),"
                     " a 32-character run id, runs:/<run_id>/model or models:/NAME/VERSION")


def resolve_model_uri(ref: str, *, tracking_uri: str | None = None) -> str:
    """:func:`parse_model_ref`, then check that the tracking store exists unless ``ref`` is a local folder
    (a lookup in a missing store must not create an empty MLflow database)."""
    uri = parse_model_ref(ref)
    if not Path(uri).exists():
        require_tracking_store(get_tracking_uri(tracking_uri))
    return uri


def _not_found(model_uri: str, err: BaseException) -> ModelError:
    return ModelError(f"cannot find model {model_uri} at {get_tracking_uri()} ({first_line(err)}); "
                      "check the run id / name@alias and --tracking-uri")


def resolve_model(model_uri: str) -> tuple[str, dict[str, Any]]:
    """``(loadable URI, registry facts)``: a registered ``models:/NAME@alias`` or ``models:/NAME/VERSION`` is
    looked up once in the registry and replaced by the version's own logged-model URI (so loading it asks
    the registry nothing more); other URIs pass through with no facts."""
    if not model_uri.startswith("models:/"):
        return model_uri, {}
    ref = model_uri[len("models:/"):]
    if "@" in ref:
        name, alias = ref.split("@", 1)
        lookup, facts = (lambda c: c.get_model_version_by_alias(name, alias)), {"name": name, "alias": alias}
    elif "/" in ref:
        name, version = ref.rsplit("/", 1)
        lookup, facts = (lambda c: c.get_model_version(name, version)), {"name": name}
    else:  # models:/<logged model id>
        return model_uri, {}
    try:
        mv = lookup(mlflow_client())
    except MlflowException as err:
        raise _not_found(model_uri, err) from None
    facts.update(version=str(mv.version), run_id=mv.run_id)
    model_id = getattr(mv, "model_id", None)
    return (f"models:/{model_id}" if model_id else mv.source), facts


def _model_info(model_uri: str, shown: str | None = None) -> Any:
    try:
        return mlflow.models.get_model_info(model_uri)
    except (MlflowException, OSError) as err:
        raise _not_found(shown or model_uri, err) from None


def load_model_bundle(model_uri: str, *, info: Any = None, tracking_uri: str | None = None) -> ModelBundle:
    """Reload a Keras model logged by training, safely (Keras ``safe_mode=True``), with its metadata
    (``info``: its ``ModelInfo`` when the caller already has it)."""
    with fluent_store(tracking_uri):
        return _load_keras_bundle(model_uri, info)


def _load_keras_bundle(model_uri: str, info: Any) -> ModelBundle:
    import mlflow.keras

    shown = model_uri
    if info is None:
        model_uri, _ = resolve_model(model_uri)
        info = _model_info(model_uri, shown)
    if "keras" not in (info.flavors or {}):
        raise ModelError(f"model {shown} has no keras flavour (it has {', '.join(info.flavors or {})}); "
                         "pass a model logged by `galaxy10 train`")
    meta = dict(info.metadata or {})
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ModelError(f"model {shown} lacks prediction metadata ({', '.join(missing)}); "
                         "re-log it with `galaxy10 train`")
    try:
        register_custom_layers()  # backbones' own layers (e.g. D4 group convolutions) must be known to Keras
        model = mlflow.keras.load_model(model_uri, load_model_kwargs={"safe_mode": True, "compile": False})
    except (MlflowException, OSError, ValueError, TypeError) as err:
        raise ModelError(f"cannot load model {shown} ({first_line(err)}); it may be damaged or from an "
                         "incompatible Keras version") from None
    return ModelBundle(model, meta)


def _run_facts(facts: dict[str, Any], info: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"run_id": info.run_id, "model_id": getattr(info, "model_id", None), **facts}
    out["run_id"] = out.get("run_id") or info.run_id
    if out.get("run_id"):
        with contextlib.suppress(MlflowException):
            tags = mlflow_client().get_run(out["run_id"]).data.tags
            if "data.synthetic" in tags:
                out["synthetic"] = tags["data.synthetic"] == "true"
            if "data.provenance" in tags:
                out["provenance"] = tags["data.provenance"]
    return out


def load_prediction_model(model_uri: str, *, tracking_uri: str | None = None) -> LoadedModel:
    """Load a logged model for prediction: Keras bundles or generic pyfunc models (ensembles). The
    reference is resolved once, its model info read once, the model loaded once."""
    with fluent_store(tracking_uri):
        return _load_prediction_model(model_uri)


def _load_prediction_model(model_uri: str) -> LoadedModel:
    source, registry = resolve_model(model_uri)
    info = _model_info(source, model_uri)
    flavors = info.flavors or {}
    facts = _run_facts(registry, info)
    if "keras" in flavors:
        bundle = _load_keras_bundle(source, info)
        return LoadedModel(model_uri, "keras", bundle, bundle.meta, facts)
    if "python_function" in flavors:
        try:
            pyfunc = mlflow.pyfunc.load_model(source)
        except (MlflowException, OSError, ValueError, ImportError) as err:
            raise ModelError(f"cannot load model {model_uri} ({first_line(err)})") from None
        return LoadedModel(model_uri, "pyfunc", pyfunc, dict(info.metadata or {}), facts)
    raise ModelError(f"model {model_uri} has flavours {', '.join(flavors) or 'none'}; galaxy10 predicts with "
                     "Keras models or pyfunc ensembles")


def load_keras_model(ref: str, *, tracking_uri: str | None = None) -> ModelBundle:
    """The logged Keras model ``ref`` (NAME@alias, run id, ``models:/...``) and its metadata (``model.init_from``)."""
    with fluent_store(tracking_uri):
        return _load_keras_bundle(resolve_model_uri(ref), None)
