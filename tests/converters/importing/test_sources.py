"""Tests for converters.importing.sources: the registry by suffix or folder, the input and output checks."""

from __future__ import annotations

import pytest

from converters.importing.sources import ACCEPTED, check_image_model, check_scores, open_source, source_format
from edge.core.errors import UsageError


def test_formats_by_suffix_and_saved_model_folder(tmp_path):
    for name, fmt in (("a.keras", "keras"), ("b.H5", "keras"), ("c.onnx", "onnx"), ("d.tflite", "tflite")):
        (tmp_path / name).write_bytes(b"x")
        assert source_format(tmp_path / name) == fmt
    sm = tmp_path / "sm"
    sm.mkdir()
    with pytest.raises(UsageError, match="folder without saved_model.pb, so not a SavedModel"):
        source_format(sm)


@pytest.mark.parametrize("name", ["model.pt", "model", "weights.pb"])
def test_unknown_suffix_names_the_file_and_lists_what_is_accepted(tmp_path, name):
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(UsageError) as e:
        open_source(tmp_path / name)
    assert str(tmp_path / name) in str(e.value) and ACCEPTED in str(e.value)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(UsageError, match=f"{tmp_path / 'gone.onnx'}: no such model file; edgekit import accepts"):
        open_source(tmp_path / "gone.onnx")


@pytest.mark.parametrize("shape, match", [
    ((None, 8, 8), "edgekit feeds images as \\(N, H, W, C\\)"),
    ((None, None, None, 3), "needs a fixed height, width and channels"),
    ((None, 8, 8, 4), "has 4 channels; edgekit feeds grayscale \\(1\\) or RGB \\(3\\)"),
])
def test_image_input_checks_name_the_file(tmp_path, shape, match):
    with pytest.raises(UsageError, match=match) as e:
        check_image_model(tmp_path / "m.onnx", shape, "its")
    assert str(tmp_path / "m.onnx") in str(e.value)
    assert check_image_model(tmp_path / "m.onnx", (None, 8, 6, 3), "its") == (8, 6, 3)


def test_scores_must_be_n_by_classes(tmp_path):
    assert check_scores(tmp_path / "m", (None, 10), "its") == 10
    for bad in ((None, 1, 1, 10), (None, 1), (None,)):
        with pytest.raises(UsageError, match="one \\(N, classes\\) output"):
            check_scores(tmp_path / "m", bad, "its")
