"""Run configuration as data: frozen dataclasses loaded from YAML and validated on load.

A YAML file holds only what differs from the defaults (the defaults are the reference project's
recipe: its CNN, its augmentation, Adam 1e-3, 50 epochs). ``--set section.key=value`` overrides
are applied on top; values are parsed as YAML (``--set train.epochs=3``,
``--set augment.targets={disturbed: 3}``, ``--set augment.targets.cigar=2.5``). Every unknown key,
wrong type or bad value raises :class:`~core.errors.ConfigError` naming the dotted key and what
is allowed.
"""

from __future__ import annotations

import copy
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from augment.policies import policy_params
from augment.targeting import check_targets
from core.errors import ConfigError
from core.yaml_io import DuplicateKeyError, load_yaml_text, plain
from experiments.names import check_label
from experiments.settings.checks import check_keys, read_config
from models import backbone_params, get_backbone
from models.registry import PRECISIONS

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "step")
CLASS_WEIGHTS: tuple[str, ...] = ("none", "balanced")
ACTIVATIONS: tuple[str, ...] = ("relu", "elu", "gelu", "swish", "leaky_relu")
MONITORS: tuple[str, ...] = ("val_loss", "val_accuracy")
POLICIES: tuple[str, ...] = ("none", "reference", "galaxy")
DISTRIBUTE: tuple[str, ...] = ("none", "mirrored")
AUTO_TARGETS = "auto"


@dataclass(frozen=True)
class DataConfig:
    """Which data file, the image geometry and the split.

    ``path`` null resolves to ``data/Galaxy10_DECals.h5`` if present, else the synthetic default.
    Images are resized to ``size`` px (cached), augmented, then centre-cropped to ``crop`` px.
    ``max_images`` keeps only the first N images of the file (smoke runs); null keeps all.
    """

    path: str | None = None
    size: int = 128
    crop: int = 88
    split_seed: int = 42
    test_fraction: float = 0.1
    val_fraction: float = 0.1
    max_images: int | None = None


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation policy and strengths, class targeting and test-time augmentation.

    ``targets``: null (no targeting), ``{class slug: multiplier}`` (slugs, names or indices of the
    data file's own classes), or ``auto``: the per-class validation recall of ``auto_from_run`` (an
    MLflow run id) or, without it, of an ``auto_warmup_epochs``-epoch warm-up of the same config
    sets the multipliers, capped at ``max_multiplier``; ``auto_top_k`` targets only the weakest k
    classes (null: every class below the best).
    """

    policy: str = "reference"
    strengths: Mapping[str, Any] = field(default_factory=dict)
    targets: Mapping[str, float] | str | None = None
    auto_from_run: str | None = None
    max_multiplier: float = 4.0
    auto_warmup_epochs: int = 3
    auto_top_k: int | None = None
    tta: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """The model: ``name`` picks a registered backbone (``models.registry``), then the shared head.

    ``reference_cnn`` (default): one ``Conv2D -> MaxPool`` block per entry of ``filters``; every
    backbone ends in the ``dense_units``-wide ``embedding`` layer and the softmax. ``params`` holds
    the other backbones' own parameters (``resnet``: depth, width, ...; ``d4_cnn``: filters, ...),
    each validated by its builder with errors naming ``model.params.<key>``.

    ``weights`` (a ``.keras`` / ``.weights.h5`` file, or an application ``.h5`` for ``efficientnetv2`` /
    ``convnext``) or ``init_from`` (an MLflow run id, ``NAME@alias`` or ``models:/...`` of a logged model)
    start training from existing weights (``models/weights.py``): same backbone and parameters; only the
    classifier may differ (another class set).
    """

    name: str = "reference_cnn"
    params: Mapping[str, Any] = field(default_factory=dict)
    filters: tuple[int, ...] = (32, 32, 64, 64)
    kernel_size: int = 3
    batch_norm: bool = False
    dropout: float = 0.5
    dense_units: int = 256
    l2: float = 0.0
    global_pooling: bool = False
    activation: str = "relu"
    weights: str | None = None
    init_from: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: epochs, batch, optimizer and schedule, loss options, precision, early stopping.

    ``patience`` null disables early stopping (the best-on-``monitor`` weights are still restored).
    ``precision`` defaults to ``auto``: ``mixed_bfloat16`` (bfloat16 compute, float32 weights and softmax;
    2.1x faster with the same accuracy where bfloat16 is native, see ``reference.yaml``) on Ampere-or-newer
    GPUs and CPUs with AVX512-BF16/AMX, ``float32`` elsewhere (emulated bfloat16 is ~8x slower; see
    :mod:`models.precision`).
    ``schedule: step`` multiplies the learning rate by ``step_factor`` every ``step_epochs`` epochs.
    ``warmup_epochs`` ramps the learning rate up linearly first (the schedule then runs over the
    remaining epochs). ``ema`` keeps an exponential moving average of the weights (Keras optimizers'
    ``use_ema``) and ends with it. ``mixup`` / ``cutmix``: Beta alpha of MixUp / CutMix on each batch
    with probability ``mix_prob`` (0 = off; ``augment/mixing.py``). ``freeze_epochs`` trains only the
    head for that many epochs first (backbone frozen, batch norm in inference mode), then everything.
    ``distribute: mirrored`` trains data-parallel on every GPU of the machine (every logical CPU device
    when there is no GPU) with ``tf.distribute.MirroredStrategy``; ``batch_size`` is the global batch,
    split across the replicas.
    """

    epochs: int = 50
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "constant"
    step_epochs: int = 10
    step_factor: float = 0.5
    label_smoothing: float = 0.0
    warmup_epochs: int = 0
    ema: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 0.5
    freeze_epochs: int = 0
    class_weights: str = "none"
    precision: str = "auto"
    patience: int | None = 10
    monitor: str = "val_loss"
    distribute: str = "none"
    seed: int = 0


@dataclass(frozen=True)
class RunConfig:
    """One training run: the four sections plus the MLflow experiment and run names."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    experiment_name: str = "galaxy10"
    run_name: str | None = None


SECTIONS: dict[str, type] = {"data": DataConfig, "augment": AugmentConfig, "model": ModelConfig, "train": TrainConfig}

#: Allowed values of string fields (dotted key -> choices).
CHOICES: dict[str, tuple[str, ...]] = {
    "augment.policy": POLICIES,
    "model.activation": ACTIVATIONS,
    "train.optimizer": OPTIMIZERS,
    "train.schedule": SCHEDULES,
    "train.class_weights": CLASS_WEIGHTS,
    "train.precision": PRECISIONS,
    "train.monitor": MONITORS,
    "train.distribute": DISTRIBUTE,
}

#: Inclusive numeric ranges (dotted key -> (low, high)); ``None`` is unbounded.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "data.size": (8, 1024),
    "data.crop": (8, 1024),
    "data.split_seed": (0, None),
    "data.test_fraction": (0.01, 0.9),
    "data.val_fraction": (0.01, 0.9),
    "data.max_images": (20, None),
    "augment.max_multiplier": (1.0, 100.0),
    "augment.auto_warmup_epochs": (1, 1000),
    "augment.auto_top_k": (1, 256),
    "model.filters": (1, 4096),
    "model.kernel_size": (1, 15),
    "model.dropout": (0.0, 0.95),
    "model.dense_units": (1, 65536),
    "model.l2": (0.0, 1.0),
    "train.epochs": (1, 10000),
    "train.batch_size": (1, 8192),
    "train.learning_rate": (1e-7, 10.0),
    "train.weight_decay": (0.0, 1.0),
    "train.momentum": (0.0, 0.999),
    "train.step_epochs": (1, 10000),
    "train.step_factor": (1e-3, 1.0),
    "train.label_smoothing": (0.0, 0.5),
    "train.warmup_epochs": (0, 1000),
    "train.mixup": (0.0, 10.0),
    "train.cutmix": (0.0, 10.0),
    "train.mix_prob": (0.0, 1.0),
    "train.freeze_epochs": (0, 10000),
    "train.patience": (1, 10000),
    "train.seed": (0, 2**31 - 1),
}


# --------------------------------------------------------------------------------------------
# Validation of one value against a field's type annotation
# --------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin in (tuple, Sequence):
        return "a list of integers"
    if origin is Mapping:
        return "a mapping of name: number"
    return str(tp)


def _check_range(key: str, value: float) -> None:
    lo, hi = RANGES.get(key, (None, None))
    if not math.isfinite(float(value)) or (lo is not None and value < lo) or (hi is not None and value > hi):
        low = "-inf" if lo is None else lo
        high = "inf" if hi is None else hi
        raise ConfigError(f"config key {key}={value!r} is out of range; use a value in [{low}, {high}]")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` checked against the annotation ``tp`` (and CHOICES/RANGES for ``key``)."""
    if tp is Any:  # checked by its consumer (e.g. augment strengths by augment.policies)
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for arg in non_none:
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(err)
        if len(non_none) == 1:
            raise errors[0]
        allowed = " or ".join(_type_name(a) for a in non_none) + (" or null" if type(None) in args else "")
        raise ConfigError(f"config key {key}={value!r} has the wrong type; give {allowed}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key}={value!r} has the wrong type; give true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key}={value!r} has the wrong type; give an integer")
        _check_range(key, value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key}={value!r} has the wrong type; give a number")
        _check_range(key, float(value))
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key}={value!r} has the wrong type; give a string")
        choices = CHOICES.get(key)
        if choices is not None and value not in choices:
            raise ConfigError(f"config key {key}={value!r} is not allowed; use one of: {', '.join(choices)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"config key {key}={value!r} has the wrong type; give a non-empty list of integers")
        return tuple(_coerce(key, v, args[0]) for v in value)
    if origin is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key}={value!r} has the wrong type; give a mapping of name: number")
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise ConfigError(f"config key {key} has a bad name {k!r}; names are strings")
            out[str(k)] = _coerce(f"{key}.{k}", v, args[1])
        return out
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module, not user input


def _section_from_dict(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config key {name}={raw!r} has the wrong type; give a mapping of settings")
    hints = typing.get_type_hints(cls)
    check_keys(name, raw, cls)
    kwargs = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in raw.items()}
    return cls(**kwargs)


#: Most epochs one fit may run (a study's report steps hold up to 1000 epochs per fold).
MAX_EPOCHS = 999


def _check_cross(cfg: RunConfig) -> RunConfig:
    """Checks that involve more than one key."""
    d, a = cfg.data, cfg.augment
    if d.crop > d.size:
        raise ConfigError(f"config key data.crop={d.crop} exceeds data.size={d.size}; use a crop <= size")
    if d.test_fraction + d.val_fraction >= 0.9:
        raise ConfigError("config keys data.test_fraction + data.val_fraction must stay below 0.9; shrink them")
    n_pools = len(cfg.model.filters)
    if d.crop // (2**n_pools) < 1:
        raise ConfigError(
            f"config key model.filters has {n_pools} pooling blocks, too many for data.crop={d.crop}; "
            f"use at most {max(1, int(math.log2(d.crop)))} entries or a larger crop"
        )
    if isinstance(a.targets, str):
        if a.targets != AUTO_TARGETS:
            raise ConfigError(
                f"config key augment.targets={a.targets!r} is not allowed; use null, 'auto' or a mapping "
                "like {disturbed: 3, cigar: 3}"
            )
    elif a.auto_from_run:
        raise ConfigError(
            "config key augment.auto_from_run is only used with augment.targets=auto; remove it or set targets: auto"
        )
    if isinstance(a.targets, Mapping):
        check_targets(a.targets)  # class names are resolved against the data's own classes when it is loaded

    policy_params(a.policy, **dict(a.strengths))  # raises ConfigError naming the bad strength

    get_backbone(cfg.model.name)  # one line listing the registered backbones
    backbone_params(cfg.model)  # each backbone checks its own parameters
    m, t = cfg.model, cfg.train
    if m.weights is not None and m.init_from is not None:
        raise ConfigError("config keys model.weights and model.init_from both give starting weights; keep one")
    for key, value in (("model.weights", m.weights), ("model.init_from", m.init_from)):
        if value is not None and not value.strip():
            raise ConfigError(
                f"config key {key} is empty; give a file (model.weights) or a run id / NAME@alias "
                "(model.init_from), or null"
            )
    if t.epochs > MAX_EPOCHS:
        raise ConfigError(
            f"config key train.epochs={t.epochs} is over {MAX_EPOCHS}; train for fewer epochs (early "
            "stopping ends a fit that stopped improving)"
        )
    if t.freeze_epochs >= t.epochs:
        raise ConfigError(
            f"config key train.freeze_epochs={t.freeze_epochs} leaves no epoch to train the whole "
            f"model (train.epochs={t.epochs}); use fewer freeze epochs or more epochs"
        )
    check_label(cfg.experiment_name, "config key experiment_name")
    if cfg.run_name is not None:
        check_label(cfg.run_name, "config key run_name")
    return cfg


def from_dict(raw: Mapping[str, Any] | None) -> RunConfig:
    """Build a validated :class:`RunConfig` from a nested mapping (missing keys take defaults)."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a run config must be a mapping of sections, got {type(raw).__name__}")
    check_keys("", raw, [*SECTIONS, "experiment_name", "run_name"])
    sections = {name: _section_from_dict(name, cls, raw.get(name)) for name, cls in SECTIONS.items()}
    hints = typing.get_type_hints(RunConfig)
    extra = {k: _coerce(k, raw[k], hints[k]) for k in ("experiment_name", "run_name") if k in raw}
    return _check_cross(RunConfig(**sections, **extra))


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Nested plain dict (lists, dicts, scalars) with every key; ``from_dict(to_dict(c)) == c``."""
    out: dict[str, Any] = {}
    for name in SECTIONS:
        section = getattr(cfg, name)
        out[name] = {f.name: plain(getattr(section, f.name)) for f in fields(section)}
    out["experiment_name"] = cfg.experiment_name
    out["run_name"] = cfg.run_name
    return out


def to_yaml(cfg: RunConfig) -> str:
    """The fully resolved config as YAML text (loads back to the same config)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def flatten(cfg: RunConfig) -> dict[str, str]:
    """``{dotted key: string value}`` for MLflow params; mappings expand one key per entry."""
    out: dict[str, str] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            if not value:
                out[key] = "{}"
            for k, v in value.items():
                put(f"{key}.{k}", v)
        elif isinstance(value, (list, tuple)):
            out[key] = json.dumps(list(value))
        elif value is None:
            out[key] = "null"
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        else:
            out[key] = str(value)

    for key, value in to_dict(cfg).items():
        put(key, value)
    return out


# --------------------------------------------------------------------------------------------
# Loading: YAML file + dotted overrides
# --------------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[str, Any]:
    """Split ``section.key=value`` into the dotted key and the YAML-parsed value."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not KEY=VALUE; write e.g. --set train.epochs=3")
    try:
        parsed = load_yaml_text(value) if value.strip() else None
    except DuplicateKeyError as err:
        raise ConfigError(f"override {text!r} sets {err} twice; keep one of them") from None
    except yaml.YAMLError:
        raise ConfigError(
            f"override {text!r} has a value that is not valid YAML; quote strings, write mappings as {{a: 1}}"
        ) from None
    return key, parsed


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``a.b.c=value`` override written into it."""
    out = copy.deepcopy(dict(raw))
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                if child is not None and not (i >= 1 and isinstance(child, str)):
                    raise ConfigError(
                        f"override {text!r}: {'.'.join(parts[: i + 1])} is not a section; set it as a whole instead"
                    )
                child = node[part] = {}  # e.g. targets: auto/null -> a fresh mapping
            node = child
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a run-config YAML file as a mapping (an empty file is an empty mapping)."""
    return read_config(
        path,
        what="config file",
        example="experiments/configs/smoke.yaml",
        holds="sections (data, augment, model, train)",
    )


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load ``path`` (or the defaults when None), apply ``--set`` overrides and validate.

    Raises
    ------
    ConfigError
        Naming the dotted key for unknown keys, wrong types and bad values.
    """
    raw = read_yaml(path) if path is not None else {}
    return from_dict(apply_overrides(raw, list(overrides)))
