"""ONNX Runtime backend on a real tiny ONNX model (keras export), incl. execution-provider fallback."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from device_profiles import RuntimeSetting
from edge.artifacts.tensors import prepare_input
from edge.backends import BackendUnavailable, get_backend
from tests.benchmarks import _fixtures as fx

ort = pytest.importorskip("onnxruntime")

CPU = RuntimeSetting("ort-cpu-t1", "onnxruntime", threads=1, providers=("CPUExecutionProvider",))


@pytest.fixture(scope="module")
def images():
    return fx.data()[2][:16]


@pytest.fixture(scope="module")
def onnx_path():
    return fx.artifact_file("tiny-a", "onnx", "fp32")


def test_backend_identity():
    b = get_backend("onnxruntime")
    assert b.name == "onnxruntime" and b.format == "onnx"
    assert b.version() == f"onnxruntime {ort.__version__}"


def test_specs_and_predict_shapes(onnx_path, images):
    m = get_backend("onnxruntime").load(onnx_path, CPU)
    try:
        assert m.input_spec.shape == (-1, 28, 28, 1) and m.input_spec.dtype == "float32"
        assert m.output_spec.shape == (-1, 10) and m.output_spec.dtype == "float32"
        assert m.provider == "CPUExecutionProvider"
        x = prepare_input(images, m.input_spec)
        y = m.predict(x)
        assert y.shape == (16, 10) and y.dtype == np.float32
        y1 = m.predict(x[:1])
        assert y1.shape == (1, 10)
        np.testing.assert_allclose(y[:1], y1, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="dtype"):
            m.predict(images)
    finally:
        m.close()


def test_same_scores_as_litert(onnx_path, images):
    o = get_backend("onnxruntime").load(onnx_path.read_bytes(), CPU)
    t = get_backend("litert").load(fx.artifact_file("tiny-a", "tflite", "fp32"), RuntimeSetting("l", "litert"))
    x = prepare_input(images, o.input_spec)
    np.testing.assert_allclose(o.predict(x), t.predict(x), rtol=1e-3, atol=1e-4)
    o.close()
    t.close()


def test_provider_fallback_is_recorded(onnx_path, images):
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        pytest.skip("CUDA is available here; the fallback cannot be observed")
    s = RuntimeSetting("ort-cuda", "onnxruntime", threads=1, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    m = get_backend("onnxruntime").load(onnx_path, s)
    assert m.provider == "CPUExecutionProvider"
    assert m.predict(prepare_input(images[:2], m.input_spec)).shape == (2, 10)
    # Nothing asked for is available: CPU still runs it, and says so.
    only_gpu = RuntimeSetting("ort-trt", "onnxruntime", providers=("TensorrtExecutionProvider", "CUDAExecutionProvider"))
    assert get_backend("onnxruntime").load(onnx_path, only_gpu).provider == "CPUExecutionProvider"


def test_threads_and_prepared_invoke(onnx_path, images):
    m = get_backend("onnxruntime").load(onnx_path, RuntimeSetting("t2", "onnxruntime", threads=2))
    assert m._sess.get_session_options().intra_op_num_threads == 2
    m.set_input(prepare_input(images[:1], m.input_spec))
    for _ in range(3):
        m.invoke_prepared()
    m.close()


def test_bad_model_is_a_value_error(tmp_path):
    b = get_backend("onnxruntime")
    with pytest.raises(ValueError, match="ONNX Runtime could not load"):
        b.load(b"\x00garbage" * 10, CPU)
    with pytest.raises(ValueError, match="ONNX Runtime could not load"):
        b.load(tmp_path / "missing.onnx", CPU)


def test_missing_runtime_is_backend_unavailable(monkeypatch):
    from edge.backends import onnxruntime as ort_backend

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailable, match="pip install onnxruntime"):
        ort_backend.OnnxRuntimeBackend()


def test_register_backend_factory():
    from edge.backends import base, register_backend

    calls = []

    class Fake(base.Backend):
        name, format = "fake", "onnx"

        def version(self):
            return "fake 0"

        def load(self, model, setting):
            raise NotImplementedError

    register_backend("fake-test", lambda: calls.append(1) or Fake())
    try:
        assert get_backend("fake-test").version() == "fake 0"
        get_backend("fake-test")
        assert calls == [1]
    finally:
        base._REGISTRY.pop("fake-test", None)
        base._CACHE.pop("fake-test", None)
