"""The CNN: by default the reference project's network, configurable through :class:`ModelConfig`.

Reference network (88 px crop in, 10 classes out)::

    Rescaling(1/255)
    Conv2D 32 -> MaxPool -> Conv2D 32 -> MaxPool -> Conv2D 64 -> MaxPool -> Conv2D 64 -> MaxPool
    Dropout -> Flatten -> Dense 256 ("embedding") -> Dense 10 softmax

3x3 kernels, ReLU, same padding. The model takes the centre-cropped image as float32 0..255 and
rescales it itself, so a saved model needs no separate normalisation. Under ``mixed_bfloat16`` the
layers compute in bfloat16 but the softmax output is float32.
"""
from __future__ import annotations

import logging

import keras

from ensembles.embeddings import EMBEDDING_LAYER  # the penultimate dense layer, whose output ensembles use
from experiments.config import PRECISIONS, ModelConfig
from pipelines.classes import NUM_CLASSES
from pipelines.errors import ConfigError

log = logging.getLogger(__name__)

#: Name of the float32 softmax output layer.
OUTPUT_LAYER = "probabilities"


def build_model(model_cfg: ModelConfig | None = None, input_size: int = 88,
                num_classes: int = NUM_CLASSES, *, precision: str = "float32") -> keras.Model:
    """Build the (uncompiled) CNN described by ``model_cfg``.

    Parameters
    ----------
    model_cfg
        Architecture; ``None`` gives the reference CNN.
    input_size
        Side of the square RGB input in pixels (the centre crop).
    num_classes
        Width of the softmax output.
    precision
        ``float32`` or ``mixed_bfloat16`` (set per layer, never as global Keras state).
    """
    cfg = model_cfg or ModelConfig()
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is unknown; use one of: {', '.join(PRECISIONS)}")
    n_pools = len(cfg.filters)
    if input_size // (2 ** n_pools) < 1:
        raise ConfigError(
            f"model.filters has {n_pools} pooling blocks, too many for a {input_size} px input; "
            "use fewer blocks or a larger crop"
        )
    dtype = keras.DTypePolicy(precision)
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None
    inputs = keras.Input(shape=(input_size, input_size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / 255, dtype=dtype, name="rescale")(inputs)
    for i, n_filters in enumerate(cfg.filters, start=1):
        x = keras.layers.Conv2D(n_filters, cfg.kernel_size, padding="same", use_bias=not cfg.batch_norm,
                                kernel_regularizer=reg, dtype=dtype, name=f"conv{i}")(x)
        if cfg.batch_norm:
            x = keras.layers.BatchNormalization(dtype=dtype, name=f"bn{i}")(x)
        x = keras.layers.Activation(cfg.activation, dtype=dtype, name=f"act{i}")(x)
        x = keras.layers.MaxPooling2D(2, dtype=dtype, name=f"pool{i}")(x)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, dtype=dtype, name="dropout")(x)
    if cfg.global_pooling:
        x = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="global_pool")(x)
    else:
        x = keras.layers.Flatten(dtype=dtype, name="flatten")(x)
    x = keras.layers.Dense(cfg.dense_units, activation=cfg.activation, kernel_regularizer=reg,
                           dtype=dtype, name=EMBEDDING_LAYER)(x)
    x = keras.layers.Dense(num_classes, kernel_regularizer=reg, dtype=dtype, name="logits")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name=OUTPUT_LAYER)(x)
    model = keras.Model(inputs, outputs, name="galaxy10_cnn")
    log.debug("built %s: %d parameters, %s", model.name, model.count_params(), precision)
    return model
