"""``reference_cnn``: the reference project's network, configurable through ``ModelConfig``.

Reference network (88 px crop in, 10 classes out)::

    Rescaling(1/255)
    Conv2D 32 -> MaxPool -> Conv2D 32 -> MaxPool -> Conv2D 64 -> MaxPool -> Conv2D 64 -> MaxPool
    Dropout -> Flatten -> [head: Dense 256 ("embedding") -> Dense 10 softmax]

3x3 kernels, ReLU, same padding; ``batch_norm``, ``global_pooling``, ``l2`` and ``activation`` vary it.
"""

from __future__ import annotations

from typing import Any

from core.errors import ConfigError
from models.registry import register


@register("reference_cnn")
def build_reference_cnn(inputs: Any, cfg: Any, dtype: Any) -> Any:
    """Conv blocks of ``cfg.filters`` (each ``Conv2D -> [BN] -> act -> MaxPool``), dropout, flatten/GAP."""
    import keras

    size = int(inputs.shape[1])
    n_pools = len(cfg.filters)
    if size // (2**n_pools) < 1:
        raise ConfigError(
            f"model.filters has {n_pools} pooling blocks, too many for a {size} px input; "
            "use fewer blocks or a larger crop"
        )
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None
    x = keras.layers.Rescaling(1.0 / 255, dtype=dtype, name="rescale")(inputs)
    for i, n_filters in enumerate(cfg.filters, start=1):
        x = keras.layers.Conv2D(
            n_filters,
            cfg.kernel_size,
            padding="same",
            use_bias=not cfg.batch_norm,
            kernel_regularizer=reg,
            dtype=dtype,
            name=f"conv{i}",
        )(x)
        if cfg.batch_norm:
            x = keras.layers.BatchNormalization(dtype=dtype, name=f"bn{i}")(x)
        x = keras.layers.Activation(cfg.activation, dtype=dtype, name=f"act{i}")(x)
        x = keras.layers.MaxPooling2D(2, dtype=dtype, name=f"pool{i}")(x)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, dtype=dtype, name="dropout")(x)
    if cfg.global_pooling:
        return keras.layers.GlobalAveragePooling2D(dtype=dtype, name="global_pool")(x)
    return keras.layers.Flatten(dtype=dtype, name="flatten")(x)
