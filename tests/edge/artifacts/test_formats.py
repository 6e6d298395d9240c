"""The format vocabulary: every format has a backend that runs it and a converter that builds it."""

from __future__ import annotations

import pytest

from edge.artifacts.formats import BACKENDS, FORMATS, PRECISIONS, backend_for, format_for_backend, get_format


def test_each_format_has_a_registered_backend_and_converter():
    from converters.convert.exporters import available_formats
    from edge.backends import available_backends

    assert sorted(FORMATS) == available_formats()
    for f in FORMATS.values():
        assert f.backend in available_backends(), f"{f.name}: backend {f.backend} is not registered in edge.backends"
        assert set(f.precisions) <= set(PRECISIONS)
        assert format_for_backend(backend_for(f.name)) == f.name
    assert set(BACKENDS) == {f.backend for f in FORMATS.values()}


def test_unknown_names_say_what_exists():
    with pytest.raises(ValueError, match=r"unknown format 'tfjs'; available: \['onnx', 'tflite'\]"):
        get_format("tfjs")
    with pytest.raises(ValueError, match="unknown backend 'tvm'"):
        format_for_backend("tvm")
