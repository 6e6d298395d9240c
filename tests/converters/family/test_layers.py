"""Tests for converters/family/layers.py: pSConv pattern and equivalence, training keeps the mask, ViP, and
conversion of both to TFLite and ONNX with outputs that match Keras."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

from converters.family.keras_build import build_model, count_params_macs, custom_objects  # noqa: E402
from converters.family.layers import (  # noqa: E402
    CORNERS,
    PSConv2D,
    corner_index,
    corners_to_dense,
    dense_to_corners,
    psconv_mask,
)
from converters.family.specs import ModelSpec  # noqa: E402

RNG = np.random.default_rng(0)


def rand(*shape, lo=-1.0, hi=1.0):
    return RNG.uniform(lo, hi, shape).astype(np.float32)


# --- the sparsity pattern ---------------------------------------------------------------------


@pytest.mark.parametrize("cin, cout", [(1, 1), (1, 4), (3, 5), (8, 16)])
def test_mask_has_four_of_nine_in_a_corner(cin, cout):
    mask = psconv_mask(cin, cout)
    assert mask.shape == (3, 3, cin, cout)
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert (mask.sum(axis=(0, 1)) == 4).all()
    idx = corner_index(cin, cout)
    for i in range(cin):
        for o in range(cout):
            ry, rx = CORNERS[idx[i, o]]
            expect = np.zeros((3, 3), np.float32)
            expect[ry : ry + 2, rx : rx + 2] = 1
            np.testing.assert_array_equal(mask[:, :, i, o], expect)


def test_corners_rotate_across_input_and_output_channels():
    idx = corner_index(8, 8)
    assert set(np.unique(idx)) == {0, 1, 2, 3}  # all four corners are used
    assert len(set(idx[:, 0])) == 2 and len(set(idx[0, :])) == 2  # varies along both axes
    # Equal use of each corner, so every tap of the 3x3 window is trained.
    assert np.bincount(idx.ravel(), minlength=4).tolist() == [16, 16, 16, 16]


def test_corner_scatter_gather_round_trip():
    k2 = rand(2, 2, 5, 6)
    k3 = corners_to_dense(k2)
    assert (k3[psconv_mask(5, 6) == 0] == 0).all()
    np.testing.assert_array_equal(dense_to_corners(k3), k2)


# --- shifted 2x2 == masked 3x3 ----------------------------------------------------------------


@pytest.mark.parametrize(
    "h, w, cin, cout, strides",
    [(7, 7, 4, 8, 1), (8, 6, 3, 5, 1), (8, 8, 4, 8, 2), (7, 9, 5, 3, 2), (9, 9, 2, 1, 1), (5, 5, 1, 2, 4)],
)
def test_shifted_equals_masked_and_conv2d(h, w, cin, cout, strides):
    x = rand(2, h, w, cin)
    shifted = PSConv2D(cout, strides=strides, activation="relu", implementation="shifted")
    masked = PSConv2D(cout, strides=strides, activation="relu", implementation="masked")
    shifted.build(x.shape)
    masked.build(x.shape)
    k2, bias = rand(2, 2, cin, cout), rand(cout)
    shifted.set_weights([k2, bias])
    masked.set_weights([corners_to_dense(k2), bias])
    ref = keras.layers.Conv2D(cout, 3, strides=strides, padding="same", activation="relu")
    ref.build(x.shape)
    ref.set_weights([corners_to_dense(k2), bias])
    ys, ym, yr = (np.asarray(layer(x)) for layer in (shifted, masked, ref))
    assert ys.shape == yr.shape == (2, -(-h // strides), -(-w // strides), cout)
    np.testing.assert_allclose(ys, yr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ym, yr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(shifted.dense_kernel(), masked.dense_kernel(), atol=0)


def test_masked_layer_ignores_weights_outside_the_mask():
    layer = PSConv2D(4, implementation="masked", use_bias=False)
    x = rand(1, 6, 6, 4)
    layer.build(x.shape)
    k3 = rand(3, 3, 4, 4)
    layer.set_weights([k3])
    ref = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)
    ref.build(x.shape)
    ref.set_weights([k3 * psconv_mask(4, 4)])
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(ref(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["shifted", "masked"])
def test_mask_is_kept_through_training(implementation):
    inp = keras.Input((6, 6, 4))
    layer = PSConv2D(4, activation="relu", implementation=implementation)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(layer(inp)))
    model = keras.Model(inp, out)
    zero = psconv_mask(4, 4) == 0
    if implementation == "masked":
        assert (np.asarray(layer.kernel)[zero] == 0).all()  # applied at build
    before = layer.dense_kernel().copy()
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(rand(16, 6, 6, 4, lo=0.0), RNG.integers(0, 2, 16), epochs=2, batch_size=8, verbose=0)
    after = layer.dense_kernel()
    assert (after[zero] == 0).all()
    if implementation == "masked":
        assert (np.asarray(layer.kernel)[zero] == 0).all()  # zero gradient there: the stored weights stay 0
    assert not np.allclose(after[~zero], before[~zero])  # the free weights did train


def test_psconv_config_round_trip_and_registration():
    layer = PSConv2D(6, strides=2, activation="relu", implementation="masked", name="p")
    cfg = layer.get_config()
    again = PSConv2D.from_config(cfg)
    assert (again.filters, again.strides, again.implementation, again.name) == (6, 2, "masked", "p")
    assert keras.saving.get_registered_name(PSConv2D) == "edgekit>PSConv2D"
    assert custom_objects()["edgekit>PSConv2D"] is PSConv2D
    with pytest.raises(ValueError, match="implementation"):
        PSConv2D(4, implementation="fast")
    with pytest.raises(ValueError, match="filters"):
        PSConv2D(0)


def test_psconv_macs_and_params():
    spec = ModelSpec(filters=(4, 8), pool="max", psconv=True)
    model = build_model(spec, (8, 8, 1), 10)
    params, macs = count_params_macs(model)
    conv1 = 8 * 8 * 9 * 1 * 4
    ps = (4 + 1) * 4 * 4 * 4 * 8  # 4x4 output, one extra row for the output-side shift, 4 taps
    assert macs == conv1 + ps + 8 * 10
    assert params == (9 * 4 + 4) + (4 * 4 * 8 + 8) + (8 * 10 + 10)
    masked = build_model(spec, (8, 8, 1), 10, psconv_implementation="masked")
    assert count_params_macs(masked) == (params, conv1 + 4 * 4 * 9 * 4 * 8 + 80)


def test_vip_is_a_stride_two_conv_resized_back():
    spec = ModelSpec(filters=(4, 8), pool="max", vip=(0, 1))
    model = build_model(spec, (14, 14, 1), 10)
    conv = model.get_layer("b2c1_conv")
    assert conv.strides == (2, 2)
    assert tuple(conv.output.shape[1:3]) == (4, 4)  # computed at stride 2 on the 7x7 map ...
    assert tuple(model.get_layer("b2c1_vip").output.shape[1:3]) == (7, 7)  # ... and brought back to 7x7
    assert tuple(model.get_layer("b2_maxpool").output.shape[1:3]) == (3, 3)
    plain = build_model(ModelSpec(filters=(4, 8), pool="max"), (14, 14, 1), 10)
    assert plain.get_layer("b2_maxpool").output.shape == model.get_layer("b2_maxpool").output.shape


def test_flip_mirrors_left_right_and_reloads_in_safe_mode(tmp_path):
    from converters.family.keras_build import load_keras_model
    from converters.family.layers import Flip

    x = rand(2, 3, 4, 2)
    got = keras.ops.convert_to_numpy(Flip()(x))
    np.testing.assert_array_equal(got, x[:, :, ::-1, :])  # width (axis 2) reversed, nothing else
    assert not np.array_equal(got, x[:, ::-1])
    assert Flip().compute_output_shape((None, 3, 4, 2)) == (None, 3, 4, 2)
    assert keras.saving.get_registered_name(Flip) == "edgekit>Flip"
    assert custom_objects()["edgekit>Flip"] is Flip and custom_objects()["Flip"] is Flip
    inp = keras.Input((3, 4, 2))
    model = keras.Model(inp, keras.layers.Dense(3)(Flip(name="view_flip_0")(inp)))
    model.save(tmp_path / "flip.keras")
    back = load_keras_model(tmp_path / "flip.keras")  # safe mode: no Lambda
    assert isinstance(back.get_layer("view_flip_0"), Flip)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(back(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6)


# --- conversion -------------------------------------------------------------------------------

CONVERT_SPECS = [
    ModelSpec(filters=(4, 8), pool="max", vip=(0, 1), psconv=True, dense=8),
    ModelSpec(filters=(4, 6), convs=2, pool="stride", vip=(1, 0), psconv=True),
]


def _tiny(spec):
    keras.utils.set_random_seed(0)
    model = build_model(spec, (12, 12, 1), 5)
    x = RNG.uniform(0, 255, (3, 12, 12, 1)).astype(np.float32)
    return model, x, np.asarray(model(x))


@pytest.mark.slow
@pytest.mark.parametrize("spec", CONVERT_SPECS, ids=lambda s: s.model_id)
def test_converts_to_tflite_and_matches(spec):
    tf = pytest.importorskip("tensorflow")
    interp_mod = pytest.importorskip("ai_edge_litert.interpreter")
    model, x, ref = _tiny(spec)
    blob = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    interp = interp_mod.Interpreter(model_content=blob)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    out = interp.get_tensor(interp.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    ops = {d["op_name"] for d in interp._get_ops_details()}
    assert "RESIZE_BILINEAR" in ops or "DELEGATE" in ops


@pytest.mark.slow
@pytest.mark.parametrize("spec", CONVERT_SPECS, ids=lambda s: s.model_id)
def test_exports_to_onnx_and_matches(spec, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model, x, ref = _tiny(spec)
    path = tmp_path / "m.onnx"
    model.export(str(path), format="onnx", verbose=False)
    op_types = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Conv" in op_types and "Resize" in op_types
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_psconv_report_measures_a_pair():
    pytest.importorskip("ai_edge_litert")
    from converters.family.psconv_report import Variant, format_report, measure

    base = ModelSpec(filters=(4, 8), pool="max")
    ps = ModelSpec(filters=(4, 8), pool="max", psconv=True)
    pairs = [("pSConv vs dense", Variant(base.model_id, base), Variant(ps.model_id, ps))]
    profile, setting, version, rows = measure(pairs, (12, 12, 1), runs=5, warmup=1)
    assert rows[0]["a_p50"] > 0 and rows[0]["b_p50"] > 0
    text = format_report(profile, setting, version, rows, 5)
    assert "ratio variant/baseline" in text and ps.model_id in text
