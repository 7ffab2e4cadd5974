"""``efficientnetv2`` and ``convnext``: ``keras.applications`` backbones, from scratch or from weights a user brought.

``model.weights: FILE.h5`` (e.g. ImageNet ``*_notop.h5`` weights downloaded by hand) is loaded by the
application itself; nothing is downloaded.

Both keep their built-in input normalisation (``include_preprocessing=True``): they take the float32
0..255 crop our models take (EfficientNetV2 rescales it, ConvNeXt normalises with the ImageNet mean and
standard deviation), so nothing is rescaled twice. Their layers take the precision from Keras' global
dtype policy, which is set only while they are built and restored after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import ConfigError, first_line
from models.registry import backbone_params, register
from models.weights import application_weights, describe

EFFICIENTNETV2 = ("B0", "B1", "B2", "B3", "S")
CONVNEXT = ("Tiny", "Small")


@contextlib.contextmanager
def _policy(name: str) -> Iterator[None]:
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def _pooled(app_fn: Any, inputs: Any, dtype: Any, cfg: Any) -> Any:
    import keras

    weights = getattr(cfg, "weights", None)
    weights = weights if application_weights(weights) else None  # .keras / .weights.h5: models.weights, later
    with _policy(dtype.name):
        try:
            app = app_fn(
                include_top=False, weights=weights, input_tensor=inputs, pooling="avg", include_preprocessing=True
            )
        except (ValueError, OSError) as err:
            raise ConfigError(
                f"cannot load model.weights {Path(weights).name} into "
                f"{describe(cfg.name, backbone_params(cfg))} ({first_line(err)}); give "
                f"include_top=False weights of {app_fn.__name__}"
            ) from None
    x = app.output
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, dtype=dtype, name="dropout")(x)
    return x


@register("efficientnetv2", {"variant": ("B0", lambda v: v in EFFICIENTNETV2, f"one of {', '.join(EFFICIENTNETV2)}")})
def build_efficientnetv2(inputs: Any, cfg: Any, dtype: Any) -> Any:
    """``keras.applications.EfficientNetV2<variant>`` without its top, average-pooled."""
    import keras

    variant = backbone_params(cfg)["variant"]
    return _pooled(getattr(keras.applications, f"EfficientNetV2{variant}"), inputs, dtype, cfg)


@register("convnext", {"variant": ("Tiny", lambda v: v in CONVNEXT, f"one of {', '.join(CONVNEXT)}")})
def build_convnext(inputs: Any, cfg: Any, dtype: Any) -> Any:
    """``keras.applications.ConvNeXt<variant>`` without its top, average-pooled."""
    import keras

    variant = backbone_params(cfg)["variant"]
    return _pooled(getattr(keras.applications, f"ConvNeXt{variant}"), inputs, dtype, cfg)
