"""The serving-overhead benchmark runs end to end on the small test bundle (its numbers are not checked: timings are for benchmarks)."""

from __future__ import annotations

from benchmarks.perf import daemon_overhead as bo
from tests.edge._fixtures import edge_fixture


def test_every_path_is_measured_and_compared_with_the_floor():
    fx = edge_fixture()
    r = bo.run_benchmark(str(fx.bundle), str(fx.selected_table), str(fx.profile), requests=100, say=lambda *a: None,
                         spin_us=500)
    for path in ("bare", "classify", "daemon binary", "daemon json", "reference", "daemon spin", "reference spin"):
        assert r[path]["e2e_p50"] > 0, path
    for path in ("daemon binary", "daemon json", "reference", "daemon spin", "reference spin"):
        assert r[path]["inside_p50"] >= 0 and r[path]["inference_p50"] > 0, path
    for path in ("daemon binary", "daemon json", "reference", "daemon spin", "reference spin"):
        assert r[path]["cpu_us"] > 0, path  # each server's own CPU time per request (Linux: schedstat)
        # Of it in the kernel, from tick counts: only when the run lasted a tick (10 ms) or more.
        assert 0 <= r[path].get("kernel_share", 0) <= 1, path
    assert r["stamp"]["n"] == 200
    text = bo.format_results(r)
    assert {"select_us", "observe_us", "load_idle_us", "load_priced_us"} <= set(r["decision"])
    for word in ("reference", "classify() adds", "arrival stamp vs client send", "goal daemon e2e p50",
                 "the load term:", "server CPU time per request", "busy polling 500 us after each answer",
                 "goal daemon spin e2e p50"):
        assert word in text
