"""Policy comparison: the oracle, the table, and `edgekit evaluate` end to end against the real daemon."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.evaluate import command as ev
from benchmarks.evaluate.loadgen import RequestRecord
from tests.benchmarks._eval_fixtures import make_eval_bundle

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def evb(tmp_path_factory):
    return make_eval_bundle(tmp_path_factory.mktemp("evaluate"))


def _rows(evb):
    table, _ = ev.load_selected(evb.table)
    return table.rows


def test_auto_deadline_starts_at_the_serving_floor(evb):
    rows = _rows(evb)
    lo, hi = (float(x) for x in ev.auto_deadline(rows, floor_ms=0.25).split(":")[1:])
    assert lo == pytest.approx(0.25 + rows[0].p95_ms, rel=1e-3)
    assert hi == pytest.approx(0.25 + 1.1 * rows[-1].p95_ms, rel=1e-3)


def test_achieved_slowdown_compares_inside_and_outside_the_window(evb):
    rows = _rows(evb)
    v = rows[0]

    def rec(i, inf):
        return RequestRecord(i, 0, 0, 5, 0, 0, 1.0, 200, variant=v.variant, inference_ms=inf)

    recs = [rec(i, v.p50_ms * (3.0 if 20 <= i < 40 else 1.0)) for i in range(60)]
    s = ev.achieved_slowdown(recs, rows, (20, 40))
    assert s.slowdown == pytest.approx(3.0) and s.outside_ratio == pytest.approx(1.0)
    assert ev.achieved_slowdown(recs, rows, (0, 0)).slowdown is None
    # A policy that moves to another variant under contention does not fake a slowdown.
    w = rows[1]
    mixed = [rec(i, v.p50_ms) for i in range(30)] + [
        RequestRecord(30 + i, 0, 0, 5, 0, 0, 1.0, 200, variant=w.variant, inference_ms=w.p50_ms * 5) for i in range(30)]
    assert ev.achieved_slowdown(mixed, rows, (30, 60)).slowdown is None  # no variant on both sides


def test_parse_policies():
    assert ev.parse_policies("adaptive, oracle") == ["adaptive", "oracle"]
    assert ev.parse_policies("static:a@b,oracle-free") == ["static:a@b", "oracle-free"]
    with pytest.raises(ValueError, match="unknown policy 'best'"):
        ev.parse_policies("adaptive,best")
    with pytest.raises(ValueError, match="twice"):
        ev.parse_policies("adaptive,adaptive")
    with pytest.raises(ValueError, match="empty"):
        ev.parse_policies(" , ")


def test_options_come_from_the_real_command_line_and_are_checked(tmp_path):
    from edgekit.cli import build_parser

    def opts(*extra):
        args = build_parser(only="evaluate").parse_args(["evaluate", "b", "--table", "t.json", "--out",
                                                         str(tmp_path / "o"), *extra])
        return ev.EvaluateOptions.from_args(args)

    o = opts("--policies", "adaptive,oracle", "--contention", "quota:full", "--quota", "0.3", "--no-plots")
    assert o.policies == ("adaptive", "oracle") and o.out == tmp_path / "o" and o.plots is False
    assert (o.contention.kind, o.contention.share, o.contention.quota) == ("quota", 1.0, 0.3)
    assert o.needs_oracle_pass and o.overload is None
    assert not opts("--policies", "adaptive").needs_oracle_pass
    assert opts("--arrival", "overload").overload == 1.2 and opts("--arrival", "overload:2").overload == 2.0
    d = opts()
    assert (d.policies, d.count, d.deadline, d.arrival, d.contention.active, d.warmup) == (
        ev.DEFAULT_POLICIES, ev.DEFAULT_COUNT, "auto", "closed", False, 20)
    for extra, words in ((("--count", "0"), "--count must be in [1, 100000], got 0"),
                         (("--duration", "0"), "--duration must be in (0, 3600] seconds per policy, got 0"),
                         (("--warmup", "1001"), "--warmup must be in [0, 1000], got 1001"),
                         (("--arrival", "overload:x"), "bad --arrival 'overload:x': use overload[:FACTOR]"),
                         (("--arrival", "overload:20"), "--arrival overload factor must be in [0.1, 10], got 20"),
                         (("--spin-us", "-1"), "--spin-us must be 0 (off) to 100000 microseconds, got -1"),
                         (("--transport", "inproc", "--spin-us", "50"), "in process there is no transport to poll")):
        with pytest.raises(ValueError) as e:
            opts(*extra)
        assert words in str(e.value), (extra, str(e.value))
    assert not (tmp_path / "o").exists()  # checked before anything is written


def test_evaluate_end_to_end(evb, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit.cli", "evaluate", str(evb.bundle), "--table", str(evb.table),
         "--policies", "adaptive,mean-table,quantile-table,most-accurate,best-static,fastest,oracle",
         "--count", "30", "--warmup", "3",
         "--deadline", "uniform:1:6", "--contention", "half", "--seed", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=400, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = proc.stdout
    for word in ("on-time accuracy (correct and on time, of all requests): adaptive ", "policy", "on-time acc",
                 "accuracy", "miss (daemon clock)", "p99 ms", "req/s", "variants used", "adaptive", "oracle",
                 "serving floor", "achieved slowdown", "placement"):
        assert word in text, word
    assert "goodput/s" not in text  # closed loop: goodput is throughput, not in the table
    res = json.loads((out / "results.json").read_text())
    assert list(res["policies"]) == ["adaptive", "mean-table", "quantile-table", "most-accurate", "best-static",
                                     "fastest", "oracle"]
    assert res["policies"]["best-static"]["served_as"] == "static:" + res["best_static"]["variant"]
    assert res["probe"]["fastest"]["floor_ms"] > 0
    assert res["placement"]["server_cpus"] != res["placement"]["client_cpus"] or res["placement"]["server_cpus"] is None
    assert res["contention"]["kind"] == "cpu"
    assert res["complete"] is True
    assert res["contention"]["window"] == [7, 22]
    wl = res["workload"]
    assert wl["count"] == 30 and wl["deadline"] == "uniform:1:6"
    for name, pol in res["policies"].items():
        recs = pol["records"]
        assert len(recs) == 30, name
        # Same images and deadlines for every policy.
        assert [r["image_index"] for r in recs] == wl["image_indices"]
        assert [round(r["deadline_ms"], 3) for r in recs] == [round(d, 3) for d in wl["deadlines_ms"]]
        s = pol["summary"]
        assert 0 <= s["accuracy"] <= 1 and 0 <= s["miss_rate"] <= 1 and s["p99_ms"] >= s["p50_ms"] > 0
        assert len(pol["contention_s"]) == 1, name
        assert s["on_time_accuracy"] <= s["accuracy"] and res["headline"]["policies"][name] == {
            "on_time_accuracy": s["on_time_accuracy"]}
    # Fixed policies use one variant each.
    v = [r["variant"] for r in res["variants"]]
    assert set(res["policies"]["fastest"]["summary"]["variants"]) == {v[0]}
    assert set(res["policies"]["most-accurate"]["summary"]["variants"]) == {v[-1]}
    o = res["oracle"]
    # Closed loop: the oracle is charged each request's own floor from adaptive's run and from the best static
    # CNN's in turn, and keeps the better.
    assert set(o["by_floors"]) == {"adaptive", "best-static"}
    assert o["overhead_source"].startswith(f"{o['floors_from']} run: each request's own measured floor (30 of 30")
    kept = res["policies"]["oracle"]["summary"]["on_time_accuracy"]
    assert o["by_floors"][o["floors_from"]]["on_time_accuracy"] == kept
    assert kept == max(v["on_time_accuracy"] for v in o["by_floors"].values())
    assert f"oracle's floors: {o['floors_from']}'s run (the better of: adaptive's" in text
    assert o["overhead_ms"] > 0
    assert np.asarray(o["latency_ms"]).shape == (30, 3)
    # Its server model checked: the best static CNN served alone on it, beside that CNN's own run.
    check = o["server_check"]
    assert check["label"] == res["best_static"]["label"]
    assert check["measured_miss"] == res["policies"]["best-static"]["summary"]["server_miss_rate"]
    assert 0 <= check["simulated_miss"] <= 1
    assert f"oracle's server: {check['label']} served alone by it misses" in text
    assert not (out / "results.partial.json").exists()
    assert "variants used" in (out / "table.txt").read_text()
    for f in ("report.md", "plane.png", "policies.png", "timeline.png", "daemon-adaptive.log"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    md = (out / "report.md").read_text()
    assert "| policy |" in md and "![Timeline](timeline.png)" in md and "Oracle" in md


def test_daemons_take_turns_one_per_policy(evb, tmp_path):
    """The daemon transport in closed loop: one daemon per policy, all up at once, taking turns of --interleave
    requests; every policy serves the whole workload from its own daemon, and the contention window covers the
    same requests for each. A CPU quota acts on one process, so with it the daemons run one after another."""
    from benchmarks.evaluate.command import EvaluateOptions, evaluate
    from benchmarks.evaluate.contention import ContentionSpec
    from benchmarks.evaluate.workload import make_workload

    out = tmp_path / "turns"
    opts = EvaluateOptions(bundle=str(evb.bundle), table=str(evb.table), out=out,
                           policies=("adaptive", "most-accurate", "best-static", "oracle"), count=40, warmup=3,
                           contention=ContentionSpec.parse("cpu:half"), interleave=7, plots=False, quiet=True,
                           spin_us=300)
    closed = make_workload(10, 5, "fixed:50", "closed", 0)
    assert opts.transport == "daemon" and opts.takes_turns(closed)
    assert not EvaluateOptions(bundle="b", table="t", out=out, contention=ContentionSpec.parse("quota")
                               ).takes_turns(closed)
    ev = evaluate(opts)
    res = json.loads((out / "results.json").read_text())
    assert ev.complete and res["options"]["interleave"] == 7 and res["options"]["turns"] == 3
    assert res["options"]["spin_us"] == 300  # every daemon busy-polled, as asked
    assert "busy polling 300 us after each answer" in (out / "daemon-adaptive.log").read_text()
    for name in ("adaptive", "most-accurate", "best-static"):
        pol = res["policies"][name]
        assert [r["index"] for r in pol["records"]] == list(range(40)), name
        assert all(r["status"] == 200 and r["policy"] for r in pol["records"]), name
        assert len(pol["contention_s"]) == 1, name
        assert (out / f"daemon-{name}.log").is_file(), name
    assert {r["variant"] for r in res["policies"]["most-accurate"]["records"]} == {evb.variants[-1]}
    sent = [r["sent_s"] for r in res["policies"]["adaptive"]["records"]]
    assert sent == sorted(sent) and sent[0] >= 0  # its own clock, over its turns only


def test_open_loop_takes_turns_in_process_but_not_through_the_daemon():
    """In process open-loop arrivals take turns (a backlog carries over on each policy's clock); through the daemon
    they run one after another (a daemon woken at its turn's start misses the turn's first requests)."""
    from benchmarks.evaluate.command import EvaluateOptions
    from benchmarks.evaluate.workload import make_workload

    poisson = make_workload(10, 5, "fixed:50", "poisson:1000", 0)
    assert EvaluateOptions(bundle="b", table="t", out=Path("o"), transport="inproc").takes_turns(poisson)
    assert not EvaluateOptions(bundle="b", table="t", out=Path("o")).takes_turns(poisson)
    assert not EvaluateOptions(bundle="b", table="t", out=Path("o"), transport="inproc", interleave=0
                               ).takes_turns(poisson)


def test_evaluate_rejects_bad_input(evb, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "edgekit.cli", "evaluate", *args], capture_output=True,
                              text=True, timeout=60, cwd=REPO)

    p = cli(str(evb.bundle), "--table", str(evb.table), "--policies", "adaptive,best")
    assert p.returncode == 2 and "unknown policy 'best'" in p.stderr
    p = cli(str(evb.bundle), "--table", str(evb.table), "--contention", "lots")
    assert p.returncode == 2 and "contention" in p.stderr
    p = cli(str(evb.bundle), "--table", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "not found" in p.stderr
    p = cli(str(evb.bundle), "--table", str(evb.table), "--deadline", "uniform:5:1", "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "LO (5) is above HI (1)" in p.stderr


def test_no_tensorflow_in_the_evaluation_modules():
    code = ("import sys, benchmarks.evaluate.workload, benchmarks.evaluate.loadgen, benchmarks.evaluate.contention, benchmarks.evaluate.command, "
            "benchmarks.evaluate.report, benchmarks.evaluate.oracle, benchmarks.evaluate.daemon_proc; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr


def test_sigterm_stops_the_daemon_and_the_hog(evb, tmp_path):
    import os
    import signal
    import time

    out = tmp_path / "ev"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli", "evaluate", str(evb.bundle), "--table", str(evb.table),
         "--policies", "adaptive", "--count", "100000", "--warmup", "0", "--deadline", "fixed:20",
         "--contention", "full", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (out / "daemon-adaptive.log").exists():
            time.sleep(0.2)
        time.sleep(3)  # the daemon is up and the hog is spinning
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children, "expected the daemon and the hog as children"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        time.sleep(0.5)
        for pid in children:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z", pid
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_plane_adds_each_variant_alone_and_adaptive_per_quantile(tmp_path):
    from benchmarks.evaluate.placement import Placement
    from benchmarks.evaluate.results import BestStatic
    from tests.benchmarks.evaluate._evaluation import ROWS

    def runs(quantile=None, **kw):
        o = ev.EvaluateOptions(bundle="b", table="t.json", out=tmp_path, quantile=quantile, **kw)
        plan = ev.Plan(o, ROWS, {"quantile": "p95"}, np.zeros(1), np.zeros(1), None, "p", None, Placement(None, None))
        best = BestStatic(ROWS[1].variant, "V1", 0.02, {})
        return [(r.name, r.served_as, r.quantile) for r in ev.daemon_runs(plan, best)]

    v = [r.variant for r in ROWS]
    asked = [("adaptive", "adaptive", None), ("mean-table", "mean-table", None),
             ("quantile-table", "quantile-table", None), ("most-accurate", "most-accurate", None),
             ("best-static", f"static:{v[1]}", None)]
    assert runs() == asked  # the default: the plane's statics come from the oracle pass, no extra run
    # most-accurate serves V2 alone and best-static V1: only V0 is left to serve alone.
    assert runs(statics="all") == [*asked, (f"static:{v[0]}", f"static:{v[0]}", None)]
    # 'adaptive' runs at the table's p95 already: the curve adds p50, p90, p99 and max.
    assert runs(plane=True) == [*asked, (f"static:{v[0]}", f"static:{v[0]}", None), ("adaptive@p50", "adaptive", "p50"),
                                ("adaptive@p90", "adaptive", "p90"), ("adaptive@p99", "adaptive", "p99"),
                                ("adaptive@max", "adaptive", "max")]
    # Asked for p99, the other four are added, p95 among them; without adaptive asked, all five.
    assert [r[0] for r in runs(quantile="p99", plane=True)][-4:] == ["adaptive@p50", "adaptive@p90", "adaptive@p95",
                                                                     "adaptive@max"]
    assert [r[0] for r in runs(plane=True, policies=("mean-table", "oracle"))] == [
        "mean-table", *(f"static:{x}" for x in v), "adaptive@p50", "adaptive@p90", "adaptive@p95", "adaptive@p99",
        "adaptive@max"]
    with pytest.raises(ValueError, match="--repeat must be in"):
        ev.EvaluateOptions(bundle="b", table="t.json", out=tmp_path, repeat=0)
    with pytest.raises(ValueError, match="--statics must be one of pass, all"):
        ev.EvaluateOptions(bundle="b", table="t.json", out=tmp_path, statics="some")


@pytest.mark.slow
def test_evaluate_repeat_end_to_end(evb, tmp_path):
    """--repeat 2 --statics all on the tiny bundle: two whole comparisons, seeds 4 and 5, and their medians;
    a second call reuses both runs."""
    out = tmp_path / "rep"
    argv = [sys.executable, "-m", "edgekit.cli", "evaluate", str(evb.bundle), "--table", str(evb.table),
            "--policies", "adaptive,oracle", "--statics", "all", "--count", "60", "--warmup", "3",
            "--deadline", "uniform:1:6", "--seed", "4", "--repeat", "2", "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=400, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "on-time accuracy, median [min-max] of 2 runs (seeds 4-5): adaptive " in proc.stdout
    runs = [json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (4, 5)]
    assert [r["workload"]["seed"] for r in runs] == [4, 5]
    assert runs[0]["workload"]["image_indices"] != runs[1]["workload"]["image_indices"]
    labels = runs[0]["variant_labels"]
    names = ["adaptive", "oracle", *(f"static:{v}" for v in labels)]
    for r in runs:
        assert list(r["policies"]) == names and r["options"]["statics"] == "all"
        assert [p["source"] for p in r["plane"]["statics"]] == names[2:]  # every variant measured alone
        assert r["plane"]["adaptive"][0]["source"] == "adaptive" and r["plane"]["points"][0]["name"] == "oracle"
    agg = json.loads((out / "results.json").read_text())
    assert (agg["kind"], agg["repeat"], agg["seeds"]) == ("policy-comparison-repeats", 2, [4, 5])
    assert list(agg["policies"]) == names
    for name in names:
        for fig in ("on_time_accuracy", "accuracy", "server_miss_rate", "p50_ms", "throughput_rps"):
            vals = [r["policies"][name]["summary"][fig] for r in runs]
            s = agg["policies"][name][fig]
            assert s["values"] == vals, (name, fig)
            assert (s["min"], s["max"]) == (min(vals), max(vals))
            assert s["median"] == pytest.approx((vals[0] + vals[1]) / 2, abs=1e-6)
    for f in ("table.txt", "report.md", "plane.png", "seed-4/plane.png", "seed-5/report.md"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("reusing") == 2 and "starting the daemon" not in again.stdout
    assert json.loads((out / "results.json").read_text())["policies"] == agg["policies"]


def test_the_oracle_is_charged_floors_drawn_from_the_probe_not_its_median():
    """Issue 22's fair oracle: each request's floor is one measured probe request (daemon and end-to-end
    overheads kept together), seeded; inside the contention window the contended probe's."""
    from benchmarks.evaluate.contention import ContentionSpec
    from benchmarks.evaluate.results import ServingProbe

    quiet = ServingProbe(floor_ms=0.1, e2e_overhead_ms=0.3, inference_p50_ms=0.01, throughput_rps=1000.0,
                         samples_ms=((0.1, 0.3), (0.1, 0.3), (0.5, 0.9)))
    busy = ServingProbe(floor_ms=2.0, e2e_overhead_ms=3.0, inference_p50_ms=0.01, throughput_rps=100.0,
                        samples_ms=((2.0, 3.0), (4.0, 6.0)))
    e2e, daemon = ev._floors(quiet, None, 3000, ContentionSpec.parse("none"), seed=7)
    assert set(zip(daemon.tolist(), e2e.tolist())) == {(0.1, 0.3), (0.5, 0.9)}  # pairs kept, both values drawn
    assert 0.25 < float(np.mean(daemon == 0.5)) < 0.42  # 1 of 3 samples
    again = ev._floors(quiet, None, 3000, ContentionSpec.parse("none"), seed=7)
    assert np.array_equal(again[1], daemon)  # the same seed charges the same floors
    spec = ContentionSpec.parse("cpu:half")
    e2e, daemon = ev._floors(quiet, busy, 3000, spec, seed=7)
    a, z = spec.window(3000)
    assert set(daemon[a:z].tolist()) == {2.0, 4.0} and set(np.delete(daemon, np.s_[a:z]).tolist()) <= {0.1, 0.5}
    # A probe without samples (an old results file) charges its medians, as before.
    bare = ServingProbe(floor_ms=0.2, e2e_overhead_ms=0.4, inference_p50_ms=0.01, throughput_rps=1.0)
    e2e, daemon = ev._floors(bare, None, 5, ContentionSpec.parse("none"))
    assert daemon.tolist() == [0.2] * 5 and e2e.tolist() == [0.4] * 5
    assert "samples_ms" not in quiet.to_json() and quiet.to_json()["floor_p99_ms"] >= 0.1


def test_the_oracle_is_charged_each_requests_own_floor_in_closed_loop():
    """In closed loop the oracle pays, per request, what adaptive's run measured for that same request (total or end
    to end, minus inference); unanswered requests keep the floor drawn from the probe."""
    from benchmarks.evaluate.results import PolicyResult

    recs = [RequestRecord(index=i, image_index=i, label=0, deadline_ms=1.0, arrival_s=0.0, sent_s=0.0,
                          e2e_ms=0.5 + i, status=200 if i != 2 else 503, inference_ms=0.1, total_ms=0.3 + i)
            for i in range(4)]
    run = PolicyResult(summary={}, records=tuple(recs), truncated=False, contention_s=())
    drawn = (np.full(4, 9.0), np.full(4, 8.0))
    e2e, daemon, n = ev.own_floors(run, drawn)
    assert n == 3
    assert daemon.tolist() == pytest.approx([0.2, 1.2, 8.0, 3.2]) and e2e.tolist() == pytest.approx([0.4, 1.4, 9.0, 3.4])
    assert drawn[1].tolist() == [8.0] * 4  # the drawn floors are not changed in place


def test_in_process_open_loop_the_oracle_is_charged_each_requests_own_call_without_its_wait():
    """Open loop in process, each request's own floor is its classify call's work besides the inference: the wait
    before the application thread called it (send time minus scheduled arrival) is left out, as the oracle's server
    simulates its own waits. Through the daemon a request's total counts from when the daemon received it (its
    send), so the same records charge their whole time there (nothing queued on the server model's clock)."""
    from benchmarks.evaluate.results import PolicyResult
    from benchmarks.evaluate.workload import make_workload

    wl = make_workload(10, 3, "fixed:1", "poisson:1000", seed=0)
    sched = wl.arrivals_s
    # request i waited 2 ms x i before its call; its call took 0.05 ms besides a 0.01 ms inference
    recs = [RequestRecord(index=i, image_index=0, label=0, deadline_ms=1.0, arrival_s=float(sched[i]),
                          sent_s=float(sched[i]) + 0.002 * i, e2e_ms=2.0 * i + 0.06, status=200, inference_ms=0.01,
                          total_ms=2.0 * i + 0.06) for i in range(3)]
    runs = {"adaptive": PolicyResult(summary={}, records=tuple(recs), truncated=False, contention_s=())}
    drawn = (np.full(3, 9.0), np.full(3, 8.0))
    (e2e, daemon), source, received = ev.oracle_floors(wl, runs, drawn, "inproc")
    assert received is None and "each request's own measured floor (3 of 3" in source
    assert e2e.tolist() == pytest.approx([0.05] * 3) and daemon.tolist() == pytest.approx([0.05] * 3)
    (e2e, daemon), source, _ = ev.oracle_floors(wl, runs, drawn, "daemon")
    assert "less its wait behind the requests before it" in source and "(3 of 3" in source
    assert daemon.tolist() == pytest.approx([0.05, 2.05, 4.05]) and e2e.tolist() == pytest.approx([0.05] * 3)
    # Charged the best static CNN's run instead: its own records, named as the source.
    slow = [dataclasses.replace(r, e2e_ms=r.e2e_ms + 0.1, total_ms=r.total_ms + 0.1) for r in recs]
    runs["best-static"] = PolicyResult(summary={}, records=tuple(slow), truncated=False, contention_s=())
    (e2e, daemon), source, _ = ev.oracle_floors(wl, runs, drawn, "inproc", floors_from="best-static")
    assert source.startswith("best-static run: each request's own measured floor (3 of 3")
    assert daemon.tolist() == pytest.approx([0.15] * 3)



def test_open_loop_through_the_daemon_the_oracles_requests_arrive_as_adaptives_did():
    """Open loop through the daemon, the oracle's server receives each request when adaptive's daemon did (its
    client's send time), the rest at their scheduled arrival; in process, or in closed loop, it does not."""
    from benchmarks.evaluate.results import PolicyResult
    from benchmarks.evaluate.workload import make_workload

    wl = make_workload(10, 4, "fixed:1", "poisson:1000", seed=0)
    sched = wl.arrivals_s
    recs = [RequestRecord(index=i, image_index=0, label=0, deadline_ms=1.0, arrival_s=float(sched[i]),
                          sent_s=float(sched[i]) + 0.001 * i, e2e_ms=0.5, status=200, inference_ms=0.1, total_ms=0.3)
            for i in (0, 1, 3)]
    runs = {"adaptive": PolicyResult(summary={}, records=tuple(recs), truncated=False, contention_s=())}
    drawn = (np.full(4, 0.4), np.full(4, 0.2))
    (e2e, daemon), source, received = ev.oracle_floors(wl, runs, drawn, "daemon")
    assert "reached adaptive's daemon (3 of 4" in source
    assert received.tolist() == pytest.approx([sched[0], sched[1] + 0.001, sched[2], sched[3] + 0.003])
    assert daemon[2] == 0.2 and e2e[2] == 0.4  # not answered: drawn from the probe
    assert ev.oracle_floors(wl, runs, drawn, "inproc")[2] is None  # in process: its own floors, no send times
    assert ev.oracle_floors(wl, {}, drawn, "daemon")[2] is None
