"""Tests for converters.importing.tflite_source: damaged files refused by name, the precision read from the file,
scores from LiteRT with the input convention applied."""

from __future__ import annotations

import os

import numpy as np
import pytest

from converters.importing.conventions import DEFAULT, parse_input_range
from converters.importing.tflite_source import TfliteSource, tflite_precision
from edge.core.errors import UsageError
from tests.converters.importing._models import keras_cnn


def _convert(model, precision: str, calib=None) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision != "fp32":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        conv.target_spec.supported_types = [tf.float16]
    if precision == "int8":
        conv.representative_dataset = lambda: ([c[None]] for c in calib)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int8
    return conv.convert()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfl")
    model = keras_cnn()
    calib = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1)).astype(np.float32)
    out = {}
    for p in ("fp32", "fp16", "dynamic", "int8"):
        out[p] = root / f"m-{p}.tflite"
        out[p].write_bytes(_convert(model, p, calib))
    return model, out


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "dynamic", "int8"])
def test_precision_is_read_from_the_file(files, precision):
    _, paths = files
    assert tflite_precision(paths[precision].read_bytes()) == precision
    src = TfliteSource(paths[precision])
    assert (src.precision, src.input_hwc, src.classes) == (precision, (8, 8, 1), 10)


@pytest.mark.slow
def test_scores_are_the_models(files):
    model, paths = files
    x = np.random.default_rng(1).integers(0, 256, (300, 8, 8, 1), dtype=np.uint8)
    want = model(x.astype(np.float32)).numpy()
    assert np.allclose(TfliteSource(paths["fp32"]).scores(x, DEFAULT), want, atol=1e-4)
    q = TfliteSource(paths["int8"]).scores(x, DEFAULT)  # int8 in and out: quantized and dequantized
    assert q.dtype == np.float32 and float((q.argmax(1) == want.argmax(1)).mean()) > 0.8


@pytest.mark.slow
def test_convention_is_applied_before_litert(tmp_path):
    import keras

    inp = keras.Input((4, 5, 3))
    gap = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inp))  # scores = per-channel input means
    path = tmp_path / "gap.tflite"
    path.write_bytes(_convert(gap, "fp32"))
    conv = parse_input_range("-1..1")
    x = np.random.default_rng(2).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    got = TfliteSource(path).scores(x, conv.for_channels(3))
    assert np.allclose(got, (x.astype(np.float32) / 127.5 - 1).mean(axis=(1, 2)), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_files_are_refused_by_name(files, tmp_path, damage):
    data = files[1]["fp32"].read_bytes()
    bad = tmp_path / f"{damage}.tflite"
    bad.write_bytes({"truncated": data[: len(data) * 9 // 10], "garbage": os.urandom(len(data)), "empty": b""}[damage])
    with pytest.raises(UsageError) as e:
        TfliteSource(bad)
    assert str(bad) in str(e.value) and "convert it again" in str(e.value)
