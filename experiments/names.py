"""What a study, experiment or run may be called (names become registered models, URIs and folders)."""

from __future__ import annotations

import re
from typing import Any

from core.errors import ConfigError

#: Study names become MLflow registered-model names (``<study>``, ``<study>-ensemble``), ``models:/NAME@alias``
#: references and folder names (``reports/<study>``): letters, digits, ``_ . -``; no ``..``.
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: Longest experiment or run name.
MAX_LABEL_CHARS = 250


def check_study_name(name: Any, what: str = "--study") -> str:
    """``name`` stripped, if it is a valid study name; else one ``ConfigError`` line naming the rule."""
    text = name.strip() if isinstance(name, str) else name
    if not isinstance(text, str) or not _STUDY_NAME.match(text) or ".." in text:
        raise ConfigError(
            f"{what} {name!r} is not a valid study name; use 1-100 letters, digits, '_', '.' or '-' "
            "starting with a letter or digit (it names registered models and report folders), "
            "e.g. tune-cnn"
        )
    return text


def check_label(name: Any, what: str) -> str:
    """``name`` if it is a usable MLflow experiment or run name (printable, 1-250 characters)."""
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > MAX_LABEL_CHARS
        or not name.isprintable()
        or name != name.strip()
    ):
        raise ConfigError(
            f"{what} {name!r} is not a usable name; use 1-{MAX_LABEL_CHARS} printable characters "
            "without leading or trailing spaces, e.g. galaxy10"
        )
    return name
