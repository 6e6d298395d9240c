"""The oracle of a policy comparison: its in-process pass, its choice per request, and the best static CNN."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.evaluate import oracle
from benchmarks.evaluate.command import load_selected
from benchmarks.evaluate.contention import ContentionSchedule, ContentionSpec
from benchmarks.evaluate.loadgen import RequestRecord, load_eval_set
from benchmarks.evaluate.oracle import OraclePass
from benchmarks.evaluate.workload import make_workload
from tests.benchmarks._eval_fixtures import make_eval_bundle


@pytest.fixture(scope="module")
def evb(tmp_path_factory):
    return make_eval_bundle(tmp_path_factory.mktemp("oracle"))


def _rows(evb):
    table, _ = load_selected(evb.table)
    return table.rows


def test_best_static_is_the_most_accurate_variant_that_rarely_misses(evb):
    rows = _rows(evb)
    n = 100
    op = OraclePass([r.variant for r in rows], np.tile([1.0, 2.0, 3.0], (n, 1)), np.zeros((n, 3), np.int64), [], 0)
    wl = make_workload(10, n, "fixed:2.6", seed=0)
    miss = oracle.static_miss_rates(op, wl, overhead_ms=0.5)
    assert list(miss) == [0.0, 0.0, 1.0]
    assert oracle.best_static(rows, miss) == 1
    assert oracle.best_static(rows, np.asarray([0.5, 0.5, 0.5])) == 0  # nothing qualifies: the fastest


def test_oracle_pass_and_choice(evb):
    rows = _rows(evb)
    images, labels, b = load_eval_set(str(evb.bundle))
    wl = make_workload(len(images), 12, "uniform:0.01:2", seed=0)
    sched = ContentionSchedule(ContentionSpec.parse("half"), wl.count, max_s=30)
    op = oracle.oracle_pass(b, rows, images, wl, "desktop-cpu", sched)
    assert op.latency_ms.shape == (12, 3) and np.all(op.latency_ms > 0)
    assert len(op.intervals) == 1 and op.intervals[0][1] > op.intervals[0][0]  # the hog ran, then stopped
    assert sched.active is None
    # Predictions match running each variant alone.
    from device_profiles import load_profile
    from edge.artifacts.tensors import dequantize_output, prepare_input
    from edge.backends import get_backend

    setting = load_profile("desktop-cpu").settings[1]
    for j, r in enumerate(rows):
        m = get_backend("onnxruntime").load(b.artifact_path(r.artifact_id), setting)
        x = prepare_input(images[wl.image_indices], m.input_spec)
        np.testing.assert_array_equal(np.argmax(dequantize_output(m.predict(x), m.output_spec), 1), op.preds[:, j])

    # Synthetic latencies make the choice checkable: variant j takes j+1 ms, overhead 0.5 ms.
    op.latency_ms[:] = np.arange(1, 4)[None, :]
    wl2 = make_workload(len(images), 12, "fixed:1", seed=0)
    object.__setattr__(wl2, "deadlines_ms", np.asarray([1.0, 1.6, 2.5, 3.6, 9.0, 0.1] * 2))
    recs, wall, how = oracle.oracle_records(op, rows, wl2, labels, overhead_ms=0.5)
    assert how.startswith("request by request (closed loop")
    picks = [rows.index(next(r for r in rows if r.variant == rec.variant)) for rec in recs[:6]]
    assert picks == [0, 0, 1, 2, 2, 0]
    assert [rec.deadline_met for rec in recs[:6]] == [False, True, True, True, True, False]
    assert recs[0].e2e_ms == pytest.approx(1.5) and recs[3].e2e_ms == pytest.approx(3.5)
    for rec in recs:
        j = [r.variant for r in rows].index(rec.variant)
        assert rec.correct == (op.preds[rec.index, j] == labels[rec.image_index])
    assert wall == pytest.approx(sum(r.e2e_ms for r in recs) / 1000)


def test_oracle_waits_for_itself_under_poisson(evb):
    rows = _rows(evb)
    n = 3
    op = OraclePass([r.variant for r in rows], np.tile([1.0, 2.0, 30.0], (n, 1)), np.zeros((n, 3), np.int64), [], 0)
    wl = make_workload(10, n, "fixed:30.5", "poisson:1", seed=0)
    object.__setattr__(wl, "arrivals_s", np.asarray([0.0, 0.001, 0.002]))
    recs, _, how = oracle.oracle_records(op, rows, wl, np.zeros(10, np.int64), overhead_ms=0.0, choice="greedy")
    assert how == "request by request (open loop: no bound)"
    assert recs[0].variant == rows[2].variant and recs[0].deadline_met
    # The second request waits 29 ms for the first: only the fastest fits in the 1.5 ms left.
    assert recs[1].queue_ms == pytest.approx(29.0) and recs[1].variant == rows[0].variant and recs[1].deadline_met


def _poisson(n, deadlines_ms, arrivals_s):
    wl = make_workload(10, n, "fixed:1", "poisson:1", seed=0)
    object.__setattr__(wl, "deadlines_ms", np.asarray(deadlines_ms, dtype=np.float64))
    object.__setattr__(wl, "arrivals_s", np.asarray(arrivals_s, dtype=np.float64))
    return wl


def test_planned_oracle_does_not_block_the_queue(evb):
    """Request by request, the first request takes the 30 ms variant and the two behind it miss; planned, all
    three take the 2 ms one and meet their deadlines (3 x 0.68 against 0.82 of table accuracy)."""
    rows = _rows(evb)
    op = OraclePass([r.variant for r in rows], np.tile([1.0, 2.0, 30.0], (3, 1)), np.zeros((3, 3), np.int64), [], 0)
    wl = _poisson(3, [30.5, 5.0, 5.0], [0.0, 0.001, 0.002])
    greedy, _, _ = oracle.oracle_records(op, rows, wl, np.zeros(10, np.int64), overhead_ms=0.0, choice="greedy")
    assert [r.variant for r in greedy] == [rows[2].variant, rows[0].variant, rows[0].variant]
    assert [r.server_deadline_met for r in greedy] == [True, False, False]
    planned, wall, how = oracle.oracle_records(op, rows, wl, np.zeros(10, np.int64), overhead_ms=0.0)
    assert how == "the whole queue planned (exact)"
    assert [r.variant for r in planned] == [rows[1].variant] * 3
    assert [r.server_deadline_met for r in planned] == [True, True, True]
    assert [r.queue_ms for r in planned] == pytest.approx([0.0, 1.0, 2.0])
    assert wall == pytest.approx(0.006)


def _value(picks, lat, arr_ms, dl, floor, acc, busy=0.0):
    """Forward simulation of one FIFO server: the sum of accuracy over the requests on time; each request holds
    the server for max(floor, busy) besides its inference."""
    free, total = 0.0, 0.0
    for i, j in enumerate(picks):
        start = max(free, arr_ms[i])
        fin = start + floor[i] + lat[i, j]
        total += acc[j] if fin - arr_ms[i] <= dl[i] else 0.0
        free = start + max(floor[i], busy) + lat[i, j]
    return total


def test_planned_choice_is_the_best_sequence():
    """On small random queues the plan's value equals the best of every sequence of variants (brute force), its
    picks reach that value, and it is never below choosing request by request."""
    import itertools

    rng = np.random.default_rng(7)
    for _ in range(40):
        n, k = 6, 3
        lat = np.sort(rng.uniform(0.1, 3.0, (n, k)), axis=1)
        acc = np.sort(rng.uniform(0.5, 0.95, k))
        arr = np.cumsum(rng.exponential(1.0, n)) / 1000.0
        dl = rng.uniform(0.5, 4.0, n)
        floor = rng.uniform(0.0, 0.3, n)
        busy = float(rng.choice([0.0, 0.2, 0.8]))  # the server's own work per request, beyond the floor or not
        plan = oracle.planned_choice(lat, arr, dl, floor, acc, busy_ms=busy)
        best = max(_value(p, lat, arr * 1000, dl, floor, acc, busy) for p in itertools.product(range(k), repeat=n))
        assert plan.value == pytest.approx(best) and plan.thinned == 0
        assert _value(plan.picks, lat, arr * 1000, dl, floor, acc, busy) == pytest.approx(best)
        if busy:
            continue
        greedy, free = [], 0.0
        for i in range(n):
            wait = max(0.0, free - arr[i] * 1000)
            ok = [j for j in range(k) if wait + floor[i] + lat[i, j] <= dl[i]]
            j = max(ok) if ok else 0
            greedy.append(j)
            free = arr[i] * 1000 + wait + floor[i] + lat[i, j]
        assert plan.value >= _value(greedy, lat, arr * 1000, dl, floor, acc) - 1e-12


def test_the_servers_own_work_holds_up_the_requests_behind(evb):
    """Two requests 1 ms apart, a 0.5 ms floor: with the server busy 0.5 ms a request (the floor) both meet a
    1.5 ms deadline on the fastest variant; busy 2 ms a request (what the daemon's core measured), the second
    waits 1.5 ms and misses, in the plan, request by request and for the static variant alike."""
    rows = _rows(evb)
    op = OraclePass([r.variant for r in rows], np.tile([0.5, 2.0, 30.0], (2, 1)), np.zeros((2, 3), np.int64), [], 0)
    wl = _poisson(2, [1.5, 1.5], [0.0, 0.001])
    labels = np.zeros(10, np.int64)
    for choice in ("planned", "greedy"):
        fast, _, _ = oracle.oracle_records(op, rows, wl, labels, overhead_ms=0.5, choice=choice)
        slow, _, _ = oracle.oracle_records(op, rows, wl, labels, overhead_ms=0.5, choice=choice, busy_ms=2.0)
        assert [r.server_deadline_met for r in fast] == [True, True], choice
        assert [r.server_deadline_met for r in slow] == [True, False], choice
        assert slow[1].queue_ms == pytest.approx(1.5)
    assert oracle.static_miss_rates(op, wl, 0.5)[0] == 0.0
    assert oracle.static_miss_rates(op, wl, 0.5, busy_ms=2.0)[0] == 0.5
    assert oracle.static_miss_rates(op, wl, 0.5, busy_ms=0.3)[0] == 0.0  # below the floor: the floor holds it


def test_requests_reach_the_oracles_server_when_they_reached_the_daemon(evb):
    """The second request reached the daemon 0.8 ms after its scheduled arrival, the third 0.6 ms after: bunched by
    a late client, the third waits behind the second on the server's clock, and their end-to-end latencies hold
    the lateness."""
    rows = _rows(evb)
    op = OraclePass([r.variant for r in rows], np.tile([0.5, 2.0, 30.0], (3, 1)), np.zeros((3, 3), np.int64), [], 0)
    wl = _poisson(3, [1.5, 1.5, 1.5], [0.0, 0.001, 0.0012])
    labels = np.zeros(10, np.int64)
    for choice in ("planned", "greedy"):
        recs, wall, _ = oracle.oracle_records(op, rows, wl, labels, overhead_ms=0.0, choice=choice,
                                              received_s=np.asarray([0.0, 0.0018, 0.0018]))
        assert [r.variant for r in recs] == [rows[0].variant] * 3, choice
        assert [r.queue_ms for r in recs] == pytest.approx([0.0, 0.0, 0.5]), choice
        assert [r.total_ms for r in recs] == pytest.approx([0.5, 0.5, 1.0]), choice  # the server's clock: all on time
        assert [r.e2e_ms for r in recs] == pytest.approx([0.5, 0.8 + 0.5, 0.6 + 1.0]), choice
        assert [r.sent_s for r in recs] == pytest.approx([0.0, 0.0018, 0.0018]) and wall == pytest.approx(0.0028)


def test_planned_choice_thins_a_large_state_set():
    """Past ``max_frontier`` states the set is thinned, and the plan says so (a lower bound on the optimum)."""
    rng = np.random.default_rng(3)
    n, k = 40, 4
    lat = np.sort(rng.uniform(0.5, 3.0, (n, k)), axis=1)
    plan = oracle.planned_choice(lat, np.arange(n) * 0.0005, np.full(n, 50.0), np.zeros(n), np.linspace(0.6, 0.9, k),
                                 max_frontier=8)
    assert plan.thinned > 0 and plan.largest_frontier <= 8
    assert plan.picks.shape == (n,) and set(plan.picks.tolist()) <= set(range(k))


def test_serving_overhead():
    def rec(e2e, inf, status=200):
        return RequestRecord(0, 0, 0, 5, 0, 0, e2e, status, inference_ms=inf)

    assert oracle.serving_overhead_ms([rec(3, 1), rec(4, 1), rec(10, 1), rec(9, None, 408)]) == pytest.approx(3.0)
    queued = rec(10, 1)
    queued.queue_ms = 6.0
    assert oracle.serving_overhead_ms([queued]) == pytest.approx(3.0)
    assert oracle.serving_overhead_ms([rec(9, None, 408)]) is None


def test_oracle_daemon_clock_view(evb):
    rows = _rows(evb)
    op = OraclePass([r.variant for r in rows], np.tile([1.0, 2.0, 3.0], (2, 1)), np.zeros((2, 3), np.int64), [], 0)
    wl = make_workload(10, 2, "fixed:3.2", seed=0)
    recs, _, _ = oracle.oracle_records(op, rows, wl, np.zeros(10, np.int64), overhead_ms=1.0,
                                       daemon_overhead_ms=0.1)
    # Chosen on the daemon's clock, the primary one (3 + 0.1 <= 3.2), as the daemon's policies choose;
    # end to end the same choice takes 3 + 1 = 4 ms and misses.
    assert recs[0].variant == rows[2].variant and recs[0].server_deadline_met
    assert recs[0].total_ms == pytest.approx(3.1)
    assert recs[0].e2e_ms == pytest.approx(4.0) and not recs[0].deadline_met


def test_floors_behind_queue_take_each_requests_wait_out_by_the_servers_own_model():
    """Three answered requests and one not answered: the second reached the server 0.1 ms after the first, which
    held it 0.35 ms (its 0.2 ms floor is under the 0.3 ms hold, plus 0.05 ms of inference), so it waited 0.25 ms and
    its floor is its 0.6 ms total less that and its inference; the one not answered holds nothing; the last found
    the server idle."""
    received = np.asarray([0.0, 0.0001, 0.0002, 0.001])
    total = np.asarray([0.25, 0.6, np.nan, 0.2])
    inference = np.asarray([0.05, 0.05, np.nan, 0.1])
    floors, waits = oracle.floors_behind_queue(received, total, inference, busy_ms=0.3)
    assert waits.tolist() == pytest.approx([0.0, 0.25, 0.0, 0.0])
    assert floors[[0, 1, 3]].tolist() == pytest.approx([0.2, 0.3, 0.1]) and np.isnan(floors[2])
    # A wait the model puts above the measured total leaves a floor of zero, never a negative one.
    floors, _ = oracle.floors_behind_queue(np.zeros(2), np.asarray([0.5, 0.1]), np.asarray([0.1, 0.05]), 0.0)
    assert floors.tolist() == pytest.approx([0.4, 0.0])


def test_the_oracles_server_on_floors_behind_queue_gives_back_the_runs_own_times(evb):
    """Served with one variant, on the floors taken from a run of that variant under Poisson arrivals (its waits
    taken out by the same model), the oracle's simulated server gives back the run's own totals, waits and misses:
    its server is the run's server, not the idle probe's."""
    rows = _rows(evb)[:1]
    rng = np.random.default_rng(3)
    n = 200
    inference = rng.uniform(0.01, 0.05, n)
    op = OraclePass([rows[0].variant], inference[:, None], np.zeros((n, 1), np.int64), [], 0)
    arrivals = np.cumsum(rng.exponential(0.0002, n))
    wl = _poisson(n, rng.uniform(0.1, 0.6, n).tolist(), arrivals.tolist())
    # The "run": a FIFO server whose floors vary (0.05-0.3 ms) and that holds each request at least 0.15 ms.
    true_floor = rng.uniform(0.05, 0.3, n)
    total, free = np.empty(n), 0.0
    for i in range(n):
        wait = max(0.0, free - arrivals[i]) * 1000.0
        total[i] = wait + true_floor[i] + inference[i]
        free = arrivals[i] + (wait + max(true_floor[i], 0.15) + inference[i]) / 1000.0
    floors, waits = oracle.floors_behind_queue(arrivals, total, inference, busy_ms=0.15)
    assert floors.tolist() == pytest.approx(true_floor.tolist()) and waits.max() > 0.1  # some did queue
    recs, _, _ = oracle.oracle_records(op, rows, wl, np.zeros(10, np.int64), overhead_ms=floors, busy_ms=0.15)
    assert [r.total_ms for r in recs] == pytest.approx(total.tolist())
    met = total <= np.asarray(wl.deadlines_ms)
    assert oracle.static_miss_rates(op, wl, floors, busy_ms=0.15)[0] == pytest.approx(1.0 - met.mean())
