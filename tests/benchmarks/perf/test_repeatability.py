"""benchmarks/perf/repeatability.py: two latency tables of the same bundle compared variant by variant."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks.perf import repeatability


def test_repeatability_compare(measured, tmp_path, capsys):
    res, out = measured
    t = res.table
    slow = dataclasses.replace(t, rows=tuple(dataclasses.replace(r, p50_ms=r.p50_ms * 1000) for r in t.rows))
    drift = dataclasses.replace(t, rows=tuple(dataclasses.replace(r, p50_ms=r.p50_ms * 1000 * 1.2) for r in t.rows))
    rows, ok = repeatability.compare(slow, slow)
    assert ok and all(r["counts"] and r["ratio"] == 1.0 for r in rows)
    rows, ok = repeatability.compare(slow, drift)
    assert not ok and all(r["ratio"] == pytest.approx(1.2) for r in rows)
    # Sub-0.5 ms variants are printed but not judged.
    rows, ok = repeatability.compare(t, dataclasses.replace(t, rows=tuple(dataclasses.replace(r, p50_ms=r.p50_ms * 2) for r in t.rows)))
    assert ok and not any(r["counts"] for r in rows)
    a, b = slow.save(tmp_path / "a.json"), drift.save(tmp_path / "b.json")
    assert repeatability.main(["--tables", str(a), str(b)]) == 1
    assert "repeatability: FAIL" in capsys.readouterr().out
