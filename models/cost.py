"""What a model costs per image: multiply-adds of its convolutions and dense layers.

Images per second depend on the machine and its libraries; multiply-adds do not, so a benchmark that
compares backbones "at equal compute" can state both. Counted: ``Conv2D`` (with groups),
``DepthwiseConv2D``, ``Dense`` (per position when applied to a feature map) and the D4 layers (a group
convolution costs what a plain convolution of its 8x channel counts costs). Normalisation, activations
and pooling are left out (a few percent of a CNN's multiply-adds).
"""

from __future__ import annotations

import math
from typing import Any


def _output_shapes(layer: Any) -> list[tuple]:
    """The output shape of every call of ``layer`` in the graph (a shared layer is counted per call)."""
    shapes = []
    for node in getattr(layer, "_inbound_nodes", []):
        for tensor in node.outputs:
            shapes.append(tuple(tensor.shape))
    return shapes


def layer_multiply_adds(layer: Any) -> int:
    """Multiply-adds of one call of ``layer`` per image (0 for layers not counted)."""
    import keras

    from models.layers.d4 import ORDER, D4Conv, D4Lift

    total = 0
    for shape in _output_shapes(layer):
        positions = math.prod(int(d) for d in shape[1:3]) if len(shape) >= 4 else 1
        if isinstance(layer, D4Lift):
            k = layer.kernel_size
            total += positions * k * k * int(layer.kernel.shape[2]) * ORDER * layer.filters
        elif isinstance(layer, D4Conv):
            k = layer.kernel_size
            total += positions * k * k * ORDER * layer.in_filters * ORDER * layer.filters
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, cin, mult = (int(d) for d in layer.kernel.shape)
            total += positions * kh * kw * cin * mult
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin_per_group, cout = (int(d) for d in layer.kernel.shape)
            total += positions * kh * kw * cin_per_group * cout
        elif isinstance(layer, keras.layers.Dense):
            spatial = math.prod(int(d) for d in shape[1:-1]) if len(shape) > 2 else 1
            total += spatial * int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
    return total


def multiply_adds(model: Any) -> int:
    """Multiply-adds per image of a built Keras model (nested models included).

    Parameters
    ----------
    model
        A functional Keras model (e.g. from :func:`models.build_model`).

    Returns
    -------
    int
        The sum of :func:`layer_multiply_adds` over every layer, recursing into nested models.
    """
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += multiply_adds(layer)
        else:
            total += layer_multiply_adds(layer)
    return total
