"""Tests for benchmarks/evaluate/plane.py: the accuracy-miss plane's points and adaptive's curve, from hand-made runs."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks.evaluate import plane
from benchmarks.evaluate.loadgen import summarize
from benchmarks.evaluate.results import DaemonRun, PolicyResult
from tests.benchmarks.evaluate._evaluation import ROWS, evaluation, records


def _run(ev, served_as: str, miss_every: int, quantile: str | None = None, variant: int = 1) -> PolicyResult:
    recs = records(ev.workload, served_as, lambda i: variant, miss_every=miss_every)
    return PolicyResult(summarize(list(recs), 0.4), recs, False, (),
                        daemon=DaemonRun(served_as, "d.log", None, quantile=quantile))


def _with_plane_runs():
    ev = evaluation()
    extra = {
        "mean-table": _run(ev, "mean-table", 4),
        "quantile-table": _run(ev, "quantile-table", 5),
        f"static:{ROWS[1].variant}": _run(ev, f"static:{ROWS[1].variant}", 8),
        "adaptive@p99": _run(ev, "adaptive", 20, "p99"),
        "adaptive@p50": _run(ev, "adaptive", 2, "p50"),
    }
    return dataclasses.replace(ev, policies={**ev.policies, **extra})


def test_every_variant_alone_is_a_point_measured_where_served_else_from_the_oracle_pass():
    p = plane.plane_data(_with_plane_runs())
    assert [(s.name, s.source) for s in p.statics] == [("V0", "fastest"), ("V1", f"static:{ROWS[1].variant}"),
                                                        ("V2", "oracle pass")]
    v1 = p.statics[1]
    assert (v1.miss_rate, v1.accuracy) == (0.125, 0.75)  # every 8th of 40 late; 30 of 40 answers right
    v2 = p.statics[2]  # BestStatic.predicted_miss_rates and OracleResult.variant_accuracy_on_workload
    assert (v2.miss_rate, v2.accuracy) == (0.4, 0.5)


def test_adaptive_is_a_curve_in_quantile_order_and_the_baselines_are_points():
    p = plane.plane_data(_with_plane_runs())
    # 'adaptive' ran at the daemon's default, the table's selection quantile (p95).
    assert [(a.name, a.source, a.miss_rate) for a in p.adaptive] == [
        ("p50", "adaptive@p50", 0.5), ("p95", "adaptive", 0.1), ("p99", "adaptive@p99", 0.05)]
    assert [(q.name, q.miss_rate) for q in p.points] == [("oracle", 0.0), ("mean-table", 0.25),
                                                         ("quantile-table", 0.2)]
    assert all(q.accuracy == 0.75 for q in p.points)
    d = p.to_json()
    assert list(d) == ["x", "y", "statics", "adaptive", "points"]
    assert d["adaptive"][0] == {"name": "p50", "miss_rate": 0.5, "accuracy": 0.75, "source": "adaptive@p50"}


def test_a_rejected_request_has_no_answer_so_it_does_not_count_in_the_accuracy():
    ev = evaluation()
    recs = list(records(ev.workload, "adaptive", lambda i: 1))
    for i in range(0, 40, 2):  # half rejected, among them all of the wrong answers (i % 4 == 0)
        recs[i] = dataclasses.replace(recs[i], status=408, correct=False, deadline_met=False,
                                      server_deadline_met=False)
    run = PolicyResult(summarize(recs, 0.4), tuple(recs), False, (), daemon=DaemonRun("adaptive", "d.log", None))
    a = plane.plane_data(dataclasses.replace(ev, policies={"adaptive": run})).adaptive[0]
    assert (a.miss_rate, a.accuracy) == (0.5, 1.0)


def test_accuracy_at_interpolates_along_the_curve():
    pts = [plane.PlanePoint("p50", 0.30, 0.90, "a"), plane.PlanePoint("p95", 0.10, 0.80, "a"),
           plane.PlanePoint("p99", 0.02, 0.70, "a")]
    assert plane.accuracy_at(pts, 0.20) == pytest.approx(0.85)
    assert plane.accuracy_at(pts, 0.02) == pytest.approx(0.70)
    assert plane.accuracy_at(pts, 0.06) == pytest.approx(0.75)
    assert plane.accuracy_at(pts, 0.5) is None and plane.accuracy_at(pts, 0.0) is None
    assert plane.accuracy_at(pts[:1], 0.30) == 0.90 and plane.accuracy_at([], 0.1) is None
