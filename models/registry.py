"""The registry of backbones: ``model.name`` picks a builder (no Keras import here).

A backbone is a function ``build(inputs, model_cfg, dtype) -> features`` registered under a name
with :func:`register`; it turns the float32 0..255 image tensor into a feature tensor (rank 2) and
validates its own parameters (``ConfigError`` naming the key). :func:`models.build_model` adds the
shared head (the ``embedding`` layer and the softmax classifier). Adding a backbone = one new module
in ``models/`` (imported by ``models/__init__.py`` automatically) + one test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.errors import ConfigError

#: Keras dtype policies a model may be built with (set per layer, never as global Keras state); ``auto``
#: resolves per machine (:func:`models.precision.resolve_precision`).
PRECISIONS: tuple[str, ...] = ("auto", "float32", "mixed_bfloat16")

#: A backbone builder: ``(inputs, model_cfg, dtype_policy) -> rank-2 feature tensor``.
Builder = Callable[[Any, Any, Any], Any]

BACKBONES: dict[str, Builder] = {}
#: Each backbone's ``model.params``: name -> (default, check(value) -> bool, what is allowed).
PARAMS: dict[str, dict[str, tuple[Any, Callable[[Any], bool], str]]] = {}


def register(
    name: str, params: dict[str, tuple[Any, Callable[[Any], bool], str]] | None = None
) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder`` as backbone ``name`` (names are unique) with its ``model.params``
    (``{key: (default, check, allowed)}``)."""

    def deco(builder: Builder) -> Builder:
        if name in BACKBONES and BACKBONES[name] is not builder:
            raise ValueError(f"backbone {name!r} is registered twice")
        BACKBONES[name] = builder
        PARAMS[name] = dict(params or {})
        return builder

    return deco


def resolve_params(name: str, given: Any) -> dict[str, Any]:
    """Backbone ``name``'s parameters: its defaults updated with ``given``, each checked.

    Raises
    ------
    ConfigError
        One line naming ``model.params.<key>`` and what is allowed (or the known keys).
    """
    spec = PARAMS.get(name, {})
    given = dict(given or {})
    unknown = sorted(set(given) - set(spec))
    if unknown:
        known = ", ".join(sorted(spec)) or "none"
        raise ConfigError(
            f"config key model.params.{unknown[0]} is not a parameter of backbone {name!r}; its parameters: {known}"
        )
    out = {}
    for key, (default, check, allowed) in spec.items():
        value = given.get(key, default)
        if isinstance(value, list):
            value = tuple(value)
        if not check(value):
            raise ConfigError(
                f"config key model.params.{key}={value!r} is not allowed for backbone {name!r}; use {allowed}"
            )
        out[key] = value
    return out


def get_backbone(name: str) -> Builder:
    """The builder of backbone ``name``; one ``ConfigError`` line listing the registered names otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(
            f"config key model.name={name!r} is not a registered backbone; use one of: {', '.join(sorted(BACKBONES))}"
        ) from None


def backbone_params(model_cfg: Any) -> dict[str, Any]:
    """The parameters of ``model_cfg``'s backbone: defaults plus ``model.params``, validated."""
    get_backbone(model_cfg.name)
    return resolve_params(model_cfg.name, model_cfg.params)
