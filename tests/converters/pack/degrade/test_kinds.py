"""Tests for converters/pack/degrade: every artifact format's weights read, changed and written back through its
own library (flatbuffer_utils, onnx), and the three degradations on the real run's artifacts."""

from __future__ import annotations

import numpy as np
import pytest

from converters.pack.degrade import Degradation, degrade, kinds_for, weights_of
from device_profiles import RuntimeSetting
from edge.artifacts.formats import backend_for
from edge.artifacts.manifest import Manifest
from edge.artifacts.tensors import scores, with_recorded_input
from edge.backends import get_backend
from edge.core.errors import UsageError

pytestmark = pytest.mark.slow

TARGETS = ("tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "onnx-fp32", "onnx-fp16", "onnx-int8")


def _artifact(run, target):
    m = Manifest.load(run / "manifest.json")
    rec = next(a for a in m.artifacts if f"{a.format}-{a.precision}" == target)
    return rec, (run / rec.path).read_bytes()


def _scores(rec, data, images):
    backend = backend_for(rec.format)
    model = get_backend(backend).load(data, RuntimeSetting(name="t", backend=backend, threads=1))
    try:
        return scores(with_recorded_input(model, rec.input), images, batch_size=16)
    finally:
        model.close()


@pytest.fixture(scope="module")
def images(real_run):
    from converters.data.datasets import splits_for_run

    x = np.asarray(splits_for_run(real_run).x_test[:32])
    return x[..., None] if x.ndim == 3 else x


@pytest.mark.parametrize("target", TARGETS)
def test_every_format_degrades_and_a_level_of_zero_changes_nothing(real_run, images, target):
    rec, data = _artifact(real_run, target)
    wf = weights_of(rec.format, data)
    quantized = rec.precision in ("int8", "dynamic")
    assert kinds_for(wf) == (("noise", "bitflip", "qparams") if quantized else ("noise",))
    assert all(w.values.ndim >= 2 for w in wf.tensors())
    clean = _scores(rec, data, images)
    for kind in kinds_for(wf):
        np.testing.assert_allclose(_scores(rec, degrade(wf, Degradation(kind, 0.0, 1)), images), clean, atol=1e-5)
    noisy = _scores(rec, degrade(wf, Degradation("noise", 1.0, 1)), images)
    assert np.max(np.abs(noisy - clean)) > 1e-2  # the weights that were changed are the ones the model runs
    if quantized:
        for kind, level in (("bitflip", 0.2), ("qparams", 1.0)):
            assert np.max(np.abs(_scores(rec, degrade(wf, Degradation(kind, level, 2)), images) - clean)) > 1e-2


def test_the_same_seed_gives_the_same_copy_and_another_seed_another(real_run):
    rec, data = _artifact(real_run, "tflite-int8")
    wf = weights_of(rec.format, data)
    a, b = (degrade(wf, Degradation("bitflip", 0.05, s)) for s in (3, 3))
    assert a == b and a != degrade(wf, Degradation("bitflip", 0.05, 4))


def test_bad_degradations_and_weightless_files_are_refused(real_run):
    with pytest.raises(ValueError, match="unknown degradation 'rust'"):
        Degradation("rust", 0.1, 0)
    with pytest.raises(ValueError, match="level must be"):
        Degradation("noise", float("nan"), 0)
    with pytest.raises(UsageError, match="no weight reader for format 'coreml'"):
        weights_of("coreml", b"", what="artifact x")
