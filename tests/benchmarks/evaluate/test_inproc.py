"""Tests for benchmarks/evaluate/inproc.py: the workload through AdaptiveClassifier in this process, and
``edgekit evaluate --transport inproc`` end to end on the tiny bundle."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks.evaluate import inproc
from benchmarks.evaluate.inproc import (
    InProcess,
    TurnPolicy,
    probe_inproc,
    run_inproc,
    run_inproc_turns,
    serve_workload,
)
from benchmarks.evaluate.loadgen import load_eval_set, summarize
from benchmarks.evaluate.placement import place
from benchmarks.evaluate.workload import make_workload
from tests.benchmarks._eval_fixtures import make_eval_bundle
from tests.benchmarks.evaluate.test_command import REPO


@pytest.fixture(scope="module")
def evb(tmp_path_factory):
    return make_eval_bundle(tmp_path_factory.mktemp("inproc"))


def app_of(evb) -> InProcess:
    p = place()
    return InProcess(str(evb.bundle), str(evb.table), None, "best-effort", p.server, p.client)


def test_closed_loop_serves_every_request_in_order(evb, tmp_path):
    images, labels, _ = load_eval_set(str(evb.bundle))
    wl = make_workload(images.shape[0], 25, "uniform:1:6", "closed", 3)
    seen: list[int] = []
    run = run_inproc(app_of(evb), "adaptive", None, images, labels, wl, None, None, tmp_path / "app.log", 60.0,
                     progress=lambda done, total: seen.append(done))
    assert not run.truncated and [r.index for r in run.records] == list(range(25)) and seen[-1] == 25
    for r, img, d in zip(run.records, wl.image_indices, wl.deadlines_ms):
        assert r.status == 200 and r.image_index == int(img) and r.deadline_ms == pytest.approx(float(d))
        assert r.variant in evb.variants and r.inference_ms is not None and r.inference_ms > 0
        # One clock in process: the runtime's total and the caller's latency start at the same arrival.
        assert r.e2e_ms >= r.total_ms - 1e-6 and r.server_deadline_met == (r.total_ms <= r.deadline_ms)
        assert r.correct == (r.pred == r.label)
    assert "in process: adaptive" in (tmp_path / "app.log").read_text()
    s = summarize(run.records, run.wall_s)
    assert s["answered"] == 25 and s["on_time_accuracy"] <= s["accuracy"]


def test_open_loop_counts_from_the_scheduled_arrival(evb, tmp_path):
    """Poisson arrivals faster than the slowest variant: each request's latency starts at its scheduled arrival,
    so the time it waited behind the others counts against it."""
    images, labels, _ = load_eval_set(str(evb.bundle))
    wl = make_workload(images.shape[0], 60, "fixed:50", "poisson:4000", 5)
    run = run_inproc(app_of(evb), "most-accurate", None, images, labels, wl, None, None, tmp_path / "a.log", 60.0)
    assert [r.index for r in run.records] == list(range(60))
    for r, at in zip(run.records, wl.arrivals_s):
        assert r.arrival_s == pytest.approx(float(at), abs=1e-9)
        assert r.sent_s >= r.arrival_s - 1e-3  # a caller picks it up at or after its arrival
        assert r.total_ms >= r.queue_ms + r.inference_ms - 1e-6
    assert max(r.queue_ms for r in run.records) > 0  # 4,000/s: somebody waited


def test_the_duration_bound_stops_issuing(evb, tmp_path):
    images, labels, _ = load_eval_set(str(evb.bundle))
    wl = make_workload(images.shape[0], 400, "fixed:50", "closed", 1)

    def slow(i: int) -> None:
        time.sleep(0.002)

    with InProcess(str(evb.bundle), str(evb.table), None, "best-effort", None).opened(
            "fastest", None, tmp_path / "b.log") as clf:
        run = serve_workload(clf, images, labels, wl, duration_s=0.1, pin=lambda: None, on_request=slow)
    assert run.truncated and 0 < len(run.records) < 400


def test_the_application_thread_pins_itself_to_the_serving_cores(evb, tmp_path):
    import os

    p = place()
    if p.server is None:
        pytest.skip("one core: nothing to pin apart")
    images, labels, _ = load_eval_set(str(evb.bundle))
    wl = make_workload(images.shape[0], 5, "fixed:50", "closed", 1)
    seen: list[set[int]] = []
    app = app_of(evb)
    with app.opened("fastest", None, tmp_path / "c.log") as clf:
        serve_workload(clf, images, labels, wl, duration_s=10, pin=app.pin,
                       on_request=lambda i: seen.append(os.sched_getaffinity(0)))
    assert seen and all(s == set(p.server) for s in seen)
    assert os.sched_getaffinity(0) != set(p.server) or p.client == p.server  # the test's own thread is not moved


def test_probe_measures_the_in_process_floor(evb, tmp_path):
    images, labels, _ = load_eval_set(str(evb.bundle))
    p = probe_inproc(app_of(evb), evb.variants[0], images, labels, tmp_path / "p.log", 40)
    assert p.floor_ms > 0 and p.inference_p50_ms > 0 and p.throughput_rps > 0 and len(p.samples_ms) == 40
    assert p.e2e_overhead_ms >= p.floor_ms - 1e-6
    # No HTTP in between: the floor is classify's own work, well under the daemon's tenth of a millisecond.
    assert p.floor_ms < 5.0


def test_a_bad_policy_fails_before_serving(evb, tmp_path):
    images, labels, _ = load_eval_set(str(evb.bundle))
    wl = make_workload(images.shape[0], 5, "fixed:50", "closed", 1)
    with pytest.raises(ValueError, match="static policy's variant 'nope' is not in the table"):
        run_inproc(app_of(evb), "static:nope", None, images, labels, wl, None, None, tmp_path / "d.log", 10.0)


def test_evaluate_inproc_end_to_end(evb, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit.cli", "evaluate", str(evb.bundle), "--table", str(evb.table),
         "--transport", "inproc", "--policies", "adaptive,adaptive-greedy,mean-table,best-static,oracle",
         "--count", "30", "--warmup", "3", "--arrival", "overload:1.2", "--contention", "half", "--seed", "2",
         "--out", str(out)],
        capture_output=True, text=True, timeout=400, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "starting the daemon" not in text and "4 policies in process, taking turns of 100 requests" in text
    for word in ("transport: in process", "miss (app clock)", "goodput/s", "serving floor"):
        assert word in text, word
    res = json.loads((out / "results.json").read_text())
    assert res["transport"] == "inproc" and res["options"]["transport"] == "inproc"
    assert list(res["policies"]) == ["adaptive", "adaptive-greedy", "mean-table", "best-static", "oracle"]
    assert res["overload"]["capacity_rps"] > 0 and res["workload"]["arrival"].startswith("poisson:")
    for name, pol in res["policies"].items():
        assert len(pol["records"]) == 30, name
        assert [r["image_index"] for r in pol["records"]] == res["workload"]["image_indices"]
    assert res["policies"]["adaptive"]["daemon_log"] == "app-adaptive.log"
    assert (out / "app-adaptive.log").is_file() and not list(out.glob("daemon-*.log"))
    assert "application's clock" in res["headline"]["note"]
    assert "(in process)" in (out / "report.md").read_text()


def test_policies_take_turns_each_on_its_own_clock(evb, tmp_path, monkeypatch):
    """Two policies, 25 requests, turns of 10: [0, 10) with each, then [10, 20) starting with the other, then the
    rest; each keeps every request in order, its own log, and a clock that counts only its own turns."""
    images, labels, _ = load_eval_set(str(evb.bundle))
    wl = make_workload(images.shape[0], 25, "uniform:1:6", "closed", 3)
    order: list[tuple[str, int]] = []
    call = inproc._call

    def spy(clf, images, labels, wl, i, arrival, t0):
        order.append((clf.policy.kind, i))
        return call(clf, images, labels, wl, i, arrival, t0)

    monkeypatch.setattr(inproc, "_call", spy)
    pols = [TurnPolicy("fastest", "fastest", None, tmp_path / "a.log"),
            TurnPolicy("most-accurate", "most-accurate", None, tmp_path / "b.log")]
    runs = run_inproc_turns(app_of(evb), pols, images, labels, wl, None, None, 60.0, block=10)
    want = ([("fastest", i) for i in range(10)] + [("most-accurate", i) for i in range(10)]
            + [("most-accurate", i) for i in range(10, 20)] + [("fastest", i) for i in range(10, 20)]
            + [("fastest", i) for i in range(20, 25)] + [("most-accurate", i) for i in range(20, 25)])
    assert order == want
    assert list(runs) == ["fastest", "most-accurate"]
    for name, run in runs.items():
        assert not run.truncated and [r.index for r in run.records] == list(range(25)), name
        assert all(r.status == 200 and r.policy == name for r in run.records)
        sent = [r.sent_s for r in run.records]
        assert sent == sorted(sent) and 0 <= sent[0] and sent[-1] < run.wall_s
    assert {r.variant for r in runs["fastest"].records} == {evb.variants[0]}
    assert "in process: fastest" in (tmp_path / "a.log").read_text()
    assert "in process: most-accurate" in (tmp_path / "b.log").read_text()


def test_open_loop_turns_carry_a_backlog_over_each_on_its_own_clock(evb, tmp_path, monkeypatch):
    """Open loop in turns: 25 requests arriving in a burst, turns of 10. Each policy takes each request at its
    scheduled arrival on its own clock: the backlog it had at a turn's end is still there when its next turn
    starts (latency keeps growing from the scheduled arrival), and the other policy's slow turns are not on it."""
    images, labels, _ = load_eval_set(str(evb.bundle))
    wl = make_workload(images.shape[0], 25, "fixed:50", "poisson:100000", 4)
    wl = dataclasses.replace(wl, arrivals_s=np.zeros(25))  # all at once
    call = inproc._call

    def slow_b(clf, images, labels, wl, i, arrival, t0):
        if clf.policy.kind == "most-accurate":
            time.sleep(0.01)  # policy B takes 10 ms a request: 100 ms a turn, none of it on A's clock
        return call(clf, images, labels, wl, i, arrival, t0)

    monkeypatch.setattr(inproc, "_call", slow_b)
    pols = [TurnPolicy("fastest", "fastest", None, tmp_path / "a.log"),
            TurnPolicy("most-accurate", "most-accurate", None, tmp_path / "b.log")]
    runs = run_inproc_turns(app_of(evb), pols, images, labels, wl, None, None, 60.0, block=10)
    a, b = runs["fastest"].records, runs["most-accurate"].records
    for recs in (a, b):
        assert [r.index for r in recs] == list(range(25)) and all(r.status == 200 for r in recs)
        for r, at in zip(recs, wl.arrivals_s):
            assert r.arrival_s == pytest.approx(float(at), abs=1e-9) and r.sent_s >= r.arrival_s - 1e-6
        e2e = [r.e2e_ms for r in recs]
        assert e2e == sorted(e2e)  # a burst: each waits for all before it, across the turns' breaks too
    assert b[-1].e2e_ms >= 250.0  # B's own 25 x 10 ms backlog
    assert a[-1].e2e_ms < 100.0 and runs["fastest"].wall_s < 0.1  # B's turns are not on A's clock


def test_evaluate_inproc_closed_loop_takes_turns_under_contention(evb, tmp_path):
    """``evaluate --transport inproc`` in closed loop: the policies take turns (``--interleave``), every one serves
    the whole workload, and the contention window covers the same requests for each of them."""
    from benchmarks.evaluate.command import EvaluateOptions, evaluate
    from benchmarks.evaluate.contention import ContentionSpec

    out = tmp_path / "turns"
    opts = EvaluateOptions(bundle=str(evb.bundle), table=str(evb.table), out=out,
                           policies=("adaptive", "mean-table", "best-static", "oracle"), count=40, warmup=3,
                           contention=ContentionSpec.parse("cpu:half"), transport="inproc", interleave=7,
                           plots=False, quiet=True)
    assert opts.takes_turns(make_workload(10, 5, "fixed:50", "closed", 0))
    ev = evaluate(opts)
    res = json.loads((out / "results.json").read_text())
    assert res["options"]["interleave"] == 7 and ev.complete
    assert list(res["policies"]) == ["adaptive", "mean-table", "best-static", "oracle"]
    for name in ("adaptive", "mean-table", "best-static"):
        pol = res["policies"][name]
        assert [r["index"] for r in pol["records"]] == list(range(40)), name
        assert len(pol["contention_s"]) == 1, name  # one window, shared by every policy's turns inside it
    with pytest.raises(ValueError, match="--interleave must be in"):
        EvaluateOptions(bundle="b", table="t", out=out, interleave=-1)
