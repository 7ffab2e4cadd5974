"""The one reader, key check and value checks shared by run, tuning and ensemble configs.

Every message has the same shape, ``config key <dotted.key>=<value> ...; <the fix>`` (or ``unknown config
key <dotted.key>; allowed keys in <section>: ...``), so a user reads one wording whichever YAML was wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.yaml_io import read_yaml_file


def read_config(path: str | Path, *, what: str, example: str, holds: str) -> dict[str, Any]:
    """Read a config YAML as a mapping (an empty file is an empty mapping).

    Parameters
    ----------
    path : str or Path
        The YAML file.
    what : str
        What the file is, for messages ("run config", "tuning config", "ensemble config").
    example : str
        A shipped file to point the user at when the file cannot be read.
    holds : str
        What the top-level mapping holds, for the message when the file holds something else.
    """
    raw = read_yaml_file(path, what=what, example=example)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{what} {Path(path)} must hold a mapping of {holds}; see {example}")
    return dict(raw)


def allowed_names(allowed: type | Iterable[str]) -> list[str]:
    """The key names of a dataclass, or the given names."""
    if isinstance(allowed, type) and is_dataclass(allowed):
        return [f.name for f in fields(allowed)]
    return [str(a) for a in allowed]


def check_keys(section: str, raw: Mapping[str, Any], allowed: type | Iterable[str]) -> None:
    """Raise ``ConfigError`` naming the first unknown key of ``raw`` and the allowed ones.

    ``section`` is the dotted path of ``raw`` ("" for the top level); ``allowed`` a dataclass or names.
    """
    names = allowed_names(allowed)
    unknown = sorted(str(k) for k in raw if str(k) not in names)
    if unknown:
        where = f"{section}.{unknown[0]}" if section else unknown[0]
        scope = f"keys in {section}" if section else "top-level keys"
        raise ConfigError(f"unknown config key {where}; allowed {scope}: {', '.join(names)}")


def as_mapping(key: str, value: Any) -> Mapping[str, Any]:
    """``value`` as a mapping (None is empty)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"config key {key}={value!r} has the wrong type; give a mapping of settings")
    return value


def as_bool(key: str, value: Any) -> bool:
    """``value`` if it is true or false."""
    if not isinstance(value, bool):
        raise ConfigError(f"config key {key}={value!r} has the wrong type; give true or false")
    return value


def auto_or_bool(key: str, value: Any) -> bool | str:
    """``auto``, true or false."""
    if value == "auto" or isinstance(value, bool):
        return value
    raise ConfigError(f"config key {key}={value!r} is not allowed; use auto, true or false")


def as_int(key: str, value: Any, low: int, high: int | None = None, *, nullable: bool = False) -> int | None:
    """An integer in ``[low, high]`` (or None when ``nullable``)."""
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        rng = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ConfigError(f"config key {key}={value!r} is not allowed; give {rng}{' or null' if nullable else ''}")
    return int(value)


def as_positive_number(key: str, value: Any) -> float:
    """A finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"config key {key}={value!r} is not allowed; give a positive number")
    return float(value)


def as_choice(key: str, value: Any, choices: Iterable[str], *, nullable: bool = False) -> str | None:
    """One of ``choices`` (or None when ``nullable``)."""
    if value is None and nullable:
        return None
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(
            f"config key {key}={value!r} is not allowed; use one of: {', '.join(map(str, choices))}"
            f"{' or null' if nullable else ''}"
        )
    return str(value)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smh])")


def parse_duration(text: str, *, option: str = "--budget") -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"15m"``, ``"1h"`` or ``"1h30m"``; ``ConfigError`` otherwise."""
    raw = str(text).strip().lower().replace(" ", "")
    try:
        seconds = float(raw)
    except ValueError:
        parts = _PART.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            raise ConfigError(f"{option} {text!r} is not a duration; write e.g. 90s, 20m, 1h or 1h30m") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{option} {text!r} must be a positive duration; write e.g. 20m or 1h")
    return seconds
