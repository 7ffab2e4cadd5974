"""Custom Keras layers of the backbones (imported on demand: importing this package loads no Keras)."""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Any


def register_custom_layers() -> None:
    """Import every custom layer module so Keras can deserialize saved models that use them
    (``safe_mode`` loading looks the classes up by their registered names)."""

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def load_keras_file(path: str | os.PathLike) -> Any:
    """A ``.keras`` model file loaded the platform's way: its custom layers registered first, Keras
    ``safe_mode`` on, not compiled (for prediction, embedding or copying weights)."""
    import keras

    register_custom_layers()
    return keras.saving.load_model(str(path), safe_mode=True, compile=False)
