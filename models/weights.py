"""Starting weights: a weights file the user brought (``model.weights``) or an earlier logged model
(``model.init_from``), copied into a freshly built model layer by layer, by name.

Layers are matched by name and every matched layer must hold weights of the same shapes; the backbone's
layers must all be found. Only the classifier (``logits``) may differ, when the class sets differ: it
starts fresh. Anything else fails with one line naming both models, before training starts.

Files: ``.keras`` (a whole saved model, loaded with ``safe_mode``), ``.weights.h5`` (Keras weights of
exactly this model: same backbone, parameters and class count) and, for the ``keras.applications``
backbones, a plain ``.h5`` (e.g. ImageNet ``*_notop.h5`` weights brought by hand), loaded by the
application itself when it is built.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import ConfigError, first_line
from models.head import CLASSIFIER_LAYER, HEAD_LAYERS

log = logging.getLogger(__name__)

#: Backbones built by ``keras.applications`` (a plain ``.h5`` file goes to the application itself).
APPLICATION_BACKBONES = ("efficientnetv2", "convnext")


def describe(name: str, params: Mapping[str, Any]) -> str:
    """``resnet(depth=18, width=32, ...)``: a backbone as error messages name it."""
    return f"{name}({', '.join(f'{k}={v}' for k, v in sorted(params.items()))})"


def application_weights(path: str | None) -> bool:
    """Whether ``path`` is a plain ``.h5`` weights file for a ``keras.applications`` backbone."""
    return bool(path) and str(path).endswith(".h5") and not str(path).endswith(".weights.h5")


def check_weights_file(path: str, backbone: str) -> Path:
    """``path`` as a Path if it is a weights file this backbone can start from; else one ConfigError line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"model.weights file {path} not found; give a .keras model or a .weights.h5 file saved by Keras"
        )
    if p.suffix == ".keras" or p.name.endswith(".weights.h5"):
        return p
    if application_weights(str(p)) and backbone in APPLICATION_BACKBONES:
        return p
    allowed = ".keras or .weights.h5" + (" or an application .h5" if backbone in APPLICATION_BACKBONES else "")
    raise ConfigError(f"model.weights file {p.name} is not a Keras weights file for {backbone}; give {allowed}")


def transfer_weights(
    target: Any, source: Any, *, target_desc: str, source_desc: str, keep_classifier: bool = True
) -> list[str]:
    """Copy ``source``'s layer weights into ``target`` by layer name; return the layers left fresh.

    Raises ConfigError (one line naming both models) when a backbone layer is missing from ``source`` or
    holds weights of other shapes. The classifier starts fresh when its shape differs (another class count)
    or ``keep_classifier`` is False (another class set of the same size).
    """
    by_name = {layer.name: layer for layer in source.layers if layer.weights}
    fresh: list[str] = []
    copied = 0
    for layer in target.layers:
        if not layer.weights:
            continue
        src = by_name.get(layer.name)
        if src is None:
            if layer.name in HEAD_LAYERS:
                fresh.append(layer.name)
                continue
            raise ConfigError(
                f"cannot start {target_desc} from {source_desc}: it has no layer {layer.name!r}; "
                "use a model of the same model.name and model.params"
            )
        if layer.name == CLASSIFIER_LAYER and not keep_classifier:
            fresh.append(layer.name)
            continue
        want = [tuple(w.shape) for w in layer.weights]
        have = [tuple(w.shape) for w in src.weights]
        if want != have:
            if layer.name == CLASSIFIER_LAYER:
                fresh.append(layer.name)  # another class count: a new classifier
                continue
            raise ConfigError(
                f"cannot start {target_desc} from {source_desc}: layer {layer.name!r} has weights "
                f"{have} there but {want} here; use a model of the same model.name and model.params"
            )
        layer.set_weights(src.get_weights())
        copied += 1
    log.info(
        "started %s from %s: %d layers copied%s",
        target_desc,
        source_desc,
        copied,
        f", {', '.join(fresh)} fresh" if fresh else "",
    )
    return fresh


def load_weights_file(model: Any, path: str | Path, *, target_desc: str) -> list[str]:
    """Start ``model`` from a ``.keras`` or ``.weights.h5`` file (see the module docstring)."""
    from models.layers import load_keras_file

    p = Path(path)
    if p.name.endswith(".weights.h5"):
        try:
            with warnings.catch_warnings():  # Keras warns per skipped layer before it raises; our one line says it
                warnings.simplefilter("ignore", UserWarning)
                model.load_weights(str(p))
        except (ValueError, KeyError, OSError) as err:
            raise ConfigError(
                f"cannot load model.weights {p.name} into {target_desc} ({first_line(err)}); "
                "a .weights.h5 file must come from the same model.name, model.params and "
                "class count (or give a .keras model)"
            ) from None
        log.info("loaded %s into %s", p.name, target_desc)
        return []
    try:
        source = load_keras_file(p)
    except (ValueError, OSError, TypeError) as err:
        raise ConfigError(
            f"cannot read model.weights {p.name} ({first_line(err)}); give a .keras model saved by Keras 3"
        ) from None
    return transfer_weights(model, source, target_desc=target_desc, source_desc=p.name)
