"""The Optuna search space as data: parse and validate it from YAML, suggest values for a trial.

A tuning YAML's ``search_space`` section maps an Optuna parameter name to its spec::

    search_space:
      train.learning_rate: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      train.batch_size:    {type: categorical, choices: [32, 64, 128]}
      model.dropout:       {type: float, low: 0.0, high: 0.6, step: 0.05}
      augment.targets:     {type: categorical, choices: {none: {}, auto: auto, weak: {}}}
      augment.targets.disturbed: {type: float, low: 1.0, high: 4.0, when: {augment.targets: weak}}

Spec keys: ``type`` (``float``, ``int``, ``categorical``); ``low``/``high`` with optional ``log``
and ``step`` for numbers; ``choices`` (a list, or a mapping ``label: value`` whose labels Optuna
sees) for categoricals; ``when`` (``{other_param: value or [values]}``; the parameter exists only
in trials where every named earlier parameter took one of those values); ``target`` (the dotted
run-config key the value is written to; defaults to the parameter name, ``null`` makes the
parameter a switch that only ``when`` conditions read).

This module is pure: it never imports Optuna. :func:`suggest` is the only place in the codebase
that calls ``trial.suggest_*``; it works with any object offering those methods.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from core.errors import ConfigError
from experiments.settings.run import plain

PARAM_TYPES: tuple[str, ...] = ("float", "int", "categorical")
SPEC_KEYS: tuple[str, ...] = ("type", "low", "high", "step", "log", "choices", "when", "target")
_NUMERIC_KEYS = frozenset({"type", "low", "high", "step", "log", "when", "target"})
_CATEGORICAL_KEYS = frozenset({"type", "choices", "when", "target"})

#: What Optuna accepts as a categorical choice.
Scalar = None | bool | int | float | str


class SuggestingTrial(Protocol):
    """The part of ``optuna.trial.Trial`` that :func:`suggest` uses."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Scalar]) -> Scalar: ...


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter.

    Attributes
    ----------
    name : str
        The Optuna parameter name.
    kind : str
        ``float``, ``int`` or ``categorical``.
    target : str or None
        Dotted run-config key the value is written to; ``None`` for a switch.
    low, high, step : float or int or None
        Numeric range (inclusive) and optional step.
    log : bool
        Sample on a log scale.
    labels : tuple
        Categorical labels Optuna chooses among (scalars).
    values : tuple
        The value each label stands for (same order as ``labels``).
    when : tuple of (str, tuple)
        Conditions: ``(param name, allowed labels)``; all must hold for the parameter to exist.
    """

    name: str
    kind: str
    target: str | None
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    labels: tuple[Scalar, ...] = ()
    values: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Scalar, ...]], ...] = ()


@dataclass(frozen=True)
class SearchSpace:
    """An ordered collection of :class:`ParamSpec` (conditions refer only to earlier parameters)."""

    params: tuple[ParamSpec, ...]
    raw: Mapping[str, Any]

    @property
    def names(self) -> tuple[str, ...]:
        """The Optuna parameter names, in order."""
        return tuple(p.name for p in self.params)

    def __getitem__(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _label_for(value: Any) -> Scalar:
    """Optuna label for a list choice: scalars stand for themselves, lists/mappings become JSON."""
    if _is_scalar(value):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _parse_choices(where: str, choices: Any) -> tuple[tuple[Scalar, ...], tuple[Any, ...]]:
    if isinstance(choices, Mapping):
        labels = tuple(choices.keys())
        values = tuple(choices.values())
        bad = [lab for lab in labels if not _is_scalar(lab)]
        if bad:
            raise ConfigError(f"{where}: choice label {bad[0]!r} is not a string or number; use plain labels")
    elif isinstance(choices, Sequence) and not isinstance(choices, str):
        values = tuple(choices)
        labels = tuple(_label_for(v) for v in values)
    else:
        raise ConfigError(
            f"{where}: choices must be a list or a mapping label: value, got {choices!r}; "
            "write e.g. choices: [32, 64, 128]"
        )
    if not labels:
        raise ConfigError(f"{where}: choices is empty; list at least two values")
    if len(set(map(repr, labels))) != len(labels):
        raise ConfigError(f"{where}: choices repeat a value ({list(labels)}); list each value once")
    return labels, values


def _parse_numeric(where: str, kind: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"{where}: missing {key!r}; a {kind} parameter needs low and high")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    if kind == "int":
        for key, value in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
            if not (isinstance(value, int) and not isinstance(value, bool)):
                raise ConfigError(f"{where}: {key}={value!r} is not an integer; an int parameter needs integers")
    else:
        for key, value in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
            if not _is_number(value):
                raise ConfigError(f"{where}: {key}={value!r} is not a finite number; give a number")
        low, high = float(low), float(high)
        step = None if step is None else float(step)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log={log!r} is not true/false")
    if not low < high:
        raise ConfigError(
            f"{where}: range low={low} high={high} is empty; make low < high "
            "(or fix the value in the run section instead of searching it)"
        )
    if log and low <= 0:
        raise ConfigError(f"{where}: log scale needs low > 0, got low={low}; raise low or drop log")
    if log and step is not None:
        raise ConfigError(f"{where}: step and log cannot be combined; drop one of them")
    if step is not None and not 0 < step <= high - low:
        raise ConfigError(f"{where}: step={step} must be > 0 and <= high - low = {high - low}; adjust step")
    return {"low": low, "high": high, "step": step, "log": log}


def _parse_when(where: str, when: Any, earlier: Mapping[str, ParamSpec]) -> tuple[tuple[str, tuple[Scalar, ...]], ...]:
    if when is None:
        return ()
    if not isinstance(when, Mapping) or not when:
        raise ConfigError(
            f"{where}: when must be a mapping of an earlier parameter to its value(s), got {when!r}; "
            "write e.g. when: {augment.policy: galaxy}"
        )
    out = []
    for other, wanted in when.items():
        if other not in earlier:
            raise ConfigError(
                f"{where}: when refers to {other!r}, which is not a parameter listed before it; "
                f"use one of: {', '.join(earlier) or '(none)'}"
            )
        spec = earlier[other]
        wanted_t = tuple(wanted) if isinstance(wanted, (list, tuple)) else (wanted,)
        if not wanted_t:
            raise ConfigError(f"{where}: when {other!r} lists no values; give at least one")
        if spec.kind == "categorical":
            wanted_t = tuple(_label_for(w) for w in wanted_t)
            unknown = [w for w in wanted_t if w not in spec.labels]
            if unknown:
                raise ConfigError(
                    f"{where}: when {other}={unknown[0]!r} is not one of its choices {list(spec.labels)}; "
                    "use one of those"
                )
        elif not all(_is_number(w) for w in wanted_t):
            raise ConfigError(f"{where}: when {other}={list(wanted_t)!r} must be numbers; {other} is numeric")
        out.append((str(other), wanted_t))
    return tuple(out)


def parse_param(name: str, spec: Any, earlier: Mapping[str, ParamSpec]) -> ParamSpec:
    """Validate one search-space entry and return its :class:`ParamSpec`; raise ``ConfigError``."""
    where = f"search_space {name!r}"
    if not isinstance(name, str) or not name:
        raise ConfigError(f"search_space key {name!r} is not a parameter name; use a dotted config key")
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping like {{type: float, low: 0.1, high: 0.5}}, got {spec!r}")
    unknown = sorted(set(map(str, spec)) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; use any of: {', '.join(SPEC_KEYS)}")
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}: type={kind!r} is unknown; use one of: {', '.join(PARAM_TYPES)}")
    allowed = _CATEGORICAL_KEYS if kind == "categorical" else _NUMERIC_KEYS
    misplaced = sorted(set(spec) - allowed)
    if misplaced:
        raise ConfigError(
            f"{where}: key {misplaced[0]!r} does not apply to a {kind} parameter; "
            f"use any of: {', '.join(k for k in SPEC_KEYS if k in allowed)}"
        )
    target = spec.get("target", name)
    if target is not None and (not isinstance(target, str) or not target):
        raise ConfigError(f"{where}: target={target!r} must be a dotted config key or null")
    when = _parse_when(where, spec.get("when"), earlier)
    if kind == "categorical":
        if "choices" not in spec:
            raise ConfigError(f"{where}: missing 'choices'; a categorical parameter needs choices")
        labels, values = _parse_choices(where, spec["choices"])
        return ParamSpec(name=name, kind=kind, target=target, labels=labels, values=values, when=when)
    return ParamSpec(name=name, kind=kind, target=target, when=when, **_parse_numeric(where, kind, spec))


def parse_search_space(raw: Any) -> SearchSpace:
    """Validate the ``search_space`` mapping of a tuning YAML and return a :class:`SearchSpace`.

    Raises
    ------
    ConfigError
        One line naming the bad parameter and key: unknown spec keys, unknown types, empty or
        invalid ranges, empty choices, conditions on unknown parameters or values.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            "search_space must be a non-empty mapping of parameter name to spec; "
            "add e.g. train.learning_rate: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}"
        )
    parsed: dict[str, ParamSpec] = {}
    for name, spec in raw.items():
        parsed[str(name)] = parse_param(str(name), spec, parsed)
    return SearchSpace(params=tuple(parsed.values()), raw=dict(raw))


def space_hash(space: SearchSpace) -> str:
    """A stable short hash of the search space (a study keeps one space for its whole life)."""
    canonical = json.dumps(plain(space.raw), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def is_active(spec: ParamSpec, chosen: Mapping[str, Scalar]) -> bool:
    """True when every ``when`` condition of ``spec`` holds for the labels ``chosen`` so far."""
    return all(other in chosen and chosen[other] in wanted for other, wanted in spec.when)


def suggest(trial: SuggestingTrial, space: SearchSpace) -> dict[str, Scalar]:
    """Ask ``trial`` for a value of every active parameter; return ``{param name: label or number}``.

    The only place in the codebase that calls ``trial.suggest_*``.
    """
    chosen: dict[str, Scalar] = {}
    for p in space.params:
        if not is_active(p, chosen):
            continue
        if p.kind == "float":
            chosen[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
        elif p.kind == "int":
            chosen[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            chosen[p.name] = trial.suggest_categorical(p.name, list(p.labels))
    return chosen


def assignments(space: SearchSpace, params: Mapping[str, Scalar]) -> dict[str, Any]:
    """Turn suggested parameters into ``{dotted config key: value}``, in search-space order.

    Categorical labels become the values they stand for; switches (``target: null``) and inactive
    parameters are left out. A key below another assigned key (``augment.targets.disturbed`` under
    ``augment.targets``) is merged into that key's mapping, so the result never assigns a key twice.
    """
    flat: dict[str, Any] = {}
    for p in space.params:
        if p.name not in params or p.target is None:
            continue
        label = params[p.name]
        if p.kind == "categorical":
            if label not in p.labels:
                raise ConfigError(
                    f"search_space {p.name!r}: value {label!r} is not one of its choices {list(p.labels)}; "
                    "the study was probably made with another search space"
                )
            value = p.values[p.labels.index(label)]
        elif p.kind == "float" and p.step is not None:
            value = round(float(label), 12)  # 0.45000000000000007 -> 0.45 (grid points of the step)
        else:
            value = label
        flat[p.target] = _copy(value)
    merged: dict[str, Any] = {}
    for key in sorted(flat, key=lambda k: k.count(".")):
        parent = next((k for k in merged if key.startswith(k + ".")), None)
        if parent is None:
            merged[key] = flat[key]
            continue
        node = merged[parent]
        if not isinstance(node, dict):
            if node is None:  # e.g. targets: null stands for "no targets" -> start an empty mapping
                node = merged[parent] = {}
            else:
                # The parent took a non-mapping value (e.g. "auto"); the child does not apply.
                continue
        parts = key[len(parent) + 1 :].split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = flat[key]
    return {k: merged[k] for k in flat if k in merged}


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(v) for v in value]
    return value


def yaml_scalar(value: Any) -> str:
    """Render ``value`` as a YAML flow literal that parses back to the same value and type.

    PyYAML reads ``1e-05`` as a string, so floats always carry a decimal point (``1.0e-05``).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
        text = repr(value)
        if "e" in text:
            mantissa, exponent = text.split("e")
            if "." not in mantissa:
                mantissa += ".0"
            sign = exponent[0] if exponent[0] in "+-" else "+"
            text = f"{mantissa}e{sign}{exponent.lstrip('+-')}"
        return text
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {yaml_scalar(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_scalar(v) for v in value) + "]"
    raise ConfigError(f"search value {value!r} of type {type(value).__name__} cannot be written to a config")


def to_overrides(space: SearchSpace, params: Mapping[str, Scalar]) -> list[str]:
    """``["model.dropout=0.3", ...]``: the suggested parameters as ``--set`` style dotted overrides.

    A mapping assigned to a whole section (``target: data`` with ``{size: 96, crop: 72}``) sets those keys
    and keeps the section's others (the data file, the split); below a section a mapping replaces the key
    (``model.params``).
    """
    out = []
    for key, value in assignments(space, params).items():
        if "." not in key and isinstance(value, Mapping):
            out.extend(f"{key}.{k}={yaml_scalar(v)}" for k, v in value.items())
        else:
            out.append(f"{key}={yaml_scalar(value)}")
    return out


def activating_params(space: SearchSpace, name: str, label: Scalar) -> dict[str, Scalar]:
    """Parameters that make ``name`` active (each condition's first value) with ``name`` = ``label``."""
    chosen: dict[str, Scalar] = {}

    def need(pname: str, value: Scalar) -> None:
        for other, wanted in space[pname].when:
            if other not in chosen:
                need(other, wanted[0])
        chosen[pname] = value

    need(name, label)
    return {k: chosen[k] for k in space.names if k in chosen}
