"""Tests for converters/family/keras_build.py: Keras models from specs, MAC and parameter counts, safe-mode loading."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from converters.family.specs import FamilyError, ModelSpec

keras = pytest.importorskip("keras")

from converters.family.keras_build import build_model, count_params_macs, custom_objects, load_keras_model  # noqa: E402
from converters.family.layers import PSConv2D  # noqa: E402

MODEL_SPECS = [
    ModelSpec(filters=(4,), pool="stride", head="flatten"),
    ModelSpec(filters=(4, 8), kernel=5, pool="avg", dense=16, dropout=0.2),
    ModelSpec(filters=(4, 8, 8), pool="max", vip=(0, 1, 1), psconv=True, dense=8),
    ModelSpec(filters=(4, 6), convs=2, pool="stride", vip="all", psconv=True),
    ModelSpec(filters=(3, 5), pool="none", vip="first", psconv=True, head="flatten"),
]


@pytest.mark.parametrize("spec", MODEL_SPECS, ids=lambda s: s.model_id)
def test_build_model_io_and_macs(spec):
    model = build_model(spec, (12, 12, 1), num_classes=7)
    assert model.inputs[0].dtype == "float32"
    assert tuple(model.inputs[0].shape) == (None, 12, 12, 1)
    assert tuple(model.outputs[0].shape) == (None, 7)
    params, macs = count_params_macs(model)
    assert macs == spec.estimate_macs((12, 12, 1), 7)
    assert params == model.count_params()  # shifted PSConv2D stores only its free weights
    assert any(isinstance(layer, PSConv2D) for layer in model.layers) == (spec.psconv and spec.blocks * spec.convs > 1)
    x = np.random.default_rng(0).uniform(0, 255, (2, 12, 12, 1)).astype(np.float32)
    y = model(x, training=False)
    assert y.shape == (2, 7) and np.isfinite(np.asarray(y)).all()


def test_count_params_macs_by_hand():
    spec = ModelSpec(filters=(4, 8), pool="max", dense=16)
    model = build_model(spec, (8, 8, 1), num_classes=10)
    conv1 = 8 * 8 * 9 * 1 * 4  # 8x8 output, 3x3x1 -> 4
    conv2 = 4 * 4 * 9 * 4 * 8  # after 2x2 max pool
    dense = 8 * 16 + 16 * 10
    assert count_params_macs(model) == (
        (9 * 1 * 4 + 4) + (9 * 4 * 8 + 8) + (8 * 16 + 16) + (16 * 10 + 10),
        conv1 + conv2 + dense,
    )
    # ViP runs the conv at stride 2: a quarter of its MACs.
    vip = build_model(dataclasses.replace(spec, vip=(0, 1)), (8, 8, 1), 10)
    assert count_params_macs(vip)[1] == conv1 + conv2 // 4 + dense


def test_build_model_rejects_too_small_input():
    with pytest.raises(FamilyError, match="^blocks:"):
        build_model(ModelSpec(filters=(4, 4, 4, 4)), (8, 8, 1))
    with pytest.raises(FamilyError, match="num_classes"):
        build_model(ModelSpec(filters=(4,)), (8, 8, 1), num_classes=1)


def test_preprocessing_in_graph():
    x = np.random.default_rng(0).uniform(0, 255, (2, 6, 6, 3)).astype(np.float32)
    m = build_model(ModelSpec(filters=(2,)), (6, 6, 3), 2)
    pre = keras.Model(m.input, m.get_layer("rescale").output)
    np.testing.assert_allclose(np.asarray(pre(x)), x / 255.0, rtol=1e-6)
    spec = ModelSpec(filters=(2,), preprocess="standardize", mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0))
    m = build_model(spec, (6, 6, 3), 2)
    pre = keras.Model(m.input, m.get_layer("standardize").output)
    expect = (x - np.array([10, 20, 30], np.float32)) / np.array([2, 4, 8], np.float32)
    np.testing.assert_allclose(np.asarray(pre(x)), expect, rtol=1e-4, atol=1e-4)


def test_save_and_load_in_safe_mode(tmp_path):
    spec = ModelSpec(filters=(4, 8), vip=(0, 1), psconv=True, dense=8, dropout=0.1)
    model = build_model(spec, (10, 10, 1), 3)
    path = tmp_path / "model.keras"
    model.save(path)
    x = np.random.default_rng(1).uniform(0, 255, (2, 10, 10, 1)).astype(np.float32)
    loaded = load_keras_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
    again = keras.saving.load_model(path, custom_objects=custom_objects(), safe_mode=True)
    assert count_params_macs(again) == count_params_macs(model)
    with pytest.raises(FileNotFoundError):
        load_keras_model(tmp_path / "missing.keras")


# --- batch norm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("psconv", [False, True])
def test_batch_norm_is_conv_without_bias_then_bn_then_relu(psconv):
    spec = ModelSpec(filters=(4, 8), convs=2, pool="max", psconv=psconv, batch_norm=True, dense=8)
    model = build_model(spec, (12, 12, 1), 5)
    names = [layer.name for layer in model.layers]
    for tag in ("b1c1", "b1c2", "b2c1", "b2c2"):
        conv = next(layer for layer in model.layers if layer.name.startswith(f"{tag}_") and
                    isinstance(layer, (keras.layers.Conv2D, PSConv2D)))
        bn, relu = model.get_layer(f"{tag}_bn"), model.get_layer(f"{tag}_relu")
        assert isinstance(bn, keras.layers.BatchNormalization) and isinstance(relu, keras.layers.ReLU)
        assert names.index(conv.name) + 1 == names.index(bn.name) and names.index(bn.name) + 1 == names.index(relu.name)
        assert bn.input is conv.output and relu.input is bn.output  # wired in that order
        assert conv.use_bias is False and keras.activations.serialize(conv.activation) == "linear"
        assert len(conv.weights) == 1  # the kernel (or pSConv's free weights) only: BN's beta is the bias
    assert any(isinstance(layer, PSConv2D) for layer in model.layers) == psconv
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 4
    params, macs = count_params_macs(model)
    assert macs == spec.estimate_macs((12, 12, 1), 5)
    assert params == model.count_params()
    # Without batch norm: biased ReLU convs and no BN or ReLU layers.
    plain = build_model(dataclasses.replace(spec, batch_norm=False), (12, 12, 1), 5)
    assert not any(isinstance(layer, (keras.layers.BatchNormalization, keras.layers.ReLU)) for layer in plain.layers)
    conv = plain.get_layer("b1c2_psconv" if psconv else "b1c2_conv")
    assert conv.use_bias is True and keras.activations.serialize(conv.activation) == "relu"
    assert count_params_macs(plain)[1] == macs


def test_batch_norm_model_uses_moving_statistics_at_inference(tmp_path):
    spec = ModelSpec(filters=(4,), pool="max", batch_norm=True)
    model = build_model(spec, (8, 8, 1), 3)
    bn = model.get_layer("b1c1_bn")
    rng = np.random.default_rng(2)
    bn.moving_mean.assign(rng.uniform(-1, 1, 4).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2, 4).astype(np.float32))
    x = rng.uniform(0, 255, (5, 8, 8, 1)).astype(np.float32)
    infer = np.asarray(model(x, training=False))
    np.testing.assert_allclose(np.asarray(model(x[:1], training=False)), infer[:1], rtol=1e-5, atol=1e-5)
    model.save(tmp_path / "bn.keras")
    np.testing.assert_allclose(np.asarray(load_keras_model(tmp_path / "bn.keras")(x)), infer, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(model(x, training=True)), infer, atol=1e-3)  # batch statistics differ
