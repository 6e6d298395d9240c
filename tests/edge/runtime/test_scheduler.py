"""Tests for edge.runtime.scheduler with stand-in models: EDF admission, bounded queue, reject, drain, swap, slots."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge.artifacts.manifest import TensorSpec
from edge.artifacts.tensors import dequantize_output, prepare_input
from edge.backends.base import LoadedModel
from edge.runtime.scheduler import (
    DONE,
    QUEUED,
    RUN,
    InferenceRequest,
    InputPreparer,
    OutputReader,
    QueueFull,
    Scheduler,
    ServingState,
    ShuttingDown,
)
from edge.runtime.selector import Selector
from edge.runtime.slowdown import NoSlowdown
from tests.edge.tables.test_selection import row


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


def make(models_per_slot, miss="best-effort", policy="adaptive", queue_size=64, rows=ROWS):
    sel = Selector(rows, miss=miss, policy=policy, slowdown=NoSlowdown())
    state = ServingState(sel, tuple(models_per_slot))
    s = Scheduler(state, queue_size=queue_size)
    s.overhead_ms = 0.0
    return s


def img(v: float = 0.0):
    return np.full((1, 2, 2, 1), v, np.uint8)


def serve(s: Scheduler, req: InferenceRequest):
    """What an in-process caller does: wait for a slot in EDF order, run, give the slot back."""
    if s.acquire(req) == DONE:
        return req.result
    try:
        return s.run(req)
    finally:
        s.release(req)


def serve_async(s: Scheduler, req: InferenceRequest, out: list):
    t = threading.Thread(target=lambda: out.append((req, serve(s, req))))
    t.start()
    return t


def test_runs_and_reports():
    fast, slow = FakeModel(), FakeModel()
    s = make([{ROWS[0].variant: fast, ROWS[1].variant: slow}])
    res = serve(s, InferenceRequest(img(), deadline_ms=1000))
    assert res.outcome == "ok" and res.variant == ROWS[1].variant and res.label == 1
    assert res.deadline_met and res.inference_ms >= 0 and res.queue_ms >= 0 and res.total_ms >= res.inference_ms
    assert res.scores.shape == (1, 3) and res.dispatch_seq == 0
    assert serve(s, InferenceRequest(img(), deadline_ms=10)).variant == ROWS[0].variant
    assert s.busy == 0 and s.depth == 0


def test_an_idle_scheduler_runs_in_the_callers_thread():
    m = FakeModel()
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}])
    req = InferenceRequest(img(), deadline_ms=1000)
    assert s.submit(req) == RUN and req.slot == 0
    s.run(req)
    s.release(req)
    assert m.calls[0][0] == threading.get_ident()


def test_edf_order_while_the_slot_is_busy():
    gate = threading.Event()
    m = FakeModel(gate=gate)
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}], policy="fastest")
    out: list = []
    threads = [serve_async(s, InferenceRequest(img(0), deadline_ms=10_000), out)]
    time.sleep(0.05)  # the first holds the slot at the gate
    for v, dl in [(1, 5000), (2, 1000), (3, 3000), (4, 2000)]:
        threads.append(serve_async(s, InferenceRequest(img(v), deadline_ms=dl), out))
        time.sleep(0.02)
    assert s.depth == 4
    gate.set()
    for t in threads:
        t.join(5)
    assert all(res.outcome == "ok" for _, res in out)
    assert [v for _, v in m.calls] == [0, 2, 4, 3, 1]
    assert sorted(res.dispatch_seq for _, res in out) == [0, 1, 2, 3, 4]


def test_daemon_style_submit_take_and_on_free():
    m = FakeModel()
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}], policy="fastest")
    freed: list[int] = []
    s.on_free = lambda: freed.append(1)
    first = InferenceRequest(img(0), deadline_ms=10_000)
    assert s.submit(first) == RUN
    late, early = InferenceRequest(img(1), deadline_ms=5000), InferenceRequest(img(2), deadline_ms=100)
    assert s.submit(late) == QUEUED and s.submit(early) == QUEUED
    assert s.take() is None  # the only slot is held
    s.run(first)
    s.release(first)
    assert freed == [1]  # requests wait: the loop is told, and picks the next itself
    nxt = s.take()
    assert nxt is early and nxt.slot == 0
    s.run(nxt)
    s.release(nxt)
    assert s.take() is late


def test_queue_full_and_time_in_queue_counts():
    gate = threading.Event()
    m = FakeModel(gate=gate)
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}], queue_size=2)
    out: list = []
    threads = [serve_async(s, InferenceRequest(img(), deadline_ms=10_000), out)]
    time.sleep(0.05)
    threads += [serve_async(s, InferenceRequest(img(), deadline_ms=10_000), out) for _ in range(2)]
    time.sleep(0.05)
    with pytest.raises(QueueFull, match=r"queue full \(2 waiting\)"):
        s.submit(InferenceRequest(img(), deadline_ms=10_000))
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(5)
    assert sorted(res.queue_ms >= 100 for _, res in out) == [False, True, True]


def test_reject_on_arrival_and_at_dequeue():
    gate = threading.Event()
    m = FakeModel(gate=gate)
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}], miss="reject")
    # Nothing can make 0.5 ms when the fastest takes 1 ms: answered at once, never queued.
    r = InferenceRequest(img(), deadline_ms=0.5)
    assert s.submit(r) == DONE and r.result.outcome == "rejected"
    assert "deadline cannot be met" in r.result.message and r.result.dispatch_seq == -1
    # Admitted with 60 ms, but it waits behind a busy slot until only ~0 ms remain.
    out: list = []
    threads = [serve_async(s, InferenceRequest(img(), deadline_ms=10_000), out)]
    time.sleep(0.05)
    late = InferenceRequest(img(), deadline_ms=60)
    threads.append(serve_async(s, late, out))
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(5)
    res = dict((id(q), r) for q, r in out)[id(late)]
    assert res.outcome == "rejected" and res.queue_ms >= 60 and not res.deadline_met
    assert s.busy == 0


def test_best_effort_runs_the_fastest_and_flags_the_miss():
    m = FakeModel(ms=5)
    s = make([{ROWS[0].variant: m, ROWS[1].variant: FakeModel()}])
    res = serve(s, InferenceRequest(img(), deadline_ms=0.5))
    assert res.outcome == "ok" and res.variant == ROWS[0].variant and not res.deadline_met


def test_close_drains_the_queue_and_refuses_new_work():
    m = FakeModel(ms=20)
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}], policy="fastest")
    out: list = []
    threads = [serve_async(s, InferenceRequest(img(), deadline_ms=10_000), out) for _ in range(5)]
    time.sleep(0.03)
    s.close(drain=True, timeout=10)
    for t in threads:
        t.join(5)
    assert len(out) == 5 and all(res.outcome == "ok" for _, res in out)
    with pytest.raises(ShuttingDown):
        s.submit(InferenceRequest(img(), deadline_ms=10_000))


def test_wait_idle_waits_for_the_last_slot_and_counts_its_waiters():
    gate = threading.Event()
    m = FakeModel(gate=gate)
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}], policy="fastest")
    out: list = []
    t = serve_async(s, InferenceRequest(img(), deadline_ms=10_000), out)
    end = time.monotonic() + 10
    while s.busy == 0 and time.monotonic() < end:
        time.sleep(0.005)
    assert s.wait_idle(timeout=0.2) is False and s._idle_waiters == 0  # busy: times out, and stops counting itself
    woke: list = []
    w = threading.Thread(target=lambda: woke.append(s.wait_idle(timeout=30)))
    w.start()
    while s._idle_waiters == 0 and time.monotonic() < end:
        time.sleep(0.005)
    assert s._idle_waiters == 1 and not woke
    gate.set()  # the run ends and its release notifies the waiter
    t.join(5)
    w.join(5)
    assert woke == [True] and s._idle_waiters == 0 and out[0][1].outcome == "ok"


def test_close_without_drain_answers_the_waiting_at_once():
    gate = threading.Event()
    m = FakeModel(gate=gate)
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}], policy="fastest")
    out: list = []
    threads = [serve_async(s, InferenceRequest(img(), deadline_ms=10_000), out) for _ in range(3)]
    time.sleep(0.05)
    assert s.close(drain=False) == 2
    gate.set()
    for t in threads:
        t.join(5)
    assert sorted(res.outcome for _, res in out) == ["error", "error", "ok"]


def test_swap_serves_new_requests_with_the_new_state():
    a, b = FakeModel(), FakeModel()
    s = make([{ROWS[0].variant: a, ROWS[1].variant: a}], policy="fastest")
    serve(s, InferenceRequest(img(), deadline_ms=1000))
    new_rows = [row("other", 1.0, 0.7)]
    s.swap(ServingState(Selector(new_rows, policy="fastest", slowdown=NoSlowdown()), ({new_rows[0].variant: b},),
                        generation=1))
    res = serve(s, InferenceRequest(img(), deadline_ms=1000))
    assert res.variant == "other@litert-xnnpack-t1" and len(b.calls) == 1


def test_each_slot_uses_its_own_copies():
    copies = [FakeModel(ms=10) for _ in range(2)]
    s = make([{ROWS[0].variant: c, ROWS[1].variant: c} for c in copies], policy="fastest")
    assert s.workers == 2
    out: list = []
    threads = [serve_async(s, InferenceRequest(img(), deadline_ms=10_000), out) for _ in range(8)]
    for t in threads:
        t.join(5)
    assert len(out) == 8
    assert copies[0].calls and copies[1].calls, "both slots took work"
    assert len(copies[0].calls) + len(copies[1].calls) == 8
    assert s.busy == 0


def test_a_failing_model_answers_with_an_error_and_the_slot_is_given_back():
    bad, good = FakeModel(fail=True), FakeModel()
    s = make([{ROWS[0].variant: good, ROWS[1].variant: bad}])
    res = serve(s, InferenceRequest(img(), deadline_ms=1000))
    assert res.outcome == "error" and "boom" in res.message
    assert serve(s, InferenceRequest(img(), deadline_ms=5)).outcome == "ok"


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


@pytest.mark.parametrize("dtype,scale,zp", [("int8", 0.5, -3), ("uint8", 1.7, 10), ("int8", 0.01, 0), ("float32", None, None)])
def test_input_preparer_matches_prepare_input(dtype, scale, zp):
    spec = TensorSpec("x", (-1, 16, 16, 1), dtype, scale, zp)
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    got = InputPreparer(spec)(x)
    want = prepare_input(x, spec)
    assert got.dtype == want.dtype and np.array_equal(got, want)


@pytest.mark.parametrize("dtype,scale,zp", [("int8", 0.5, -3), ("uint8", 0.0039, 0), ("int8", 0.1, 127),
                                             ("float32", None, None), ("int16", 0.5, 1)])
def test_output_reader_matches_dequantize_output_on_every_code(dtype, scale, zp):
    spec = TensorSpec("y", (-1, 256), dtype, scale, zp)
    info = np.iinfo(dtype) if dtype != "float32" else None
    y = (np.arange(256) + (info.min if info is not None and info.min < 0 else 0)).astype(dtype).reshape(1, 256)
    read = OutputReader(spec)
    assert (read.lut is not None) == (dtype in ("int8", "uint8"))
    got, want = read(y), dequantize_output(y, spec)
    assert got.dtype == want.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(read(y[:, ::-1]), dequantize_output(y[:, ::-1], spec))  # a strided view too
    if dtype == "int8":  # an output of another dtype than the spec's takes the arithmetic, not the table
        assert np.array_equal(read(y.astype(np.int16)), dequantize_output(y.astype(np.int16), spec))


@pytest.mark.parametrize("dtype,scale,zp", [("int8", 2.0, -3), ("float32", None, None), ("uint8", None, None)])
@pytest.mark.parametrize("hwc", [(20, 20, 1), (36, 40, 3)])
def test_input_preparer_resizes_each_request_as_prepare_input_does(dtype, scale, zp, hwc):
    """A variant at another size: each request resized into the preparer's buffer, the tensor the same as
    prepare_input's, and a tensor already handed out not changed by the next request."""
    h, w, c = hwc
    spec = TensorSpec("x", (-1, h, w, c), dtype, scale, zp)
    rng = np.random.default_rng(c)
    prep = InputPreparer(spec)
    images = [rng.integers(0, 256, (1, 28, 28, c), dtype=np.uint8) for _ in range(3)]
    got = [prep(x) for x in images]
    for x, g in zip(images, got):
        want = prepare_input(x, spec)
        assert g.shape == (1, h, w, c) and g.dtype == want.dtype and np.array_equal(g, want)
    assert not np.array_equal(got[0], got[1])
    batch = np.concatenate(images)  # more than one image: not the one-request path, the same arithmetic
    assert np.array_equal(prep(batch), prepare_input(batch, spec))


@pytest.mark.parametrize("policy, waiting_ms, want", [
    ("adaptive", 30.0, "fast"),  # the slow variant (50 ms) would leave the waiter no time: fast for the head
    ("adaptive", 0.5, "slow"),  # a waiter nothing can save does not hold the head back
    ("adaptive", 5000.0, "slow"),  # a waiter with room to spare does not either
    ("mean-table", 30.0, "slow"),  # the paper's policy looks at the head alone
    ("quantile-table", 30.0, "slow"),
])
def test_adaptive_leaves_the_waiting_requests_time(policy, waiting_ms, want):
    m = FakeModel()
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}], policy=policy)
    head = InferenceRequest(img(0), deadline_ms=1000)
    assert s.submit(head) == RUN
    assert s.submit(InferenceRequest(img(1), deadline_ms=waiting_ms)) == QUEUED
    assert s.run(head).variant == {"fast": ROWS[0].variant, "slow": ROWS[1].variant}[want]
    s.release(head)


def test_a_request_that_finds_its_slot_idle_runs_at_rest():
    """Idle for REST_GAP_MS or more since the slot's last inference: at rest; right after one: not."""
    from edge.tables.table import REST_GAP_MS

    m = FakeModel()
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}])
    assert serve(s, InferenceRequest(img(), deadline_ms=1000)).at_rest  # nothing ran yet
    assert not serve(s, InferenceRequest(img(), deadline_ms=1000)).at_rest  # back to back
    time.sleep(REST_GAP_MS / 1000 * 1.5)
    assert serve(s, InferenceRequest(img(), deadline_ms=1000)).at_rest


def test_a_core_kept_awake_meanwhile_is_not_at_rest():
    """The transport busy-polled the core until just now (kept_awake): the gap since the last inference was
    spent awake, so the run is not predicted as one at rest; a later kept_awake never moves the time back."""
    from edge.tables.table import REST_GAP_MS

    m = FakeModel()
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}])
    serve(s, InferenceRequest(img(), deadline_ms=1000))
    time.sleep(REST_GAP_MS / 1000 * 1.5)
    s.kept_awake(time.perf_counter())
    s.kept_awake(0.0)
    assert not serve(s, InferenceRequest(img(), deadline_ms=1000)).at_rest


@pytest.mark.parametrize("policy, leaves", [("adaptive", "tail"), ("mean-table", "mean"), ("quantile-table", "mean")])
def test_adaptive_leaves_room_for_the_tail_of_its_own_work(policy, leaves):
    """The runtime's own work around an invoke: its EWMA for the baselines, its quantile (the selector's, p95)
    over the recent runs for adaptive, whose tightest deadlines that tail decides."""
    from edge.runtime.scheduler import OWN_N

    m = FakeModel()
    s = make([{ROWS[0].variant: m, ROWS[1].variant: m}], policy=policy)
    for k in range(OWN_N):
        s._note_own(5.0 if k % 16 == 0 else 1.0, "p95")  # one run in 16 takes five times the others
    assert s.own_q_ms == pytest.approx(5.0)
    assert 1.0 < s.own_ms < 2.0
    now = time.perf_counter()
    req = InferenceRequest(img(), deadline_ms=100.0, arrival=now)
    sel = s.state.selector
    room = 100.0 - (5.0 if leaves == "tail" else s.own_ms)
    assert s._budget_ms(req, sel, now) == pytest.approx(room, abs=1e-6)
    s._note_own(-1.0, "p95")  # a clock step backwards is no sample
    s._note_own(1e9, "p95")
    assert len(s._own) == OWN_N and s.own_q_ms == pytest.approx(5.0)


def _ran_slow(s: Scheduler, deadline_ms: float = 1000.0) -> InferenceRequest:
    """A request served by the slow variant, still holding its slot (as classify and the daemon hold it)."""
    req = InferenceRequest(img(), deadline_ms=deadline_ms)
    assert s.acquire(req) == RUN
    assert s.run(req).variant == ROWS[1].variant
    return req


@pytest.mark.parametrize("policy", ["adaptive", "adaptive-greedy"])
def test_after_a_longer_variant_the_fastest_is_rewarmed_once_on_the_same_image(policy):
    fast, slow = FakeModel(), FakeModel()
    s = make([{ROWS[0].variant: fast, ROWS[1].variant: slow}], policy=policy)
    req = _ran_slow(s)
    ms = s.rewarm(req)
    assert ms > 0 and len(fast.calls) == 1 and fast.calls[0][1] == 0.0  # the request's own image
    assert s._last_variant[0] == 0  # the next run of the fastest is not a switch
    assert s.rewarm(req) == 0.0 and len(fast.calls) == 1  # once: it is warm now
    s.release(req)
    # After the fastest itself, nothing to re-warm.
    fast_req = InferenceRequest(img(), deadline_ms=1.0)
    assert serve(s, fast_req).variant == ROWS[0].variant
    assert s.rewarm(fast_req) == 0.0 and len(fast.calls) == 2


def test_no_rewarm_for_the_ablation_and_the_baselines_nor_when_others_wait_or_arrive_or_time_is_short():
    for policy in ("adaptive-cold", "quantile-table", "mean-table"):
        fast, slow = FakeModel(), FakeModel()
        s = make([{ROWS[0].variant: fast, ROWS[1].variant: slow}], policy=policy)
        req = _ran_slow(s)
        assert s.rewarm(req) == 0.0 and fast.calls == [], policy
        s.release(req)
    fast, slow = FakeModel(), FakeModel()
    s = make([{ROWS[0].variant: fast, ROWS[1].variant: slow}])
    req = _ran_slow(s)
    waiting = InferenceRequest(img(), deadline_ms=1000)
    assert s.submit(waiting) == QUEUED  # the slot is held: it waits, and would pay for a re-warm
    assert s.rewarm(req) == 0.0 and fast.calls == []
    s.release(req)
    assert s.take() is waiting
    s.run(waiting)
    # It arrived while the slot was busy: an open-loop load, whose next arrivals would wait for a re-warm.
    assert s.load.rate > 0 and s.rewarm(waiting, answered=True) == 0.0 and fast.calls == []
    s.release(waiting)
    fast, slow = FakeModel(), FakeModel()
    s = make([{ROWS[0].variant: fast, ROWS[1].variant: slow}])
    req = _ran_slow(s)
    # No room left in the request's deadline (in process the caller waits for it) ...
    req.arrival -= 0.9999  # its deadline all but spent
    assert s.rewarm(req) == 0.0 and fast.calls == []
    # ... unless its answer is out already (the daemon): then only the others' waiting and arriving counts.
    assert s.rewarm(req, answered=True) > 0 and len(fast.calls) == 1
    s.release(req)


def test_a_request_sent_on_the_answer_during_a_rewarm_is_no_open_loop_load():
    """The daemon re-warms after the answer is written, so a closed-loop client's next request may arrive during the
    re-warm: that is no arrival during an inference, and the load term must not price it (it would pick shorter
    variants for a client that sends one request at a time); one that arrived during the inference still counts."""
    fast, slow = FakeModel(ms=5.0), FakeModel()
    s = make([{ROWS[0].variant: fast, ROWS[1].variant: slow}])
    req = _ran_slow(s)
    before = time.perf_counter()
    assert s.rewarm(req, answered=True) >= 4.0
    s.release(req)
    during = InferenceRequest(img(), deadline_ms=1000, arrival=before + 0.002)
    assert s.submit(during) == RUN and s.load.busy_arrivals == 0
    s.run(during)
    s.release(during)
    late = InferenceRequest(img(), deadline_ms=1000, arrival=s._infer_end[0] - 0.001)  # before that inference ended
    assert s.submit(late) == RUN and s.load.busy_arrivals == 1
