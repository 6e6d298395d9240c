"""Tests for converters/train/run_folder.py: the one-sweep lock and which model folders count as finished."""

from __future__ import annotations

import json

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
