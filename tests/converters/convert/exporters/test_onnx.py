"""ONNX export: fp32/fp16/int8 load with the edge ONNX Runtime backend, agree with Keras, batch is dynamic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from converters.convert.exporters import export_model, get_exporter, precisions_for
from converters.convert.exporters.onnx import BATCH_DIM, INPUT_NAME, OUTPUT_NAME, export_onnx
from device_profiles import RuntimeSetting
from edge.artifacts.tensors import dequantize_output, prepare_input
from edge.backends import get_backend
from edge.core.atomic import sha256_file
from tests.converters._fixtures import keras_logits

SETTING = RuntimeSetting(name="test", backend="onnxruntime", threads=1)
AGREEMENT = {"fp32": 0.995, "fp16": 0.99, "int8": 0.95}
MAX_DIFF = {"fp32": 1e-3, "fp16": 0.05, "int8": 2.0}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model, data):
    out = tmp_path_factory.mktemp("onnx")
    return {p: export_onnx(model, out / f"tiny-{p}.onnx", p, calib_images=data[0][:100]) for p in precisions_for("onnx")}


def run(path, x):
    with get_backend("onnxruntime").load(path, SETTING) as lm:
        return dequantize_output(lm.predict(prepare_input(x, lm.input_spec)), lm.output_spec), lm.input_spec, lm.output_spec


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_each_precision_loads_and_agrees_with_keras(exported, model, data, precision):
    xte = data[2]
    res = exported[precision]
    assert res.path.is_file() and res.path.suffix == ".onnx"
    assert sha256_file(res.path) == res.sha256 and res.path.stat().st_size == res.size_bytes
    assert not [p.name for p in res.path.parent.iterdir() if p.suffix != ".onnx"]  # no temp files left
    scores, ispec, ospec = run(res.path, xte)
    assert (ispec, ospec) == (res.input, res.output)
    ref = keras_logits(model, xte)
    agreement = float((scores.argmax(1) == ref.argmax(1)).mean())
    assert agreement >= AGREEMENT[precision], agreement
    assert float(np.abs(scores - ref).max()) <= MAX_DIFF[precision]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_stable_names_float_io_and_dynamic_batch(exported, data, precision):
    r = exported[precision]
    # The Keras Input is called "pixels"; every ONNX artifact still takes "input".
    assert r.input.name == INPUT_NAME == "input"
    assert r.output.name == OUTPUT_NAME == "logits"
    assert r.input.dtype == "float32" and r.output.dtype == "float32"
    assert r.input.shape == (-1, 28, 28, 1) and r.output.shape == (-1, 10)
    g = onnx.load(str(r.path)).graph
    for vi in (g.input[0], g.output[0]):
        d0 = vi.type.tensor_type.shape.dim[0]
        assert d0.dim_param == BATCH_DIM and not d0.HasField("dim_value")
    x = data[2][:6]
    whole, _, _ = run(r.path, x)
    one, _, _ = run(r.path, x[:1])
    assert whole.shape == (6, 10)
    np.testing.assert_allclose(one, whole[:1], atol=1e-4)


def test_fp16_stores_half_weights(exported):
    g = onnx.load(str(exported["fp16"].path)).graph
    dtypes = {numpy_helper.to_array(t).dtype.name for t in g.initializer if numpy_helper.to_array(t).size > 16}
    assert "float16" in dtypes and "float32" not in dtypes
    assert exported["fp16"].size_bytes < exported["fp32"].size_bytes


def test_int8_is_per_channel_qdq(exported):
    m = onnx.load(str(exported["int8"].path))
    ops = [n.op_type for n in m.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    int8_weights = [a for a in inits.values() if a.dtype == np.int8 and a.ndim >= 2]
    assert int8_weights, "weights should be stored as int8"
    # Per-channel: the conv weight's DequantizeLinear has one scale per output channel (8 filters).
    per_channel = [
        n for n in m.graph.node
        if n.op_type == "DequantizeLinear" and n.input[1] in inits and inits[n.input[1]].size == 8
    ]
    assert per_channel


def test_int8_needs_calibration_images(model, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        export_onnx(model, tmp_path / "m.onnx", "int8", calib_images=np.zeros((0, 28, 28, 1), np.uint8))
    assert not (tmp_path / "m.onnx").exists()


def test_registry_rejects_precisions_onnx_lacks(model, tmp_path):
    assert get_exporter("onnx") is export_onnx
    with pytest.raises(ValueError, match=r"unknown precision 'dynamic' for format 'onnx'; available: \['fp32', 'fp16', 'int8'\]"):
        export_model(model, tmp_path / "m.onnx", "onnx", "dynamic")
    with pytest.raises(ValueError, match=r"unknown precision 'int4'"):
        export_onnx(model, tmp_path / "m.onnx", "int4")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("batch", ["N", 1])
def test_from_fp32_makes_every_precision_of_a_given_model_with_its_convention(tmp_path, batch):
    from converters.convert.exporters.onnx import from_fp32
    from edge.artifacts.manifest import TensorSpec
    from edge.artifacts.tensors import scores, with_recorded_input
    from tests.converters.importing._models import onnx_linear

    given = onnx_linear(batch=batch, seed=4).SerializeToString()
    conv = TensorSpec("x", (-1,), "float32", mean=(127.5,), std=(127.5,))
    x = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    out = {}
    for p in ("fp32", "fp16", "int8"):
        res = from_fp32(given, tmp_path / f"m-{p}.onnx", p, calib_images=x, convention=conv)
        assert (res.input.mean, res.input.std) == ((127.5,), (127.5,)) and res.input.name == "image"
        with get_backend("onnxruntime").load(res.path, SETTING) as lm:
            out[p] = scores(with_recorded_input(lm, res.input), x)
    assert (tmp_path / "m-fp32.onnx").read_bytes() == given  # the file as given
    want = (x.reshape(64, -1).astype(np.float32) / 127.5 - 1) @ onnx.numpy_helper.to_array(
        onnx.load_from_string(given).graph.initializer[0]) + onnx.numpy_helper.to_array(
        onnx.load_from_string(given).graph.initializer[1])
    assert np.allclose(out["fp32"], want, atol=1e-4)
    assert float((out["fp16"].argmax(1) == want.argmax(1)).mean()) >= 0.95
    assert float((out["int8"].argmax(1) == want.argmax(1)).mean()) >= 0.8


def test_batch_norm_beside_a_resize_is_exported_in_inference_mode(tmp_path, data):
    """A ViP net with batch norm: Keras' ONNX export left to itself traced a batch norm with batch statistics
    (1.2 logits off); the exporter calls the model with training=False."""
    from converters.family.keras_build import build_model
    from converters.family.specs import ModelSpec

    model = build_model(ModelSpec(filters=(8, 16), vip="first", batch_norm=True), (28, 28, 1))
    rng = np.random.default_rng(0)
    for layer in model.layers:  # moving statistics far from any batch's, so the two modes differ
        if type(layer).__name__ == "BatchNormalization":
            layer.moving_mean.assign(rng.normal(0, 0.5, layer.moving_mean.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape).astype("float32"))
    res = export_onnx(model, tmp_path / "vipbn.onnx", "fp32")
    x = data[2][:64]
    scores, _, _ = run(res.path, x)
    ref = keras_logits(model, x)
    assert float(np.abs(ref).max()) > 0.1
    assert float(np.abs(scores - ref).max()) < 1e-4
    ops = {n.op_type for n in onnx.load(str(res.path)).graph.node}
    assert "ReduceMean" not in ops  # no batch statistics in the graph
