"""Tests for converters/train/run_folder.py: the one-sweep lock and which model folders count as finished."""

from __future__ import annotations

import json

import numpy as np
import pytest

from converters.train.run_folder import read_finished, run_lock


def test_run_lock_is_exclusive(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(RuntimeError, match="another `edgekit train`"):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released
        pass


def test_read_finished_rejects_incomplete(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    assert read_finished(d) is None
    (d / "train.json").write_text('{"model_id": "m", "finis')
    assert read_finished(d) is None
    rec = {"model_id": "m", "epochs": 1, "wall_s": 1.0, "test_accuracy": 0.5, "val_accuracy": 0.5,
           "params": 1, "macs": 1, "seed": 0, "finished": True}
    (d / "train.json").write_text(json.dumps(rec))
    assert read_finished(d) is None  # no model.keras / spec.json
    (d / "model.keras").write_bytes(b"x")
    (d / "spec.json").write_text("{}")
    assert read_finished(d, "m") == rec
    assert read_finished(d, "other") is None


# ---------------------------------------------------------------------------------------------- imported models

def _imported(d, file="model.onnx", **kw):
    d.mkdir(parents=True, exist_ok=True)
    rec = {"model_id": d.name, "finished": True, "test_accuracy": 0.8,
           "source": {"format": "onnx", "file": file}, **kw}
    (d / "train.json").write_text(json.dumps(rec))
    return rec


def test_read_finished_accepts_an_imported_model_folder(tmp_path):
    from converters.train.run_folder import is_imported, model_file

    d = tmp_path / "models" / "my-net"
    rec = _imported(d)
    assert read_finished(d) is None  # its model file is not there yet
    (d / "model.onnx").write_bytes(b"onnx")
    assert read_finished(d, "my-net") == rec and is_imported(rec) and model_file(rec) == "model.onnx"
    assert not (d / "spec.json").exists()
    # a SavedModel folder is a model file too; a path out of the folder never is
    _imported(tmp_path / "models" / "sm", file="saved")
    (tmp_path / "models" / "sm" / "saved").mkdir()
    assert read_finished(tmp_path / "models" / "sm") is not None
    _imported(tmp_path / "models" / "evil", file="../my-net/model.onnx")
    assert read_finished(tmp_path / "models" / "evil") is None
    _imported(tmp_path / "models" / "noacc", test_accuracy="high")
    (tmp_path / "models" / "noacc" / "model.onnx").write_bytes(b"x")
    assert read_finished(tmp_path / "models" / "noacc") is None


def test_clean_unfinished_keeps_imported_models(tmp_path):
    from converters.train.run_folder import clean_unfinished

    models = tmp_path / "models"
    _imported(models / "imp")
    (models / "imp" / "model.onnx").write_bytes(b"onnx")
    (models / "half").mkdir(parents=True)
    (models / "half" / "model.tflite").write_bytes(b"partial")  # an import killed before its train.json
    assert clean_unfinished(models) == ["half"]
    assert (models / "imp" / "model.onnx").is_file()


# ---------------------------------------------------------------------------------------------- run.json

def test_import_only_run_is_filled_in_by_train_but_data_settings_must_match(tmp_path):
    from converters.train.run_folder import check_run_compatible

    existing = {"dataset": "images", "family": None, "seed": 0, "splits": {"a": 1}, "schedule": None}
    check_run_compatible(existing, {**existing, "family": "demo", "schedule": {"mode": "quick"}}, tmp_path)
    with pytest.raises(ValueError, match="seed: run has 0, this command asks 2"):
        check_run_compatible(existing, {**existing, "family": "demo", "seed": 2}, tmp_path)
    trained = {**existing, "family": "demo", "schedule": {"mode": "quick"}}
    with pytest.raises(ValueError, match="family: run has 'demo'"):
        check_run_compatible(trained, {**trained, "family": "default"}, tmp_path)


def test_open_run_data_new_existing_and_mismatch(tmp_path):
    from converters.data.datasets import DataSource
    from converters.data.images import ImageOptions
    from converters.train.run_folder import open_run_data
    from tests.converters.data.test_images import make_folder

    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"is not a run yet \(no run.json\); name its data: --images DIR"):
        open_run_data(run, None)
    make_folder(tmp_path / "imgs", {"a": 5, "b": 5}, size=(8, 8))
    src = DataSource("images", images=ImageOptions(root=tmp_path / "imgs"))
    sp = open_run_data(run, src, want_shape=(6, 6, 1), progress=False)
    assert sp.input_shape == (6, 6, 1) and sp.class_names == ("a", "b")
    meta = json.loads((run / "run.json").read_text())
    assert meta["images"]["size"] == [6, 6] and meta["images"]["channels"] == 1
    # an existing run keeps its own data: no source, the same source, or a want_shape are all its data
    for again in (open_run_data(run, None), open_run_data(run, src, want_shape=(32, 32, 3))):
        np.testing.assert_array_equal(again.x_test, sp.x_test)
    with pytest.raises(ValueError) as ei:
        open_run_data(run, DataSource("fashion_mnist"))
    msg = str(ei.value)
    assert f"was made from the image folder {(tmp_path / 'imgs').resolve()}" in msg
    assert "this command names dataset 'fashion_mnist'" in msg and "keeps its own data" in msg
    make_folder(tmp_path / "other", {"a": 2, "b": 2})
    with pytest.raises(ValueError, match=r"(?s)folder: run has .*imgs, this command names .*other"):
        open_run_data(run, DataSource("images", images=ImageOptions(root=tmp_path / "other")))
    with pytest.raises(ValueError, match=r"--resize: run has 'bilinear', this command asks 'nearest'"):
        open_run_data(run, DataSource("images", images=ImageOptions(root=tmp_path / "imgs", resize="nearest")))
    with pytest.raises(ValueError, match=r"--image-size: run has \[6, 6\], this command asks \[8, 8\]"):
        open_run_data(run, DataSource("images", images=ImageOptions(root=tmp_path / "imgs", size=(8, 8))))


def test_open_run_data_named_dataset(tmp_path):
    from converters.data.datasets import DataSource
    from converters.train.options import SplitOptions
    from converters.train.run_folder import open_run_data
    from tests.converters.pack.test_packer import _tiny_dataset

    _tiny_dataset(tmp_path / "idx")
    sp = open_run_data(tmp_path / "run", DataSource("fashion_mnist", data_dir=str(tmp_path / "idx")),
                       splits=SplitOptions(calib_size=8), seed=3)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["dataset"] == "fashion_mnist" and meta["seed"] == 3 and meta["splits"]["calib_size"] == 8
    assert meta["family"] is None and "images" not in meta and len(sp.x_calib) == 8
