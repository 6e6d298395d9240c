"""Tests for edge.scheduler with stand-in models: EDF order, bounded queue, reject, drain, swap, workers."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge.backends.base import LoadedModel
from edge.manifest import TensorSpec
from edge.scheduler import InferenceRequest, QueueFull, Scheduler, ServingState, ShuttingDown
from edge.selector import Selector
from edge.slowdown import NoSlowdown
from tests.edge.test_selection import row


class FakeModel(LoadedModel):
    """Sleeps ``ms`` per call (or waits on ``gate``) and records who ran it."""

    def __init__(self, ms: float = 0.0, gate: threading.Event | None = None, fail: bool = False):
        self.input_spec = TensorSpec("x", (-1, 2, 2, 1), "float32")
        self.output_spec = TensorSpec("y", (-1, 3), "float32")
        self.provider = "fake"
        self.ms, self.gate, self.fail = ms, gate, fail
        self.calls: list[tuple[int, str]] = []

    def predict(self, batch):
        if self.fail:
            raise ValueError("boom")
        if self.gate is not None:
            self.gate.wait(5)
        if self.ms:
            time.sleep(self.ms / 1000)
        self.calls.append((threading.get_ident(), float(batch.reshape(-1)[0])))
        return np.array([[0.1, 0.9, 0.0]], np.float32)


ROWS = [row("fast", 1.0, 0.6), row("slow", 50.0, 0.9)]


def make(models_per_worker, miss="best-effort", policy="adaptive", queue_size=64, rows=ROWS):
    sel = Selector(rows, miss=miss, policy=policy, slowdown=NoSlowdown())
    state = ServingState(sel, tuple(models_per_worker))
    s = Scheduler(state, queue_size=queue_size)
    s.overhead_ms = 0.0
    return s


def img(v: float = 0.0):
    return np.full((1, 2, 2, 1), v, np.uint8)


def test_runs_and_reports():
    fast, slow = FakeModel(), FakeModel()
    s = make([{ROWS[0].variant: fast, ROWS[1].variant: slow}])
    s.start()
    r = s.submit(InferenceRequest(img(), deadline_ms=1000))
    res = r.wait(5)
    assert res.outcome == "ok" and res.variant == ROWS[1].variant and res.label == 1
    assert res.deadline_met and res.inference_ms >= 0 and res.queue_ms >= 0 and res.total_ms >= res.inference_ms
    assert res.scores.shape == (1, 3) and res.dispatch_seq == 0
    r = s.submit(InferenceRequest(img(), deadline_ms=10))
    assert r.wait(5).variant == ROWS[0].variant
    s.close()


def test_edf_order_while_the_worker_is_busy():
    gate = threading.Event()
    m = FakeModel(gate=gate)
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}], policy="fastest")
    s.start()
    first = s.submit(InferenceRequest(img(0), deadline_ms=10_000))
    time.sleep(0.05)  # the worker holds `first` at the gate
    reqs = [s.submit(InferenceRequest(img(v), deadline_ms=dl)) for v, dl in [(1, 5000), (2, 1000), (3, 3000), (4, 2000)]]
    assert s.depth == 4
    gate.set()
    for r in [first, *reqs]:
        assert r.wait(5).outcome == "ok"
    order = [v for _, v in m.calls]
    assert order == [0, 2, 4, 3, 1]
    assert [r.result.dispatch_seq for r in reqs] == [4, 1, 3, 2]
    s.close()


def test_queue_full_and_time_in_queue_counts():
    gate = threading.Event()
    m = FakeModel(gate=gate)
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}], queue_size=2)
    s.start()
    s.submit(InferenceRequest(img(), deadline_ms=10_000))
    time.sleep(0.05)
    waiting = [s.submit(InferenceRequest(img(), deadline_ms=10_000)) for _ in range(2)]
    with pytest.raises(QueueFull, match=r"queue full \(2 waiting\)"):
        s.submit(InferenceRequest(img(), deadline_ms=10_000))
    time.sleep(0.1)
    gate.set()
    for r in waiting:
        assert r.wait(5).queue_ms >= 100
    s.close()


def test_reject_on_arrival_and_at_dequeue():
    gate = threading.Event()
    m = FakeModel(gate=gate)
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}], miss="reject")
    s.start()
    # Nothing can make 0.5 ms when the fastest takes 1 ms: answered at once, never queued.
    r = s.submit(InferenceRequest(img(), deadline_ms=0.5))
    assert r.done.is_set() and r.result.outcome == "rejected"
    assert "deadline cannot be met" in r.result.message and r.result.dispatch_seq == -1
    # Admitted with 60 ms, but it waits behind a busy worker until only ~0 ms remain.
    s.submit(InferenceRequest(img(), deadline_ms=10_000))
    time.sleep(0.05)
    late = s.submit(InferenceRequest(img(), deadline_ms=60))
    time.sleep(0.1)
    gate.set()
    res = late.wait(5)
    assert res.outcome == "rejected" and res.queue_ms >= 60 and not res.deadline_met
    s.close()


def test_best_effort_runs_the_fastest_and_flags_the_miss():
    m = FakeModel(ms=5)
    s = make([{ROWS[0].variant: m, ROWS[1].variant: FakeModel()}])
    s.start()
    res = s.submit(InferenceRequest(img(), deadline_ms=0.5)).wait(5)
    assert res.outcome == "ok" and res.variant == ROWS[0].variant and not res.deadline_met
    s.close()


def test_close_drains_the_queue_and_refuses_new_work():
    m = FakeModel(ms=20)
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}], policy="fastest")
    s.start()
    reqs = [s.submit(InferenceRequest(img(), deadline_ms=10_000)) for _ in range(5)]
    s.close(drain=True, timeout=10)
    assert all(r.result is not None and r.result.outcome == "ok" for r in reqs)
    with pytest.raises(ShuttingDown):
        s.submit(InferenceRequest(img(), deadline_ms=10_000))


def test_swap_serves_new_requests_with_the_new_state():
    a, b = FakeModel(), FakeModel()
    s = make([{ROWS[0].variant: a, ROWS[1].variant: a}], policy="fastest")
    s.start()
    s.submit(InferenceRequest(img(), deadline_ms=1000)).wait(5)
    new_rows = [row("other", 1.0, 0.7)]
    s.swap(ServingState(Selector(new_rows, policy="fastest", slowdown=NoSlowdown()), ({new_rows[0].variant: b},), generation=1))
    res = s.submit(InferenceRequest(img(), deadline_ms=1000)).wait(5)
    assert res.variant == "other@litert-xnnpack-t1" and len(b.calls) == 1
    s.close()


def test_each_worker_uses_its_own_copies():
    copies = [FakeModel(ms=10) for _ in range(2)]
    s = make([{ROWS[0].variant: c, ROWS[1].variant: c} for c in copies], policy="fastest")
    assert s.workers == 2
    s.start()
    reqs = [s.submit(InferenceRequest(img(), deadline_ms=10_000)) for _ in range(8)]
    for r in reqs:
        r.wait(5)
    for c in copies:
        assert c.calls, "both workers took work"
        assert len({t for t, _ in c.calls}) == 1, "a copy is only ever run by one thread"
    assert {t for t, _ in copies[0].calls}.isdisjoint({t for t, _ in copies[1].calls})
    s.close()


def test_a_failing_model_answers_with_an_error_and_the_worker_survives():
    bad, good = FakeModel(fail=True), FakeModel()
    s = make([{ROWS[0].variant: good, ROWS[1].variant: bad}])
    s.start()
    res = s.submit(InferenceRequest(img(), deadline_ms=1000)).wait(5)
    assert res.outcome == "error" and "boom" in res.message
    assert s.submit(InferenceRequest(img(), deadline_ms=5)).wait(5).outcome == "ok"
    s.close()


def test_overhead_estimate_is_bounded():
    s = make([{ROWS[0].variant: FakeModel(), ROWS[1].variant: FakeModel()}])
    for _ in range(200):
        s.record_overhead(0.3)
    assert s.overhead_ms == pytest.approx(0.3, rel=0.01)
    s.record_overhead(-5)
    s.record_overhead(1e9)
    assert s.overhead_ms == pytest.approx(0.3, rel=0.01)
    with pytest.raises(ValueError):
        Scheduler(s.state, queue_size=0)
