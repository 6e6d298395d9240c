"""`edgekit evaluate`: run the same deadline workload against each serving policy and an oracle.

Every daemon policy gets a fresh `edgekit serve` subprocess and exactly the same requests
(images, deadlines, arrival times, contention window). The oracle is computed from a
separate in-process pass that runs every selected variant on every request's image, back
to back, under the same contention schedule (see ``ORACLE_METHOD``).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.contention import Contention, ContentionSpec
from benchmarks.daemon_proc import Daemon, serve_argv
from benchmarks.placement import Placement, place
from benchmarks.loadgen import (
    DEFAULT_DURATION_S,
    MAX_DURATION_S,
    LoadResult,
    RequestRecord,
    load_eval_set,
    run_load,
    summarize,
    wait_ready,
)
from benchmarks.workload import MAX_COUNT, Workload, WorkloadError, make_workload
from edge.atomic import atomic_write_json, atomic_write_text
from edge.table import QUANTILES, LatencyRow, LatencyTable

POLICIES = ("adaptive", "mean-table", "quantile-table", "most-accurate", "best-static", "oracle")
DAEMON_POLICY = re.compile(r"^(adaptive|mean-table|quantile-table|most-accurate|fastest|oracle-free|best-static|static:.+)$")
BEST_STATIC_MAX_MISS = 0.02  # the paper's non-adaptive baseline: the most accurate CNN that misses at most this
PROBE_COUNT = 300  # requests in the serving-floor probe
DEFAULT_COUNT = 300
WARMUP_SEED_OFFSET = 7919  # warm-up requests come from a different stream than the measured ones

ORACLE_METHOD = (
    "In-process pass on the daemon's cores: for each request, in workload order and under the same contention "
    "window, every selected variant runs on that request's image back to back (order rotated per request), "
    "timing the runtime's predict call, the same span the daemon reports as inference_ms. The oracle's latency "
    "is that time plus the serving floor measured by the probe before the comparison (p50 over the fastest "
    "variant's requests of the daemon's total minus inference; end to end: of the client's latency minus "
    "inference). Chosen over replaying the workload through the daemon once per variant (static:<variant>) "
    "because that measures each variant at a different moment of the run, so on a given request the variants "
    "would see different contention phases; back to back, they all see the same one. With Poisson arrivals the "
    "oracle also waits for its own earlier requests (a single-server FIFO queue simulated from the measured "
    "times). It picks the most accurate variant by table accuracy whose latency meets the deadline, else the "
    "fastest on that request (a miss). The floor is charged as a constant (its median), so rare hiccups of the "
    "HTTP path that hit the daemon policies do not hit the oracle: its miss rate is a lower bound, not a replay."
)


# ----------------------------------------------------------------------------- selected table


def load_selected(path: str | Path) -> tuple[LatencyTable, dict[str, Any]]:
    """The selected table (kind 'selected', monotonic) and its selection parameters, rows in latency order."""
    from edge.table import SelectedTable

    t = SelectedTable.load(path)
    return t.as_latency_table(), t.params.to_dict()


def auto_deadline(rows: tuple[LatencyRow, ...], floor_ms: float = 0.0) -> str:
    """Uniform between floor + the fastest variant's p95 and floor + 1.1 x the slowest's: every
    deadline leaves room for the measured serving floor, and the range spans the whole front."""
    p95 = [r.p95_ms for r in rows]
    lo, hi = floor_ms + min(p95), floor_ms + 1.1 * max(p95)
    return f"uniform:{lo:.4g}:{hi:.4g}" if hi > lo else f"fixed:{lo:.4g}"


def parse_policies(text: str) -> list[str]:
    pols = [p.strip() for p in text.split(",") if p.strip()]
    if not pols:
        raise ValueError("--policies is empty; e.g. --policies adaptive,mean-table,oracle")
    for p in pols:
        if p != "oracle" and not DAEMON_POLICY.match(p):
            raise ValueError(
                f"unknown policy '{p}'; available: {', '.join(POLICIES)}, fastest, oracle-free, static:<variant>"
            )
    if len(set(pols)) != len(pols):
        raise ValueError(f"--policies lists a policy twice: {text}")
    return pols


# ----------------------------------------------------------------------------- contention schedule


class ContentionSchedule:
    """Starts the contention when request ``start`` is issued and stops it at request ``stop``.

    Keyed by request index, not wall time, so every policy (and the oracle pass) is under
    contention for exactly the same requests even though their runs take different times.
    ``target`` names the process it acts on (the daemon, or this process for the oracle pass)
    and the cores it runs on.
    """

    def __init__(self, spec: ContentionSpec, count: int, max_s: float, placement: Placement | None = None):
        self.spec = spec
        self.start, self.stop = spec.window(count)
        self.max_s = max_s
        self.placement = placement or Placement(None, None)
        self.pid = os.getpid()
        self.active: Contention | None = None
        self.t0 = time.perf_counter()
        self.intervals: list[list[float]] = []  # [on_s, off_s] from t0

    def target(self, pid: int) -> None:
        self.pid = pid

    def reset(self) -> None:
        self.halt()
        self.t0 = time.perf_counter()
        self.intervals = []

    def __call__(self, i: int) -> None:
        if not self.spec.active:
            return
        if i == self.start and self.active is None:
            p = self.placement
            self.active = Contention(self.spec, self.pid, None if p.server is None else set(p.server),
                                     None if p.client is None else set(p.client), self.max_s).start()
            self.intervals.append([time.perf_counter() - self.t0, float("nan")])
        elif i == self.stop:
            self.halt()

    def halt(self) -> None:
        if self.active is not None:
            self.active.stop()
            self.active = None
            if self.intervals and not np.isfinite(self.intervals[-1][1]):
                self.intervals[-1][1] = time.perf_counter() - self.t0

    def record(self) -> list[list[float]]:
        return [[round(a, 4), round(b, 4)] for a, b in self.intervals]


def achieved_slowdown(records: list[RequestRecord], rows: tuple[LatencyRow, ...], window: tuple[int, int],
                      min_samples: int = 20) -> dict:
    """How much the contention slowed the served model: per variant, the median of observed inference
    time / table p50 inside the window over the same median outside it, combined over the variants
    served often enough on both sides (geometric mean weighted by the requests inside). Per variant,
    because a policy that moves to other variants under contention changes the mix, and microsecond
    variants run further from their table than millisecond ones even at rest."""
    p50 = {r.variant: r.p50_ms for r in rows}
    a, z = window
    ins: dict[str, list[float]] = {}
    outs: dict[str, list[float]] = {}
    for r in records:
        if r.status != 200 or r.inference_ms is None or r.variant not in p50:
            continue
        (ins if a <= r.index < z else outs).setdefault(r.variant, []).append(r.inference_ms / p50[r.variant])
    per = {v: (float(np.median(ins[v])), float(np.median(outs[v])), len(ins[v]))
           for v in ins if v in outs and len(ins[v]) >= min_samples and len(outs[v]) >= min_samples}
    if not per:
        return {"slowdown": None, "inside_ratio": None, "outside_ratio": None, "variants": {}}
    w = np.asarray([n for _, _, n in per.values()], dtype=np.float64)
    logs = np.asarray([np.log(i / o) for i, o, _ in per.values()])
    mi = float(np.exp(np.average(np.log([i for i, _, _ in per.values()]), weights=w)))
    mo = float(np.exp(np.average(np.log([o for _, o, _ in per.values()]), weights=w)))
    return {"slowdown": round(float(np.exp(np.average(logs, weights=w))), 3), "inside_ratio": round(mi, 3),
            "outside_ratio": round(mo, 3),
            "variants": {v: round(i / o, 3) for v, (i, o, _) in per.items()}}


# ----------------------------------------------------------------------------- oracle pass


@dataclass
class OraclePass:
    variants: list[str]
    latency_ms: np.ndarray  # (count, K) measured inference time of every variant on every request
    preds: np.ndarray  # (count, K) class predicted
    intervals: list[list[float]]
    wall_s: float


def _resolve_setting(profile_name: str, setting_name: str):
    """The runtime setting a table row was measured (and is served) with, from the device profile."""
    from device_profiles import ProfileError, load_profile

    try:
        prof = load_profile(profile_name)
    except (ProfileError, FileNotFoundError) as exc:
        raise ValueError(f"cannot load device profile '{profile_name}' for the oracle pass ({exc}); pass --profile") from None
    for s in prof.settings:
        if s.name == setting_name:
            return s
    raise ValueError(
        f"profile '{prof.name}' has no runtime setting '{setting_name}' (the selected table uses it); "
        f"available: {[s.name for s in prof.settings]}; pass the profile the table was measured with (--profile)"
    )


def oracle_pass(
    bundle: Any,
    rows: tuple[LatencyRow, ...],
    images: np.ndarray,
    workload: Workload,
    profile: str,
    schedule: ContentionSchedule,
    warmup: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> OraclePass:
    """Run every selected variant on every request's image, in request order; record time and class."""
    from edge.backends import get_backend
    from edge.tensors import dequantize_output, prepare_input

    models = []
    try:
        for r in rows:
            setting = _resolve_setting(profile, r.setting)
            backend = get_backend(setting.backend)
            m = backend.load(bundle.artifact_path(r.artifact_id), setting)
            models.append(m)
        x0 = images[int(workload.image_indices[0])]
        for m in models:
            for _ in range(max(1, warmup)):
                m.predict(prepare_input(x0, m.input_spec))
        n, k = workload.count, len(models)
        lat = np.zeros((n, k), dtype=np.float64)
        preds = np.full((n, k), -1, dtype=np.int64)
        schedule.reset()
        t0 = time.perf_counter()
        try:
            for i in range(n):
                schedule(i)
                img = images[int(workload.image_indices[i])]
                for j in range(k):
                    v = (i + j) % k  # rotate so no variant always runs first (cold caches) or last
                    m = models[v]
                    x = prepare_input(img, m.input_spec)
                    s = time.perf_counter()
                    y = m.predict(x)
                    lat[i, v] = (time.perf_counter() - s) * 1000.0  # the span the daemon reports as inference_ms
                    preds[i, v] = int(np.argmax(dequantize_output(y, m.output_spec).reshape(-1)))
                if progress is not None:
                    progress(i + 1, n)
        finally:
            schedule.halt()
        wall = time.perf_counter() - t0
        return OraclePass([r.variant for r in rows], lat, preds, schedule.record(), wall)
    finally:
        for m in models:
            try:
                m.close()
            except Exception:
                pass


def serving_overhead_ms(records: list[RequestRecord], clock: str = "e2e") -> float | None:
    """Median over answered requests of what serving adds to running the model: end-to-end
    (``e2e``) or the daemon's total (``daemon``) time, minus its queue wait and inference time.

    The queue wait is left out because the oracle simulates its own (Poisson arrivals).
    """
    d = []
    for r in records:
        if r.status != 200 or r.inference_ms is None:
            continue
        base = r.e2e_ms if clock == "e2e" else r.total_ms
        if base is None:
            continue
        d.append(base - r.inference_ms - (r.queue_ms or 0.0))
    return float(np.median(d)) if d else None


def oracle_records(
    op: OraclePass,
    rows: tuple[LatencyRow, ...],
    workload: Workload,
    labels: np.ndarray,
    overhead_ms: float,
    daemon_overhead_ms: float | None = None,
) -> tuple[list[RequestRecord], float]:
    """The oracle's choice per request (most accurate by table accuracy that meets the deadline).

    It chooses on end-to-end latency (``overhead_ms`` added); ``daemon_overhead_ms`` (the daemon's
    own total minus inference) gives the same choice's latency on the daemon's clock, so its
    "miss (daemon clock)" is comparable with the daemon policies'.
    """
    if daemon_overhead_ms is None:
        daemon_overhead_ms = overhead_ms
    acc = np.asarray([r.accuracy for r in rows])
    # Most accurate first; among equals, the faster by table.
    order = sorted(range(len(rows)), key=lambda j: (-acc[j], rows[j].p95_ms))
    recs: list[RequestRecord] = []
    free_at = 0.0  # seconds: when the simulated single server is next idle (Poisson only)
    clock = 0.0  # closed loop: requests follow each other
    arrivals = workload.arrivals_s
    for i in range(workload.count):
        lat = op.latency_ms[i]
        if arrivals is None:
            arrive = clock
            wait_ms = 0.0
        else:
            arrive = float(arrivals[i])
            wait_ms = max(0.0, free_at - arrive) * 1000.0
        deadline = float(workload.deadlines_ms[i])
        pick = None
        for j in order:
            if wait_ms + overhead_ms + lat[j] <= deadline:
                pick = j
                break
        met = pick is not None
        if pick is None:
            pick = int(np.argmin(lat))
        e2e = wait_ms + overhead_ms + float(lat[pick])
        total = wait_ms + daemon_overhead_ms + float(lat[pick])
        img = int(workload.image_indices[i])
        label = int(labels[img])
        pred = int(op.preds[i, pick])
        recs.append(RequestRecord(
            index=i, image_index=img, label=label, deadline_ms=deadline,
            arrival_s=arrive, sent_s=arrive, e2e_ms=e2e, status=200, pred=pred,
            correct=pred == label, deadline_met=met, server_deadline_met=total <= deadline,
            variant=rows[pick].variant, inference_ms=float(lat[pick]), queue_ms=wait_ms,
            total_ms=total, policy="oracle",
        ))
        if arrivals is None:
            clock = arrive + e2e / 1000.0
        else:
            free_at = arrive + (wait_ms + float(lat[pick])) / 1000.0
    wall = clock if arrivals is None else max((r.arrival_s + r.e2e_ms / 1000.0) for r in recs)
    return recs, wall


# ----------------------------------------------------------------------------- the comparison


def variant_labels(rows: tuple[LatencyRow, ...]) -> dict[str, str]:
    """Short names V0..Vk-1 in latency order, for tables and plots."""
    return {r.variant: f"V{j}" for j, r in enumerate(rows)}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def comparison_table(results: dict[str, Any], markdown: bool = False) -> str:
    labels = results["variant_labels"]
    head = ["policy", "accuracy", "miss (daemon clock)", "miss (end to end)", "goodput/s", "p50 ms", "p99 ms",
            "req/s", "variants used"]
    body = []
    for name, pol in results["policies"].items():
        s = pol["summary"]
        used = " ".join(f"{labels.get(v, v)}:{c}" for v, c in sorted(s["variants"].items(), key=lambda kv: labels.get(kv[0], kv[0])))
        gp = s.get("goodput_rps")
        body.append([
            name, _pct(s["accuracy"]), _pct(s["server_miss_rate"]), _pct(s["miss_rate"]),
            "-" if gp is None else f"{gp:.1f}", _ms(s["p50_ms"]), _ms(s["p99_ms"]),
            "-" if s["throughput_rps"] is None else f"{s['throughput_rps']:.1f}", used or "-",
        ])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(out)
    widths = [max(len(h), *(len(r[c]) for r in body)) for c, h in enumerate(head)]

    def fmt(row: list[str]) -> str:
        cells = (x.ljust(w) if c in (0, len(head) - 1) else x.rjust(w) for c, (x, w) in enumerate(zip(row, widths)))
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body])


def variant_legend(results: dict[str, Any], markdown: bool = False) -> str:
    rows = results["variants"]
    if markdown:
        out = ["| label | variant | table accuracy | p50 ms | p95 ms |", "|---|---|---|---|---|"]
        out += [f"| {v['label']} | `{v['variant']}` | {v['accuracy'] * 100:.2f}% | {v['p50_ms']:.3f} | {v['p95_ms']:.3f} |" for v in rows]
        return "\n".join(out)
    return "\n".join(
        f"  {v['label']:>3}  acc {v['accuracy'] * 100:6.2f}%  p95 {v['p95_ms']:8.3f} ms  {v['variant']}" for v in rows
    )


def _host() -> dict[str, Any]:
    info: dict[str, Any] = {"machine": platform.machine(), "os": platform.platform(), "cores": os.cpu_count() or 1,
                            "python": platform.python_version()}
    try:
        from benchmarks.sysinfo import device_name as cpu_model

        info["cpu_model"] = cpu_model()
    except Exception:
        info["cpu_model"] = platform.processor() or ""
    return info


def _progress(label: str) -> Callable[[int, int], None]:
    """Progress on one updating line on a terminal, every quarter as its own line in a log."""
    tty = sys.stdout.isatty()
    step = [0]

    def cb(done: int, total: int) -> None:
        parts = 20 if tty else 4
        k = done * parts // max(total, 1)
        if k > step[0] or done == total:
            step[0] = k
            if tty:
                print(f"\r  {label}: {done}/{total}", end="\n" if done == total else "", flush=True)
            else:
                print(f"  {label}: {done}/{total}", flush=True)

    return cb


def probe_serving(bundle: str, table: str, variant: str, profile: str | None, miss: str, images: np.ndarray,
                  labels: np.ndarray, placement: Placement, log: Path, start_timeout_s: float,
                  token: str | None, count: int = PROBE_COUNT) -> dict[str, float]:
    """Serve ``count`` closed-loop requests with ``static:variant`` and no deadline pressure, with the
    same client as the comparison. Returns the serving floor on the daemon's clock (p50 of total minus
    inference), the same on the end-to-end clock, and the closed-loop throughput (requests/s)."""
    wl = make_workload(images.shape[0], count, "fixed:60000", "closed", 104729)
    d = Daemon(serve_argv(bundle, table, f"static:{variant}", profile, miss, None), log, start_timeout_s,
               placement.pin_server())
    try:
        url = d.start()
        wait_ready(url, timeout_s=30.0)
        run_load(url, images, labels, wl.head(min(50, count)), token=token, binary=True)
        res = run_load(url, images, labels, wl, token=token, binary=True)
    finally:
        d.stop()
    ok = [r for r in res.records if r.status == 200 and r.inference_ms is not None and r.total_ms is not None]
    if len(ok) < count // 2:
        raise RuntimeError(f"the serving probe with {variant} got {len(ok)} answers out of {count}; see {log}")
    return {
        "floor_ms": round(float(np.median([r.total_ms - r.inference_ms for r in ok])), 4),
        "e2e_overhead_ms": round(float(np.median([r.e2e_ms - r.inference_ms for r in ok])), 4),
        "inference_p50_ms": round(float(np.median([r.inference_ms for r in ok])), 4),
        "throughput_rps": round(len(ok) / res.wall_s, 1),
    }


def static_miss_rates(op: "OraclePass", workload: Workload, overhead_ms: float) -> np.ndarray:
    """Each variant's miss rate had it served every request alone (the oracle pass's measured times,
    the serving overhead added, a single-server queue simulated for Poisson arrivals)."""
    n, k = op.latency_ms.shape
    miss = np.zeros(k)
    arrivals = workload.arrivals_s
    for j in range(k):
        lat = op.latency_ms[:, j]
        if arrivals is None:
            miss[j] = float(np.mean(overhead_ms + lat > workload.deadlines_ms))
            continue
        free_at, missed = 0.0, 0
        for i in range(n):
            a = float(arrivals[i])
            wait = max(0.0, free_at - a) * 1000.0
            missed += wait + overhead_ms + lat[i] > workload.deadlines_ms[i]
            free_at = a + (wait + lat[i]) / 1000.0
        miss[j] = missed / n
    return miss


def best_static(rows: tuple[LatencyRow, ...], miss: np.ndarray, max_miss: float = BEST_STATIC_MAX_MISS) -> int:
    """The most accurate variant (table accuracy) whose miss rate is at most ``max_miss``; else the fastest."""
    ok = [j for j in range(len(rows)) if miss[j] <= max_miss]
    return max(ok, key=lambda j: rows[j].accuracy) if ok else 0


def evaluate(
    bundle: str,
    table: str,
    out_dir: str | Path,
    *,
    policies: list[str] = list(POLICIES),
    profile: str | None = None,
    count: int = DEFAULT_COUNT,
    deadline: str = "auto",
    arrival: str = "closed",
    contention: str = "none",
    quota: float = 0.4,
    seed: int = 0,
    duration_s: float = DEFAULT_DURATION_S,
    warmup: int = 20,
    miss: str = "best-effort",
    quantile: str | None = None,
    start_timeout_s: float = 180.0,
    plots: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the comparison and write ``results.json`` and the report into ``out_dir``; returns the results."""
    say = (lambda *a, **k: None) if quiet else (lambda *a, **k: print(*a, **k, flush=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"--count must be in [1, {MAX_COUNT}], got {count}")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"--duration must be in (0, {MAX_DURATION_S:g}] seconds per policy, got {duration_s:g}")
    if not 0 <= warmup <= 1000:
        raise ValueError(f"--warmup must be in [0, 1000], got {warmup}")
    cspec = ContentionSpec.parse(contention, quota=quota)
    overload = None
    if arrival.startswith("overload"):
        _, _, f = arrival.partition(":")
        try:
            overload = float(f) if f else 1.2
        except ValueError:
            raise ValueError(f"bad --arrival {arrival!r}: use overload[:FACTOR], e.g. overload:1.2") from None
        if not 0.1 <= overload <= 10:
            raise ValueError(f"--arrival overload factor must be in [0.1, 10], got {overload:g}")
    sel, selection = load_selected(table)
    rows = sel.rows
    images, labels, b = load_eval_set(bundle)
    # The daemon resolves its own profile (the bundle's unless told); the oracle pass needs the
    # runtime settings the table was measured with.
    prof = profile or sel.header.profile or b.profile
    token = os.environ.get("EDGEKIT_TOKEN")  # the daemon requires it when set in its environment
    placement = place()
    restore = placement.pin_self("client")
    say(f"evaluate: {placement.describe()}")
    labels_short = variant_labels(rows)
    results: dict[str, Any] = {
        "kind": "policy-comparison",
        "version": 2,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": _host(),
        "placement": placement.to_dict(),
        "bundle": str(bundle),
        "table": str(table),
        "profile": prof,
        "selection": selection,
        "deadline_spec": deadline,
        "warmup": warmup,
        "duration_limit_s": duration_s,
        "variants": [
            {"label": labels_short[r.variant], "variant": r.variant, "accuracy": r.accuracy,
             "p50_ms": r.p50_ms, "p95_ms": r.p95_ms, "p99_ms": r.p99_ms, "mean_ms": r.mean_ms}
            for r in rows
        ],
        "variant_labels": labels_short,
        "complete": False,
        "policies": {},
    }
    schedule: ContentionSchedule | None = None
    try:
        # --- the serving floor, measured with the same client and the fastest variant
        probe = None
        if deadline == "auto" or "oracle" in policies or "best-static" in policies or overload:
            say(f"evaluate: probing the serving floor with the fastest variant ({PROBE_COUNT} requests)")
            probe = probe_serving(bundle, table, rows[0].variant, profile, miss, images, labels, placement,
                                  out / "daemon-probe-fastest.log", start_timeout_s, token)
            say(f"evaluate: serving floor {probe['floor_ms']:.3f} ms on the daemon's clock "
                f"({probe['e2e_overhead_ms']:.3f} ms end to end)")
            results["probe"] = {"fastest": probe}
        dspec = auto_deadline(rows, probe["floor_ms"] if probe else 0.0) if deadline == "auto" else deadline
        if overload:
            cap = probe_serving(bundle, table, rows[-1].variant, profile, miss, images, labels, placement,
                                out / "daemon-probe-most-accurate.log", start_timeout_s, token)
            results["probe"]["most_accurate"] = cap
            rate = overload * cap["throughput_rps"]
            arrival = f"poisson:{rate:.1f}"
            say(f"evaluate: overload: the most accurate variant serves {cap['throughput_rps']:.0f} requests/s "
                f"closed loop; open-loop Poisson arrivals at {overload:g}x = {rate:.0f}/s")
            results["overload"] = {"factor": overload, "capacity_rps": cap["throughput_rps"], "rate_rps": round(rate, 1)}
        try:
            wl = make_workload(images.shape[0], count, dspec, arrival, seed)
            warm = make_workload(images.shape[0], max(1, warmup), dspec, "closed", seed + WARMUP_SEED_OFFSET) \
                if warmup else None
        except WorkloadError as exc:
            raise ValueError(str(exc)) from None
        results["workload"] = wl.to_dict()
        results["contention"] = {"spec": cspec.describe(), "kind": cspec.kind, "what": cspec.what(),
                                 "share": cspec.share, "load": cspec.load, "quota": cspec.quota,
                                 "window": list(cspec.window(wl.count))}
        say(f"evaluate: {len(rows)} selected variants, {wl.count} requests per policy, deadlines {wl.deadline} ms, "
            f"arrivals {wl.arrival}, contention {cspec.describe()}, seed {seed}")
        if cspec.active:
            a, z = cspec.window(wl.count)
            say(f"evaluate: contention while requests {a}..{z - 1} are issued (same for every policy): {cspec.what()}")
        schedule = ContentionSchedule(cspec, wl.count, max_s=min(MAX_DURATION_S, duration_s + 60), placement=placement)

        # --- the oracle pass (and from it the best static CNN), on the daemon's cores
        op = None
        if "oracle" in policies or "best-static" in policies:
            assert probe is not None
            say(f"evaluate: oracle: timing all {len(rows)} variants on every request")
            placement.pin_self("server")
            schedule.target(os.getpid())
            try:
                op = oracle_pass(b, rows, images, wl, prof, schedule, progress=None if quiet else _progress("oracle pass"))
            finally:
                placement.pin_self("client")
            served = np.mean(op.preds == labels[wl.image_indices][:, None], axis=0)
            results["held_out"] = {
                "note": "table accuracy: the benchmark's 'select' half of the eval set; served: this workload's "
                        "images, drawn from the disjoint 'serve' half",
                "variants": {labels_short[r.variant]: {"table": round(r.accuracy, 4), "served": round(float(a), 4),
                                                       "gap": round(float(a) - r.accuracy, 4)}
                             for r, a in zip(rows, served)},
            }
            miss_rates = static_miss_rates(op, wl, probe["floor_ms"])
            pick = best_static(rows, miss_rates)
            results["best_static"] = {
                "variant": rows[pick].variant, "label": labels_short[rows[pick].variant],
                "max_miss": BEST_STATIC_MAX_MISS,
                "predicted_miss_rates": {labels_short[r.variant]: round(float(m), 4) for r, m in zip(rows, miss_rates)},
            }
            say(f"evaluate: best static CNN (most accurate with at most {BEST_STATIC_MAX_MISS:.0%} misses in the "
                f"oracle pass): {labels_short[rows[pick].variant]} {rows[pick].variant}")

        # --- every daemon policy, the same requests
        runs: dict[str, LoadResult] = {}
        for pol in policies:
            if pol == "oracle":
                continue
            served = pol
            if pol == "best-static":
                served = f"static:{results['best_static']['variant']}"
            say(f"evaluate: policy {pol}: starting the daemon")
            d = Daemon(serve_argv(bundle, table, served, profile, miss, quantile),
                       out / f"daemon-{pol.replace(':', '_').replace('/', '_')}.log", start_timeout_s,
                       placement.pin_server())
            try:
                url = d.start()
                wait_ready(url, timeout_s=30.0)
                if warm is not None:
                    run_load(url, images, labels, warm, token=token, duration_s=min(duration_s, 60.0), binary=True)
                schedule.reset()
                assert d.proc is not None
                schedule.target(d.proc.pid)
                res = run_load(url, images, labels, wl, token=token, duration_s=duration_s, on_request=schedule,
                               progress=None if quiet else _progress(pol), binary=True)
            finally:
                schedule.halt()
                d.stop()
            runs[pol] = res
            s = res.summary()
            s["slowdown"] = achieved_slowdown(res.records, rows, cspec.window(wl.count)) if cspec.active else None
            results["policies"][pol] = {
                "summary": s, "truncated": res.truncated, "contention_s": schedule.record(),
                "daemon_log": d.log_path.name, "records": [r.to_dict() for r in res.records],
                "served_as": served,
            }
            if s["slowdown"] and s["slowdown"]["slowdown"] is not None:
                say(f"evaluate: policy {pol}: contention slowed served inferences {s['slowdown']['slowdown']:.2f}x "
                    f"(median observed/table {s['slowdown']['inside_ratio']:.2f} inside the window, "
                    f"{s['slowdown']['outside_ratio']:.2f} outside)")
            if res.truncated:
                say(f"evaluate: policy {pol}: stopped by --duration {duration_s:g} s after {len(res.records)} requests")
            # A partial file beside the final one, so an interrupted run leaves its finished policies.
            atomic_write_json(out / "results.partial.json", results)

        if "oracle" in policies and op is not None and probe is not None:
            recs, wall = oracle_records(op, rows, wl, labels, probe["e2e_overhead_ms"], probe["floor_ms"])
            results["policies"]["oracle"] = {
                "summary": summarize(recs, wall), "truncated": False, "contention_s": op.intervals,
                "records": [r.to_dict() for r in recs],
            }
            results["oracle"] = {
                "method": ORACLE_METHOD,
                "overhead_ms": probe["e2e_overhead_ms"],
                "daemon_overhead_ms": probe["floor_ms"],
                "overhead_source": "probe",
                "pass_wall_s": round(op.wall_s, 3),
                "variants": op.variants,
                "latency_ms": np.round(op.latency_ms, 4).tolist(),
                "preds": op.preds.tolist(),
                "variant_accuracy_on_workload": {
                    v: round(float(np.mean(op.preds[:, j] == labels[wl.image_indices])), 4)
                    for j, v in enumerate(op.variants)
                },
            }
        slow = [p["summary"]["slowdown"]["slowdown"] for p in results["policies"].values()
                if p["summary"].get("slowdown") and p["summary"]["slowdown"]["slowdown"] is not None]
        results["contention"]["achieved_slowdown"] = round(float(np.median(slow)), 3) if slow else None
    finally:
        if schedule is not None:
            schedule.halt()
        if restore is not None:
            os.sched_setaffinity(0, restore)

    results["complete"] = True
    if plots:
        from benchmarks.eval_report import write_report

        write_report(results, out)
    atomic_write_text(out / "table.txt", comparison_table(results) + "\n\nvariants (by table latency):\n"
                      + variant_legend(results) + "\n" + context_lines(results))
    # results.json last: its presence means the comparison finished.
    atomic_write_json(out / "results.json", results)
    (out / "results.partial.json").unlink(missing_ok=True)
    return results


def context_lines(results: dict[str, Any]) -> str:
    """What the table was measured under: placement, floor, deadlines, contention and its effect."""
    lines = []
    pl = results.get("placement") or {}
    if pl.get("server_cpus") is not None:
        lines.append(f"placement: daemon on cpu {pl['server_cpus']}, load generator on cpu {pl['client_cpus']}")
    pr = (results.get("probe") or {}).get("fastest")
    if pr:
        lines.append(f"serving floor (fastest variant, daemon clock, p50): {pr['floor_ms']:.3f} ms; "
                     f"end to end {pr['e2e_overhead_ms']:.3f} ms")
    wl = results.get("workload") or {}
    if wl:
        lines.append(f"deadlines: {wl.get('deadline')} ms; arrivals: {wl.get('arrival')}")
    ov = results.get("overload")
    if ov:
        lines.append(f"overload: {ov['factor']:g}x the most accurate variant's capacity ({ov['capacity_rps']:.0f}/s) "
                     f"= {ov['rate_rps']:.0f} requests/s")
    c = results.get("contention") or {}
    if c.get("share"):
        sd = c.get("achieved_slowdown")
        lines.append(f"contention: {c['spec']}: {c['what']}; achieved slowdown of served inferences "
                     f"(median observed/table inside vs outside the window): "
                     f"{'-' if sd is None else f'{sd:.2f}x'}")
    ho = results.get("held_out")
    if ho:
        gaps = [v["gap"] for v in ho["variants"].values()]
        lines.append("served minus table accuracy per variant (held-out images): "
                     + ", ".join(f"{k} {v['gap'] * 100:+.2f}" for k, v in ho["variants"].items())
                     + f" points (mean {np.mean(gaps) * 100:+.2f})")
    bs = results.get("best_static")
    if bs:
        lines.append(f"best static CNN: {bs['label']} ({bs['variant']})")
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder or .tar.gz (its eval set supplies images and labels)")
    p.add_argument("--table", required=True, help="selected table (from 'edgekit select')")
    p.add_argument("--profile", default=None,
                   help="device profile (default: the bundle's for the daemon, the table's for the oracle pass)")
    p.add_argument("--policies", default=",".join(POLICIES),
                   help=f"comma-separated, run in this order (default {','.join(POLICIES)}); "
                   "also quantile-table (alias oracle-free) and static:<variant>")
    p.add_argument("--count", type=int, default=DEFAULT_COUNT, help=f"requests per policy (default {DEFAULT_COUNT})")
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S,
                   help=f"cap on each policy's run in seconds (default {DEFAULT_DURATION_S:g})")
    p.add_argument("--deadline", default="auto",
                   help="auto (probe the serving floor, then uniform between floor + fastest p95 and floor + 1.1 x "
                        "slowest p95) | fixed:MS | uniform:LO:HI | trace:FILE")
    p.add_argument("--arrival", default="closed",
                   help="closed | poisson:RATE (requests/s) | overload[:FACTOR] (Poisson at FACTOR, default 1.2, "
                        "x the measured capacity of the most accurate variant)")
    p.add_argument("--contention", default="none",
                   help="none | KIND[:SHARE] with KIND cpu (a busy process on each of the daemon's cores), quota "
                        "(the daemon throttled by the kernel's CPU quota) or membw (memory-bandwidth load); SHARE "
                        "half (default), full or a number in (0,1]: the middle part of the requests under contention")
    p.add_argument("--quota", type=float, default=0.4,
                   help="with --contention quota: the share of one core the daemon gets (default 0.4)")
    p.add_argument("--seed", type=int, default=0, help="workload seed (same for every policy)")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured requests sent to each daemon first (default 20)")
    p.add_argument("--miss", default="best-effort", choices=("best-effort", "reject"), help="daemon's miss policy")
    p.add_argument("--quantile", default=None, choices=QUANTILES,
                   help="latency quantile the daemon predicts with (daemon default if unset)")
    p.add_argument("--out", default="evaluation", help="output folder for results.json, report.md and plots")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots and the report")


def _terminate(signum, frame) -> None:
    # Turn SIGTERM into an exception so the finally blocks stop the daemon and the CPU hog.
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    policies = parse_policies(args.policies)
    ContentionSpec.parse(args.contention, quota=args.quota)
    old = signal.signal(signal.SIGTERM, _terminate)
    try:
        results = evaluate(
            args.bundle, args.table, args.out,
            policies=policies, profile=args.profile, count=args.count, deadline=args.deadline,
            arrival=args.arrival, contention=args.contention, quota=args.quota, seed=args.seed,
            duration_s=args.duration,
            warmup=args.warmup, miss=args.miss, quantile=args.quantile, plots=not args.no_plots,
        )
    finally:
        signal.signal(signal.SIGTERM, old)
    out = Path(args.out)
    print()
    print((out / "table.txt").read_text(), end="")
    truncated = [n for n, p in results["policies"].items() if p.get("truncated")]
    if truncated:
        print(f"\nnote: stopped by --duration before the last request: {', '.join(truncated)}")
    print(f"\nresults: {out / 'results.json'}" + ("" if args.no_plots else f"\nreport:  {out / 'report.md'}"))
    return 0
