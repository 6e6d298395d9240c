"""Tests for the canary self-check (edge/bundle/canary.py): tolerances, wrong outputs, the measured cross-CPU drift."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.artifacts.manifest import TensorSpec
from edge.bundle.canary import canary_tolerance, check_canary, compare_scores
from edge.bundle.reader import BundleError, open_bundle
from edge.core.atomic import sha256_file
from tests.edge._bundles import TFLITE_FP32, TFLITE_INT8, rewrite_manifest

# --------------------------------------------------------------------------- canary


class FakeModel:
    """A LoadedModel stand-in returning the host scores plus a chosen perturbation."""

    def __init__(self, scores: np.ndarray, delta: np.ndarray | float = 0.0, out_spec: TensorSpec | None = None):
        self.input_spec = TensorSpec("x", (-1, 12, 12, 1), "float32")
        self.output_spec = out_spec or TensorSpec("y", (-1, scores.shape[1]), "float32")
        self.provider = "fake"
        self._out = scores + delta
        self._i = 0

    def predict(self, batch):
        assert batch.dtype == np.float32 and batch.shape == (1, 12, 12, 1)
        row = self._out[self._i : self._i + 1]
        self._i += 1
        return row


def test_check_canary_with_runtimes(folder):
    from device_profiles import load_profile
    from edge.backends import get_backend

    b = open_bundle(folder)
    prof = load_profile("desktop-cpu")
    for a in b.artifacts:
        for s in prof.settings_for(a.format):
            with get_backend(s.backend).load(b.artifact_path(a.artifact_id), s) as lm:
                r = check_canary(b, a.artifact_id, lm)
            assert r.ok and r.top1_match == 1.0 and not r.skipped, r.message
            assert "canary ok" in r.message


def test_check_canary_detects_wrong_outputs(folder):
    b = open_bundle(folder)
    host = b.canary().scores[TFLITE_FP32]
    assert check_canary(b, TFLITE_FP32, FakeModel(host)).ok
    # A constant offset keeps top-1 but exceeds the fp32 tolerance.
    r = check_canary(b, TFLITE_FP32, FakeModel(host, 0.5))
    assert not r.ok and r.top1_match == 1.0 and "max score diff" in r.message and "canary FAILED" in r.message
    # Swapped classes: top-1 differs.
    r = check_canary(b, TFLITE_FP32, FakeModel(host[:, ::-1].copy()))
    assert not r.ok and r.top1_match < 1.0 and "top-1 differs" in r.message
    r = check_canary(b, TFLITE_FP32, FakeModel(host, np.nan))
    assert not r.ok and "NaN" in r.message

    class Crashing(FakeModel):
        def predict(self, batch):
            raise RuntimeError("kernel exploded")

    r = check_canary(b, TFLITE_FP32, Crashing(host))
    assert not r.ok and "could not be run: RuntimeError: kernel exploded" in r.message


def test_compare_scores_tolerances():
    host = np.array([[5.0, 1.0, 0.0], [2.0, 1.9995, 0.0]], np.float32)
    # Row 1 is a near-tie on the host: a flipped top-1 there is tolerated.
    dev = host.copy()
    dev[1] = [1.9996, 1.9999, 0.0]
    r = compare_scores(host, dev, "fp32")
    assert r.ok and r.near_ties == 1 and r.top1_match == 0.5
    assert r.tolerance == pytest.approx(5e-3)  # 1e-3 x max |score|
    # fp16 and int8 allow more than fp32.
    assert not compare_scores(host, host + 0.05, "fp32").ok
    assert compare_scores(host, host + 0.05, "fp16").ok
    # int8 tolerance is scale-aware: at least a few output quantization steps.
    q = TensorSpec("y", (-1, 3), "int8", scale=0.5, zero_point=0)
    assert compare_scores(host, host + 1.0, "int8", q).ok
    assert not compare_scores(host, host + 1.0, "int8").ok
    assert not compare_scores(host, host[:1], "fp32").ok


def test_canary_size_mismatch_refused(folder):
    z = dict(np.load(folder / "canary.npz", allow_pickle=False))
    z[f"scores/{TFLITE_FP32}"] = z[f"scores/{TFLITE_FP32}"][:3]
    np.savez(folder / "canary.npz", **z)
    rewrite_manifest(folder, lambda m: m["extra"]["files"].update({"canary.npz": sha256_file(folder / "canary.npz")}))
    with pytest.raises(BundleError, match="canary.npz 'scores/.*' has shape"):
        open_bundle(folder).canary()


# --------------------------------------------------------------------------- canary tolerance across CPUs

# The board check's measurement (scripts/board_check.py --run demo/run; benchmarks/perf/canary_drift.py):
# every artifact of the demo's rpi4 and jetson-orin-nano bundles scored on the same images on this
# x86-64 host and on aarch64 (QEMU, ai-edge-litert 2.3.0, onnxruntime 1.32.0).
DRIFT_FILE = Path(__file__).parent / "data" / "canary_drift_aarch64.json"


def _flip_largest_weight(model_bytes: bytes) -> bytes:
    """Negate the largest-magnitude int8 weight of the first convolution: one flipped weight."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model_bytes)
    it.allocate_tensors()
    conv = [d for d in it.get_tensor_details()
            if d["dtype"] == np.int8 and len(d["shape"]) == 4 and d["shape"][0] > 1 and "conv" in d["name"].lower()]
    assert conv, "no int8 convolution kernel in the model"
    w = it.get_tensor(conv[0]["index"]).copy()
    raw = w.tobytes()
    at = model_bytes.find(raw)
    assert at >= 0 and model_bytes.find(raw, at + 1) < 0, "the kernel's bytes are not unique in the file"
    i = int(np.argmax(np.abs(w.astype(np.int16))))
    flipped = w.reshape(-1).copy()
    flipped[i] = -max(int(flipped[i]), -127)
    buf = bytearray(model_bytes)
    buf[at : at + len(raw)] = flipped.tobytes()
    return bytes(buf)


def test_measured_aarch64_drift_passes_the_canary():
    measured = json.loads(DRIFT_FILE.read_text())
    rows = [r for p in measured["profiles"].values() for r in p["artifacts"]]
    assert any(r["precision"] == "int8" for r in rows) and len(rows) >= 20
    for r in rows:
        host = np.full((1, 10), r["max_abs_score"], np.float32)
        spec = TensorSpec("y", (-1, 10), "int8", scale=r["output_scale"], zero_point=0) if r.get("output_scale") else None
        tol = canary_tolerance(r["precision"], host, spec)
        assert r["max_abs_diff"] <= tol, f"{r['artifact_id']}: measured drift {r['max_abs_diff']} > tolerance {tol}"


def test_one_flipped_int8_weight_fails_the_canary(folder, tmp_path):
    from device_profiles import load_profile
    from edge.backends import get_backend

    b = open_bundle(folder)
    rec = b.artifact(TFLITE_INT8)
    setting = load_profile("desktop-cpu").settings_for("tflite")[0]
    bad = tmp_path / "flipped.tflite"
    bad.write_bytes(_flip_largest_weight(b.artifact_path(TFLITE_INT8).read_bytes()))
    with get_backend(setting.backend).load(bad, setting) as lm:
        r = check_canary(b, TFLITE_INT8, lm)
    assert not r.ok, r.message
    assert "canary FAILED" in r.message and r.max_abs_diff > 2 * r.tolerance
    # The same artifact unflipped passes.
    with get_backend(setting.backend).load(b.artifact_path(TFLITE_INT8), setting) as lm:
        assert check_canary(b, TFLITE_INT8, lm).ok
    assert rec.precision == "int8"
