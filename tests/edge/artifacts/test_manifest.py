"""Tests for the manifest contract."""

import pytest

from edge.artifacts.manifest import ArtifactRecord, Manifest, ManifestError, TensorSpec, artifact_id


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
