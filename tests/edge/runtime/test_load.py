"""Tests for edge.runtime.load: the arrival rate while busy, the expected loss of a run, the load-aware choice."""

from __future__ import annotations

import numpy as np
import pytest

from edge.runtime.load import MIN_ARRIVALS, ArrivalLoad
from edge.runtime.scheduler import InferenceRequest
from tests.edge.runtime.test_scheduler import FakeModel, make
from tests.edge.tables.test_selection import row


def loaded(rate_per_ms: float, deadlines: list[float], runs: int = 50, run_ms: float = 2.0) -> ArrivalLoad:
    """A load that saw ``rate_per_ms`` arrivals per busy ms over ``runs`` runs, with these deadlines."""
    a = ArrivalLoad()
    for d in deadlines:
        a.arrived(d, busy=False)
    per_run = rate_per_ms * run_ms
    owed, j = 0.0, 0
    for _ in range(runs):
        owed += per_run
        while owed >= 1.0:
            a.arrived(deadlines[j % len(deadlines)], busy=True)  # the same deadline mix
            j += 1
            owed -= 1.0
        a.ran(run_ms)
    return a


def test_closed_loop_arrivals_never_price_the_load():
    a = ArrivalLoad()
    for _ in range(200):
        a.arrived(5.0, busy=False)  # a closed-loop client sends only after the answer: never while busy
        a.ran(3.0)
    assert a.rate == 0.0
    assert not a.priced(1000.0)


def test_the_rate_is_busy_arrivals_per_busy_ms():
    a = loaded(0.5, [4.0])
    assert a.rate == pytest.approx(0.5, rel=0.05)
    assert a.priced(MIN_ARRIVALS / 0.5 * 1.1)
    assert not a.priced(MIN_ARRIVALS / 0.5 * 0.5)


def test_the_rate_follows_a_falling_load():
    a = loaded(1.0, [4.0])
    for _ in range(300):
        a.ran(2.0)  # runs with no arrivals behind them
    assert a.rate < 0.01


def test_expected_loss_integrates_the_deadline_distribution():
    a = loaded(1.0, [1.0])  # every deadline 1 ms, one arrival per busy ms
    # Arrivals w ms into a 2 ms run wait 2 - w and need 0.2 more: lost when 2 - w + 0.2 > 1, w < 1.2.
    assert a.lost(2.0, 0.2) == pytest.approx(1.2 * a.rate, rel=1e-6)
    assert a.lost(0.5, 0.2) == pytest.approx(0.0)  # 0.5 + 0.2 < 1: nobody lost
    # Deadlines of 1 and 3 ms: half are lost from a wait of 0.8 ms, all from 2.8 ms.
    b = loaded(1.0, [1.0, 3.0] * 50)
    assert b.lost(4.0, 0.2) == pytest.approx(b.rate * (0.5 * (4.2 - 1.0) + 0.5 * (4.2 - 3.0)), rel=1e-6)


def test_choose_trades_accuracy_for_the_requests_behind():
    acc = (0.80, 0.85, 0.90)
    preds = [0.1, 1.0, 5.0]
    idle = ArrivalLoad()
    idle.arrived(2.0, busy=False)
    assert idle.choose(preds, acc, 2, 0.2) == 2  # no load: the greedy choice stands
    busy = loaded(1.0, [2.0])
    # 5 ms costs about 3 lost requests, 1 ms nothing (1 + 0.2 < 2): the middle variant wins.
    assert busy.choose(preds, acc, 2, 0.2) == 1
    assert busy.choose(preds, acc, 1, 0.2) == 1


def test_the_scheduler_prices_open_loop_load_for_adaptive_only():
    """Adaptive under load picks the variant that keeps arrivals on time; adaptive-greedy keeps the greedy pick."""
    rows = [row("fast", 0.1, 0.80), row("mid", 1.0, 0.85), row("slow", 5.0, 0.90)]
    models = [{r.variant: FakeModel() for r in rows}]
    for policy, want in (("adaptive", "mid"), ("adaptive-greedy", "slow")):
        s = make(models, policy=policy, rows=rows)
        s.load = loaded(1.0, [2.0])
        req = InferenceRequest(np.zeros((1, 2, 2, 1), np.float32), 50.0)
        assert s.submit(req) == "run"
        assert s.run(req).variant == f"{want}@litert-xnnpack-t1", policy
        s.release(req)


def test_an_idle_scheduler_learns_no_load():
    rows = [row("fast", 0.1, 0.80), row("slow", 5.0, 0.90)]
    s = make([{r.variant: FakeModel() for r in rows}], rows=rows)
    for _ in range(20):  # one request at a time: each finds the slot free and nobody waiting
        req = InferenceRequest(np.zeros((1, 2, 2, 1), np.float32), 50.0)
        assert s.submit(req) == "run"
        assert s.run(req).variant == "slow@litert-xnnpack-t1"
        s.release(req)
    assert s.load.rate == 0.0


def test_the_price_counts_the_runtime_work_a_request_behind_still_needs():
    """A request that waits behind a run needs the serving overhead, the runtime's own work around its invoke and
    the fastest variant. Here every deadline is 2 ms: behind the 1 ms variant it has 1 ms left, which the fastest
    variant fits alone (so that run costs nothing) but not with 1 ms of own work (then it costs arrivals, and
    adaptive keeps to the fastest variant)."""
    rows = [row("fast", 0.1, 0.80), row("mid", 1.0, 0.85), row("slow", 5.0, 0.90)]
    models = [{r.variant: FakeModel() for r in rows}]
    for own_ms, want in ((0.0, "mid"), (1.0, "fast")):
        s = make(models, policy="adaptive", rows=rows)
        s.load = loaded(1.0, [2.0])
        s.own_q_ms = own_ms
        req = InferenceRequest(np.zeros((1, 2, 2, 1), np.float32), 50.0)
        assert s.submit(req) == "run"
        assert s.run(req).variant == f"{want}@litert-xnnpack-t1", own_ms
        s.release(req)
