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


def test_input_convention_round_trips_and_old_records_stay_raw_pixels(tmp_path):
    import dataclasses
    import json

    conv = dataclasses.replace(_rec("onnx", "fp32"), input=TensorSpec("x", (-1, 8, 8, 3), "float32",
                                                                      mean=(123.675, 116.28, 103.53),
                                                                      std=(58.395, 57.12, 57.375)))
    m = Manifest(dataset="images", labels=("a", "b")).with_artifact(conv).with_artifact(_rec())
    m.save(tmp_path / "manifest.json")
    raw = json.loads((tmp_path / "manifest.json").read_text())
    by_id = {a["artifact_id"]: a for a in raw["artifacts"]}
    assert by_id[conv.artifact_id]["input"]["mean"] == [123.675, 116.28, 103.53]
    # a raw-pixel record is written as before (no mean/std keys), so older readers and manifests agree
    assert "mean" not in by_id[_rec().artifact_id]["input"] and "std" not in by_id[_rec().artifact_id]["input"]
    back = Manifest.load(tmp_path / "manifest.json")
    assert back == m and back.get(conv.artifact_id).input.normalized
    assert not back.get(_rec().artifact_id).input.normalized


@pytest.mark.parametrize("kw, match", [
    (dict(mean=(1.0,)), "go together"),
    (dict(mean=(1.0, 2.0), std=(1.0,)), "one value per channel"),
    (dict(mean=(0.0,), std=(0.0,)), "std > 0"),
    (dict(mean=(float("nan"),), std=(1.0,)), "finite"),
])
def test_bad_input_convention_is_refused(kw, match):
    with pytest.raises(ManifestError, match=match):
        TensorSpec("x", (-1, 2, 2, 1), "float32", **kw)
    d = {"name": "x", "shape": [-1, 2, 2, 1], "dtype": "float32", **{k: list(v) for k, v in kw.items()}}
    rec = _rec().to_dict() | {"input": d}
    with pytest.raises(ManifestError):
        Manifest.from_dict({"version": 1, "dataset": "d", "labels": [], "artifacts": [rec]})
