"""Validation: artifacts run with their edge runtime, compared with Keras, rejected past the accuracy drop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from converters.convert import validate
from converters.convert.exporters.onnx import export_onnx
from converters.convert.exporters.tflite import export_tflite
from edge.artifacts.manifest import ArtifactRecord, TensorSpec
from tests.converters._fixtures import keras_logits, perturbed_copy


@pytest.fixture(scope="module")
def reference(model, data):
    return validate.keras_outputs(model, data[2], batch_size=64)


def _record(**kw) -> ArtifactRecord:
    spec = TensorSpec("input", (-1, 28, 28, 1), "float32")
    out = TensorSpec("logits", (-1, 10), "float32")
    base = dict(artifact_id="m.tflite-fp32", model_id="m", format="tflite", precision="fp32",
                path="artifacts/m.tflite-fp32.tflite", sha256="0" * 64, size_bytes=1, input=spec, output=out)
    base.update(kw)
    return ArtifactRecord(**base)


# ---------------------------------------------------------------------------------- pure logic


def test_compare_counts_accuracy_agreement_and_difference():
    labels = np.array([0, 1, 2, 3])
    ref = np.eye(4, 10, dtype=np.float32) * 5  # Keras: 0,1,2,3 -> 100%
    ref[3] = 0
    ref[3, 0] = 5  # Keras says 0 for the last one -> 75%
    scores = ref.copy()
    scores[2] = 0
    scores[2, 0] = 6  # artifact: 0,1,0,0 -> 50%, agrees on 3 of 4
    v = validate.compare(scores, labels, ref, max_drop=2.0)
    assert v.accuracy == 0.5 and v.keras_accuracy == 0.75 and v.agreement == 0.75
    assert v.eval_count == 4
    assert v.max_abs_diff == pytest.approx(6.0)
    assert v.drop_points == pytest.approx(25.0)
    assert v.status == "rejected"
    assert "50.00%" in v.reason and "25.00 points" in v.reason and "75.00%" in v.reason and "max drop 2.00" in v.reason


def test_judge_threshold_is_inclusive_and_configurable():
    assert validate.judge(0.78, 0.80, 2.0) == ("ok", "")  # exactly 2 points: allowed
    assert validate.judge(0.7799, 0.80, 2.0)[0] == "rejected"
    assert validate.judge(0.80, 0.80, 0.0)[0] == "ok"
    assert validate.judge(0.81, 0.80, 1.0)[0] == "ok"  # better by up to max_drop points: allowed
    status, reason = validate.judge(0.80, 0.80, -1.0)  # negative max drop: must beat Keras by a point
    assert status == "rejected" and "max drop -1.00" in reason


def test_judge_rejects_an_artifact_far_above_keras():
    # Symmetric: an artifact much better than its source does not compute the source's function either.
    assert validate.judge(0.82, 0.80, 2.0) == ("ok", "")  # exactly 2 points above: allowed
    status, reason = validate.judge(0.8201, 0.80, 2.0)
    assert status == "rejected" and "points above" in reason and "below" not in reason
    status, reason = validate.judge(0.90, 0.80, 2.0)
    assert status == "rejected"
    assert "90.00%" in reason and "10.00 points above" in reason and "80.00%" in reason and "max change 2.00" in reason
    assert validate.judge(0.81, 0.80, 0.0)[0] == "rejected"
    assert validate.judge(0.90, 0.80, 10.0)[0] == "ok"


def test_judge_rejects_low_agreement_whatever_the_accuracy():
    assert validate.MIN_AGREEMENT == 0.90
    assert validate.judge(0.80, 0.80, 2.0, agreement=0.90) == ("ok", "")  # the minimum itself passes
    assert validate.judge(0.80, 0.80, 2.0, agreement=None) == ("ok", "")  # not measured: not judged
    status, reason = validate.judge(0.80, 0.80, 2.0, agreement=0.8999)
    assert status == "rejected" and "agrees" in reason and "89.99%" in reason and "minimum 90%" in reason
    # A drop is still reported as a drop (checked first).
    status, reason = validate.judge(0.70, 0.80, 2.0, agreement=0.5)
    assert status == "rejected" and "points below" in reason


def test_compare_and_rejudge_use_the_agreement():
    # Same accuracy as Keras (50%), but the artifact's top-1 differs on 3 of 4 images.
    labels = np.array([0, 1, 2, 3])
    ref = np.zeros((4, 10), np.float32)
    ref[[0, 1, 2, 3], [0, 1, 5, 5]] = 5  # Keras: 0, 1, 5, 5 -> right on 2
    scores = np.zeros((4, 10), np.float32)
    scores[[0, 1, 2, 3], [7, 7, 2, 3]] = 5  # artifact: 7, 7, 2, 3 -> right on 2, agrees on none
    v = validate.compare(scores, labels, ref, max_drop=2.0)
    assert v.accuracy == v.keras_accuracy == 0.5 and v.agreement == 0.0
    assert v.status == "rejected" and "agrees" in v.reason
    same = validate.compare(ref.copy(), labels, ref, max_drop=2.0)
    assert same.agreement == 1.0 and same.status == "ok"
    # rejudge reads the record's agreement: a looser accuracy threshold does not rescue it.
    rec = validate.apply_validation(_record(), v)
    assert rec.agreement == 0.0
    again = validate.rejudge(rec, 50.0)
    assert again.status == "rejected" and "agrees" in again.reason
    ok = validate.apply_validation(_record(), same)
    assert validate.rejudge(ok, 2.0).status == "ok"
    high = validate.rejudge(dataclasses.replace(ok, host_accuracy=0.9, keras_accuracy=0.5), 2.0)
    assert high.status == "rejected" and "points above" in high.reason


def test_nan_outputs_are_rejected_and_json_safe():
    labels = np.array([0, 1])
    ref = np.eye(2, 10, dtype=np.float32)
    scores = ref.copy()
    scores[0, 3] = np.nan
    v = validate.compare(scores, labels, ref, max_drop=100.0)
    assert v.status == "rejected" and "NaN" in v.reason and v.max_abs_diff is None
    rec = validate.apply_validation(_record(), v)
    assert validate.rejudge(rec, 100.0).status == "rejected"  # a looser threshold does not rescue it


def test_compare_rejects_misaligned_inputs():
    with pytest.raises(ValueError, match="do not line up"):
        validate.compare(np.zeros((3, 10)), np.zeros(4), np.zeros((3, 10)))
    with pytest.raises(ValueError, match="empty"):
        validate.compare(np.zeros((0, 10)), np.zeros(0), np.zeros((0, 10)))


def test_apply_and_rejudge_records():
    rec = _record()
    assert rec.status == "unvalidated"
    assert validate.rejudge(rec, 2.0) is rec  # nothing measured yet
    v = validate.Validation(accuracy=0.80, keras_accuracy=0.81, agreement=0.97, max_abs_diff=0.5,
                            eval_count=300, status="ok")
    rec = validate.apply_validation(rec, v)
    assert (rec.host_accuracy, rec.keras_accuracy, rec.agreement, rec.max_abs_diff, rec.eval_count, rec.status) == (
        0.80, 0.81, 0.97, 0.5, 300, "ok")
    strict = validate.rejudge(rec, 0.5)
    assert strict.status == "rejected" and "1.00 points below" in strict.reason
    assert validate.rejudge(strict, 2.0).status == "ok" and validate.rejudge(strict, 2.0).reason == ""


def test_host_setting_names_unknown_formats():
    assert validate.host_setting("tflite").backend == "litert"
    assert validate.host_setting("onnx").backend == "onnxruntime"
    with pytest.raises(ValueError, match="unknown format 'coreml'"):
        validate.host_setting("coreml")


# ---------------------------------------------------------------------------------- real artifacts


def test_keras_outputs_match_the_model_and_batching(model, data, reference):
    assert reference.shape == (len(data[2]), 10) and reference.dtype == np.float32
    np.testing.assert_allclose(reference, keras_logits(model, data[2]), atol=1e-5)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_good_artifact_is_ok(tmp_path, model, data, reference, fmt):
    export = export_tflite if fmt == "tflite" else export_onnx
    res = export(model, tmp_path / f"m.{fmt}", "fp32")
    # batch 64 over 300 images: four full batches and a partial one
    v = validate.validate_artifact(res.path, fmt, data[2], data[3], reference, batch_size=64)
    assert v.status == "ok" and v.reason == ""
    assert v.eval_count == len(data[3])
    assert v.agreement >= 0.995 and v.max_abs_diff < 1e-3
    assert v.keras_accuracy == pytest.approx(float((reference.argmax(1) == data[3]).mean()))
    assert v.accuracy > 0.5  # trained, well above chance


def test_int8_artifact_scores_are_dequantized(tmp_path, model, data, reference):
    res = export_tflite(model, tmp_path / "m.tflite", "int8", calib_images=data[0][:100])
    scores = validate.run_artifact(res.path, "tflite", data[2], batch_size=128)
    assert scores.dtype == np.float32 and scores.shape == reference.shape
    assert float(np.abs(scores - reference).max()) < 2.0  # logits, not raw int8 codes
    v = validate.compare(scores, data[3], reference)
    assert v.agreement >= 0.95


def test_broken_artifact_is_rejected_with_numbers(tmp_path, model, data, reference):
    broken = perturbed_copy(model, scale=3.0)
    res = export_onnx(broken, tmp_path / "broken.onnx", "fp32")
    v = validate.validate_artifact(res.path, "onnx", data[2], data[3], reference)
    assert v.status == "rejected"
    assert v.drop_points > 2.0 and v.agreement < 0.9
    assert f"{100 * v.accuracy:.2f}%" in v.reason and f"{100 * v.keras_accuracy:.2f}%" in v.reason
    assert "points below" in v.reason


def test_negative_max_drop_rejects_even_a_faithful_artifact(tmp_path, model, data, reference):
    res = export_tflite(model, tmp_path / "m.tflite", "fp32")
    v = validate.validate_artifact(res.path, "tflite", data[2], data[3], reference, max_drop=-0.5)
    assert v.status == "rejected" and "max drop -0.50" in v.reason
