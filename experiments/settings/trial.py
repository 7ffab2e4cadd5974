"""Each trial's run config from a tuning YAML: the base run merged with the study's data keys, the reference
recipe's config, a trial's sampled values applied, and the checks of a YAML against the run config."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from experiments.settings.run import apply_overrides, from_dict, read_yaml
from experiments.settings.search_space import Scalar, _copy, activating_params, to_overrides
from experiments.settings.tune import ATTR_INIT_FROM, ATTR_REFERENCE, TuneConfig

log = logging.getLogger(__name__)


def base_run_dict(tune: TuneConfig) -> dict[str, Any]:
    """The study's base run config as a mapping: the ``base`` YAML (if any) updated by ``run``.

    ``base`` is looked up beside the tuning YAML first, then relative to the working directory.
    """

    raw: dict[str, Any] = {}
    if tune.base is not None:
        candidates = [Path(tune.source).parent / tune.base] if tune.source else []
        candidates.append(Path(tune.base))
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(
                f"base config {tune.base!r} not found (looked in {', '.join(str(c) for c in candidates)}); "
                "give a path relative to the tuning YAML"
            )
        raw = read_yaml(found)
    return _deep_merge(raw, tune.run)


def _deep_merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = _copy(dict(a))
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(out.get(k), Mapping) and isinstance(v, Mapping) else _copy(v)
    return out


def resolve_run_config(
    tune: TuneConfig,
    params: Mapping[str, Scalar],
    *,
    base: Mapping[str, Any] | None = None,
    extra_overrides: Sequence[str] = (),
) -> tuple[Any, list[str]]:
    """Base run config + the suggested ``params`` as dotted overrides -> ``(RunConfig, overrides)``.

    ``augment.auto_from_run`` in the base config applies only to trials whose ``augment.targets`` is
    ``auto`` and is dropped for the others. ``extra_overrides`` (e.g. ``data.path=...`` from the
    command line) go first, the suggested values last.
    """

    overrides = list(extra_overrides) + to_overrides(tune.space, params)
    raw = apply_overrides(base_run_dict(tune) if base is None else base, overrides)
    augment = raw.get("augment")
    if isinstance(augment, dict) and augment.get("targets") != "auto":
        augment.pop("auto_from_run", None)
    return from_dict(raw), overrides


#: The shipped reference recipe, a study's trial 0 (``study.reference_trial``).
REFERENCE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "reference.yaml"


#: Data keys a reference trial takes from the study (which file, which images, which split); the
#: resolution (size, crop) is part of the recipe and stays the reference's.
STUDY_DATA_KEYS: tuple[str, ...] = ("path", "max_images", "test_fraction", "val_fraction", "split_seed")


def reference_run_config(tune: TuneConfig, *, extra_overrides: Sequence[str] = ()) -> tuple[Any, list[str]]:
    """The reference recipe as shipped, run inside the study: ``(RunConfig, overrides)``.

    It keeps ``reference.yaml``'s model, augmentation, resolution and training budget, and takes from the
    study's base config only the experiment and the data selection (:data:`STUDY_DATA_KEYS`), so it is
    scored on the same images and split as every other trial. ``extra_overrides`` (the command line's
    ``--set``) apply to it as to every trial.
    """
    study_base = base_run_dict(tune)
    raw = read_yaml(REFERENCE_CONFIG)
    taken = {
        f"data.{key}": value
        for key, value in (study_base.get("data") or {}).items()
        if key in STUDY_DATA_KEYS and value is not None
    }
    if study_base.get("experiment_name"):
        taken["experiment_name"] = study_base["experiment_name"]
    for dotted, value in taken.items():  # set as values, not parsed again as --set text
        section, _, key = dotted.rpartition(".")
        (raw.setdefault(section, {}) if section else raw)[key] = value
    overrides = [f"{k}={v}" for k, v in taken.items()] + list(extra_overrides)
    return from_dict(apply_overrides(raw, extra_overrides)), overrides


def trial_run_config(
    tune: TuneConfig, trial: Any, *, base: Mapping[str, Any] | None = None, extra_overrides: Sequence[str] = ()
) -> tuple[Any, list[str]]:
    """The run config a (frozen or live) trial trains: the reference recipe for the study's reference trial,
    else the base config with the trial's parameters."""
    if trial.user_attrs.get(ATTR_REFERENCE):
        return reference_run_config(tune, extra_overrides=extra_overrides)
    start = trial.user_attrs.get(ATTR_INIT_FROM)
    extra = [*extra_overrides, f"model.init_from={start}"] if start else list(extra_overrides)
    return resolve_run_config(tune, dict(trial.params), base=base, extra_overrides=extra)


def check_against_config(tune: TuneConfig) -> None:
    """Resolve a run config at each end of every range and for every choice; raise ``ConfigError``.

    Catches unknown config keys and values the run config refuses before any trial runs.
    """
    base = base_run_dict(tune)
    probes: list[tuple[str, Scalar]] = []
    for p in tune.space.params:
        values = p.labels if p.kind == "categorical" else (p.low, p.high)
        probes.extend((p.name, v) for v in values)
    try:
        resolve_run_config(tune, {}, base=base)
    except ConfigError as err:
        raise ConfigError(f"tuning base run config: {err}") from None
    for name, value in probes:
        try:
            resolve_run_config(tune, activating_params(tune.space, name, value), base=base)
        except ConfigError as err:
            raise ConfigError(f"search_space {name!r} = {value!r}: {err}") from None
