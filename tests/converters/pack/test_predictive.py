"""Tests for converters/pack/predictive.py and `edgekit bundle --predictive-test`: the test is built from real
degraded copies, stored in the bundle, read back on the board side, and a bad test file is refused by name."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from converters.pack.degrade import Degradation, degrade, weights_of
from converters.pack.packer import build_bundle
from converters.pack.predictive import PredictiveOptions, fit_ridge, greedy_select, loo_error
from device_profiles import RuntimeSetting
from edge.backends import get_backend
from edge.bundle.predictive import PREDICTIVE_NAME, check_drift, predictive_features
from edge.bundle.reader import BundleError, open_bundle
from edge.core.atomic import sha256_file

pytestmark = pytest.mark.slow

# Small enough for the suite: a few copies per kind, short refinement.
TINY = PredictiveOptions(images=2, fit_copies=15, heldout_copies=6, truth_images=50, calibration_images=30,
                         candidates=12, float_copies=5, refine_steps=2, only=("*int8",))


def _profile(folder):
    """LiteRT fp32 and int8, ONNX fp32 (tests/conftest.py's): the test is built for the int8 one only."""
    from device_profiles import load_profile
    from tests.conftest import RESOLUTION_PROFILE

    (folder / "restest.toml").write_text(RESOLUTION_PROFILE)
    return load_profile(str(folder / "restest.toml"))


@pytest.fixture(scope="module")
def built(real_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("pred")
    lines: list[str] = []
    res = build_bundle(real_run, _profile(base), base / "bundle", eval_size=100, predictive=TINY, say=lines.append)
    return res, base / "bundle", "\n".join(lines)


def test_ridge_and_greedy_selection_find_the_informative_candidate():
    rng = np.random.default_rng(0)
    y = rng.uniform(0.2, 0.9, 60)
    reference = rng.normal(size=(6, 3)) * 3
    # candidate 3's answer moves away from the reference as accuracy falls; the others move at random
    sets = []
    for acc in y:
        s = reference + rng.normal(size=(6, 3)) * rng.uniform(0.1, 3.0)
        s[3] = reference[3] + np.array([1.0, -1.0, 0.0]) * np.exp(4 * (1 - acc))
        sets.append(s)
    assert greedy_select(sets, reference, y, 1, probabilities=False) == [3]
    F = np.stack([predictive_features(s[[3]], reference[[3]], False) for s in sets])
    reg, alpha = fit_ridge(F, y)
    assert np.mean(np.abs(reg.predict(F) - y)) < 0.05 and loo_error(F, y, alpha) < 0.06


def test_bundle_with_a_predictive_test_stores_and_reports_it(built):
    res, bundle_dir, said = built
    assert {r.artifact_id for r in res.predictive} == {a for a in res.included if a.endswith("int8")} != set()
    assert "error on held-out degraded copies" in said and "random test images" in said
    assert "a bound on choosing the images" in said
    for r in res.predictive:
        # 5 copies per kind and the undegraded one (less any copy the runtime refused to load)
        assert 0 <= r.heldout_mae <= 1 and 0 <= r.random_mae <= 1 and 8 <= r.fit_copies <= TINY.fit_copies + 1
        # the bound is the best of many random sets judged on the held-out copies: no worse than their mean
        assert 0 <= r.bound_mae <= r.random_mae
        assert r.kinds == ("noise", "bitflip", "qparams")
    b = open_bundle(bundle_dir)
    assert b.has_predictive_test
    tests = b.predictive_test()
    assert set(tests) == {r.artifact_id for r in res.predictive}
    assert all(t.images.shape == (2, *b.input_shape) for t in tests.values())
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["extra"]["predictive_test"]["images"] == 2
    assert PREDICTIVE_NAME in manifest["extra"]["files"]


def test_the_prediction_falls_for_a_destroyed_copy(built):
    _, bundle_dir, _ = built
    b = open_bundle(bundle_dir)
    aid = next(a for a in b.predictive_test() if a.endswith("tflite-int8"))
    rec, test = b.artifact(aid), b.predictive_test()[aid]
    setting = RuntimeSetting(name="t", backend="litert", threads=1)
    data = b.artifact_path(aid).read_bytes()
    clean = get_backend("litert").load(data, setting)
    wf = weights_of("tflite", data)
    broken = get_backend("litert").load(degrade(wf, Degradation("noise", 30.0, 5)), setting)
    try:
        ok = check_drift(test, clean, rec.host_accuracy, margin=0.05)
        assert abs(ok.predicted - test.host_accuracy) <= 0.25
        bad = check_drift(test, broken, rec.host_accuracy, margin=0.05)
        assert bad.predicted < ok.predicted
    finally:
        clean.close()
        broken.close()


def test_predictive_only_must_match_an_artifact(real_run, tmp_path):
    import dataclasses

    from edge.core.errors import UsageError

    with pytest.raises(UsageError, match="--predictive-only nothing-like-this matches no artifact"):
        build_bundle(real_run, _profile(tmp_path), tmp_path / "b", eval_size=100,
                     predictive=dataclasses.replace(TINY, only=("nothing-like-this",)), say=lambda s: None)
    assert not (tmp_path / "b").exists()  # nothing half-written


def _copy(bundle_dir, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle_dir, dst)
    return dst


def _relist(folder):
    m = json.loads((folder / "manifest.json").read_text())
    m["extra"]["files"][PREDICTIVE_NAME] = sha256_file(folder / PREDICTIVE_NAME)
    (folder / "manifest.json").write_text(json.dumps(m))


def test_a_missing_or_corrupt_test_file_is_refused_by_name(built, tmp_path):
    _, bundle_dir, _ = built
    gone = _copy(bundle_dir, tmp_path / "gone")
    (gone / PREDICTIVE_NAME).unlink()
    with pytest.raises(BundleError, match=f"missing file {PREDICTIVE_NAME}"):
        open_bundle(gone)
    with pytest.raises(BundleError, match=f"missing file {PREDICTIVE_NAME}"):
        open_bundle(gone, verify=False).predictive_test()
    bad = _copy(bundle_dir, tmp_path / "bad")
    (bad / PREDICTIVE_NAME).write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(BundleError, match=f"{PREDICTIVE_NAME} is corrupt"):
        open_bundle(bad)
    _relist(bad)  # even with the manifest rewritten to match, the file is unreadable
    with pytest.raises(BundleError, match=f"{PREDICTIVE_NAME} is unreadable"):
        open_bundle(bad).predictive_test()


def test_a_test_file_from_another_bundle_is_refused_by_name(built, tmp_path):
    _, bundle_dir, _ = built
    other = _copy(bundle_dir, tmp_path / "other")
    z = dict(np.load(other / PREDICTIVE_NAME))
    aid = next(k for k in z if k.startswith("sha256/")).split("/", 1)[1]
    z[f"sha256/{aid}"] = np.zeros(32, np.uint8)  # built for another file of the same name
    np.savez(other / PREDICTIVE_NAME, **z)
    _relist(other)
    with pytest.raises(BundleError, match=f"{PREDICTIVE_NAME} is refused: its test of {aid} was built for another "
                                          "file.*another bundle"):
        open_bundle(other).predictive_test()
