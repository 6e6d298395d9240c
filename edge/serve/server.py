"""The daemon's lifecycle, as uvicorn's ``Server``: open the runtime, listen, report, serve, reload on SIGHUP, drain.

``Server(config).run()`` opens the bundle and table (``AdaptiveClassifier``), builds the data
plane, the app and the listener on one event loop, prints the start-up report (the line
``listening on http://HOST:PORT`` last: supervisors and ``benchmarks.evaluate.daemon_proc`` wait
for it), and serves until SIGTERM or SIGINT. The signal handlers only schedule work on the loop;
the handlers that were installed before are put back when it stops. A drain stops accepting,
answers what was already sent (503 for new work) and ends within ``--drain-timeout``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from typing import Any

from edge.core.errors import StepFailed, UsageError
from edge.core.memory import rss_mb
from edge.runtime.classifier import AdaptiveClassifier
from edge.serve.app import V2App
from edge.serve.config import ServeConfig
from edge.serve.dataplane import DataPlane
from edge.serve.http.listener import Listener, loop_name, new_event_loop
from edge.serve.log import log
from edge.serve.metrics import ServerMetrics
from edge.tables.table import TableError

DRAIN_GRACE_S = 0.5  # after SIGTERM, how long a just-accepted connection has to send its request
DRAIN_POLL_S = 0.02
BACKSTOP_EXIT = 3  # the exit status when the drain backstop has to end the process
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNALS = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
SUMMARY_OUTCOMES = ("met", "missed", "rejected", "queue_full", "invalid", "shutting_down")


def since_process_start() -> float:
    """Seconds since this process was created (from /proc; NaN where unknown)."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


class Server:
    """One daemon: its runtime, data plane, app and listener on one event loop, from start-up to exit."""

    # Built by run(), in this order.
    loop: asyncio.AbstractEventLoop
    metrics: ServerMetrics
    plane: DataPlane
    app: V2App
    listener: Listener

    def __init__(self, config: ServeConfig):
        self.config = config
        self.should_exit = False  # set by SIGTERM/SIGINT; the drain runs from then on
        self._drain_started = 0.0
        self._backstop: threading.Timer | None = None
        self._original_handlers: dict[int, Any] = {}

    # ------------------------------------------------------------ start-up

    def open_runtime(self) -> AdaptiveClassifier:
        cfg = self.config
        try:
            clf = AdaptiveClassifier.open(cfg.bundle, cfg.table, cfg.profile, options=cfg.runtime, log=log)
        except TableError as exc:
            raise UsageError(str(exc)) from None
        for info in clf.variant_report():
            state = "ready" if info.ready else "NOT READY"
            log(f"variant {info.variant} [{info.provider or '-'}]: {state}: {info.reason}")
        return clf

    def _build(self, clf: AdaptiveClassifier, loop: asyncio.AbstractEventLoop) -> None:
        cfg = self.config
        # The gauges read the listener, built last because it needs the app it feeds.
        self.metrics = ServerMetrics(queue_depth=lambda: clf.queue_depth, slowdown=lambda: clf.slowdown_factor,
                                     connections=lambda: self.listener.open_connections,
                                     buffered_bytes=lambda: self.listener.buffered_bytes)
        self.plane = DataPlane(clf, loop, self.metrics, cfg.model_name, cfg.default_deadline_ms,
                               transport=self._transport_status)
        self.app = V2App(self.plane, self.metrics, token=cfg.token, access_log=cfg.access_log)
        self.listener = Listener(self.app, loop, cfg.limits, on_event=self.metrics.transport_event,
                                 idle=lambda: self.plane.idle, awake=self.plane.kept_awake)

    def _transport_status(self) -> dict:
        return {"loop": loop_name(self.loop), "open_connections": self.listener.open_connections,
                "max_connections": self.listener.max_connections}

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT, then drain; returns the exit status (0)."""
        cfg = self.config
        clf = self.open_runtime()
        self.loop = loop = new_event_loop()
        self._build(clf, loop)
        try:
            host, port = self.listener.listen(cfg.host, cfg.port)
        except OSError as exc:
            loop.close()
            raise StepFailed(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
        self._install_signal_handlers()
        # Said from inside the running loop: uvloop wires its signal handlers up when the loop
        # starts, so a supervisor that signals as soon as it reads "listening on" (SIGHUP to
        # reload, SIGTERM to stop) must not read it before then, or the signal is lost.
        loop.call_soon(self._announce, clf, host, port)
        try:
            loop.run_forever()
        finally:
            self._restore_signal_handlers()
            self.listener.close_all()
            idle = self.plane.idle
            self.plane.close()
            loop.close()
            if idle and self._backstop is not None:
                # Nothing left that could hang the exit; with inference still running it stays
                # armed, so that a stuck worker thread cannot keep the process alive.
                self._backstop.cancel()
            m = self.metrics
            log("stopped; requests: " + ", ".join(f"{o}={m.value(o)}" for o in SUMMARY_OUTCOMES))
        return 0

    def _announce(self, clf: AdaptiveClassifier, host: str, port: int) -> None:
        tf_loaded = any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
        sel = clf.describe_selector()
        n = len(clf.serving_variants)
        spin_us = self.config.limits.spin_us
        spin = f", busy polling {spin_us} us after each answer" if spin_us else ""
        print(f"loaded {n} variant{'s' if n != 1 else ''} x {clf.workers} slot(s) in {clf.load_s:.2f} s; "
              f"policy {sel['policy']}, miss {sel['miss']}, quantile {sel['quantile']}", flush=True)
        print(f"resident memory with variants loaded: {rss_mb():.1f} MB", flush=True)
        print(f"tensorflow in sys.modules: {'YES (unexpected)' if tf_loaded else 'no'}", flush=True)
        print(f"transport: {loop_name(self.loop)} + httptools, inference "
              f"{'inline on the event loop' if self.plane.inline else f'on {clf.workers} threads'}, "
              f"at most {self.listener.max_connections} connections{spin}", flush=True)
        print(f"ready {since_process_start():.2f} s after process start", flush=True)
        shown = f"[{host}]" if ":" in str(host) else host
        print(f"listening on http://{shown}:{port}", flush=True)

    # ------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> None:
        for sig in EXIT_SIGNALS + RELOAD_SIGNALS:
            self._original_handlers[sig] = signal.getsignal(sig)
        for sig in EXIT_SIGNALS:
            self.loop.add_signal_handler(sig, self.handle_exit)
        for sig in RELOAD_SIGNALS:
            # SIGHUP: re-read the table file; a bad one keeps the current table serving
            self.loop.add_signal_handler(sig, self.handle_reload)

    def _restore_signal_handlers(self) -> None:
        for sig, original in self._original_handlers.items():
            self.loop.remove_signal_handler(sig)
            if original is not None:  # None: installed outside Python, nothing to put back
                signal.signal(sig, original)
        self._original_handlers.clear()

    def handle_exit(self) -> None:
        """SIGTERM, SIGINT (run on the loop): drain once; a second signal changes nothing."""
        if self.should_exit:
            return
        self.should_exit = True
        self.begin_drain()

    def handle_reload(self) -> None:
        """SIGHUP (run on the loop): reload the current table on a helper thread."""
        self.plane.start_reload()

    # ------------------------------------------------------------ drain

    def begin_drain(self) -> None:
        """Stop accepting, refuse new work with 503, finish what was sent, then stop the loop."""
        log("shutting down: no new requests; finishing queued work")
        self._drain_started = time.perf_counter()
        self.listener.begin_drain()
        self.plane.begin_drain()  # new work gets 503; queued and running work finishes
        # Backstop: whatever happens on the loop, the process ends within the drain timeout.
        self._backstop = t = threading.Timer(self.config.drain_timeout_s + 1.0, lambda: os._exit(BACKSTOP_EXIT))
        t.daemon = True
        t.start()
        self._check_drained()

    def _check_drained(self) -> None:
        timeout = self.config.drain_timeout_s
        elapsed = time.perf_counter() - self._drain_started
        settled = elapsed >= DRAIN_GRACE_S and self.listener.idle() and self.plane.idle
        if settled or elapsed >= timeout:
            if not settled:
                log(f"drain timeout ({timeout:g} s) reached; closing what is left")
            self.loop.stop()
            return
        self.loop.call_later(DRAIN_POLL_S, self._check_drained)
