"""Tests for atomic writes and checksums."""

import json
import os

import pytest

from edge.core import atomic


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "a.json"
    atomic.atomic_write_json(p, {"a": 1})
    atomic.atomic_write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [x.name for x in p.parent.iterdir()] == ["a.json"]


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "a.bin"
    atomic.atomic_write_bytes(p, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic.atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["a.bin"]


def test_sha256_and_read_json_errors(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert atomic.sha256_file(p) == atomic.sha256_bytes(b"abc")
    assert atomic.sha256_bytes(b"abc").startswith("ba7816bf")
    bad = tmp_path / "t.json"
    bad.write_text('{"rows": [1, 2')
    with pytest.raises(ValueError, match="truncated"):
        atomic.read_json(bad, what="latency table")
    with pytest.raises(FileNotFoundError, match="latency table not found"):
        atomic.read_json(tmp_path / "missing.json", what="latency table")


def test_clean_stale_temps(tmp_path):
    (tmp_path / ".model.keras.abc.tmp").write_bytes(b"half")
    (tmp_path / "keep.json").write_text("{}")
    assert atomic.clean_stale_temps(tmp_path) == 1
    assert [x.name for x in tmp_path.iterdir()] == ["keep.json"]


def test_read_json_raises_the_callers_error(tmp_path):
    class ThingError(ValueError):
        pass

    with pytest.raises(ThingError, match="thing not found"):
        atomic.read_json(tmp_path / "missing.json", "thing", ThingError)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ThingError, match=r"thing .*bad\.json is not valid JSON"):
        atomic.read_json(bad, "thing", ThingError)
    with pytest.raises(ThingError, match="cannot be read"):
        atomic.read_json(tmp_path, "thing", ThingError)  # a directory
    bad.write_text("{}")
    with pytest.raises(ThingError, match="larger than the 1 byte cap; pass a small one"):
        atomic.read_json(bad, "thing", ThingError, max_bytes=1, hint="pass a small one")
    bad.write_text("[1, 2, 3]")
    assert atomic.read_json(bad, "thing", ThingError, max_bytes=100, max_items=3) == [1, 2, 3]
    with pytest.raises(ThingError, match="more than 2 JSON values"):
        atomic.read_json(bad, "thing", ThingError, max_bytes=100, max_items=2)
