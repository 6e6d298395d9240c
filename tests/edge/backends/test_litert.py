"""LiteRT backend on real tiny TFLite models (fp32 and int8, built with TensorFlow in the test)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from device_profiles import RuntimeSetting
from edge.artifacts.tensors import dequantize_output, prepare_input
from edge.backends import BackendUnavailable, get_backend
from tests.benchmarks import _fixtures as fx

ai_edge_litert = pytest.importorskip("ai_edge_litert")

XNN = RuntimeSetting("litert-xnnpack-t1", "litert", threads=1, xnnpack=True)
NO_XNN = RuntimeSetting("litert-builtin-t1", "litert", threads=1, xnnpack=False)


@pytest.fixture(scope="module")
def images():
    return fx.data()[2][:16]


@pytest.fixture(scope="module")
def fp32_path():
    return fx.artifact_file("tiny-a", "tflite", "fp32")


@pytest.fixture(scope="module")
def int8_path():
    return fx.artifact_file("tiny-a", "tflite", "int8")


def test_backend_identity():
    b = get_backend("litert")
    assert b.name == "litert" and b.format == "tflite"
    assert "ai-edge-litert" in b.version() or "tflite-runtime" in b.version()
    assert get_backend("litert") is b  # cached


def test_fp32_specs_and_predict_shapes(fp32_path, images):
    m = get_backend("litert").load(fp32_path, XNN)
    try:
        assert m.input_spec.shape == (-1, 28, 28, 1)
        assert m.input_spec.dtype == "float32" and not m.input_spec.quantized
        assert m.output_spec.shape == (-1, 10) and m.output_spec.dtype == "float32"
        assert m.provider == "xnnpack"
        x = prepare_input(images, m.input_spec)
        y5 = m.predict(x[:5])
        assert y5.shape == (5, 10) and y5.dtype == np.float32
        y1 = m.predict(x[:1])  # resize down to batch 1
        assert y1.shape == (1, 10)
        y16 = m.predict(x)  # and up again
        assert y16.shape == (16, 10)
        np.testing.assert_allclose(y16[:5], y5, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(y16[:1], y1, rtol=1e-4, atol=1e-4)
    finally:
        m.close()


def test_load_from_bytes_equals_path(fp32_path, images):
    b = get_backend("litert")
    a = b.load(fp32_path, XNN)
    c = b.load(fp32_path.read_bytes(), XNN)
    x = prepare_input(images, a.input_spec)
    np.testing.assert_array_equal(a.predict(x), c.predict(x))
    a.close()
    c.close()


def test_int8_quantized_io(int8_path, fp32_path, images):
    b = get_backend("litert")
    m = b.load(int8_path, XNN)
    f = b.load(fp32_path, XNN)
    try:
        assert m.input_spec.dtype == "int8" and m.input_spec.quantized
        assert m.input_spec.scale == pytest.approx(1.0, rel=1e-3) and m.input_spec.zero_point == -128
        assert m.output_spec.dtype == "int8" and m.output_spec.quantized
        x = prepare_input(images, m.input_spec)
        assert x.dtype == np.int8
        y = m.predict(x)
        assert y.shape == (16, 10) and y.dtype == np.int8
        scores = dequantize_output(y, m.output_spec)
        ref = f.predict(prepare_input(images, f.input_spec))
        assert np.mean(np.argmax(scores, 1) == np.argmax(ref, 1)) >= 0.8
        with pytest.raises(ValueError, match="dtype"):
            m.predict(images.astype(np.float32))
    finally:
        m.close()
        f.close()


def test_xnnpack_off_gives_same_result(fp32_path, images):
    b = get_backend("litert")
    on = b.load(fp32_path, XNN)
    off = b.load(fp32_path, NO_XNN)
    try:
        assert on.provider == "xnnpack" and off.provider == "builtin"
        x = prepare_input(images, on.input_spec)
        np.testing.assert_allclose(off.predict(x), on.predict(x), rtol=1e-4, atol=1e-4)
    finally:
        on.close()
        off.close()


def test_threads_and_prepared_invoke(fp32_path, images):
    m = get_backend("litert").load(fp32_path, RuntimeSetting("t2", "litert", threads=2))
    x = prepare_input(images, m.input_spec)
    m.set_input(x[:1])
    for _ in range(3):
        m.invoke_prepared()
    assert m.predict(x[:2]).shape == (2, 10)
    m.close()
    m.close()  # closing twice is harmless


def test_bad_model_is_a_value_error(tmp_path):
    b = get_backend("litert")
    with pytest.raises(ValueError, match="LiteRT could not load"):
        b.load(b"not a flatbuffer" * 8, XNN)
    with pytest.raises(ValueError, match="LiteRT could not load"):
        b.load(tmp_path / "missing.tflite", XNN)


def test_unknown_backend_lists_available():
    with pytest.raises(ValueError, match=r"unknown backend 'nope'; available: \['litert', 'onnxruntime'"):
        get_backend("nope")


def test_falls_back_to_tflite_runtime(monkeypatch, fp32_path, images):
    from edge.backends import litert

    fake = types.ModuleType("tflite_runtime")
    fake.interpreter = ai_edge_litert.interpreter
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "tflite_runtime", fake)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", ai_edge_litert.interpreter)
    b = litert.LiteRTBackend()
    assert b.version().startswith("tflite-runtime")
    m = b.load(fp32_path, XNN)
    assert m.predict(prepare_input(images[:2], m.input_spec)).shape == (2, 10)


def test_missing_runtime_is_backend_unavailable(monkeypatch):
    from edge.backends import litert

    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    with pytest.raises(BackendUnavailable, match="pip install ai-edge-litert"):
        litert.LiteRTBackend()


def test_provider_says_builtin_when_xnnpack_took_nothing():
    from edge.backends.litert import _has_delegate_nodes

    class Interp:
        def __init__(self, ops):
            self.ops = ops

        def _get_ops_details(self):
            if self.ops is None:
                raise AttributeError("old runtime")
            return [{"op_name": n} for n in self.ops]

    assert _has_delegate_nodes(Interp(["CONV_2D", "DELEGATE"]))
    assert not _has_delegate_nodes(Interp(["CONV_2D", "FULLY_CONNECTED"]))
    assert _has_delegate_nodes(Interp(None))  # cannot tell: trust the setting


# --------------------------------------------------------------------------- LiteRT's delegate notice


def test_the_delegate_notice_is_dropped_and_nothing_else(capfd, monkeypatch):
    """What the runtime writes to fd 2 while an interpreter loads comes back, all but the delegate notice."""
    import os

    from edge.backends import litert

    monkeypatch.setattr(litert, "_notice_seen", False)
    with litert.without_delegate_notice():
        os.write(2, b"keep this\n" + litert.DELEGATE_NOTICE + b"\nand this\n")
    assert capfd.readouterr().err == "keep this\nand this\n"
    assert litert._notice_seen  # seen once: later loads leave fd 2 alone, as the runtime prints it once
    with litert.without_delegate_notice():
        os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_the_kits_commands_do_not_print_litert_s_info_line(tmp_path):
    """verify, bench, serve and the embedded runtime load LiteRT models without 'INFO: Created TensorFlow Lite
    XNNPACK delegate for CPU.' reaching the user; the bare interpreter in the same environment prints it."""
    import subprocess

    from tests.edge._fixtures import PYTHON, REPO, edge_fixture, start_daemon

    notice = "XNNPACK delegate for CPU"
    e = edge_fixture()
    model = next((e.bundle / "artifacts").glob("*.tflite"))
    bare = subprocess.run([PYTHON, "-c", "from ai_edge_litert import interpreter as m; "
                           f"m.Interpreter(model_path={str(model)!r}, num_threads=1).allocate_tensors()"],
                          capture_output=True, text=True, timeout=60)
    assert notice in bare.stderr, "LiteRT no longer prints its delegate notice: edge/backends/litert.py can stop catching it"

    def edgekit(*args: str) -> str:
        p = subprocess.run([PYTHON, "-m", "edgekit.cli", *args], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout + p.stderr

    assert notice not in edgekit("verify", str(e.bundle), "--profile", str(e.profile))
    assert notice not in edgekit("bench", str(e.bundle), "--profile", str(e.profile), "--out", str(tmp_path / "t.json"),
                                 "--only", "small", "--min-runs", "5", "--min-seconds", "0", "--rest-runs", "2")
    embedded = subprocess.run(
        [PYTHON, "-c", "from edge.runtime.classifier import AdaptiveClassifier as A; import numpy as np; "
         f"c = A.open({str(e.bundle)!r}, {str(e.selected_table)!r}, {str(e.profile)!r}); "
         "print(c.classify(np.zeros((28, 28, 1), np.uint8), 1e4).outcome); c.close()"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert embedded.stdout.strip() == "ok" and notice not in embedded.stderr, embedded.stderr
    d = start_daemon()
    d.stop()
    assert "listening on" in d.log and notice not in d.log
