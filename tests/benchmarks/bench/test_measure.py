"""Tests for benchmarks.bench.measure: the timed loop (one row end to end is in test_bench.py)."""

from __future__ import annotations

import time
from pathlib import Path

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


def test_rest_loop_rests_before_each_timed_run():
    from benchmarks.bench.measure import rest_loop

    m = FakeModel(sleep_s=0.001)
    t0 = time.perf_counter()
    ns = rest_loop(m, [np.array([i]) for i in range(3)], runs=4, gap_ms=5.0)
    assert len(ns) == 4 and m.seen == [0, 1, 2, 0]
    assert time.perf_counter() - t0 >= 4 * 0.005  # the rest is outside the timed region
    assert all(0.001e9 <= t < 0.005e9 for t in ns)


def test_a_bench_table_and_a_serving_run_agree_on_the_same_machine_and_setting(bundle, tmp_path):
    """What 'edgekit bench' writes is what the runtime pays, within 3x, back to back and at rest, and the slowdown
    factor of an idle board stays near 1 (it read 3.5 to 4.8 at rest when the table held only back-to-back times).

    The factor 3 is generous on purpose: this runs on a shared 2-core machine where other tests run at the same
    time. Both sides are medians (bench's p50 over >= 200 runs and its at-rest median over 20; serving's median over
    200 back-to-back and 15 at-rest requests), so a few preempted runs move neither. Back to back, serving adds the
    Python between two invokes (1.2x to 1.6x measured for a 5 to 10 µs model, docs/serving-path.md); at rest both
    sides pay the same cold start after 10+ ms idle (measured 0.8x to 1.3x of each other). A table timed back to
    back only was off by 4x to 20x at rest for these models, and its factor by as much, so 3x still tells the two
    apart. The setting is desktop-cpu's one thread, which fits any host; a profile with more threads than the host
    has cores is labelled as such (device_profiles.host_mismatch) rather than tested here."""
    import statistics

    from benchmarks.bench.command import bench_bundle
    from benchmarks.bench.measure import BenchOptions
    from edge.bundle.reader import open_bundle
    from edge.runtime.classifier import AdaptiveClassifier
    from edge.tables.selection import select_subset
    from edge.tables.table import GAP_MS, REST_GAP_MS

    def measure(out: Path) -> tuple[bool, dict[str, float]]:
        """One bench of the variant and one serving run of it: whether every reading was in its state (hot, at
        rest, at the cadence), and each ratio to the table."""
        opts = BenchOptions(min_runs=200, min_seconds=0.2, warmup=10, inputs=8, rest_runs=20)
        res = bench_bundle(bundle, out / "t.json", profile="desktop-cpu", opts=opts, only=["tiny-b.tflite-fp32"],
                           progress=False, log=lambda m: None)
        (row,) = res.table.rows
        select_subset(res.table, significance=0).save(out / "sel.json")
        images, _ = open_bundle(bundle).eval_set(part="serve")
        with AdaptiveClassifier.open(str(bundle), str(out / "sel.json"), "desktop-cpu", log=lambda m: None) as clf:
            hot = [clf.classify(images[i % len(images)], 1e4) for i in range(250)][50:]
            rest = []
            for i in range(15):
                time.sleep(2 * REST_GAP_MS / 1000)
                rest.append(clf.classify(images[i % len(images)], 1e4))
            cadence = []
            for i in range(60):
                time.sleep(GAP_MS / 1000)
                cadence.append(clf.classify(images[i % len(images)], 1e4))
            factor = clf.slowdown_factor
        states = not any(r.at_rest for r in hot) and all(r.at_rest for r in rest) and not any(r.at_rest for r in cadence)
        return states, {
            "at a request's cadence": statistics.median(r.inference_ms for r in cadence) / row.gap_p50_ms,
            "back to back": statistics.median(r.inference_ms for r in hot) / row.p50_ms,
            "at rest": statistics.median(r.inference_ms for r in rest) / row.rest_p50_ms,
            "the slowdown factor of an idle board": factor,
        }

    # A reading out of bounds is measured once more, bench and serving both: another test on the other core can
    # evict the shared caches during one side's cold starts only (at rest it once read 4.06x in a full parallel
    # run), while a table that does not hold what serving pays is off by 4x to 20x every time.
    for attempt in (1, 2):
        out = tmp_path / f"attempt-{attempt}"
        out.mkdir()
        states, ratios = measure(out)
        assert states, "hot, at-rest and cadence requests were not each served in their state"
        off = {k: v for k, v in ratios.items() if not 1 / 3 < v < 3}
        if not off:
            return
    assert not off, f"serving paid {off} times the table's latency (twice in a row; bounds 1/3 to 3)"
