"""Tests for converters/keras_build.py: Keras models from specs, MAC and parameter counts, safe-mode loading."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from converters.specs import FamilyError, ModelSpec

keras = pytest.importorskip("keras")

from converters.keras_build import build_model, count_params_macs, custom_objects, load_keras_model  # noqa: E402
from converters.layers import PSConv2D  # noqa: E402

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
