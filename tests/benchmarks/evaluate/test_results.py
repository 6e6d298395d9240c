"""Tests for benchmarks/evaluate/results.py: an evaluation's dataclasses and the results.json they write."""

from __future__ import annotations

import json

import numpy as np

from benchmarks.evaluate.results import DaemonRun, Host, PolicyResult, Probes, ServingProbe, variant_labels
from tests.benchmarks.evaluate._evaluation import COUNT, ROWS, evaluation

# The key order results.json has had since version 3; report.py, repeats.py, the demo and the README read it.
TOP = ["kind", "version", "created", "host", "placement", "bundle", "table", "profile", "transport", "selection",
       "deadline_spec", "warmup", "duration_limit_s", "variants", "variant_labels", "complete", "headline", "policies", "probe",
       "overload", "workload", "contention", "held_out", "best_static", "oracle", "plane"]
SUMMARY = ["count", "answered", "rejected", "overloaded", "errors", "on_time_accuracy", "accuracy", "answer_accuracy",
           "miss_rate", "server_miss_rate", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_rps", "goodput_rps",
           "wall_s", "variants"]


def test_a_finished_evaluation_writes_every_key_in_order():
    ev = evaluation()
    d = json.loads(json.dumps(ev.to_json(), allow_nan=False))
    assert list(d) == TOP
    assert (d["kind"], d["version"], d["complete"]) == ("policy-comparison", 7, True)
    assert list(d["host"]) == ["machine", "os", "cores", "python", "cpu_model"]
    assert d["placement"] == {"server_cpus": [0], "client_cpus": [1]}
    assert d["variant_labels"] == {r.variant: f"V{j}" for j, r in enumerate(ROWS)} == variant_labels(ROWS)
    assert [list(v) for v in d["variants"]] == [["label", "variant", "accuracy", "p50_ms", "p95_ms", "p99_ms",
                                                  "mean_ms"]] * 3
    assert d["variants"][2]["p95_ms"] == ROWS[2].p95_ms and d["variants"][0]["label"] == "V0"
    assert list(d["probe"]) == ["fastest", "fastest_under_contention"]
    assert list(d["probe"]["fastest"]) == ["floor_ms", "e2e_overhead_ms", "inference_p50_ms", "throughput_rps",
                                           "busy_ms"]
    assert d["overload"] == {"factor": 1.2, "capacity_rps": 400.0, "rate_rps": 480.0}
    assert d["workload"] == ev.workload.to_dict()
    c = d["contention"]
    assert list(c) == ["spec", "kind", "what", "share", "load", "quota", "window", "achieved_slowdown"]
    assert (c["spec"], c["kind"], c["share"], c["window"], c["achieved_slowdown"]) == ("cpu:half", "cpu", 0.5,
                                                                                       [10, 30], 1.5)
    assert list(d["held_out"]) == ["note", "variants"] and d["held_out"]["variants"]["V1"] == {
        "table": 0.72, "served": 0.74, "gap": 0.02}
    assert list(d["best_static"]) == ["variant", "label", "max_miss", "predicted_miss_rates"]
    assert list(d["oracle"]) == ["method", "overhead_ms", "daemon_overhead_ms", "overhead_source", "pass_wall_s",
                                 "variants", "latency_ms", "preds", "variant_accuracy_on_workload", "choice",
                                 "greedy", "busy_ms", "server_check", "floors_from", "by_floors"]
    assert d["oracle"]["server_check"] == {"label": "V0", "simulated_miss": 0.25, "measured_miss": 0.2}
    assert d["oracle"]["floors_from"] == "best-static" and d["oracle"]["by_floors"] == {
        "adaptive": {"on_time_accuracy": 0.55, "goodput_rps": 240.0},
        "best-static": {"on_time_accuracy": 0.6, "goodput_rps": 250.0}}
    assert d["oracle"]["choice"] == "the whole queue planned (exact)"
    assert d["oracle"]["greedy"] == {"on_time_accuracy": 0.6, "goodput_rps": 250.0}
    assert np.asarray(d["oracle"]["latency_ms"]).shape == (COUNT, 3)
    assert d["oracle"]["latency_ms"][7] == [round(x, 4) for x in ev.oracle.latency_ms[7]]  # 4 decimals in the file
    assert d["oracle"]["preds"] == ev.oracle.preds.tolist()
    assert list(d["plane"]) == ["x", "y", "statics", "adaptive", "points"]


def test_the_headline_is_on_time_accuracy_and_goodput_only_open_loop():
    import dataclasses

    from benchmarks.evaluate.workload import make_workload

    ev = evaluation()
    h = ev.to_json()["headline"]
    assert list(h) == ["figure", "note", "open_loop", "policies"]
    assert (h["figure"], h["open_loop"]) == ("on_time_accuracy", False)
    # adaptive (tests/benchmarks/evaluate/_evaluation.py): 30 of 40 right, 2 of those 30 late (requests 10 and 30).
    assert h["policies"]["adaptive"] == {"on_time_accuracy": 0.7}
    assert h["policies"]["fastest"] == {"on_time_accuracy": 0.75}
    assert list(h["policies"]) == list(ev.policies)
    poisson = dataclasses.replace(ev, workload=make_workload(200, COUNT, "uniform:1:6", "poisson:100", 3))
    hp = poisson.to_json()["headline"]
    assert hp["open_loop"] is True
    assert hp["policies"]["adaptive"] == {"on_time_accuracy": 0.7, "goodput_rps": 70.0}  # 28 answers in 0.4 s


def test_daemon_policies_and_the_oracle_write_their_own_keys():
    d = evaluation().to_json()["policies"]
    assert list(d) == ["adaptive", "fastest", "oracle"]
    assert list(d["adaptive"]) == ["summary", "truncated", "contention_s", "daemon_log", "records", "served_as",
                                   "quantile"]
    assert list(d["oracle"]) == ["summary", "truncated", "contention_s", "records"]
    assert list(d["adaptive"]["summary"]) == [*SUMMARY, "slowdown"]  # the daemon's policies only
    assert list(d["oracle"]["summary"]) == SUMMARY
    assert d["adaptive"]["summary"]["slowdown"] == {"slowdown": 1.5, "inside_ratio": 1.8, "outside_ratio": 1.2,
                                                    "variants": {ROWS[1].variant: 1.5}}
    assert d["fastest"]["summary"]["slowdown"] == {"slowdown": None, "inside_ratio": None, "outside_ratio": None,
                                                   "variants": {}}
    assert d["adaptive"]["contention_s"] == [[0.1, 0.3]]
    assert d["adaptive"]["daemon_log"] == "daemon-adaptive.log" and d["adaptive"]["served_as"] == "adaptive"
    assert d["adaptive"]["records"][3] == evaluation().policies["adaptive"].records[3].to_dict()


def test_without_contention_a_policy_records_a_null_slowdown():
    p = evaluation().policies["adaptive"]
    quiet = PolicyResult(p.summary, p.records, p.truncated, (), daemon=DaemonRun("adaptive", "d.log", None))
    assert quiet.to_json()["summary"]["slowdown"] is None and quiet.to_json()["contention_s"] == []


def test_a_partial_file_has_no_oracle_and_no_achieved_slowdown_yet():
    d = evaluation(complete=False).to_json()
    assert d["complete"] is False
    assert list(d) == [k for k in TOP if k != "oracle"]
    assert d["plane"]["points"] == [] and [p["source"] for p in d["plane"]["statics"]] == ["fastest"]
    assert list(d["policies"]) == ["adaptive", "fastest"]
    assert "achieved_slowdown" not in d["contention"]


def test_parts_that_did_not_run_are_left_out():
    import dataclasses

    ev = dataclasses.replace(evaluation(), probes=None, overload=None, held_out=None, best_static=None, oracle=None)
    assert list(ev.to_json()) == ["kind", "version", "created", "host", "placement", "bundle", "table", "profile",
                                  "transport", "selection", "deadline_spec", "warmup", "duration_limit_s", "variants",
                                  "variant_labels", "complete", "headline", "policies", "workload", "contention",
                                  "plane"]
    probe = ServingProbe(0.3, 0.7, 0.2, 900.0)
    assert list(Probes(probe, most_accurate=probe).to_json()) == ["fastest", "most_accurate"]


def test_truncated_and_window():
    ev = evaluation(truncated=True)
    assert ev.truncated == ["adaptive"] and evaluation().truncated == []
    assert ev.window == ev.contention.window(COUNT) == (10, 30)


def test_host_here_describes_this_machine():
    h = Host.here()
    assert h.cores >= 1 and h.machine and h.python.count(".") == 2
    assert list(h.to_json()) == ["machine", "os", "cores", "python", "cpu_model"]
