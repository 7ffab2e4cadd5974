"""Where things live, as one value: the MLflow tracking store, the Optuna storage and the cache folder.

The CLI builds one :class:`Workspace` per command (``experiments.commands.common.workspace(args)``); a
library caller builds its own (``Workspace(tracking_uri=..., storage_url=...)``). Functions take the
workspace (``ws``), never loose URIs. It holds one memoised :class:`mlflow.MlflowClient` and resolves each
model reference once: a :class:`ModelRef` is parsed once from what the user typed and carried; ``resolve``
asks the registry about a ``models:/NAME@alias`` or ``models:/NAME/VERSION`` once per workspace and
remembers the answer (the report scores and describes the same champion without asking twice).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from core.errors import ModelError, first_line
from core.paths import DEFAULT_STORAGE, default_cache_dir
from experiments.tracking.store import require_tracking_store, resolve_tracking_uri

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_NAME_ALIAS = re.compile(r"^(?P<name>[^@/:\s]+(?:[^@:\s]*[^@/:\s])?)@(?P<alias>[A-Za-z0-9_-]+)$")


@dataclass(frozen=True)
class ModelRef:
    """A model reference as the user gave it (``text``) and the MLflow URI it names (``uri``): a registered
    ``models:/NAME@alias`` or ``models:/NAME/VERSION``, a logged ``models:/<model id>``, ``runs:/<id>/model``
    or a local MLflow model folder."""

    text: str
    uri: str

    @classmethod
    def parse(cls, ref: ModelRef | str) -> ModelRef:
        """Parse ``NAME@alias``, a 32-character run id, ``runs:/...``, ``models:/...`` or a local folder; one
        ``ModelError`` line for anything else."""
        if isinstance(ref, ModelRef):
            return ref
        text = str(ref).strip()
        if not text:
            raise ModelError("empty --model; pass NAME@alias, a run id, runs:/<id>/model or models:/...")
        if "://" in text or text.startswith(("models:/", "runs:/")):  # other URIs pass through to MLflow
            return cls(text, text)
        if _RUN_ID.match(text):
            return cls(text, f"runs:/{text}/model")
        match = _NAME_ALIAS.match(text)
        if match:
            return cls(text, f"models:/{match['name']}@{match['alias']}")
        if text and Path(text).exists():
            return cls(text, text)
        raise ModelError(
            f"cannot read model reference {text!r}; use NAME@alias (e.g. my-study@champion),"
            " a 32-character run id, runs:/<run_id>/model or models:/NAME/VERSION"
        )

    @property
    def is_local(self) -> bool:
        """A local MLflow model folder (read without a tracking store)."""
        return Path(self.uri).exists()

    @property
    def registered(self) -> tuple[str, str | None, str | None] | None:
        """``(name, alias, version)`` of a registered reference, else None."""
        if not self.uri.startswith("models:/"):
            return None
        body = self.uri[len("models:/") :]
        if "@" in body:
            name, alias = body.split("@", 1)
            return name, alias, None
        if "/" in body:
            name, version = body.rsplit("/", 1)
            return name, None, version
        return None  # models:/<logged model id>

    def __str__(self) -> str:
        return self.uri


@dataclass(frozen=True)
class ResolvedModel:
    """A reference looked up: the URI to load (a version's own logged model) and the registry's facts."""

    ref: ModelRef
    source: str
    name: str | None = None
    alias: str | None = None
    version: str | None = None
    run_id: str | None = None

    def facts(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in {"name": self.name, "alias": self.alias, "version": self.version, "run_id": self.run_id}.items()
            if v is not None
        }


@dataclass
class Workspace:
    """The tracking store, the study storage and the cache folder of one command (see the module docs)."""

    tracking_uri: str = ""
    #: The Optuna storage given on the command line (``--storage``); None: a tuning YAML's ``study.storage``,
    #: else :data:`~core.paths.DEFAULT_STORAGE` (:meth:`study_storage`).
    storage_url: str | None = None
    cache_dir: Path | None = None
    _resolved: dict[str, ResolvedModel] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.tracking_uri = resolve_tracking_uri(self.tracking_uri or None)
        self.cache_dir = Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()

    def study_storage(self, configured: str | None = None) -> str:
        """The Optuna storage URL: ``--storage``, else the config's ``study.storage``, else the default."""
        return self.storage_url or configured or DEFAULT_STORAGE

    def with_storage(self, storage_url: str) -> Workspace:
        """The same workspace (and client) with the study storage settled."""
        other = Workspace.__new__(Workspace)
        other.__dict__.update({**self.__dict__, "storage_url": storage_url})
        return other

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for a spawned worker without its client and look-ups (each process makes its own)."""
        return {"tracking_uri": self.tracking_uri, "storage_url": self.storage_url, "cache_dir": self.cache_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._resolved = {}

    @classmethod
    def of(cls, ws: Workspace | str | None = None, **kwargs: Any) -> Workspace:
        """``ws`` itself, or a workspace for the tracking URI ``ws`` (None: ``MLFLOW_TRACKING_URI``, else
        ``./mlflow.db``)."""
        return ws if isinstance(ws, Workspace) else cls(tracking_uri=ws or "", **kwargs)

    @cached_property
    def client(self) -> MlflowClient:
        """The workspace's one MLflow client."""
        return MlflowClient(self.tracking_uri)

    def require_store(self) -> str:
        """The tracking URI, after checking that an SQLite store file exists (a look-up in a missing store
        must not create an empty database)."""
        return require_tracking_store(self.tracking_uri)

    def resolve(self, ref: ModelRef | str) -> ResolvedModel:
        """The loadable URI and registry facts of ``ref``: a registered reference is looked up once per
        workspace (memoised), other references pass through; every reference but a local folder needs the
        tracking store to exist."""
        ref = ModelRef.parse(ref)
        if ref.uri in self._resolved:
            return self._resolved[ref.uri]
        if not ref.is_local:  # a look-up in a missing SQLite store must not create an empty database
            self.require_store()
        registered = ref.registered
        if registered is None:
            resolved = ResolvedModel(ref, ref.uri)
        else:
            name, alias, version = registered
            try:
                mv = (
                    self.client.get_model_version_by_alias(name, alias)
                    if alias is not None
                    else self.client.get_model_version(name, version)
                )
            except MlflowException as err:
                raise ModelError(
                    f"cannot find model {ref.uri} at {self.tracking_uri} ({first_line(err)}); check "
                    "the run id / name@alias and --tracking-uri"
                ) from None
            model_id = getattr(mv, "model_id", None)
            resolved = ResolvedModel(
                ref, f"models:/{model_id}" if model_id else mv.source, name, alias, str(mv.version), mv.run_id
            )
        self._resolved[ref.uri] = resolved
        return resolved
