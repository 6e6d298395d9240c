"""Tests for edge.runtime.selector: O(log K) choice, slowdown correction, miss policies, baselines, speed."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.runtime.selector import HOT, IDLE, REST, Policy, Selector, idle_level, make_selector
from edge.runtime.slowdown import KalmanSlowdown, NoSlowdown
from tests.edge.tables.test_selection import row

ROWS = [row("a", 1.0, 0.60), row("b", 2.0, 0.70), row("c", 4.0, 0.80), row("d", 8.0, 0.90)]


def test_most_accurate_that_fits():
    s = Selector(ROWS, slowdown=NoSlowdown())
    assert s.select(100).variant == "d@litert-xnnpack-t1"
    assert s.select(8.0).index == 3  # exactly equal fits
    assert s.select(7.99).index == 2
    assert s.select(2.5).index == 1
    d = s.select(1.0)
    assert (d.index, d.fits, d.reject, d.predicted_ms) == (0, True, False, 1.0)


def test_nothing_fits_best_effort_and_reject():
    s = Selector(ROWS, miss="best-effort", slowdown=NoSlowdown())
    d = s.select(0.5)
    assert d.index == 0 and not d.fits and not d.reject and d.variant == "a@litert-xnnpack-t1"
    d = s.select(-3.0)  # already late
    assert d.index == 0 and not d.fits
    r = Selector(ROWS, miss="reject", slowdown=NoSlowdown())
    d = r.select(0.5)
    assert d.reject and d.index == -1 and d.variant is None and d.predicted_ms == 1.0


def test_slowdown_moves_to_faster_variants_and_back():
    s = Selector(ROWS, slowdown=KalmanSlowdown())
    assert s.select(4.5).index == 2
    # Contention: everything runs ~2x slower than its table median (p50 = 0.7 * p95 here).
    for _ in range(30):
        d = s.select(4.5)
        s.observe(d.index, 2.0 * s.median[d.index])
    assert s.factor == pytest.approx(2.0, rel=0.1)
    d = s.select(4.5)
    assert d.index == 1 and d.predicted_ms == pytest.approx(2.0 * 2.0, rel=0.1)
    # Recovery: the variant it now runs reports normal latency, so it climbs back.
    for _ in range(30):
        d = s.select(4.5)
        s.observe(d.index, 1.0 * s.median[d.index])
    assert s.select(4.5).index == 2


def test_mean_table_uses_mean_without_correction():
    rows = [row("a", 1.0, 0.6, mean=0.5), row("b", 2.0, 0.7, mean=3.0), row("c", 4.0, 0.8, mean=2.0)]
    s = Selector(rows, policy="mean-table", slowdown=KalmanSlowdown())
    for _ in range(20):
        s.observe(0, 10 * s.median[0])  # the filter runs, but mean-table ignores it
    assert s.factor == 1.0 and s.slowdown.factor > 5
    # Means are not monotonic (b's mean > c's): the last variant whose mean fits wins.
    assert s.select(2.5).variant == "c@litert-xnnpack-t1"
    assert s.select(1.0).variant == "a@litert-xnnpack-t1"
    assert s.select(3.0).variant == "c@litert-xnnpack-t1"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0.1, 50), min_size=1, max_size=12), st.floats(-5, 80))
def test_bisect_equals_linear_scan_for_any_base(means, t):
    rows = [row(f"m{i}", float(i + 1), 0.1 + 0.05 * i, mean=m) for i, m in enumerate(means)]
    s = Selector(rows, policy="mean-table", miss="reject")
    fitting = [i for i, m in enumerate(means) if m <= t]
    d = s.select(t)
    if fitting:
        assert d.index == max(fitting)
    else:
        assert d.reject


def test_fixed_policies():
    f = Selector(ROWS, policy="fastest", slowdown=NoSlowdown())
    assert f.select(100).index == 0
    m = Selector(ROWS, policy="most-accurate", slowdown=NoSlowdown())
    assert m.select(0.1).index == 3 and not m.select(0.1).fits
    st_ = Selector(ROWS, policy="static:b@litert-xnnpack-t1", slowdown=NoSlowdown(), miss="reject")
    assert st_.select(100).variant == "b@litert-xnnpack-t1"
    assert st_.select(1.0).reject
    with pytest.raises(ValueError, match="unknown variant"):
        Selector(ROWS, policy="static:nope")


def test_policy_parsing():
    assert Policy.from_string("adaptive").kind == "adaptive"
    assert Policy.from_string("oracle-free").kind == "quantile-table"
    p = Policy.from_string("static:x@y")
    assert (p.kind, p.variant, str(p)) == ("static", "x@y", "static:x@y")
    for bad in ("static:", "oracle", "bogus", ""):
        with pytest.raises(ValueError):
            Policy.from_string(bad)
    with pytest.raises(ValueError, match="miss"):
        Selector(ROWS, miss="drop")
    with pytest.raises(ValueError, match="at least one"):
        Selector([])


def test_quantile_table_ablation_ignores_the_filter():
    s = make_selector(ROWS, policy="quantile-table")
    for _ in range(20):
        s.observe(3, 5 * s.median[3])
    assert s.factor == 1.0 and s.select(8.0).index == 3


def test_unsorted_rows_are_sorted():
    s = Selector(list(reversed(ROWS)), slowdown=NoSlowdown())
    assert s.variants[0] == "a@litert-xnnpack-t1"


def test_decision_takes_well_under_10_microseconds():
    rows = [row(f"m{i}", 1.0 + i, 0.5 + i * 0.001) for i in range(64)]
    s = Selector(rows)
    n = 50_000
    deadlines = [0.5 + (i % 97) for i in range(n)]
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for dl in deadlines:
            s.select(dl)
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    assert best < 10.0, f"{best:.2f} us per decision"


def test_at_rest_adaptive_predicts_the_cold_start_and_the_factor_keeps_meaning_drift():
    """A request that finds its slot idle pays the table's latency at rest (rest_p50_ms, here 4x the median for
    the fast variant, 1.5x for the slow one): adaptive predicts with it, and an observation at rest is compared to
    it, so a board exactly as fast as its table keeps a factor of 1 whether requests come back to back or not."""
    import dataclasses

    rows = [dataclasses.replace(row("a", 1.0, 0.6), rest_p50_ms=4 * 0.7),
            dataclasses.replace(row("b", 2.0, 0.9), rest_p50_ms=1.5 * 1.4)]
    s = Selector(rows, slowdown=KalmanSlowdown())
    assert s.rest_scale == pytest.approx((4.0, 1.5))
    assert s.select(2.5).variant == "b@litert-xnnpack-t1"  # back to back: b's p95 2.0 fits
    d = s.select(2.5, REST)  # at rest: a 4.0, b 3.0: nothing fits, best effort runs the fastest
    assert d.index == 0 and not d.fits and d.predicted_ms == pytest.approx(4.0)
    assert s.select(3.0, REST).variant == "b@litert-xnnpack-t1"
    for _ in range(30):  # observed exactly at the table's medians, half at rest, half back to back
        s.observe(0, 4 * 0.7, REST)
        s.observe(1, 1.4)
    assert s.factor == pytest.approx(1.0, abs=1e-6)
    assert s.predict(0, REST) == pytest.approx(4.0) and s.predict(0) == pytest.approx(1.0)
    # The baselines trust the table as it was: no cold start in their predictions.
    for policy in ("quantile-table", "mean-table"):
        base = Selector(rows, policy=policy, slowdown=NoSlowdown())
        assert base.select(2.5, REST).variant == base.select(2.5).variant
    # A table without the measurement (older tables, hand-made ones) behaves as before.
    plain = Selector(ROWS, slowdown=NoSlowdown())
    assert plain.rest_scale == (1.0,) * len(ROWS) and plain.select(2.5, REST) == plain.select(2.5)


def test_at_a_requests_cadence_adaptive_predicts_each_variant_with_its_own_gap_latency():
    """A daemon's requests find the runtime idle for their client's round trip: the microsecond net pays 5x its
    median there, the long one 1.25x (gap_p50_ms). Adaptive predicts each with its own ratio and observes against
    it, so runs exactly at those medians keep the factor at 1: one factor learnt from the fast net (5) would have
    predicted the long one at 5x its table."""
    import dataclasses

    rows = [dataclasses.replace(row("a", 0.01, 0.6), gap_p50_ms=5 * 0.007, rest_p50_ms=10 * 0.007),
            dataclasses.replace(row("b", 2.0, 0.9), gap_p50_ms=1.25 * 1.4, rest_p50_ms=1.5 * 1.4)]
    s = Selector(rows, slowdown=KalmanSlowdown())
    assert s.gap_scale == pytest.approx((5.0, 1.25))
    assert s.select(2.2).index == 1 and s.select(2.2, IDLE).index == 0  # b: 2.0 back to back, 2.5 at the cadence
    assert s.select(2.6, IDLE).index == 1
    for _ in range(40):
        s.observe(0, 5 * 0.007, IDLE)
        s.observe(1, 1.25 * 1.4, IDLE)
    assert s.factor == pytest.approx(1.0, abs=1e-6)
    assert s.predict(1, IDLE) == pytest.approx(2.5) and s.predict(1, REST) == pytest.approx(3.0)
    assert s.describe()["variants"][1]["predicted_at_cadence_ms"] == pytest.approx(2.5)
    for policy in ("quantile-table", "mean-table"):  # the baselines keep the table
        base = Selector(rows, policy=policy, slowdown=NoSlowdown())
        assert base.select(2.2, IDLE).variant == base.select(2.2).variant
    plain = Selector(ROWS, slowdown=NoSlowdown())  # a table without gap_p50_ms: as before
    assert plain.gap_scale == (1.0,) * len(ROWS) and plain.select(2.5, IDLE) == plain.select(2.5)


def test_idle_levels_from_the_slots_idle_time():
    from edge.tables.table import IDLE_FROM_MS, REST_GAP_MS

    assert idle_level(0.0) == HOT and idle_level(IDLE_FROM_MS / 1000 * 0.9) == HOT
    assert idle_level(IDLE_FROM_MS / 1000) == IDLE and idle_level(REST_GAP_MS / 1000 * 0.99) == IDLE
    assert idle_level(REST_GAP_MS / 1000) == REST and idle_level(1e9) == REST


def test_adaptive_learns_what_a_switch_costs_and_predicts_it():
    """A switched-to run at twice the table: adaptive learns a switch scale near 2 for that variant, predicts a
    switch with it (and a repeat without), and the slowdown factor stays near 1."""
    s = Selector(ROWS, quantile="p95", slowdown=KalmanSlowdown())
    med = s.median[3]
    for _ in range(200):
        s.observe(3, 2.0 * med, switched=True)
        s.observe(3, med, switched=False)
    assert s.switch[3] == pytest.approx(2.0, rel=0.1)
    assert s.factor == pytest.approx(1.0, abs=0.1)
    assert s.switch[:3] == [1.0, 1.0, 1.0]  # only the variant that paid it
    room = s.base[3] * s.factor * 1.2  # d fits hot, not after a switch
    assert s.select(room, last=3).index == 3
    d = s.select(room, last=0)
    assert d.index == 2 and d.fits
    assert s.decision(3, last=0).predicted_ms == pytest.approx(s.predict(3) * s.switch[3])
    assert s.describe()["variants"][3]["switch_scale"] == pytest.approx(s.switch[3], abs=1e-3)


def test_the_switch_scale_stays_within_its_bounds_and_the_baselines_ignore_it():
    s = Selector(ROWS, slowdown=NoSlowdown())
    for _ in range(300):
        s.observe(1, s.median[1] * 50, switched=True)
        s.observe(2, s.median[2] * 0.1, switched=True)
    assert s.switch[1] == pytest.approx(4.0) and s.switch[2] == 1.0
    base = Selector(ROWS, policy="mean-table", slowdown=NoSlowdown())
    for _ in range(50):
        base.observe(3, base.median[3] * 3, switched=True)
    assert base.switch == [1.0] * 4 and base.select(base.base[3], last=0).index == 3


def test_predictions_agree_with_each_decision():
    s = Selector(ROWS, slowdown=KalmanSlowdown())
    for _ in range(50):
        s.observe(2, s.median[2] * 1.7, switched=True)
        s.observe(1, s.median[1] * 1.3)
    for idle in (HOT, IDLE, REST):
        for last in (-1, 0, 2, 3):
            assert s.predictions(3, idle, last) == pytest.approx(
                [s.decision(i, idle, last).predicted_ms for i in range(4)])


def test_adaptive_learns_an_additive_delay_and_predicts_with_it():
    """Bursts that add a fixed 5 ms to one run in three (a periodic task sharing the core): the quantile of the
    recent excesses carries that delay into every variant's prediction, less the variant's own table tail, and
    the choice steps down to a variant that fits with it."""
    s = Selector(ROWS, quantile="p95", slowdown=NoSlowdown())
    assert s.add == [0.0] * 4
    for k in range(96):
        v = k % 4
        s.observe(v, s.median[v] + (5.0 if k % 3 == 0 else 0.0))
    assert s.excess_q == pytest.approx(5.0)
    assert s.add == pytest.approx([max(0.0, 5.0 - m) for m in s.margin])
    assert s.add[0] > s.add[3] > 0  # a longer table tail already allows part of it
    d = s.select(s.base[3] + 1.0)  # d fits by the table, not with the delay
    assert d.index < 3 and d.predicted_ms == pytest.approx(s.base[d.index] + s.add[d.index])
    assert s.predictions(3) == pytest.approx([s.decision(i).predicted_ms for i in range(4)])


def test_without_interference_the_additive_term_stays_zero_and_baselines_never_learn_it():
    s = Selector(ROWS, slowdown=NoSlowdown())
    for k in range(200):
        s.observe(k % 4, s.median[k % 4] * 1.01)  # quiet: within the table's own tail
    assert s.add == [0.0] * 4
    base = Selector(ROWS, policy="quantile-table", slowdown=NoSlowdown())
    for k in range(200):
        base.observe(k % 4, base.median[k % 4] + 5.0)
    assert base.add == [0.0] * 4 and base.select(base.base[3]).index == 3
