"""The head every backbone shares: the ``embedding`` layer (what ensembles stack) and the classifier."""

from __future__ import annotations

from typing import Any

#: Name of the layer whose output is a model's embedding (ensembles read it by this name).
EMBEDDING_LAYER = "embedding"
#: Name of the float32 softmax output layer.
OUTPUT_LAYER = "probabilities"
#: Name of the classifier layer (its shape follows the class count).
CLASSIFIER_LAYER = "logits"
#: The head's layers: everything else is the backbone (frozen by ``train.freeze_epochs``).
HEAD_LAYERS = (EMBEDDING_LAYER, CLASSIFIER_LAYER, OUTPUT_LAYER)


def add_head(features: Any, *, units: int, num_classes: int, activation: str, l2: float, dtype: Any) -> Any:
    """``Dense(units) "embedding" -> Dense(num_classes) "logits" -> float32 softmax "probabilities"``."""
    import keras

    reg = keras.regularizers.L2(l2) if l2 > 0 else None
    x = keras.layers.Dense(units, activation=activation, kernel_regularizer=reg, dtype=dtype, name=EMBEDDING_LAYER)(
        features
    )
    x = keras.layers.Dense(num_classes, kernel_regularizer=reg, dtype=dtype, name=CLASSIFIER_LAYER)(x)
    return keras.layers.Activation("softmax", dtype="float32", name=OUTPUT_LAYER)(x)


def set_backbone_trainable(model: Any, trainable: bool) -> int:
    """Freeze (or unfreeze) every layer but the head; return how many layers changed.

    Frozen batch-norm layers run in inference mode (Keras 3), as fine-tuning wants.
    """
    changed = 0
    for layer in model.layers:
        if layer.name not in HEAD_LAYERS and layer.weights and layer.trainable != trainable:
            layer.trainable = trainable
            changed += 1
    return changed
