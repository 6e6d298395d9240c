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
does the same), ``GET /admin/status``.

This module is the command line only: ``run`` builds the frozen configuration
(``edge.serve.config``) and hands it to ``edge.serve.server.Server``, which owns the listener,
the event loop, the signals (SIGTERM drains, SIGHUP reloads), reload, drain and the start-up
report. The routes are ``edge.serve.app``, what they do ``edge.serve.dataplane``, the statuses
of refusals ``edge.serve.errors``.
"""

from __future__ import annotations

import argparse

from edge.bundle.predictive import DRIFT_MARGIN, ON_DRIFT
from edge.runtime.selector import MISS_POLICIES
from edge.runtime.slowdown import FILTERS
from edge.serve.config import BUFFERED_BODIES, BUFFERED_CAP_BYTES, MB, config_from_args
from edge.serve.server import Server
from edge.tables.table import QUANTILES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder or .tar.gz")
    p.add_argument("--table", required=True, metavar="SELECTED.json", help="selected table from 'edgekit select'")
    p.add_argument("--profile", default=None, help="device profile (default: the bundle's)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000,
                   help="port (0: pick a free one; the 'listening on' line says which)")
    p.add_argument("--policy", default="adaptive",
                   help="adaptive | adaptive-greedy (adaptive without pricing open-loop arrivals) | adaptive-cold "
                        "(adaptive without re-warming the fastest variant after a longer one) | quantile-table "
                        "(alias oracle-free) | mean-table | most-accurate | fastest | static:<variant>")
    p.add_argument("--miss", default="best-effort", choices=MISS_POLICIES,
                   help="when no variant fits: run the fastest and flag the miss, or answer 408 at once")
    p.add_argument("--quantile", default=None, choices=QUANTILES,
                   help="table latency the selector predicts with (default: the one the table was selected on, p95)")
    p.add_argument("--queue-size", type=int, default=64, help="EDF queue bound; beyond it requests get 503")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="require 'Authorization: Bearer TOKEN', TOKEN read from FILE (or set $EDGEKIT_TOKEN)")
    p.add_argument("--token", default=None, help="the token on the command line (shows in 'ps'; prefer --token-file)")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="request size cap (413 above it)")
    p.add_argument("--max-buffered-mb", type=float, default=None,
                   help="cap on the request bytes buffered across all connections (default: 1/8 of the "
                        f"board's memory, at most {BUFFERED_CAP_BYTES // MB} MiB and at least "
                        f"{BUFFERED_BODIES} x --max-body-mb)")
    p.add_argument("--max-connections", type=int, default=512,
                   help="open connections at most (also kept under the file-descriptor limit); past it the "
                        "longest-idle connection is closed")
    p.add_argument("--header-timeout", type=float, default=5.0, help="seconds a request's headers may take to arrive")
    p.add_argument("--body-timeout", type=float, default=10.0,
                   help="seconds a request's body may take after its headers")
    p.add_argument("--idle-timeout", type=float, default=60.0, help="seconds an idle keep-alive connection stays open")
    p.add_argument("--spin-us", type=int, default=0, metavar="US",
                   help="busy polling: after an answer, when nothing else waits, poll the sockets for up to US "
                        "microseconds instead of sleeping, so that the next request of a client finds the core awake "
                        "and its caches warm; costs up to US of CPU time per answer (default 0: off)")
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
    p.add_argument("--on-drift", default="drop", choices=ON_DRIFT,
                   help="a variant whose accuracy the bundle's predictive test puts more than --drift-margin below "
                        "its table's, at start or on a reload: drop it (default) or serve it with a warning")
    p.add_argument("--drift-margin", type=float, default=DRIFT_MARGIN, metavar="ACC",
                   help=f"how far below its table's accuracy (0..1) a prediction is a drift (default {DRIFT_MARGIN})")
    p.add_argument("--access-log", action="store_true", help="log every request to stderr")


def run(args: argparse.Namespace) -> int:
    return Server(config_from_args(args)).run()
