"""Tests for the manifest contract and input preparation."""

import numpy as np
import pytest

from edge.manifest import ArtifactRecord, Manifest, ManifestError, TensorSpec, artifact_id, dequantize_output, prepare_input


def _rec(fmt="tflite", prec="int8"):
    return ArtifactRecord(
        artifact_id=artifact_id("c1-f4", fmt, prec),
        model_id="c1-f4",
        format=fmt,
        precision=prec,
        path=f"artifacts/c1-f4.{fmt}-{prec}.{fmt}",
        sha256="0" * 64,
        size_bytes=10,
        input=TensorSpec("x", (-1, 28, 28, 1), "int8", 1.0, -128),
        output=TensorSpec("y", (-1, 10), "int8", 0.1, 3),
    )


def test_round_trip(tmp_path):
    m = Manifest(dataset="fashion_mnist", labels=tuple("abcdefghij")).with_artifact(_rec()).with_artifact(_rec("onnx", "fp32"))
    m.save(tmp_path / "manifest.json")
    back = Manifest.load(tmp_path / "manifest.json")
    assert back == m
    assert back.get("c1-f4.tflite-int8").input.quantized
    with pytest.raises(ManifestError, match="unknown artifact 'nope'"):
        back.get("nope")


def test_load_errors(tmp_path):
    p = tmp_path / "manifest.json"
    p.write_text('{"version": 1, "dataset": ')
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.load(p)
    p.write_text('{"version": 99, "dataset": "x", "labels": []}')
    with pytest.raises(ManifestError, match="version"):
        Manifest.load(p)
    with pytest.raises(ManifestError, match="not found"):
        Manifest.load(tmp_path / "none.json")


def test_prepare_input_quantizes_pixels_exactly():
    img = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
    spec = TensorSpec("x", (-1, 28, 28, 1), "int8", 1.0, -128)
    q = prepare_input(img, spec)
    assert q.shape == (1, 28, 28, 1) and q.dtype == np.int8
    assert np.array_equal(q.astype(np.int16) + 128, img[None].astype(np.int16))
    f = prepare_input(img[None], TensorSpec("x", (-1, 28, 28, 1), "float32"))
    assert f.dtype == np.float32 and f.max() == img.max()
    with pytest.raises(ValueError, match="does not match"):
        prepare_input(np.zeros((1, 32, 32, 3), np.uint8), spec)
    out = dequantize_output(np.array([[3, 13]], np.int8), TensorSpec("y", (-1, 2), "int8", 0.1, 3))
    assert np.allclose(out, [[0.0, 1.0]])
