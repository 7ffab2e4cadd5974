"""Models: a registry of backbones and the one shared head.

``build_model(model_cfg, input_size, num_classes, precision=)`` dispatches on ``model_cfg.name``
(:data:`models.registry.BACKBONES`), then adds the head (:mod:`models.head`): the ``embedding``
layer ensembles stack and the float32 softmax. Every backbone module in this package registers
itself on import. The model takes the centre-cropped image as float32 0..255 and rescales it
itself, so a saved model needs no separate normalisation.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from dataclasses import asdict
from typing import Any

from core.errors import ConfigError
from core.yaml_io import plain
from models.head import EMBEDDING_LAYER, OUTPUT_LAYER, add_head
from models.precision import resolve_precision
from models.registry import BACKBONES, PRECISIONS, backbone_params, get_backbone, register
from pipelines.classes import NUM_CLASSES

log = logging.getLogger(__name__)

__all__ = [
    "BACKBONES",
    "EMBEDDING_LAYER",
    "OUTPUT_LAYER",
    "backbone_names",
    "backbone_params",
    "build_model",
    "describe_backbone",
    "register",
]

for _module in pkgutil.iter_modules(__path__):  # every backbone module registers itself
    if _module.name not in ("registry", "head", "layers"):
        importlib.import_module(f"{__name__}.{_module.name}")


def backbone_names() -> tuple[str, ...]:
    """The registered backbone names, sorted."""
    return tuple(sorted(BACKBONES))


def build_model(
    model_cfg: Any, input_size: int = 88, num_classes: int = NUM_CLASSES, *, precision: str = "float32"
) -> Any:
    """Build the (uncompiled) Keras model of ``model_cfg``.

    Parameters
    ----------
    model_cfg
        ``experiments.settings.run.ModelConfig``; ``name`` picks the backbone.
    input_size
        Side of the square RGB input in pixels (the centre crop).
    num_classes
        Width of the softmax output.
    precision
        ``float32``, ``mixed_bfloat16`` or ``auto`` (bfloat16 where this machine computes it natively;
        :mod:`models.precision`). Set per layer, never as global Keras state.
    """
    import keras

    cfg = model_cfg
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is unknown; use one of: {', '.join(PRECISIONS)}")
    builder = get_backbone(cfg.name)
    precision = resolve_precision(precision)
    dtype = keras.DTypePolicy(precision)
    inputs = keras.Input(shape=(input_size, input_size, 3), dtype="float32", name="image")
    features = builder(inputs, cfg, dtype)
    outputs = add_head(
        features, units=cfg.dense_units, num_classes=num_classes, activation=cfg.activation, l2=cfg.l2, dtype=dtype
    )
    model = keras.Model(inputs, outputs, name="galaxy10_cnn" if cfg.name == "reference_cnn" else cfg.name)
    log.debug("built %s: %d parameters, %s", model.name, model.count_params(), precision)
    return model


def describe_backbone(model_cfg: Any) -> dict[str, Any]:
    """The backbone name and its parameters, as saved in every model's metadata (to rebuild and explain it)."""
    params = plain(asdict(model_cfg))
    return {"backbone": params.pop("name"), "backbone_params": params}
