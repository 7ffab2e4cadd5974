"""Custom Keras layers of the backbones (imported on demand: importing this package loads no Keras)."""
from __future__ import annotations

import importlib
import pkgutil


def register_custom_layers() -> None:
    """Import every custom layer module so Keras can deserialize saved models that use them
    (``safe_mode`` loading looks the classes up by their registered names)."""

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
