"""Test helper: a whole ``Evaluation`` built by hand (three variants, two daemon policies and the oracle), no daemon."""

from __future__ import annotations

import numpy as np

from benchmarks.evaluate.contention import ContentionSpec
from benchmarks.evaluate.loadgen import RequestRecord, summarize
from benchmarks.evaluate.placement import Placement
from benchmarks.evaluate.results import (
    BestStatic,
    DaemonRun,
    Evaluation,
    HeldOut,
    HeldOutAccuracy,
    Host,
    OracleResult,
    Overload,
    PolicyResult,
    Probes,
    ServerCheck,
    ServingProbe,
    Slowdown,
)
from benchmarks.evaluate.workload import make_workload
from edge.tables.table import LatencyRow

COUNT = 40


def row(name: str, accuracy: float, p50_ms: float) -> LatencyRow:
    return LatencyRow(
        variant=f"{name}@ort-cpu-t1", artifact_id=name, model_id=name, format="onnx", precision="fp32",
        setting="ort-cpu-t1", backend="onnxruntime", provider="CPUExecutionProvider", threads=1, accuracy=accuracy,
        eval_count=200, samples=100, mean_ms=p50_ms * 1.05, std_ms=p50_ms * 0.1, min_ms=p50_ms * 0.9, p50_ms=p50_ms,
        p90_ms=p50_ms * 1.2, p95_ms=p50_ms * 1.3, p99_ms=p50_ms * 1.6, max_ms=p50_ms * 2, load_ms=3.0,
        first_inference_ms=p50_ms * 3, preprocess_ms=0.01, peak_rss_mb=2.0, size_bytes=4096,
    )


ROWS = (row("fast", 0.61, 0.2), row("mid", 0.72, 0.8), row("slow", 0.83, 2.5))


def records(workload, policy: str, variant_of, miss_every: int = 0) -> tuple[RequestRecord, ...]:
    """One answered request per workload entry; every ``miss_every``-th one misses its deadline."""
    out = []
    for i in range(workload.count):
        v = ROWS[variant_of(i)]
        missed = miss_every and i % miss_every == 0
        e2e = float(workload.deadlines_ms[i]) * (1.5 if missed else 0.5)
        out.append(RequestRecord(
            index=i, image_index=int(workload.image_indices[i]), label=i % 10, deadline_ms=float(workload.deadlines_ms[i]),
            arrival_s=0.01 * i, sent_s=0.01 * i, e2e_ms=e2e, status=200, pred=i % 10 if i % 4 else (i + 1) % 10,
            correct=bool(i % 4), deadline_met=not missed, server_deadline_met=not missed, variant=v.variant,
            predicted_ms=v.p95_ms, queue_ms=0.01, inference_ms=v.p50_ms * 1.1, total_ms=e2e * 0.9,
            slowdown=1.0 + 0.01 * i, policy=policy,
        ))
    return tuple(out)


def evaluation(complete: bool = True, truncated: bool = False) -> Evaluation:
    wl = make_workload(200, COUNT, "uniform:1:6", "closed", 3)
    cspec = ContentionSpec.parse("cpu:half")
    adaptive = records(wl, "adaptive", lambda i: 1 + i % 2, miss_every=10)
    fastest = records(wl, "static", lambda i: 0)
    oracle = records(wl, "oracle", lambda i: 2 if i % 3 else 1)
    lat = np.asarray([[r.p50_ms * (1 + 0.0001234 * i) for r in ROWS] for i in range(COUNT)])
    preds = np.asarray([[i % 10, (i + 1) % 10, i % 10] for i in range(COUNT)])
    policies = {
        "adaptive": PolicyResult(summary=summarize(list(adaptive), 0.4), records=adaptive, truncated=truncated,
                                 contention_s=((0.1, 0.3),),
                                 daemon=DaemonRun("adaptive", "daemon-adaptive.log",
                                                  Slowdown(1.5, 1.8, 1.2, {ROWS[1].variant: 1.5}))),
        "fastest": PolicyResult(summary=summarize(list(fastest), 0.2), records=fastest, truncated=False,
                                contention_s=((0.05, 0.15),),
                                daemon=DaemonRun("fastest", "daemon-fastest.log", Slowdown(None, None, None, {}))),
    }
    if complete:
        policies["oracle"] = PolicyResult(summary=summarize(list(oracle), 0.3), records=oracle, truncated=False,
                                          contention_s=((0.08, 0.2),))
    return Evaluation(
        created="2026-01-02T03:04:05+00:00",
        host=Host("x86_64", "Linux-6.1-x86_64", 2, "3.12.1", "Test CPU"),
        placement=Placement(frozenset({0}), frozenset({1})),
        bundle="/b/bundle", table="/b/selected.json", profile="desktop-cpu",
        selection={"quantile": "p95", "method": "pareto"},
        deadline_spec="uniform:1:6", warmup=3, duration_limit_s=120.0,
        rows=ROWS, workload=wl, contention=cspec, policies=policies,
        probes=Probes(ServingProbe(0.25, 0.61, 0.21, 812.5), ServingProbe(0.4, 0.9, 0.33, 501.0)),
        overload=Overload(1.2, 400.0, 480.0),
        held_out=HeldOut({"V0": HeldOutAccuracy(0.61, 0.6, -0.01), "V1": HeldOutAccuracy(0.72, 0.74, 0.02),
                          "V2": HeldOutAccuracy(0.83, 0.8, -0.03)}),
        best_static=BestStatic(ROWS[1].variant, "V1", 0.02, {"V0": 0.0, "V1": 0.015, "V2": 0.4}),
        oracle=OracleResult("the oracle's method", 0.61, 0.25, "probe", 1.234, tuple(r.variant for r in ROWS),
                            lat, preds, {r.variant: 0.5 for r in ROWS}, "the whole queue planned (exact)",
                            {"on_time_accuracy": 0.6, "goodput_rps": 250.0},
                            server_check=ServerCheck("V0", 0.25, 0.2), floors_from="best-static",
                            by_floors={"adaptive": {"on_time_accuracy": 0.55, "goodput_rps": 240.0},
                                       "best-static": {"on_time_accuracy": 0.6, "goodput_rps": 250.0}},
                            ) if complete else None,
        achieved_slowdown=1.5 if complete else None,
        complete=complete,
    )
