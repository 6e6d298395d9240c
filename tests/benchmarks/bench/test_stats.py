"""Tests for benchmarks.bench.stats: the summary of timed runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from benchmarks.bench.stats import summarize_ns
from edge.tables.table import LatencyTimes


def test_summarize_percentiles():
    st = summarize_ns(np.arange(1, 101) * 1_000_000)  # 1..100 ms
    assert st.count == 100 and st.min_ms == 1 and st.max_ms == 100
    assert st.p50_ms == pytest.approx(50.5) and st.p99_ms == pytest.approx(99.01)
    assert st.mean_ms == pytest.approx(50.5)
    assert summarize_ns([2_000_000]).std_ms == 0.0
    with pytest.raises(ValueError):
        summarize_ns([])


def test_timings_are_the_table_row_timing_fields():
    st = summarize_ns([1_000_000, 3_000_000])
    assert list(st.timings()) == [f.name for f in dataclasses.fields(LatencyTimes)]
    assert "count" not in st.timings() and st.timings()["max_ms"] == 3.0
