"""TFLite export: every precision loads with the edge LiteRT backend and agrees with Keras."""

from __future__ import annotations

import numpy as np
import pytest

from converters.convert.exporters import ExportResult, precisions_for
from converters.convert.exporters.tflite import export_tflite
from device_profiles import RuntimeSetting
from edge.artifacts.manifest import TensorSpec
from edge.artifacts.tensors import dequantize_output, prepare_input
from edge.backends import get_backend
from edge.core.atomic import sha256_file
from tests.converters._fixtures import keras_logits

SETTING = RuntimeSetting(name="test", backend="litert", threads=1)
# Minimum top-1 agreement with Keras and maximum |logit difference| per precision.
AGREEMENT = {"fp32": 0.995, "fp16": 0.99, "dynamic": 0.97, "int8": 0.95}
MAX_DIFF = {"fp32": 1e-3, "fp16": 0.05, "dynamic": 1.0, "int8": 2.0}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model, data):
    """Every TFLite precision of the tiny model, exported once for the module."""
    xtr = data[0]
    out = tmp_path_factory.mktemp("tflite")
    return {p: export_tflite(model, out / f"tiny-{p}.tflite", p, calib_images=xtr[:100]) for p in precisions_for("tflite")}


def run(path, x):
    with get_backend("litert").load(path, SETTING) as lm:
        return dequantize_output(lm.predict(prepare_input(x, lm.input_spec)), lm.output_spec), lm.input_spec, lm.output_spec


@pytest.mark.parametrize("precision", ["fp32", "fp16", "dynamic", "int8"])
def test_each_precision_loads_and_agrees_with_keras(exported, model, data, precision):
    _, _, xte, _ = data
    res = exported[precision]
    assert isinstance(res, ExportResult)
    assert res.path.is_file() and res.path.suffix == ".tflite"
    assert res.format == "tflite" and res.precision == precision
    assert sha256_file(res.path) == res.sha256
    assert res.path.stat().st_size == res.size_bytes
    assert res.seconds > 0
    # Atomic write: nothing but the artifacts in the folder.
    assert not [p.name for p in res.path.parent.iterdir() if p.suffix != ".tflite"]

    scores, ispec, ospec = run(res.path, xte)
    assert (ispec, ospec) == (res.input, res.output)  # specs are read back from the artifact
    ref = keras_logits(model, xte)
    agreement = float((scores.argmax(1) == ref.argmax(1)).mean())
    assert agreement >= AGREEMENT[precision], agreement
    assert float(np.abs(scores - ref).max()) <= MAX_DIFF[precision]


def test_float_precisions_keep_float_io(exported):
    for p in ("fp32", "fp16", "dynamic"):
        r = exported[p]
        assert r.input.dtype == "float32" and r.output.dtype == "float32"
        assert not r.input.quantized and r.input.shape == (-1, 28, 28, 1) and r.output.shape == (-1, 10)


def test_fp16_and_dynamic_are_smaller_than_fp32(exported):
    assert exported["fp16"].size_bytes < exported["fp32"].size_bytes
    assert exported["dynamic"].size_bytes < exported["fp32"].size_bytes


def test_int8_records_scale_and_zero_point(exported):
    r = exported["int8"]
    assert r.input.dtype == "int8" and r.output.dtype == "int8"
    assert r.input.quantized and r.output.quantized
    # Input is raw pixels 0..255 mapped onto int8: scale ~1, zero point -128.
    assert r.input.scale == pytest.approx(1.0, rel=1e-3)
    assert r.input.zero_point == -128
    assert r.output.scale > 0 and -128 <= r.output.zero_point <= 127
    # Survives the manifest round trip.
    assert TensorSpec.from_dict(r.input.to_dict()) == r.input


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_batch_dimension_is_dynamic(exported, data, precision):
    from ai_edge_litert import interpreter

    r = exported[precision]
    interp = interpreter.Interpreter(model_path=str(r.path))
    assert int(interp.get_input_details()[0]["shape_signature"][0]) == -1
    assert int(interp.get_output_details()[0]["shape_signature"][0]) == -1
    x = data[2][:9]
    whole, _, _ = run(r.path, x)
    one, _, _ = run(r.path, x[:1])
    seven, _, _ = run(r.path, x[2:9])
    assert whole.shape == (9, 10)
    np.testing.assert_allclose(one, whole[:1], atol=1e-5)
    np.testing.assert_allclose(seven, whole[2:9], atol=1e-5)


def test_int8_needs_calibration_images(model, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        export_tflite(model, tmp_path / "m.tflite", "int8", calib_images=None)
    with pytest.raises(ValueError, match="must be uint8 pixels"):
        export_tflite(model, tmp_path / "m.tflite", "int8", calib_images=np.zeros((4, 28, 28, 1), np.float32))
    assert not (tmp_path / "m.tflite").exists()
