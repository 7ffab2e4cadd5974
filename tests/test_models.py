"""The CNN: reference architecture, configurable variants, precision, the embedding layer."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from core.errors import ConfigError
from experiments.settings.run import ModelConfig
from models import EMBEDDING_LAYER, OUTPUT_LAYER, build_model

# Conv 3x3 (3->32, 32->32, 32->64, 64->64), 88 px pooled 4x to 5 px: 5*5*64 = 1600 -> Dense 256 -> Dense 10.
REFERENCE_PARAMS = (
    (3 * 3 * 3 * 32 + 32)
    + (3 * 3 * 32 * 32 + 32)
    + (3 * 3 * 32 * 64 + 64)
    + (3 * 3 * 64 * 64 + 64)
    + (1600 * 256 + 256)
    + (256 * 10 + 10)
)


def _layers(model, cls):
    return [layer for layer in model.layers if isinstance(layer, cls)]


def test_reference_cnn_architecture():
    model = build_model(ModelConfig())
    assert model.input_shape == (None, 88, 88, 3) and model.output_shape == (None, 10)
    convs = _layers(model, keras.layers.Conv2D)
    assert [c.filters for c in convs] == [32, 32, 64, 64]
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert len(_layers(model, keras.layers.MaxPooling2D)) == 4
    assert len(_layers(model, keras.layers.Dropout)) == 1 and len(_layers(model, keras.layers.Flatten)) == 1
    assert isinstance(model.layers[1], keras.layers.Rescaling)
    dense = _layers(model, keras.layers.Dense)
    assert [d.units for d in dense] == [256, 10] and dense[0].name == EMBEDDING_LAYER
    assert model.count_params() == REFERENCE_PARAMS
    assert not _layers(model, keras.layers.BatchNormalization)


def test_outputs_are_probabilities_and_model_rescales():
    model = build_model(ModelConfig(filters=(4, 8), dense_units=16), input_size=32)
    x = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    probs = np.asarray(model.predict(x, verbose=0))
    assert probs.shape == (5, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    rescaled = keras.Model(model.input, model.get_layer("rescale").output)
    assert np.allclose(np.asarray(rescaled(x)), x / 255.0, atol=1e-6)


def test_configurable_variants():
    cfg = ModelConfig(
        filters=(8, 16, 16),
        kernel_size=5,
        batch_norm=True,
        dropout=0.0,
        dense_units=32,
        l2=1e-3,
        global_pooling=True,
        activation="elu",
    )
    model = build_model(cfg, input_size=40, num_classes=3)
    convs = _layers(model, keras.layers.Conv2D)
    assert [c.filters for c in convs] == [8, 16, 16] and convs[0].kernel_size == (5, 5)
    assert len(_layers(model, keras.layers.BatchNormalization)) == 3
    assert not _layers(model, keras.layers.Dropout) and not _layers(model, keras.layers.Flatten)
    assert _layers(model, keras.layers.GlobalAveragePooling2D)
    assert model.get_layer("act1").activation.__name__ == "elu"
    assert model.output_shape == (None, 3)
    model(np.zeros((1, 40, 40, 3), np.float32))
    assert len(model.losses) == 5  # L2 on 3 convs and 2 dense layers


def test_mixed_bfloat16_keeps_float32_output():
    model = build_model(ModelConfig(filters=(4,), dense_units=8), input_size=16, precision="mixed_bfloat16")
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    assert model.get_layer("conv1").variable_dtype == "float32"
    out = model(np.zeros((2, 16, 16, 3), np.float32))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert model.get_layer(OUTPUT_LAYER).compute_dtype == "float32"


def test_embedding_model_shares_weights():
    from ensembles.embeddings import dual_output_model

    model = build_model(ModelConfig(filters=(4, 4), dense_units=12), input_size=16)
    x = np.random.default_rng(1).uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
    e, _ = dual_output_model(model)(x)
    assert e.shape == (3, 12) and e.dtype == np.float32
    w = model.get_layer("logits").get_weights()
    logits = e @ w[0] + w[1]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert np.allclose(expected, model.predict(x, verbose=0), atol=1e-5)


def test_bad_shapes_and_precision():
    with pytest.raises(ConfigError, match="pooling"):
        build_model(ModelConfig(filters=(4,) * 6), input_size=32)
    with pytest.raises(ConfigError, match="precision"):
        build_model(ModelConfig(), precision="float16")


# --------------------------------------------------------------------------------------------
# The registry (issue 12)
# --------------------------------------------------------------------------------------------
#: The reference CNN's layers before the registry existed (names and types in order): the refactor
#: must keep them, so weights initialise identically for a seed and saved models reload.
REFERENCE_LAYERS = [
    ("image", "InputLayer"),
    ("rescale", "Rescaling"),
    ("conv1", "Conv2D"),
    ("act1", "Activation"),
    ("pool1", "MaxPooling2D"),
    ("conv2", "Conv2D"),
    ("act2", "Activation"),
    ("pool2", "MaxPooling2D"),
    ("conv3", "Conv2D"),
    ("act3", "Activation"),
    ("pool3", "MaxPooling2D"),
    ("conv4", "Conv2D"),
    ("act4", "Activation"),
    ("pool4", "MaxPooling2D"),
    ("dropout", "Dropout"),
    ("flatten", "Flatten"),
    ("embedding", "Dense"),
    ("logits", "Dense"),
    ("probabilities", "Activation"),
]


def test_reference_cnn_is_unchanged_by_the_registry():
    model = build_model(ModelConfig())
    assert [(layer.name, type(layer).__name__) for layer in model.layers] == REFERENCE_LAYERS
    assert model.name == "galaxy10_cnn"
    keras.utils.set_random_seed(3)
    a = build_model(ModelConfig(filters=(4, 8), dense_units=16), input_size=32)
    keras.utils.set_random_seed(3)
    b = build_model(ModelConfig(name="reference_cnn", filters=(4, 8), dense_units=16), input_size=32)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_unknown_backbone_is_one_line():
    from experiments.settings.run import load_config

    with pytest.raises(
        ConfigError,
        match=r"model.name='resnet9000' is not a registered backbone; use one of: "
        r".*reference_cnn",
    ):
        load_config(None, ["model.name=resnet9000"])


def test_a_new_backbone_needs_only_a_registration(monkeypatch: pytest.MonkeyPatch):
    """What adding a backbone file does: register a builder; build_model adds the shared head."""
    from models import registry

    monkeypatch.setattr(registry, "BACKBONES", dict(registry.BACKBONES))

    @registry.register("tiny_mlp")
    def tiny_mlp(inputs, cfg, dtype):  # noqa: ANN001, ANN202
        x = keras.layers.Rescaling(1 / 255, dtype=dtype)(inputs)
        return keras.layers.GlobalAveragePooling2D(dtype=dtype)(x)

    model = build_model(ModelConfig(name="tiny_mlp", dense_units=8), input_size=16, num_classes=4)
    assert model.get_layer(EMBEDDING_LAYER).units == 8 and model.output_shape == (None, 4)
    assert model.get_layer(OUTPUT_LAYER).dtype_policy.name == "float32"


def test_backbone_and_its_parameters_travel_in_the_metadata():
    from models import describe_backbone

    doc = describe_backbone(ModelConfig(filters=(8, 16), dense_units=32))
    assert doc["backbone"] == "reference_cnn"
    assert doc["backbone_params"]["filters"] == [8, 16] and doc["backbone_params"]["dense_units"] == 32


def test_multiply_adds_count_the_reference_by_hand_and_nested_models():
    from models.cost import multiply_adds

    # 88 px: conv1 at 88^2, conv2 at 44^2, conv3 at 22^2, conv4 at 11^2; dense 1600 -> 256 -> 10
    by_hand = (
        88 * 88 * 9 * 3 * 32
        + 44 * 44 * 9 * 32 * 32
        + 22 * 22 * 9 * 32 * 64
        + 11 * 11 * 9 * 64 * 64
        + 1600 * 256
        + 256 * 10
    )
    model = build_model(ModelConfig())
    assert multiply_adds(model) == by_hand
    inner = keras.Sequential(
        [
            keras.Input((8, 8, 4)),
            keras.layers.DepthwiseConv2D(3, padding="same"),
            keras.layers.Conv2D(6, 1, groups=2),
            keras.layers.Dense(5),
        ]
    )
    outer_in = keras.Input((8, 8, 4))
    outer = keras.Model(outer_in, keras.layers.Flatten()(inner(outer_in)))
    assert multiply_adds(outer) == 64 * 9 * 4 + 64 * 2 * 6 + 64 * 6 * 5


def test_a_d4_convolution_costs_a_plain_convolution_of_8x_the_channels():
    from models.cost import multiply_adds
    from models.layers.d4 import D4Conv, D4Lift

    x = keras.Input((12, 12, 3))
    g = D4Conv(5)(D4Lift(4)(x))
    assert multiply_adds(keras.Model(x, g)) == 144 * 9 * 3 * 32 + 144 * 9 * 32 * 40
    plain = keras.layers.Conv2D(40, 3, padding="same")(keras.layers.Conv2D(32, 3, padding="same")(x))
    assert multiply_adds(keras.Model(x, plain)) == multiply_adds(keras.Model(x, g))


def test_precision_auto_picks_bfloat16_only_where_it_is_native(tmp_path, monkeypatch: pytest.MonkeyPatch):
    from models import precision as prec

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma avx512f amx_bf16 amx_tile\n")
    assert prec.cpu_flags(info) & prec.BF16_CPU_FLAGS == {"amx_bf16"}
    info.write_text("processor\t: 0\nflags\t\t: fpu avx avx2 fma\n")
    assert not prec.cpu_flags(info) & prec.BF16_CPU_FLAGS
    assert prec.cpu_flags(tmp_path / "missing") == frozenset()
    monkeypatch.setattr(prec, "native_bfloat16", lambda: (True, "test"))
    assert prec.resolve_precision("auto") == "mixed_bfloat16"
    model = build_model(ModelConfig(filters=(4,), dense_units=8), input_size=16, precision="auto")
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    monkeypatch.setattr(prec, "native_bfloat16", lambda: (False, "test"))
    assert prec.resolve_precision("auto") == "float32" and prec.resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    model = build_model(ModelConfig(filters=(4,), dense_units=8), input_size=16, precision="auto")
    assert model.get_layer("conv1").compute_dtype == "float32"
