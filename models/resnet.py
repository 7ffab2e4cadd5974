"""``resnet``: ResNet-18/34-style basic blocks sized for 64-256 px galaxy crops.

Stem: one 3x3 convolution (no 7x7 stride-2 convolution and max pool as on ImageNet, which would
throw away most of a 64-128 px crop), then 4 stages of basic blocks (two 3x3 convolutions with batch
norm and a projection shortcut when the shape changes), widths ``width * (1, 2, 4, 8)``, stride 2 at
the start of stages 2-4 (and in the stem for inputs of 160 px and more), global average pooling.
Optional stochastic depth drops whole residual branches during training, more in deeper blocks.
"""

from __future__ import annotations

from typing import Any

from models.registry import backbone_params, register

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 10: (1, 1, 1, 1)}

PARAMS = {
    "depth": (18, lambda v: v in BLOCKS, "10, 18 or 34"),
    "width": (
        32,
        lambda v: isinstance(v, int) and not isinstance(v, bool) and 4 <= v <= 128,
        "an integer 4-128 (channels of the first stage; ImageNet ResNets use 64)",
    ),
    # 0.9 (PyTorch's default), not Keras' 0.99: with the few hundred steps of a small catalog, 0.99 leaves
    # the moving statistics near their initial values and validation predicts the majority class.
    "bn_momentum": (0.9, lambda v: isinstance(v, float) and 0.5 <= v < 1, "a float in [0.5, 1), e.g. 0.9"),
    "stochastic_depth": (
        0.0,
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 0.5,
        "a rate in [0, 0.5) (0 = off)",
    ),
}


@register("resnet", PARAMS)
def build_resnet(inputs: Any, cfg: Any, dtype: Any) -> Any:
    """The ResNet feature extractor (see the module docstring)."""
    import keras

    p = backbone_params(cfg)
    blocks = BLOCKS[p["depth"]]
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None
    total = sum(blocks)
    x = keras.layers.Rescaling(1.0 / 255, dtype=dtype, name="rescale")(inputs)
    stem_stride = 2 if int(inputs.shape[1]) >= 160 else 1
    x = keras.layers.Conv2D(
        p["width"],
        3,
        strides=stem_stride,
        padding="same",
        use_bias=False,
        kernel_regularizer=reg,
        dtype=dtype,
        name="stem_conv",
    )(x)
    x = keras.layers.BatchNormalization(momentum=p["bn_momentum"], dtype=dtype, name="stem_bn")(x)
    x = keras.layers.Activation(cfg.activation, dtype=dtype, name="stem_act")(x)
    k = 0
    for stage, n_blocks in enumerate(blocks):
        width = p["width"] * 2**stage
        for b in range(n_blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            name = f"s{stage + 1}b{b + 1}"
            shortcut = x
            y = keras.layers.Conv2D(
                width,
                3,
                strides=stride,
                padding="same",
                use_bias=False,
                kernel_regularizer=reg,
                dtype=dtype,
                name=f"{name}_conv1",
            )(x)
            y = keras.layers.BatchNormalization(momentum=p["bn_momentum"], dtype=dtype, name=f"{name}_bn1")(y)
            y = keras.layers.Activation(cfg.activation, dtype=dtype, name=f"{name}_act1")(y)
            y = keras.layers.Conv2D(
                width, 3, padding="same", use_bias=False, kernel_regularizer=reg, dtype=dtype, name=f"{name}_conv2"
            )(y)
            y = keras.layers.BatchNormalization(momentum=p["bn_momentum"], dtype=dtype, name=f"{name}_bn2")(y)
            if stride != 1 or int(shortcut.shape[-1]) != width:
                shortcut = keras.layers.Conv2D(
                    width, 1, strides=stride, use_bias=False, kernel_regularizer=reg, dtype=dtype, name=f"{name}_proj"
                )(shortcut)
                shortcut = keras.layers.BatchNormalization(
                    momentum=p["bn_momentum"], dtype=dtype, name=f"{name}_proj_bn"
                )(shortcut)
            rate = p["stochastic_depth"] * k / max(1, total - 1)
            if rate > 0:  # drop the whole residual branch per sample (noise_shape over the batch only)
                y = keras.layers.Dropout(rate, noise_shape=(None, 1, 1, 1), dtype=dtype, name=f"{name}_drop")(y)
            x = keras.layers.Add(dtype=dtype, name=f"{name}_add")([shortcut, y])
            x = keras.layers.Activation(cfg.activation, dtype=dtype, name=f"{name}_out")(x)
            k += 1
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="global_pool")(x)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, dtype=dtype, name="dropout")(x)
    return x
