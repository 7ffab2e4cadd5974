"""The CNN: reference architecture, configurable variants, precision, the embedding layer."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from experiments.config import ModelConfig
from experiments.models import EMBEDDING_LAYER, OUTPUT_LAYER, build_model
from pipelines.errors import ConfigError

# Conv 3x3 (3->32, 32->32, 32->64, 64->64), 88 px pooled 4x to 5 px: 5*5*64 = 1600 -> Dense 256 -> Dense 10.
REFERENCE_PARAMS = (
    (3 * 3 * 3 * 32 + 32) + (3 * 3 * 32 * 32 + 32) + (3 * 3 * 32 * 64 + 64) + (3 * 3 * 64 * 64 + 64)
    + (1600 * 256 + 256) + (256 * 10 + 10)
)


def _layers(model, cls):
    return [layer for layer in model.layers if isinstance(layer, cls)]


def test_reference_cnn_architecture():
    model = build_model()
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
    cfg = ModelConfig(filters=(8, 16, 16), kernel_size=5, batch_norm=True, dropout=0.0, dense_units=32,
                      l2=1e-3, global_pooling=True, activation="elu")
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
        build_model(precision="float16")
