"""YAML and plain data: the strict YAML reader (duplicate keys refused) with one-line errors, and
:func:`plain`, which turns nested dataclasses and mappings into the plain values JSON and YAML write."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError


class DuplicateKeyError(ValueError):
    """A YAML mapping that names a key twice (plain YAML loaders keep the last value silently)."""


def load_yaml_text(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (:class:`DuplicateKeyError` names the key and line)."""

    class _StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                raise DuplicateKeyError(f"key {key!r} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    _StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml_file(path: str | os.PathLike, *, what: str, example: str) -> Any:
    """The parsed contents of YAML file ``path`` (``None`` for an empty file).

    ``what`` names the file in the one-line errors (``"config file"``, ``"tuning config"``) and
    ``example`` is the existing file suggested when ``path`` is missing.

    Raises
    ------
    ConfigError
        If the file does not exist or is not valid YAML.
    """

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} not found; pass an existing YAML, e.g. {example}")
    try:
        return load_yaml_text(p.read_text())
    except DuplicateKeyError as err:
        raise ConfigError(f"{what} {p} sets {err} twice; keep one of them") from None
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{what} {p} is not valid YAML ({first}); fix the syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {p} is not UTF-8 text; save it as a UTF-8 YAML file") from None


def plain(value: Any) -> Any:
    """A copy of nested mappings/sequences/dataclasses as plain dicts (string keys) and lists, for JSON and YAML."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
