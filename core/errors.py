"""Errors the platform raises for bad input.

Every error a user can cause carries one line that names the problem and the fix; the CLI prints
that line and exits non-zero without a traceback.
"""

from __future__ import annotations


class Galaxy10Error(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is the one-line message."""


class DataError(Galaxy10Error):
    """Missing, unreadable or malformed data files (HDF5, images, CSV, splits, caches)."""


class ConfigError(Galaxy10Error):
    """Malformed configuration: unknown keys, wrong types, empty ranges."""


class ModelError(Galaxy10Error):
    """Missing or unusable models (unknown run, alias or artifact)."""


def first_line(err: BaseException) -> str:
    """The first line of ``str(err)`` (or the exception's type name when empty), for one-line messages."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
