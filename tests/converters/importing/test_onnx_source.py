"""Tests for converters.importing.onnx_source: external data kept in the model's folder (checked before any load),
damaged files refused by name, channels-first inputs transposed, the input convention fed by prepare_input."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import external_data_helper

from converters.importing import onnx_source
from converters.importing.conventions import DEFAULT, parse_input_range
from converters.importing.onnx_source import OnnxSource
from edge.core.errors import UsageError
from tests.converters.importing._models import onnx_channel_means, onnx_linear, save_onnx


def _external(tmp_path, location: str, data_file=None):
    """A model whose weight W keeps its bytes at ``location`` (written to ``data_file`` when given)."""
    m = onnx_linear()
    w = next(t for t in m.graph.initializer if t.name == "W")
    raw = w.raw_data if w.raw_data else np.asarray(w.float_data, np.float32).tobytes()
    if data_file is not None:
        data_file.parent.mkdir(parents=True, exist_ok=True)
        data_file.write_bytes(raw)
    external_data_helper.set_external_data(w, location=location, length=len(raw))
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    return save_onnx(m, model_dir / "net.onnx")


@pytest.fixture
def no_external_loads(monkeypatch):
    """Fail the test if onnx is ever asked to read external data (the check must come first)."""
    def boom(*a, **k):
        raise AssertionError("external data was loaded before the location check")

    monkeypatch.setattr(external_data_helper, "load_external_data_for_model", boom)
    monkeypatch.setattr(onnx, "load_external_data_for_model", boom, raising=False)


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin"])
def test_external_data_up_and_out_of_the_folder_is_refused_before_loading(tmp_path, no_external_loads, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    path = _external(tmp_path, location)
    with pytest.raises(UsageError) as e:
        OnnxSource(path)
    msg = str(e.value)
    assert str(path) in msg and "outside the model's folder" in msg and "CVE-2022-25882" in msg
    assert "put the data file beside the model" in msg


def test_absolute_external_data_path_is_refused_before_loading(tmp_path, no_external_loads):
    target = tmp_path / "elsewhere" / "w.bin"
    path = _external(tmp_path, str(target), data_file=target)
    with pytest.raises(UsageError, match="outside the model's folder .*absolute or '..' paths are refused") as e:
        OnnxSource(path)
    assert str(path) in str(e.value)


def test_symlink_out_of_the_folder_is_refused(tmp_path, no_external_loads):
    target = tmp_path / "elsewhere" / "w.bin"
    path = _external(tmp_path, "w.bin", data_file=target)
    os.symlink(target, path.parent / "w.bin")
    with pytest.raises(UsageError, match="resolves to .*elsewhere/w.bin, outside the model's folder"):
        OnnxSource(path)


def test_missing_external_file_is_named(tmp_path, no_external_loads):
    path = _external(tmp_path, "w.bin")
    with pytest.raises(UsageError, match="at 'w.bin', but .*w.bin is not a file"):
        OnnxSource(path)


def test_external_data_inside_the_folder_is_folded_into_one_file(tmp_path):
    inline = onnx_linear()
    path = _external(tmp_path, "data/w.bin", data_file=tmp_path / "model" / "data" / "w.bin")
    src = OnnxSource(path)
    x = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    ref = OnnxSource(save_onnx(inline, tmp_path / "inline.onnx")).scores(x, DEFAULT)
    assert np.allclose(src.scores(x, DEFAULT), ref, atol=1e-4)
    (tmp_path / "run_copy").mkdir()
    out = src.write(tmp_path / "run_copy", DEFAULT)
    kept = onnx.load(str(out), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in kept.graph.initializer)  # self-contained


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_files_are_refused_by_name(tmp_path, damage):
    good = onnx_linear().SerializeToString()
    data = {"truncated": good[: len(good) // 2], "garbage": os.urandom(5000), "empty": b""}[damage]
    path = tmp_path / f"{damage}.onnx"
    path.write_bytes(data)
    with pytest.raises(UsageError) as e:
        OnnxSource(path)
    assert str(path) in str(e.value) and "export it again" in str(e.value)


def test_channels_first_model_gets_an_nhwc_input_with_the_same_outputs(tmp_path):
    nchw = onnx_linear((6, 5, 3), nchw=True)
    src = OnnxSource(save_onnx(nchw, tmp_path / "torch.onnx"))
    assert src.input_hwc == (6, 5, 3) and "channels-first" in src.notes[0]
    x = np.random.default_rng(2).integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    import onnxruntime as ort

    sess = ort.InferenceSession(nchw.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"image": x.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    assert np.allclose(src.scores(x, DEFAULT), want, rtol=1e-5, atol=1e-3)


def test_convention_is_what_the_runtime_is_fed(tmp_path):
    src = OnnxSource(save_onnx(onnx_channel_means(), tmp_path / "means.onnx"))
    x = np.random.default_rng(3).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    conv = parse_input_range("imagenet")
    want = ((x.astype(np.float32) - np.float32(conv.mean)) / np.float32(conv.std)).mean(axis=(1, 2))
    assert np.allclose(src.scores(x, conv), want, atol=1e-5)
    assert np.allclose(src.scores(x, DEFAULT), x.astype(np.float32).mean(axis=(1, 2)), atol=1e-3)


def test_fixed_batch_and_softmax_models_are_run_one_image_at_a_time(tmp_path):
    src = OnnxSource(save_onnx(onnx_linear(batch=1, softmax=True), tmp_path / "b1.onnx"))
    assert src.batch == 1
    s = src.scores(np.zeros((7, 8, 8, 1), np.uint8), DEFAULT)
    assert s.shape == (7, 10) and np.allclose(s.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("model, match", [
    (lambda: onnx_linear((8, 8, 4)), "has 4 channels"),
    (lambda: onnx_linear(classes=1), r"one \(N, classes\) output"),
])
def test_shapes_edgekit_cannot_feed_are_refused(tmp_path, model, match):
    with pytest.raises(UsageError, match=match):
        OnnxSource(save_onnx(model(), tmp_path / "m.onnx"))


def test_module_checks_every_tensor_kind(tmp_path):
    # Constant-node tensors count too: a crafted model could hide its external data there.
    from onnx import helper, numpy_helper

    m = onnx_linear()
    t = numpy_helper.from_array(np.zeros(3, np.float32), "c")
    external_data_helper.set_external_data(t, location="/etc/passwd", length=12)
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    m.graph.node.insert(0, helper.make_node("Constant", [], ["unused"], value=t))
    with pytest.raises(UsageError, match="outside the model's folder"):
        onnx_source.check_external_data(m, tmp_path / "m.onnx")
