"""The serving-floor probe: one variant served closed loop with no deadline pressure, quiet or under contention."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.bench.proc_cpu import cpu_ns
from benchmarks.evaluate.contention import Contention, ContentionSpec
from benchmarks.evaluate.daemon_proc import Daemon, serve_argv
from benchmarks.evaluate.loadgen import RequestRecord, run_load, wait_ready
from benchmarks.evaluate.placement import Placement
from benchmarks.evaluate.results import ServingProbe
from benchmarks.evaluate.workload import make_workload
from edge.core.errors import StepFailed

PROBE_COUNT = 300  # requests in the serving-floor probe


def probe_serving(bundle: str, table: str, variant: str, profile: str | None, miss: str, images: np.ndarray,
                  labels: np.ndarray, placement: Placement, log: Path, start_timeout_s: float,
                  token: str | None, count: int = PROBE_COUNT,
                  contention: ContentionSpec | None = None, spin_us: int = 0) -> ServingProbe:
    """Serve ``count`` closed-loop requests with ``static:variant`` and no deadline pressure, with the
    same client as the comparison (under ``contention`` for all of them when given). Returns the serving
    floor on the daemon's clock (p50 of total minus inference), the same on the end-to-end clock, and
    the closed-loop throughput (requests/s), and the daemon's time on a core per request besides the inference."""
    wl = make_workload(images.shape[0], count, "fixed:60000", "closed", 104729)
    d = Daemon(serve_argv(bundle, table, f"static:{variant}", profile, miss, None, spin_us), log, start_timeout_s,
               cpus=placement.server)
    try:
        url = d.start()
        wait_ready(url, timeout_s=30.0)
        run_load(url, images, labels, wl.head(min(50, count)), token=token, binary=True)
        assert d.proc is not None
        c = Contention(contention, d.proc.pid, placement.server and set(placement.server),
                       placement.client and set(placement.client), 120.0).start() if contention else None
        try:
            cpu0 = cpu_ns(d.proc.pid)
            res = run_load(url, images, labels, wl, token=token, binary=True)
            cpu1 = cpu_ns(d.proc.pid)
        finally:
            if c is not None:
                c.stop()
    finally:
        d.stop()
    busy = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return probe_result(res.records, res.wall_s, count, f"the serving probe with {variant}", log, busy)


def probe_result(records: list[RequestRecord], wall_s: float, count: int, what: str, log: Path,
                 busy_ns: int | None = None) -> ServingProbe:
    """The floor (p50 of total minus inference), the end-to-end overhead, the inference p50 and the closed-loop
    throughput of a probe's ``records``, keeping every answered request's pair of floors, and from ``busy_ns``
    (the server's time on a core over them) the time each kept it busy besides its inference; StepFailed
    (naming ``what`` and its ``log``) when fewer than half of ``count`` were answered."""
    ok = [r for r in records if r.status == 200 and r.inference_ms is not None and r.total_ms is not None]
    if len(ok) < count // 2:
        raise StepFailed(f"{what} got {len(ok)} answers out of {count}; see {log}")
    return ServingProbe(
        floor_ms=round(float(np.median([r.total_ms - r.inference_ms for r in ok])), 4),
        e2e_overhead_ms=round(float(np.median([r.e2e_ms - r.inference_ms for r in ok])), 4),
        inference_p50_ms=round(float(np.median([r.inference_ms for r in ok])), 4),
        throughput_rps=round(len(ok) / wall_s, 1),
        busy_ms=None if busy_ns is None else round(
            max(0.0, busy_ns / 1e6 / len(records) - float(np.mean([r.inference_ms for r in ok]))), 4),
        samples_ms=tuple((float(r.total_ms - r.inference_ms), float(r.e2e_ms - r.inference_ms)) for r in ok),
    )

