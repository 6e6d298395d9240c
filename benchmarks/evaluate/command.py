"""`edgekit evaluate`: run the same deadline workload against each serving policy and an oracle.

Every daemon policy gets a fresh `edgekit serve` subprocess and exactly the same requests
(images, deadlines, arrival times, contention window). The oracle is computed from a
separate in-process pass that runs every selected variant on every request's image, back
to back, under the same contention schedule (``benchmarks.evaluate.oracle``).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.evaluate.contention import Contention, ContentionSchedule, ContentionSpec
from benchmarks.evaluate.daemon_proc import Daemon, serve_argv
from benchmarks.evaluate.loadgen import (
    DEFAULT_DURATION_S,
    MAX_DURATION_S,
    LoadResult,
    RequestRecord,
    load_eval_set,
    run_load,
    summarize,
    wait_ready,
)
from benchmarks.evaluate.oracle import (
    BEST_STATIC_MAX_MISS,
    ORACLE_METHOD,
    best_static,
    oracle_pass,
    oracle_records,
    static_miss_rates,
)
from benchmarks.evaluate.placement import Placement, place
from benchmarks.evaluate.report import render_text, write_report
from benchmarks.evaluate.workload import MAX_COUNT, WorkloadError, make_workload
from edge.core.atomic import atomic_write_json, atomic_write_text
from edge.core.errors import StepFailed, UsageError
from edge.runtime.selector import POLICIES, POLICY_ALIASES, Policy
from edge.tables.table import QUANTILES, LatencyRow, LatencyTable

EVALUATE_ONLY = ("best-static", "oracle")  # computed here, not daemon policies (benchmarks.evaluate.oracle)
DEFAULT_POLICIES = ("adaptive", "mean-table", "quantile-table", "most-accurate", "best-static", "oracle")
PROBE_COUNT = 300  # requests in the serving-floor probe
DEFAULT_COUNT = 300
WARMUP_SEED_OFFSET = 7919  # warm-up requests come from a different stream than the measured ones


# ----------------------------------------------------------------------------- selected table


def load_selected(path: str | Path) -> tuple[LatencyTable, dict[str, Any]]:
    """The selected table (kind 'selected', monotonic) and its selection parameters, rows in latency order."""
    from edge.tables.table import SelectedTable

    t = SelectedTable.load(path)
    return t.as_latency_table(), t.params.to_dict()


def auto_deadline(rows: tuple[LatencyRow, ...], floor_ms: float = 0.0) -> str:
    """Uniform between floor + the fastest variant's p95 and floor + 1.1 x the slowest's: every
    deadline leaves room for the measured serving floor, and the range spans the whole front."""
    p95 = [r.p95_ms for r in rows]
    lo, hi = floor_ms + min(p95), floor_ms + 1.1 * max(p95)
    return f"uniform:{lo:.4g}:{hi:.4g}" if hi > lo else f"fixed:{lo:.4g}"


def parse_policies(text: str) -> list[str]:
    """The comma-separated policies to compare: the daemon's (``edge.runtime.selector.Policy``) and the evaluation's
    own."""
    pols = [p.strip() for p in text.split(",") if p.strip()]
    if not pols:
        raise UsageError("--policies is empty; e.g. --policies adaptive,mean-table,oracle")
    for p in pols:
        if p in EVALUATE_ONLY:
            continue
        try:
            Policy.from_string(p)
        except ValueError:
            available = (*POLICIES, *POLICY_ALIASES, *EVALUATE_ONLY)
            raise UsageError(f"unknown policy '{p}'; available: {', '.join(available)}") from None
    if len(set(pols)) != len(pols):
        raise UsageError(f"--policies lists a policy twice: {text}")
    return pols


# ----------------------------------------------------------------------------- the comparison


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


def variant_labels(rows: tuple[LatencyRow, ...]) -> dict[str, str]:
    """Short names V0..Vk-1 in latency order, for tables and plots."""
    return {r.variant: f"V{j}" for j, r in enumerate(rows)}


def _host() -> dict[str, Any]:
    info: dict[str, Any] = {"machine": platform.machine(), "os": platform.platform(), "cores": os.cpu_count() or 1,
                            "python": platform.python_version()}
    try:
        from benchmarks.bench.sysinfo import device_name as cpu_model

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
                  token: str | None, count: int = PROBE_COUNT,
                  contention: ContentionSpec | None = None) -> dict[str, float]:
    """Serve ``count`` closed-loop requests with ``static:variant`` and no deadline pressure, with the
    same client as the comparison (under ``contention`` for all of them when given). Returns the serving
    floor on the daemon's clock (p50 of total minus inference), the same on the end-to-end clock, and
    the closed-loop throughput (requests/s)."""
    wl = make_workload(images.shape[0], count, "fixed:60000", "closed", 104729)
    d = Daemon(serve_argv(bundle, table, f"static:{variant}", profile, miss, None), log, start_timeout_s,
               cpus=placement.server)
    try:
        url = d.start()
        wait_ready(url, timeout_s=30.0)
        run_load(url, images, labels, wl.head(min(50, count)), token=token, binary=True)
        assert d.proc is not None
        c = Contention(contention, d.proc.pid, placement.server and set(placement.server),
                       placement.client and set(placement.client), 120.0).start() if contention else None
        try:
            res = run_load(url, images, labels, wl, token=token, binary=True)
        finally:
            if c is not None:
                c.stop()
    finally:
        d.stop()
    ok = [r for r in res.records if r.status == 200 and r.inference_ms is not None and r.total_ms is not None]
    if len(ok) < count // 2:
        raise StepFailed(f"the serving probe with {variant} got {len(ok)} answers out of {count}; see {log}")
    return {
        "floor_ms": round(float(np.median([r.total_ms - r.inference_ms for r in ok])), 4),
        "e2e_overhead_ms": round(float(np.median([r.e2e_ms - r.inference_ms for r in ok])), 4),
        "inference_p50_ms": round(float(np.median([r.inference_ms for r in ok])), 4),
        "throughput_rps": round(len(ok) / res.wall_s, 1),
    }


def _floors(probe: dict, contended: dict | None, count: int, cspec: ContentionSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per request, the serving overhead end to end and on the daemon's clock (contended in the window)."""
    e2e, daemon = np.full(count, probe["e2e_overhead_ms"]), np.full(count, probe["floor_ms"])
    if contended is not None:
        a, z = cspec.window(count)
        e2e[a:z], daemon[a:z] = contended["e2e_overhead_ms"], contended["floor_ms"]
    return e2e, daemon


def evaluate(
    bundle: str,
    table: str,
    out_dir: str | Path,
    *,
    policies: list[str] = list(DEFAULT_POLICIES),
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
        raise UsageError(f"--count must be in [1, {MAX_COUNT}], got {count}")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise UsageError(f"--duration must be in (0, {MAX_DURATION_S:g}] seconds per policy, got {duration_s:g}")
    if not 0 <= warmup <= 1000:
        raise UsageError(f"--warmup must be in [0, 1000], got {warmup}")
    cspec = ContentionSpec.parse(contention, quota=quota)
    overload = None
    if arrival.startswith("overload"):
        _, _, f = arrival.partition(":")
        try:
            overload = float(f) if f else 1.2
        except ValueError:
            raise UsageError(f"bad --arrival {arrival!r}: use overload[:FACTOR], e.g. overload:1.2") from None
        if not 0.1 <= overload <= 10:
            raise UsageError(f"--arrival overload factor must be in [0.1, 10], got {overload:g}")
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
            if cspec.active and ("oracle" in policies or "best-static" in policies):  # the floor in the window
                probe_c = probe_serving(bundle, table, rows[0].variant, profile, miss, images, labels, placement,
                                        out / "daemon-probe-contention.log", start_timeout_s, token, contention=cspec)
                results["probe"]["fastest_under_contention"] = probe_c
                say(f"evaluate: serving floor under {cspec.describe()}: {probe_c['floor_ms']:.3f} ms on the "
                    f"daemon's clock ({probe_c['e2e_overhead_ms']:.3f} ms end to end)")
        dspec = auto_deadline(rows, probe["floor_ms"] if probe else 0.0) if deadline == "auto" else deadline
        if overload:
            cap = probe_serving(bundle, table, rows[-1].variant, profile, miss, images, labels, placement,
                                out / "daemon-probe-most-accurate.log", start_timeout_s, token)
            results["probe"]["most_accurate"] = cap
            rate = overload * cap["throughput_rps"]
            arrival = f"poisson:{rate:.1f}"
            say(f"evaluate: overload: the most accurate variant serves {cap['throughput_rps']:.0f} requests/s "
                f"closed loop; open-loop Poisson arrivals at {overload:g}x = {rate:.0f}/s")
            results["overload"] = {"factor": overload, "capacity_rps": cap["throughput_rps"],
                                   "rate_rps": round(rate, 1)}
        try:
            wl = make_workload(images.shape[0], count, dspec, arrival, seed)
            warm = make_workload(images.shape[0], max(1, warmup), dspec, "closed", seed + WARMUP_SEED_OFFSET) \
                if warmup else None
        except WorkloadError as exc:
            raise UsageError(str(exc)) from None
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
                op = oracle_pass(b, rows, images, wl, prof, schedule,
                                 progress=None if quiet else _progress("oracle pass"))
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
            floors = _floors(probe, results["probe"].get("fastest_under_contention"), wl.count, cspec)
            miss_rates = static_miss_rates(op, wl, floors[1])  # on the daemon's clock
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
            log = out / f"daemon-{pol.replace(':', '_').replace('/', '_')}.log"
            d = Daemon(serve_argv(bundle, table, served, profile, miss, quantile), log, start_timeout_s,
                       cpus=placement.server)
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
                "daemon_log": log.name, "records": [r.to_dict() for r in res.records],
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
            recs, wall = oracle_records(op, rows, wl, labels, *floors)
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
        write_report(results, out)
    atomic_write_text(out / "table.txt", render_text(results))
    # results.json last: its presence means the comparison finished.
    atomic_write_json(out / "results.json", results)
    (out / "results.partial.json").unlink(missing_ok=True)
    return results


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE",
                   help="bundle folder or .tar.gz (its eval set supplies images and labels)")
    p.add_argument("--table", required=True, help="selected table (from 'edgekit select')")
    p.add_argument("--profile", default=None,
                   help="device profile (default: the bundle's for the daemon, the table's for the oracle pass)")
    p.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                   help=f"comma-separated, run in this order (default {','.join(DEFAULT_POLICIES)}); "
                   "also fastest, static:<variant> and oracle-free (alias of quantile-table)")
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
                        "(the daemon throttled by the kernel's CPU quota), membw (memory-bandwidth load) or rt (a "
                        "periodic real-time task on each of the daemon's cores; needs root or CAP_SYS_NICE); SHARE "
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
