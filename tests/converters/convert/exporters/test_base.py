"""The export registry (converters/convert/exporters/base.py): dispatch by format, names what exists, the load check."""

from __future__ import annotations

import time

import pytest

from converters.convert.exporters import Precision, available_formats, export_model, get_exporter
from converters.convert.exporters.base import finish
from converters.convert.exporters.tflite import export_tflite


def test_registry_dispatches_and_names_what_exists(model, data, tmp_path):
    assert available_formats() == ["onnx", "tflite"]
    assert get_exporter("tflite") is export_tflite
    with pytest.raises(ValueError, match=r"unknown format 'coreml'; available: \['onnx', 'tflite'\]"):
        get_exporter("coreml")
    with pytest.raises(ValueError, match=r"unknown format 'coreml'; available:"):
        export_model(model, tmp_path / "m.x", "coreml", "fp32")
    with pytest.raises(ValueError, match=r"unknown precision 'int4'; available: \['fp32', 'fp16', 'dynamic', 'int8'\]"):
        export_model(model, tmp_path / "m.tflite", "tflite", "int4")
    with pytest.raises(ValueError, match="unknown precision"):
        Precision.from_string("bf16")
    assert Precision.from_string("INT8") is Precision.INT8
    r = export_model(model, tmp_path / "m.tflite", "tflite", "fp32")
    assert r.format == "tflite" and r.path.is_file()


def test_unloadable_bytes_are_never_written(tmp_path):
    with pytest.raises(ValueError, match="LiteRT could not load"):
        finish(tmp_path / "bad.tflite", b"not a flatbuffer at all", "tflite", "fp32", time.perf_counter())
    assert list(tmp_path.iterdir()) == []
