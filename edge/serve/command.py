"""`edgekit serve`: the deadline-aware inference daemon, a thin Open Inference Protocol (KServe v2) transport
over the embeddable runtime (``edge.runtime.classifier.AdaptiveClassifier``).

One logical model (``edgekit`` by default) is served; its variants are internal.  Each
request carries ``parameters.deadline_ms``, counted from when its first bytes reached the
daemon's socket.  A request that finds the daemon idle runs inline on the event loop, with
no hand-off to another thread; requests that arrive meanwhile wait in earliest-deadline-first
order.  With ``--workers N`` (N > 1) inference runs on N threads, each with its own copies.

Endpoints: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``,
``GET /v2/models/{name}``, ``GET /v2/models/{name}/ready``,
``POST /v2/models/{name}/infer`` (JSON tensors and the binary tensor data extension),
``GET /metrics`` (Prometheus), ``POST /admin/reload`` and
``POST /v2/repository/models/{name}/load`` (hot reload of the selected table; SIGHUP
does the same), ``GET /admin/status``: the routes are ``edge.serve.app``. This module is the command
line, the event loop, the signals (SIGTERM drains, SIGHUP reloads) and the start-up report.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time

from edge.core.errors import StepFailed, UsageError
from edge.core.memory import rss_mb
from edge.runtime.classifier import AdaptiveClassifier, RuntimeOptions
from edge.runtime.selector import MISS_POLICIES, Policy
from edge.runtime.slowdown import FILTERS
from edge.serve.app import ServeConfig, V2App, log
from edge.serve.http.listener import TransportLimits, loop_name, new_event_loop
from edge.tables.table import QUANTILES, TableError
from edge.v2.codec import MAX_DEADLINE_MS

MAX_TOKEN_FILE = 4096
DRAIN_GRACE_S = 0.5  # after SIGTERM, how long a just-accepted connection has to send its request


def _read_token_file(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UsageError(f"--token-file {path}: {exc.strerror}") from None
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"--token-file {path} is not a regular file")
        data = os.read(fd, MAX_TOKEN_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE:
        raise UsageError(f"--token-file {path} is over {MAX_TOKEN_FILE} bytes; it should hold just the token")
    tok = data.decode("utf-8", "replace").strip()
    if not tok:
        raise UsageError(f"--token-file {path} is empty")
    return tok


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    if not (args.max_body_mb > 0 and math.isfinite(args.max_body_mb)):
        raise UsageError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    if args.default_deadline_ms is not None and not (0 < args.default_deadline_ms <= MAX_DEADLINE_MS):
        raise UsageError(f"--default-deadline-ms must be in (0, {MAX_DEADLINE_MS:g}]")
    if not (0 < args.drain_timeout <= 3600):
        raise UsageError("--drain-timeout must be in (0, 3600] seconds")
    if not (args.inject_delay_ms >= 0 and math.isfinite(args.inject_delay_ms)):
        raise UsageError("--inject-delay-ms must be >= 0")
    token = None
    if args.token_file:
        token = _read_token_file(args.token_file)
    elif args.token:
        log("warning: --token shows in 'ps'; prefer --token-file or the EDGEKIT_TOKEN environment variable")
        token = args.token
    else:
        token = os.environ.get("EDGEKIT_TOKEN") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        log(f"warning: binding {args.host} without a token; anyone who can reach it may use it (set --token-file)")
    runtime = RuntimeOptions(policy=Policy.from_string(args.policy), miss=args.miss, quantile=args.quantile,
                             slowdown_filter=args.filter, queue_size=args.queue_size, workers=args.workers,
                             inject_delay_ms=args.inject_delay_ms)
    limits = TransportLimits(max_connections=args.max_connections,
                             max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                             header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
                             idle_timeout_s=args.idle_timeout)
    return ServeConfig(bundle=str(args.bundle), table=str(args.table), profile=args.profile, host=args.host,
                       port=args.port, model_name=args.model_name, token=token,
                       default_deadline_ms=args.default_deadline_ms, drain_timeout_s=float(args.drain_timeout),
                       access_log=bool(args.access_log), runtime=runtime, limits=limits)


def _since_process_start() -> float:
    """Seconds since this process was created (from /proc; NaN where unknown)."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder or .tar.gz")
    p.add_argument("--table", required=True, metavar="SELECTED.json", help="selected table from 'edgekit select'")
    p.add_argument("--profile", default=None, help="device profile (default: the bundle's)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000,
                   help="port (0: pick a free one; the 'listening on' line says which)")
    p.add_argument("--policy", default="adaptive",
                   help="adaptive | quantile-table (alias oracle-free) | mean-table | most-accurate | fastest "
                        "| static:<variant>")
    p.add_argument("--miss", default="best-effort", choices=MISS_POLICIES,
                   help="when no variant fits: run the fastest and flag the miss, or answer 408 at once")
    p.add_argument("--quantile", default=None, choices=QUANTILES,
                   help="table latency the selector predicts with (default: the one the table was selected on, p95)")
    p.add_argument("--queue-size", type=int, default=64, help="EDF queue bound; beyond it requests get 503")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="require 'Authorization: Bearer TOKEN', TOKEN read from FILE (or set $EDGEKIT_TOKEN)")
    p.add_argument("--token", default=None, help="the token on the command line (shows in 'ps'; prefer --token-file)")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="request size cap (413 above it)")
    p.add_argument("--max-connections", type=int, default=512,
                   help="open connections at most (also kept under the file-descriptor limit); past it the "
                        "longest-idle connection is closed")
    p.add_argument("--header-timeout", type=float, default=5.0, help="seconds a request's headers may take to arrive")
    p.add_argument("--body-timeout", type=float, default=10.0,
                   help="seconds a request's body may take after its headers")
    p.add_argument("--idle-timeout", type=float, default=60.0, help="seconds an idle keep-alive connection stays open")
    p.add_argument("--drain-timeout", type=float, default=10.0,
                   help="on SIGTERM, seconds to finish queued work before exiting regardless")
    p.add_argument("--model-name", default="edgekit", help="the logical model name clients ask for")
    p.add_argument("--workers", type=int, default=None,
                   help="inference slots (default: the profile's; 1 runs inference inline on the event loop)")
    p.add_argument("--filter", default="kalman", choices=sorted(FILTERS), help="online slowdown filter")
    p.add_argument("--default-deadline-ms", type=float, default=None,
                   help="deadline for requests without parameters.deadline_ms (default: such requests get 400)")
    p.add_argument("--inject-delay-ms", type=float, default=0.0,
                   help="testing: add this much time to every inference, as a slower board would")
    p.add_argument("--access-log", action="store_true", help="log every request to stderr")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:
        clf = AdaptiveClassifier.open(cfg.bundle, cfg.table, cfg.profile, options=cfg.runtime, log=log)
    except TableError as exc:
        raise UsageError(str(exc)) from None
    for info in clf.host.info.values():
        state = "ready" if info.ready else "NOT READY"
        log(f"variant {info.variant} [{info.provider or '-'}]: {state}: {info.reason}")
    sel = clf.selector
    loop = new_event_loop()
    daemon = V2App(cfg, clf, loop)
    try:
        host, port = daemon.server.listen(cfg.host, cfg.port)
    except OSError as exc:
        raise StepFailed(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
    stop_at: list[float] = []

    def on_term() -> None:
        if stop_at:
            return
        log("shutting down: no new requests; finishing queued work")
        stop_at.append(time.perf_counter())
        daemon.server.begin_drain()
        clf.scheduler.close(drain=True, timeout=0)  # new work gets 503; queued and running work finishes
        # Backstop: whatever happens on the loop, the process ends within the drain timeout.
        t = threading.Timer(cfg.drain_timeout_s + 1.0, lambda: os._exit(3))
        t.daemon = True
        t.start()
        check()

    def check() -> None:
        elapsed = time.perf_counter() - stop_at[0]
        settled = elapsed >= DRAIN_GRACE_S and daemon.server.idle() and clf.scheduler.depth == 0 \
            and clf.scheduler.busy == 0
        if settled or elapsed >= cfg.drain_timeout_s:
            if not settled:
                log(f"drain timeout ({cfg.drain_timeout_s:g} s) reached; closing what is left")
            loop.stop()
            return
        loop.call_later(0.02, check)

    sigs = [signal.SIGTERM, signal.SIGINT]
    for s in sigs:
        loop.add_signal_handler(s, on_term)
    if hasattr(signal, "SIGHUP"):
        # SIGHUP: re-read the table file; a bad one keeps the current table serving
        loop.add_signal_handler(signal.SIGHUP, lambda: daemon.start_reload())
    def announce() -> None:
        # Said from inside the running loop: uvloop wires its signal handlers up when the loop
        # starts, so a supervisor that signals as soon as it reads "listening on" (SIGHUP to
        # reload, SIGTERM to stop) must not read it before then, or the signal is lost.
        tf_loaded = any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
        print(f"loaded {len(sel)} variants x {clf.workers} slot(s) in {clf.load_s:.2f} s; "
              f"policy {sel.policy}, miss {sel.miss}, quantile {sel.quantile}", flush=True)
        print(f"resident memory with variants loaded: {rss_mb():.1f} MB", flush=True)
        print(f"tensorflow in sys.modules: {'YES (unexpected)' if tf_loaded else 'no'}", flush=True)
        print(f"transport: {loop_name(loop)} + httptools, inference "
              f"{'inline on the event loop' if daemon.pool is None else f'on {clf.workers} threads'}, "
              f"at most {daemon.server.max_connections} connections", flush=True)
        print(f"ready {_since_process_start():.2f} s after process start", flush=True)
        shown = f"[{host}]" if ":" in str(host) else host
        print(f"listening on http://{shown}:{port}", flush=True)

    loop.call_soon(announce)
    try:
        loop.run_forever()
    finally:
        for s in sigs + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []):
            loop.remove_signal_handler(s)
        daemon.server.close_all()
        if daemon.pool is not None:
            daemon.pool.shutdown(wait=False, cancel_futures=True)
        loop.close()
        m = daemon.metrics
        log("stopped; requests: " + ", ".join(
            f"{o}={m.value(o)}" for o in ("met", "missed", "rejected", "queue_full", "invalid", "shutting_down")))
    return 0
