"""Tests for benchmarks.bench.measure: the timed loop (one row end to end is in test_bench.py)."""

from __future__ import annotations

import time

import numpy as np

from benchmarks.bench.measure import timed_loop


class FakeModel:
    provider = "fake"

    def __init__(self, sleep_s: float = 0.0):
        self.sleep_s = sleep_s
        self.seen: list[int] = []
        self._cur = None

    def set_input(self, x):
        self._cur = x

    def invoke_prepared(self):
        self.seen.append(int(self._cur[0]))
        if self.sleep_s:
            time.sleep(self.sleep_s)


def test_timed_loop_meets_count_and_duration():
    inputs = [np.array([i]) for i in range(4)]
    m = FakeModel()
    s = timed_loop(m, inputs, min_runs=20, min_seconds=0.0)
    assert len(s) == 20 and s.dtype == np.int64 and (s >= 0).all()
    assert m.seen[:8] == [0, 1, 2, 3, 0, 1, 2, 3]  # cycles through different inputs

    m = FakeModel(sleep_s=0.001)
    t0 = time.perf_counter()
    s = timed_loop(m, inputs, min_runs=3, min_seconds=0.05)
    assert time.perf_counter() - t0 >= 0.05 and len(s) >= 3
    assert s.sum() / 1e9 <= time.perf_counter() - t0  # only the invoke is inside a sample

    m = FakeModel(sleep_s=0.01)
    s = timed_loop(m, inputs, min_runs=1000, min_seconds=0.0, max_seconds=0.05)
    assert 1 <= len(s) < 1000  # the cap wins over the count
