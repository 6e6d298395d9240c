"""Deadline distributions and arrival processes: parsing, reproducibility, statistics."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.evaluate.workload import (
    ArrivalSpec,
    DeadlineSpec,
    Workload,
    WorkloadError,
    load_trace,
    make_workload,
)


def test_same_seed_same_workload():
    a = make_workload(500, 300, "uniform:2:20", "poisson:50", seed=7)
    b = make_workload(500, 300, "uniform:2:20", "poisson:50", seed=7)
    np.testing.assert_array_equal(a.image_indices, b.image_indices)
    np.testing.assert_array_equal(a.deadlines_ms, b.deadlines_ms)
    np.testing.assert_array_equal(a.arrivals_s, b.arrivals_s)
    c = make_workload(500, 300, "uniform:2:20", "poisson:50", seed=8)
    assert not np.array_equal(a.deadlines_ms, c.deadlines_ms)
    assert not np.array_equal(a.image_indices, c.image_indices)


def test_streams_are_independent():
    # Changing the arrival process must not change which images or deadlines are drawn.
    closed = make_workload(200, 100, "uniform:1:9", "closed", seed=3)
    pois = make_workload(200, 100, "uniform:1:9", "poisson:20", seed=3)
    np.testing.assert_array_equal(closed.image_indices, pois.image_indices)
    np.testing.assert_array_equal(closed.deadlines_ms, pois.deadlines_ms)
    assert closed.arrivals_s is None and closed.closed
    assert pois.arrivals_s is not None and not pois.closed


def test_images_cover_the_set_before_repeating():
    wl = make_workload(50, 120, "fixed:5", seed=1)
    assert sorted(wl.image_indices[:50].tolist()) == list(range(50))
    assert sorted(wl.image_indices[50:100].tolist()) == list(range(50))
    assert wl.image_indices.min() >= 0 and wl.image_indices.max() < 50


def test_round_trip_dict(tmp_path):
    wl = make_workload(100, 40, "uniform:2:20", "poisson:10", seed=5)
    path = wl.save(tmp_path / "wl.json")
    import json

    back = Workload.from_dict(json.loads(path.read_text()))
    np.testing.assert_array_equal(back.image_indices, wl.image_indices)
    np.testing.assert_allclose(back.deadlines_ms, wl.deadlines_ms, atol=1e-4)
    np.testing.assert_allclose(back.arrivals_s, wl.arrivals_s, atol=1e-6)
    assert (back.seed, back.deadline, back.arrival, back.n_images) == (5, "uniform:2:20", "poisson:10", 100)
    assert wl.head(10).count == 10 and wl.head(10).arrivals_s.shape == (10,)


def test_fixed_and_uniform_deadlines():
    assert np.all(make_workload(10, 30, "fixed:10").deadlines_ms == 10.0)
    d = make_workload(10, 2000, "uniform:2:20", seed=0).deadlines_ms
    assert d.min() >= 2 and d.max() <= 20
    assert abs(d.mean() - 11) < 0.6
    assert DeadlineSpec.parse("uniform:5:5").describe() == "uniform:5:5"


@pytest.mark.parametrize(
    "spec, words",
    [
        ("uniform:20:2", "LO (20) is above HI (2)"),
        ("fixed:-1", "must be > 0"),
        ("fixed:0", "must be > 0"),
        ("fixed:abc", "not a number"),
        ("fixed:nan", "finite"),
        ("uniform:2", "expected uniform:LO:HI"),
        ("uniform:2:3:4", "expected uniform:LO:HI"),
        ("gauss:3", "unknown deadline spec"),
        ("trace:", "expected trace:FILE"),
        ("fixed:1e9", "over the"),
    ],
)
def test_bad_deadline_specs(spec, words):
    with pytest.raises(WorkloadError, match=words.replace("(", r"\(").replace(")", r"\)")):
        DeadlineSpec.parse(spec)


def test_trace_file(tmp_path):
    p = tmp_path / "trace.txt"
    p.write_text("# deadlines in ms\n5\n\n7.5, extra column\n12 # comment\n")
    assert load_trace(p) == [5.0, 7.5, 12.0]
    wl = make_workload(10, 7, f"trace:{p}")
    assert wl.deadlines_ms.tolist() == [5, 7.5, 12, 5, 7.5, 12, 5]  # replayed in order, repeated
    j = tmp_path / "trace.json"
    j.write_text("[3, 4.5]")
    assert DeadlineSpec.parse(f"trace:{j}").trace == (3.0, 4.5)


def test_bad_trace_files(tmp_path):
    with pytest.raises(WorkloadError, match="trace file not found"):
        DeadlineSpec.parse(f"trace:{tmp_path / 'missing.txt'}")
    bad = tmp_path / "bad.txt"
    bad.write_text("5\nfast\n")
    with pytest.raises(WorkloadError, match="line 2 is not a number"):
        DeadlineSpec.parse(f"trace:{bad}")
    neg = tmp_path / "neg.txt"
    neg.write_text("5\n-2\n")
    with pytest.raises(WorkloadError, match=r"#2 must be a finite number > 0"):
        DeadlineSpec.parse(f"trace:{neg}")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(WorkloadError, match="has no deadlines"):
        DeadlineSpec.parse(f"trace:{empty}")
    js = tmp_path / "bad.json"
    js.write_text('[1, "x"]')
    with pytest.raises(WorkloadError, match="item 1 is not a number"):
        DeadlineSpec.parse(f"trace:{js}")
    trunc = tmp_path / "trunc.json"
    trunc.write_text("[1, 2")
    with pytest.raises(WorkloadError, match="not valid JSON"):
        DeadlineSpec.parse(f"trace:{trunc}")


@pytest.mark.parametrize(
    "spec, words",
    [("poisson", "expected poisson:RATE"), ("poisson:0", "must be > 0"), ("poisson:-3", "must be > 0"),
     ("poisson:x", "not a number"), ("open", "unknown arrival spec"), ("poisson:1e9", "over the")],
)
def test_bad_arrival_specs(spec, words):
    with pytest.raises(WorkloadError, match=words):
        ArrivalSpec.parse(spec)


def test_poisson_rate_statistics():
    rate = 200.0
    wl = make_workload(100, 4000, "fixed:10", f"poisson:{rate:g}", seed=11)
    a = wl.arrivals_s
    assert a[0] == 0.0 and np.all(np.diff(a) >= 0)
    gaps = np.diff(a)
    # Exponential gaps: mean 1/rate, coefficient of variation ~1 (loose bounds, 4000 samples).
    assert abs(gaps.mean() * rate - 1.0) < 0.08
    assert 0.9 < gaps.std() / gaps.mean() < 1.1
    # Counts per 100 ms window are Poisson(20): variance ~ mean.
    counts = np.bincount((a / 0.1).astype(int))[:-1]
    assert abs(counts.mean() - 20) < 2 and 0.6 < counts.var() / counts.mean() < 1.5


def test_bad_counts():
    with pytest.raises(WorkloadError, match="positive integer"):
        make_workload(10, 0, "fixed:1")
    with pytest.raises(WorkloadError, match="over the"):
        make_workload(10, 10**7, "fixed:1")
    with pytest.raises(WorkloadError, match="empty"):
        make_workload(0, 5, "fixed:1")
