"""Tests for benchmarks/evaluate/repeats.py: the median and range of every figure over hand-made runs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks.evaluate import repeats
from benchmarks.evaluate.loadgen import summarize
from benchmarks.evaluate.results import DaemonRun, PolicyResult, Slowdown
from benchmarks.evaluate.workload import make_workload
from tests.benchmarks.evaluate._evaluation import evaluation, records


def _run(seed: int, miss_every: int, wall_s: float, slowdown: float) -> dict:
    """One comparison (tests/benchmarks/evaluate/_evaluation.py) whose adaptive run misses every
    ``miss_every``-th request, as results.json holds it."""
    ev = evaluation()
    ev = dataclasses.replace(ev, workload=make_workload(200, 40, "uniform:1:6", "closed", seed),
                             achieved_slowdown=slowdown)
    recs = records(ev.workload, "adaptive", lambda i: 1 + i % 2, miss_every=miss_every)
    adaptive = PolicyResult(summarize(list(recs), wall_s), recs, False, (),
                            daemon=DaemonRun("adaptive", "d.log", Slowdown(slowdown, 1.0, 1.0, {})))
    ev = dataclasses.replace(ev, policies={**ev.policies, "adaptive": adaptive})
    return json.loads(json.dumps(ev.to_json()))


RUNS = [_run(3, 10, 0.4, 1.5), _run(4, 4, 0.5, 1.2), _run(5, 20, 0.2, 2.0)]
NAMES = ["seed-3/results.json", "seed-4/results.json", "seed-5/results.json"]


def test_median_and_range_of_every_figure():
    rep = repeats.aggregate(RUNS, NAMES)
    assert rep.seeds == (3, 4, 5) and rep.runs == tuple(NAMES)
    assert list(rep.policies) == ["adaptive", "fastest", "oracle"]
    a = rep.policies["adaptive"]
    assert list(a)[0] == "on_time_accuracy"  # the headline first
    # on time and right: 40 requests, 30 right (i % 4 != 0); late: every 10th (2 of them right), every 4th (none
    # right), every 20th (request 20 only, wrong): 28, 30 and 30 of 40.
    ota = a["on_time_accuracy"]
    assert (ota.median, ota.min, ota.max, ota.values) == (0.75, 0.7, 0.75, (0.7, 0.75, 0.75))
    miss = a["server_miss_rate"]
    assert (miss.median, miss.min, miss.max) == (0.1, 0.05, 0.25)
    tput = a["throughput_rps"]  # 40 answers in 0.4, 0.5 and 0.2 s
    assert (tput.median, tput.min, tput.max) == (100.0, 80.0, 200.0)
    assert a["slowdown"].values == (1.5, 1.2, 2.0) and a["slowdown"].median == 1.5
    assert "variants" not in a and a["count"].median == 40
    assert rep.policies["fastest"]["on_time_accuracy"].values == (0.75, 0.75, 0.75)
    assert (rep.achieved_slowdown.median, rep.achieved_slowdown.min, rep.achieved_slowdown.max) == (1.5, 1.2, 2.0)
    assert rep.best_static == ("V1", "V1", "V1")
    assert rep.oracle_floors == ("best-static", "best-static", "best-static")


def test_a_policy_missing_from_a_run_is_aggregated_over_the_others():
    two = [RUNS[0], {**RUNS[1], "policies": {k: v for k, v in RUNS[1]["policies"].items() if k != "oracle"}}]
    rep = repeats.aggregate(two, NAMES[:2])
    o = rep.policies["oracle"]["on_time_accuracy"]
    assert o.values == (0.75, None) and o.median == o.min == o.max == 0.75
    assert repeats.Spread.of([None, None]) is None
    assert repeats.Spread.of([0.1, 0.3]).median == pytest.approx(0.2)  # an even count: the middle two's mean


def test_the_plane_is_aggregated_point_by_point():
    rep = repeats.aggregate(RUNS, NAMES)
    assert sorted(rep.plane) == ["adaptive:p95", "points:oracle", "statics:V0", "statics:V1", "statics:V2"]
    ad = rep.plane["adaptive:p95"]
    assert (ad["miss_rate"].median, ad["miss_rate"].min, ad["miss_rate"].max) == (0.1, 0.05, 0.25)
    plane, spans = rep.median_plane()
    assert [p.name for p in plane.statics] == ["V0", "V1", "V2"] and plane.adaptive[0].miss_rate == 0.1
    assert spans["adaptive:p95"] == (0.05, 0.25, 0.75, 0.75)


def test_the_text_json_and_report_carry_the_median_and_the_range(tmp_path):
    rep = repeats.aggregate(RUNS, NAMES)
    repeats.write_repeats(rep, tmp_path, plots=True)
    text = (tmp_path / "table.txt").read_text().splitlines()
    assert text[0] == ("on-time accuracy, median [min-max] of 3 runs (seeds 3-5): adaptive 75.00% [70.00-75.00], "
                       "fastest 75.00% [75.00-75.00], oracle 75.00% [75.00-75.00]")
    assert text[2].split()[:4] == ["policy", "on-time", "acc", "accuracy"]
    assert text[4].split()[:3] == ["adaptive", "75.00%", "[70.00-75.00]"]
    assert "best static CNN per run: V1, V1, V1" in text
    assert "oracle charged the floors of, per run: best-static, best-static, best-static" in text
    d = json.loads((tmp_path / "results.json").read_text())
    assert (d["kind"], d["repeat"], d["seeds"], d["runs"]) == ("policy-comparison-repeats", 3, [3, 4, 5], NAMES)
    assert d["headline"]["policies"]["adaptive"] == {"on_time_accuracy": {"median": 0.75, "min": 0.7, "max": 0.75,
                                                                          "values": [0.7, 0.75, 0.75]}}
    assert d["policies"]["adaptive"]["p99_ms"]["median"] > 0
    assert d["plane"]["statics:V2"]["source"] == "oracle pass"
    assert (tmp_path / "plane.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "report.md").read_text()
    assert "| adaptive | 75.00% [70.00-75.00] |" in md and "[seed-4/results.json](seed-4/report.md)" in md
