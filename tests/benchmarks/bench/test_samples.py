"""Tests for benchmarks.bench.samples: the raw per-run times beside a latency table."""

from __future__ import annotations

import numpy as np

from benchmarks.bench.samples import load_samples, samples_path, save_samples, thin_samples


def test_thin_samples_keeps_order_and_ends():
    a = np.arange(20000, dtype=np.float64)
    t = thin_samples(a, 100)
    assert len(t) == 100 and t[0] == 0 and t[-1] == 19999 and (np.diff(t) > 0).all()
    assert thin_samples(a[:10], 100).shape == (10,)


def test_unreadable_samples_file_is_ignored(tmp_path, capsys):
    t = tmp_path / "t.json"
    samples_path(t).write_bytes(b"PK\x03\x04garbage")
    assert load_samples(t) == {}
    assert "ignoring unreadable samples" in capsys.readouterr().err


def test_samples_round_trip_beside_the_table(tmp_path):
    t = tmp_path / "table.json"
    assert load_samples(t) == {}  # missing: no samples, no error
    path = save_samples(t, {"a@s": np.asarray([1.5, 2.5])})
    assert path == samples_path(t) and path.name == "table.samples.npz"
    got = load_samples(t)
    assert list(got) == ["a@s"] and got["a@s"].dtype == np.float64 and list(got["a@s"]) == [1.5, 2.5]
