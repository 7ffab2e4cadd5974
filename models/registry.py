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

from pipelines.errors import ConfigError

#: A backbone builder: ``(inputs, model_cfg, dtype_policy) -> rank-2 feature tensor``.
Builder = Callable[[Any, Any, Any], Any]

BACKBONES: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder`` as backbone ``name`` (names are unique)."""

    def deco(builder: Builder) -> Builder:
        if name in BACKBONES and BACKBONES[name] is not builder:
            raise ValueError(f"backbone {name!r} is registered twice")
        BACKBONES[name] = builder
        return builder

    return deco


def get_backbone(name: str) -> Builder:
    """The builder of backbone ``name``; one ``ConfigError`` line listing the registered names otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"config key model.name={name!r} is not a registered backbone; use one of: "
                          f"{', '.join(sorted(BACKBONES))}") from None
