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
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.contention import CpuHog, ContentionSpec
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

POLICIES = ("adaptive", "mean-table", "most-accurate", "fastest", "oracle")
DAEMON_POLICY = re.compile(r"^(adaptive|mean-table|quantile-table|most-accurate|fastest|oracle-free|static:.+)$")
LISTEN_RE = re.compile(r"listening on (http://\S+)")
DEFAULT_COUNT = 300
WARMUP_SEED_OFFSET = 7919  # warm-up requests come from a different stream than the measured ones

ORACLE_METHOD = (
    "In-process pass: for each request, in workload order and under the same contention window, "
    "every selected variant runs on that request's image back to back (order rotated per request), "
    "timing the runtime's predict call, the same span the daemon reports as inference_ms. The "
    "oracle's end-to-end latency is that time plus the serving overhead measured in the adaptive "
    "run (median of end-to-end minus the daemon's queue_ms and inference_ms: HTTP, JSON, input "
    "preparation, hand-off to the worker). Chosen over replaying the workload through the daemon once per variant "
    "(static:<variant>) because that measures each variant at a different moment of the run, so on "
    "a given request the variants would see different contention phases; back to back, they all see "
    "the same one. With Poisson arrivals the oracle also waits for its own earlier requests (a "
    "single-server FIFO queue simulated from the measured times). It picks the most accurate variant "
    "by table accuracy whose latency meets the deadline, else the fastest on that request (a miss). "
    "The overhead is charged as a constant (its median), so rare hiccups of the HTTP path that hit the "
    "daemon policies do not hit the oracle: its miss rate is a lower bound, not a replay."
)


# ----------------------------------------------------------------------------- selected table


def load_selected(path: str | Path) -> tuple[LatencyTable, dict[str, Any]]:
    """The selected table (kind 'selected', monotonic) and its selection parameters, rows in latency order."""
    from edge.selection import SelectedTable

    t = SelectedTable.load(path)
    return t.as_latency_table(), t.params.to_dict()


def auto_deadline(rows: tuple[LatencyRow, ...]) -> str:
    """Uniform between the fastest and the slowest selected variants' p95."""
    p95 = [r.p95_ms for r in rows]
    lo, hi = min(p95), max(p95)
    return f"uniform:{lo:.4g}:{hi:.4g}" if hi > lo else f"fixed:{lo:.4g}"


def parse_policies(text: str) -> list[str]:
    pols = [p.strip() for p in text.split(",") if p.strip()]
    if not pols:
        raise ValueError("--policies is empty; e.g. --policies adaptive,mean-table,oracle")
    for p in pols:
        if p != "oracle" and not DAEMON_POLICY.match(p):
            raise ValueError(
                f"unknown policy '{p}'; available: {', '.join(POLICIES)}, quantile-table (oracle-free), static:<variant>"
            )
    if len(set(pols)) != len(pols):
        raise ValueError(f"--policies lists a policy twice: {text}")
    return pols


# ----------------------------------------------------------------------------- contention schedule


class ContentionSchedule:
    """Starts the CPU hog when request ``start`` is issued and stops it at request ``stop``.

    Keyed by request index, not wall time, so every policy (and the oracle pass) is under
    contention for exactly the same requests even though their runs take different times.
    """

    def __init__(self, spec: ContentionSpec, count: int, max_s: float):
        self.spec = spec
        self.start, self.stop = spec.window(count)
        self.max_s = max_s
        self.hog: CpuHog | None = None
        self.t0 = time.perf_counter()
        self.intervals: list[list[float]] = []  # [on_s, off_s] from t0

    def reset(self) -> None:
        self.halt()
        self.t0 = time.perf_counter()
        self.intervals = []

    def __call__(self, i: int) -> None:
        if not self.spec.active:
            return
        if i == self.start and self.hog is None:
            self.hog = CpuHog(self.max_s, load=self.spec.load).start()
            self.intervals.append([time.perf_counter() - self.t0, float("nan")])
        elif i == self.stop:
            self.halt()

    def halt(self) -> None:
        if self.hog is not None:
            self.hog.stop()
            self.hog = None
            if self.intervals and not np.isfinite(self.intervals[-1][1]):
                self.intervals[-1][1] = time.perf_counter() - self.t0

    def record(self) -> list[list[float]]:
        return [[round(a, 4), round(b, 4)] for a, b in self.intervals]


# ----------------------------------------------------------------------------- the daemon


class Daemon:
    """`edgekit serve` as a subprocess on an ephemeral loopback port; stopped with SIGTERM."""

    def __init__(self, argv: list[str], log_path: Path, start_timeout_s: float = 180.0):
        self.argv = argv
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self._log = None
        self._reader: threading.Thread | None = None

    def start(self) -> str:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w", encoding="utf-8")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
            env=env, text=True, bufsize=1,
        )
        lines: queue.Queue = queue.Queue()
        log = self._log

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                lines.put(line)
            lines.put(None)

        self._reader = threading.Thread(target=read, name="daemon-stdout", daemon=True)
        self._reader.start()
        end = time.monotonic() + self.start_timeout_s
        while time.monotonic() < end:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            m = LISTEN_RE.search(line)
            if m:
                self.url = m.group(1).rstrip("/")
                return self.url
        try:
            rc = self.proc.wait(timeout=5)  # its stdout closed: it is exiting
        except subprocess.TimeoutExpired:
            rc = None
        self.stop()
        tail = self._tail()
        why = f"exited with status {rc}" if rc is not None else f"did not print 'listening on' within {self.start_timeout_s:g} s"
        raise RuntimeError(f"the daemon (edgekit {' '.join(self.argv[3:])}) {why}; its log {self.log_path}:\n{tail}")

    def _tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 15.0) -> int | None:
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=2)
        if self._log is not None:
            self._log.close()
            self._log = None
        return p.returncode

    def __enter__(self) -> "Daemon":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_argv(bundle: str, table: str, policy: str, profile: str | None, miss: str, quantile: str | None) -> list[str]:
    argv = [sys.executable, "-m", "edgekit.cli", "serve", str(bundle), "--table", str(table),
            "--policy", policy, "--host", "127.0.0.1", "--port", "0", "--miss", miss]
    if profile:
        argv += ["--profile", profile]
    if quantile:
        argv += ["--quantile", quantile]
    return argv


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
    from edge.manifest import dequantize_output, prepare_input

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
    head = ["policy", "accuracy", "miss rate", "miss (daemon clock)", "p50 ms", "p99 ms", "req/s", "variants used"]
    body = []
    for name, pol in results["policies"].items():
        s = pol["summary"]
        used = " ".join(f"{labels.get(v, v)}:{c}" for v, c in sorted(s["variants"].items(), key=lambda kv: labels.get(kv[0], kv[0])))
        body.append([
            name, _pct(s["accuracy"]), _pct(s["miss_rate"]), _pct(s["server_miss_rate"]),
            _ms(s["p50_ms"]), _ms(s["p99_ms"]),
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
        from benchmarks.sysinfo import cpu_model

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
    cspec = ContentionSpec.parse(contention)
    sel, selection = load_selected(table)
    rows = sel.rows
    images, labels, b = load_eval_set(bundle)
    # The daemon resolves its own profile (the bundle's unless told); the oracle pass needs the
    # runtime settings the table was measured with.
    prof = profile or sel.header.profile or b.profile
    dspec = auto_deadline(rows) if deadline == "auto" else deadline
    try:
        wl = make_workload(images.shape[0], count, dspec, arrival, seed)
        warm = make_workload(images.shape[0], max(1, warmup), dspec, "closed", seed + WARMUP_SEED_OFFSET) if warmup else None
    except WorkloadError as exc:
        raise ValueError(str(exc)) from None
    labels_short = variant_labels(rows)
    say(f"evaluate: {len(rows)} selected variants, {wl.count} requests per policy, deadlines {wl.deadline} ms, "
        f"arrivals {wl.arrival}, contention {cspec.describe()}, seed {seed}")
    if cspec.active:
        a, z = cspec.window(wl.count)
        say(f"evaluate: a CPU hog spins one core while requests {a}..{z - 1} are issued (same for every policy)")

    results: dict[str, Any] = {
        "kind": "policy-comparison",
        "version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": _host(),
        "bundle": str(bundle),
        "table": str(table),
        "profile": prof,
        "selection": selection,
        "deadline_spec": deadline,
        "workload": wl.to_dict(),
        "warmup": warmup,
        "duration_limit_s": duration_s,
        "contention": {"spec": cspec.describe(), "share": cspec.share, "load": cspec.load,
                       "window": list(cspec.window(wl.count))},
        "variants": [
            {"label": labels_short[r.variant], "variant": r.variant, "accuracy": r.accuracy,
             "p50_ms": r.p50_ms, "p95_ms": r.p95_ms, "p99_ms": r.p99_ms, "mean_ms": r.mean_ms}
            for r in rows
        ],
        "variant_labels": labels_short,
        "complete": False,
        "policies": {},
    }
    runs: dict[str, LoadResult] = {}
    token = os.environ.get("EDGEKIT_TOKEN")  # the daemon requires it when set in its environment
    schedule = ContentionSchedule(cspec, wl.count, max_s=min(MAX_DURATION_S, duration_s + 60))
    try:
        for pol in policies:
            if pol == "oracle":
                continue
            say(f"evaluate: policy {pol}: starting the daemon")
            d = Daemon(serve_argv(bundle, table, pol, profile, miss, quantile),
                       out / f"daemon-{pol.replace(':', '_').replace('/', '_')}.log", start_timeout_s)
            try:
                url = d.start()
                wait_ready(url, timeout_s=30.0)
                if warm is not None:
                    run_load(url, images, labels, warm, token=token, duration_s=min(duration_s, 60.0))
                schedule.reset()
                res = run_load(url, images, labels, wl, token=token, duration_s=duration_s, on_request=schedule,
                               progress=None if quiet else _progress(pol))
            finally:
                schedule.halt()
                d.stop()
            runs[pol] = res
            s = res.summary()
            results["policies"][pol] = {
                "summary": s, "truncated": res.truncated, "contention_s": schedule.record(),
                "daemon_log": d.log_path.name, "records": [r.to_dict() for r in res.records],
            }
            if res.truncated:
                say(f"evaluate: policy {pol}: stopped by --duration {duration_s:g} s after {len(res.records)} requests")
            # A partial file beside the final one, so an interrupted run leaves its finished policies.
            atomic_write_json(out / "results.partial.json", results)

        if "oracle" in policies:
            src = "adaptive" if "adaptive" in runs else next(iter(runs), None)
            overhead = serving_overhead_ms(runs[src].records) if src else None
            d_overhead = serving_overhead_ms(runs[src].records, clock="daemon") if src else None
            if overhead is None:
                say("evaluate: oracle: no daemon run to measure the serving overhead from; assuming 0 ms")
                overhead, src = 0.0, None
            if d_overhead is None:
                d_overhead = overhead
            say(f"evaluate: oracle: timing all {len(rows)} variants on every request "
                f"(serving overhead {overhead:.3f} ms from the {src or 'no'} run)")
            op = oracle_pass(b, rows, images, wl, prof, schedule, progress=None if quiet else _progress("oracle pass"))
            recs, wall = oracle_records(op, rows, wl, labels, overhead, d_overhead)
            results["policies"]["oracle"] = {
                "summary": summarize(recs, wall), "truncated": False, "contention_s": op.intervals,
                "records": [r.to_dict() for r in recs],
            }
            results["oracle"] = {
                "method": ORACLE_METHOD,
                "overhead_ms": round(overhead, 4),
                "daemon_overhead_ms": round(d_overhead, 4),
                "overhead_source": src,
                "pass_wall_s": round(op.wall_s, 3),
                "variants": op.variants,
                "latency_ms": np.round(op.latency_ms, 4).tolist(),
                "preds": op.preds.tolist(),
                "variant_accuracy_on_workload": {
                    v: round(float(np.mean(op.preds[:, j] == labels[wl.image_indices])), 4)
                    for j, v in enumerate(op.variants)
                },
            }
    finally:
        schedule.halt()

    results["complete"] = True
    if plots:
        from benchmarks.eval_report import write_report

        write_report(results, out)
    atomic_write_text(out / "table.txt", comparison_table(results) + "\n\nvariants (by table latency):\n"
                      + variant_legend(results) + "\n")
    # results.json last: its presence means the comparison finished.
    atomic_write_json(out / "results.json", results)
    (out / "results.partial.json").unlink(missing_ok=True)
    return results


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
                   help="auto (uniform between the fastest and slowest selected p95) | fixed:MS | uniform:LO:HI | trace:FILE")
    p.add_argument("--arrival", default="closed", help="closed | poisson:RATE (requests/s)")
    p.add_argument("--contention", default="none",
                   help="none | half (a CPU hog on one core for the middle half of the requests) | full | SHARE in (0,1]")
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
    ContentionSpec.parse(args.contention)
    old = signal.signal(signal.SIGTERM, _terminate)
    try:
        results = evaluate(
            args.bundle, args.table, args.out,
            policies=policies, profile=args.profile, count=args.count, deadline=args.deadline,
            arrival=args.arrival, contention=args.contention, seed=args.seed, duration_s=args.duration,
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
