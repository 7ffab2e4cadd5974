"""The head every backbone shares: the ``embedding`` layer (what ensembles stack) and the classifier."""
from __future__ import annotations

from typing import Any

#: Name of the layer whose output is a model's embedding (ensembles read it by this name).
EMBEDDING_LAYER = "embedding"
#: Name of the float32 softmax output layer.
OUTPUT_LAYER = "probabilities"


def add_head(features: Any, *, units: int, num_classes: int, activation: str, l2: float, dtype: Any) -> Any:
    """``Dense(units) "embedding" -> Dense(num_classes) "logits" -> float32 softmax "probabilities"``."""
    import keras

    reg = keras.regularizers.L2(l2) if l2 > 0 else None
    x = keras.layers.Dense(units, activation=activation, kernel_regularizer=reg, dtype=dtype,
                           name=EMBEDDING_LAYER)(features)
    x = keras.layers.Dense(num_classes, kernel_regularizer=reg, dtype=dtype, name="logits")(x)
    return keras.layers.Activation("softmax", dtype="float32", name=OUTPUT_LAYER)(x)
