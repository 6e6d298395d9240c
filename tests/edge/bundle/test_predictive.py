"""Tests for edge/bundle/predictive.py: the board's side of the compact predictive test (features, regressor,
the test file's checks, the drift check). The workstation's side is tested in tests/converters/pack."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from edge.bundle.predictive import (
    AccuracyRegressor,
    ArtifactTest,
    check_drift,
    dump_tests,
    load_tests,
    predictive_features,
)

SHA = hashlib.sha256(b"artifact").hexdigest()
OTHER = hashlib.sha256(b"another artifact").hexdigest()


def _test(aid: str = "m.tflite-int8", k: int = 2, classes: int = 3, sha: str = SHA) -> ArtifactTest:
    d = 2 * k
    rng = np.random.default_rng(0)
    reg = AccuracyRegressor(mean=rng.normal(size=d), scale=np.full(d, 2.0), weights=rng.normal(size=d) * 0.01,
                            bias=0.8)
    return ArtifactTest(aid, rng.integers(0, 255, (k, 4, 4, 1), dtype=np.uint8),
                        rng.normal(size=(k, classes)).astype(np.float32), reg, sha, False, 0.015, 0.03, 0.81)


class _Model:
    """A loaded model as the backends give it: input and output specs, predict on a prepared batch."""

    def __init__(self, out: np.ndarray):
        from edge.artifacts.manifest import TensorSpec

        self.out = out
        self.input_spec = TensorSpec("x", (-1, 4, 4, 1), "float32")
        self.output_spec = TensorSpec("y", (-1, out.shape[1]), "float32")

    def predict(self, x):
        return self.out[: len(x)]


def test_features_measure_how_far_each_answer_moved_from_the_reference():
    ref = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    p = np.exp(ref) / np.exp(ref).sum(axis=1, keepdims=True)
    same = predictive_features(ref, ref, probabilities=False)
    assert same.shape == (4,)  # per image: log KL, log(1 - cos)
    np.testing.assert_allclose(same, [np.log(1e-4)] * 2 + [np.log(1e-5)] * 2, atol=1e-3)
    np.testing.assert_allclose(predictive_features(p, p, probabilities=True), same, atol=1e-5)
    np.testing.assert_allclose(predictive_features(ref + 100.0, ref, False), same, atol=1e-3)  # a shift: nothing
    moved = predictive_features(ref[::-1], ref, False)
    assert np.all(moved > same + 1)
    # twice the logits (a perturbed output scale): the KL moves, the cosine does not
    scaled = predictive_features(2 * ref, ref, False)
    assert np.all(scaled[:2] > same[:2] + 1) and np.allclose(scaled[2:], same[2:], atol=1e-3)


def test_regressor_round_trips_and_clips_to_an_accuracy():
    t = _test()
    back = AccuracyRegressor.from_vector(t.regressor.to_vector(), 4)
    f = np.linspace(-3, 3, 4)
    assert back.predict(f) == pytest.approx(float(t.regressor.predict(f)))
    huge = AccuracyRegressor(np.zeros(2), np.ones(2), np.array([10.0, 10.0]), 0.5)
    assert huge.predict(np.array([1.0, 1.0])) == 1.0 and huge.predict(np.array([-1.0, -1.0])) == 0.0
    with pytest.raises(ValueError, match="positive scales"):
        AccuracyRegressor.from_vector(np.r_[0.0, np.zeros(2), np.array([1.0, 0.0]), np.zeros(2)], 2)


def test_the_test_file_round_trips():
    t = _test()
    got = load_tests(dump_tests({t.artifact_id: t}), {t.artifact_id: SHA}, {t.artifact_id: 3}, (4, 4, 1))
    g = got[t.artifact_id]
    assert g.sha256 == SHA and g.heldout_mae == 0.015 and g.host_accuracy == 0.81 and not g.probabilities
    np.testing.assert_array_equal(g.images, t.images)


@pytest.mark.parametrize("edit, message", [
    (lambda z: z.update({"images/m.tflite-int8": np.zeros((2, 5, 5, 1), np.uint8)}), "test images"),
    (lambda z: z.pop("meta/m.tflite-int8"), "lacks"),
    (lambda z: z.update({"weights": np.zeros(3)}), "unexpected array 'weights'"),
    (lambda z: z.update({"regressor/m.tflite-int8": np.zeros(5)}), "regressor over 4 features"),
    (lambda z: z.update({"reference/m.tflite-int8": np.zeros((2, 4), np.float32)}), "reference scores"),
    (lambda z: z.update({"sha256/m.tflite-int8": np.frombuffer(bytes.fromhex(OTHER), np.uint8)}),
     "built for another file.*another bundle"),
])
def test_a_malformed_or_foreign_test_file_is_refused_with_what_is_wrong(edit, message):
    t = _test()
    z = dump_tests({t.artifact_id: t})
    edit(z)
    with pytest.raises(ValueError, match=message):
        load_tests(z, {t.artifact_id: SHA}, {t.artifact_id: 3}, (4, 4, 1))


def test_a_test_for_an_artifact_the_bundle_lacks_is_refused():
    t = _test(aid="other.onnx-int8")
    with pytest.raises(ValueError, match="other.onnx-int8, which this bundle does not have"):
        load_tests(dump_tests({t.artifact_id: t}), {"m.tflite-int8": SHA}, {"m.tflite-int8": 3},
                          (4, 4, 1))


def test_drift_is_a_prediction_more_than_the_margin_below_the_expected_accuracy():
    # a regressor that reads how far the first image's answer moved: not at all -> 0.9, far -> 0
    ref = np.array([[9.0, 0.0, 0.0], [0.0, 9.0, 0.0]], np.float32)
    w = np.zeros(4)
    w[0] = -0.1
    reg = AccuracyRegressor(mean=np.full(4, np.log(1e-4)), scale=np.ones(4), weights=w, bias=0.9)
    t = ArtifactTest("m", np.zeros((2, 4, 4, 1), np.uint8), ref, reg, SHA, False, 0.01, 0.02, 0.9)
    ok = check_drift(t, _Model(ref.copy()), expected=0.9, margin=0.05)
    assert not ok.drift and ok.predicted == pytest.approx(0.9, abs=1e-3) and "DRIFT" not in ok.message
    dr = check_drift(t, _Model(ref[::-1].copy()), expected=0.9, margin=0.05)
    assert dr.drift and dr.predicted < 0.1 and "DRIFT" in dr.message
    nan = check_drift(t, _Model(np.full((2, 3), np.nan, np.float32)), expected=0.9)
    assert nan.drift and nan.predicted == 0.0


def test_a_prediction_never_exceeds_the_undegraded_artifacts_accuracy():
    reg = AccuracyRegressor(mean=np.zeros(4), scale=np.ones(4), weights=np.zeros(4), bias=0.99)
    t = ArtifactTest("m", np.zeros((2, 4, 4, 1), np.uint8), np.zeros((2, 3), np.float32), reg, SHA, False, 0.01,
                     0.02, 0.83)
    assert t.predict(_Model(np.zeros((2, 3), np.float32))) == pytest.approx(0.83)
