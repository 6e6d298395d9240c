"""The daemon's application: the Open Inference Protocol (KServe v2) routes over an ``AdaptiveClassifier``.

The transport (``edge.serve.http.listener``) calls it with each complete request; it answers health,
metadata, metrics, status and reload requests on the loop, and runs each infer request inline
when the daemon is idle, else in earliest-deadline-first order (on N threads with ``--workers N``).
``edgekit serve`` (``edge.serve.command``) builds it from the command line.
"""

from __future__ import annotations

import hmac
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from edge.runtime.classifier import AdaptiveClassifier, RuntimeOptions
from edge.runtime.scheduler import DONE, InferenceRequest, QueueFull, ShuttingDown
from edge.serve.http.connection import HttpConnection, Request
from edge.serve.http.listener import Listener, TransportLimits, loop_name
from edge.v2.codec import (
    EXTENSIONS,
    INPUT_DTYPES,
    MODEL_VERSION,
    ProtocolError,
    encode_infer_response,
    loads_json,
    parse_infer_request,
)

SERVER_NAME = "edgekit"


def log(msg: str) -> None:
    print(f"edgekit serve: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``edgekit serve`` was asked for, checked."""

    bundle: str
    table: str
    profile: str | None
    host: str
    port: int
    model_name: str
    token: str | None
    default_deadline_ms: float | None
    drain_timeout_s: float
    access_log: bool
    runtime: RuntimeOptions
    limits: TransportLimits


class V2App:
    """The v2 routes over an ``AdaptiveClassifier``: the application the transport calls."""

    def __init__(self, cfg: ServeConfig, clf: AdaptiveClassifier, loop):
        from edge.serve.metrics import CONTENT_TYPE, ServerMetrics

        self.cfg = cfg
        self.clf = clf
        self.loop = loop
        self.model_name = cfg.model_name
        self.sched = clf.scheduler
        self.sched.on_free = self._on_free
        self.workers = clf.workers
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="edgekit-infer") if self.workers > 1 else None
        self.server = Listener(self, loop, cfg.limits, on_event=self._on_transport_event)
        self.metrics = ServerMetrics(queue_depth=lambda: self.sched.depth, slowdown=lambda: clf.filter.factor,
                                     connections=lambda: self.server.open_connections)
        self.metrics_content_type = CONTENT_TYPE
        self.metrics.set_ready(clf.table.variants, set(clf.selector.variants))
        self._token = cfg.token.encode() if cfg.token else None
        self._dispatch_pending = False
        self._reloading = False
        self._reload_again = False
        self.started = time.time()

    # ------------------------------------------------------------ transport hooks

    def error_body(self, message: str) -> bytes:
        return json.dumps({"error": message}, separators=(",", ":")).encode()

    def authorize(self, method: str, target: str, headers: dict[str, str]) -> ProtocolError | None:
        if self._token is None or target.startswith("/v2/health/"):
            return None
        got = headers.get("authorization", "")
        scheme, _, cred = got.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(cred.strip().encode("utf-8", "replace"), self._token):
            return None
        self.metrics.count("unauthorized")
        return ProtocolError(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                         {"WWW-Authenticate": 'Bearer realm="edgekit"'})

    def _on_transport_event(self, kind: str, reason: str) -> None:
        if kind == "shed":
            self.metrics.shed_connection(reason)
        elif kind == "refused":
            self.metrics.count("invalid")

    def handle(self, conn: HttpConnection, req: Request) -> None:
        try:
            self._route(conn, req)
        except ProtocolError as e:
            if e.status not in (401, 408, 503):
                self.metrics.count("invalid")
            self._error(conn, req, e.status, e.message, e.headers, e.body)
        except Exception as exc:  # a bug: say so, keep serving
            import traceback

            traceback.print_exc()
            self.metrics.count("error")
            self._error(conn, req, 500, f"internal error: {type(exc).__name__}: {exc}", close=True)
        if self.cfg.access_log:
            log(f"{req.method} {req.target[:200]}")

    # ------------------------------------------------------------ responses

    def _json(self, conn: HttpConnection, req: Request, status: int, doc: Any, headers: dict[str, str] | None = None,
              close: bool = False) -> None:
        conn.respond(status, json.dumps(doc, separators=(",", ":")).encode(), headers, close, req)

    def _error(self, conn: HttpConnection, req: Request, status: int, message: str, headers: dict | None = None,
               body: dict | None = None, close: bool = False) -> None:
        doc = dict(body) if body else {}
        doc.setdefault("error", message)
        self._json(conn, req, status, doc, headers, close)

    # ------------------------------------------------------------ routing

    @staticmethod
    def _need(req: Request, method: str) -> None:
        if req.method != method and not (method == "GET" and req.method == "HEAD"):
            raise ProtocolError(405, f"{req.method} is not allowed here; use {method}", headers={"Allow": method})

    def _model(self, name: str) -> None:
        if name != self.model_name:
            raise ProtocolError(404, f"unknown model '{name[:100]}'; this daemon serves '{self.model_name}'")

    @property
    def ready(self) -> bool:
        return not self.server.draining and len(self.clf.selector) > 0

    def _route(self, conn: HttpConnection, req: Request) -> None:
        path = req.target.split("?", 1)[0] if req.target.startswith("/") else urlsplit(req.target).path
        if path.endswith("/infer") and req.method == "POST":
            p = path.split("/")
            if len(p) == 5 and p[1] == "v2" and p[2] == "models":
                self._model(unquote(p[3]))
                return self._infer(conn, req)
        p = [unquote(x) for x in path.split("/") if x]
        if p == ["v2", "health", "live"]:
            self._need(req, "GET")
            return self._json(conn, req, 200, {"live": True})
        if p == ["v2", "health", "ready"]:
            self._need(req, "GET")
            return self._json(conn, req, 200 if self.ready else 503, {"ready": self.ready})
        if p == ["v2"]:
            self._need(req, "GET")
            return self._json(conn, req, 200, {"name": SERVER_NAME, "version": MODEL_VERSION, "extensions": EXTENSIONS})
        if p == ["metrics"]:
            self._need(req, "GET")
            return conn.respond(200, self.metrics.render(), {"Content-Type": self.metrics_content_type}, False, req)
        if p == ["admin", "status"]:
            self._need(req, "GET")
            return self._json(conn, req, 200, self.status())
        if p == ["admin", "reload"] or (p[:3] == ["v2", "repository", "models"] and len(p) == 5 and p[4] == "load"):
            self._need(req, "POST")
            if len(p) == 5:
                self._model(p[3])
            return self._reload_request(conn, req)
        if p == ["v2", "repository", "index"]:
            self._need(req, "POST")
            return self._json(conn, req, 200, [{"name": self.model_name, "version": MODEL_VERSION,
                                                "state": "READY" if self.ready else "UNAVAILABLE", "reason": ""}])
        if len(p) >= 3 and p[:2] == ["v2", "models"]:
            rest = p[3:]
            if len(rest) >= 2 and rest[0] == "versions":
                if rest[1] != MODEL_VERSION:
                    raise ProtocolError(404, f"unknown version '{rest[1][:40]}' of model '{p[2][:100]}'; "
                                             f"available: ['{MODEL_VERSION}']")
                rest = rest[2:]
            if rest == []:
                self._need(req, "GET")
                self._model(p[2])
                return self._json(conn, req, 200, self.model_metadata())
            if rest == ["ready"]:
                self._need(req, "GET")
                self._model(p[2])
                return self._json(conn, req, 200 if self.ready else 503, {"name": self.model_name, "ready": self.ready})
            if rest == ["infer"]:
                self._need(req, "POST")
                self._model(p[2])
                return self._infer(conn, req)
        raise ProtocolError(404, f"no such endpoint: {req.method} {req.target[:200]}")

    # ------------------------------------------------------------ inference

    def _infer(self, conn: HttpConnection, req: Request) -> None:
        if self.server.draining:
            self.metrics.count("shutting_down")
            raise ProtocolError(503, "the daemon is shutting down; retry later", headers={"Retry-After": "1"})
        parsed = parse_infer_request(req.body, req.headers.get("inference-header-content-length"),
                                     self.clf.input_hwc, self.cfg.default_deadline_ms)
        ireq = InferenceRequest(parsed.image, parsed.deadline_ms, req.arrival, parsed.request_id or "",
                                context=(conn, req, parsed))
        try:
            how = self.sched.submit(ireq, defer=True)
        except QueueFull as exc:
            self.metrics.count("queue_full")
            raise ProtocolError(503, str(exc), headers={"Retry-After": "1"}) from None
        except ShuttingDown as exc:
            self.metrics.count("shutting_down")
            raise ProtocolError(503, str(exc), headers={"Retry-After": "1"}) from None
        if how == DONE:
            self._answer(ireq)
        else:
            # Queued even when a slot is free: the loop finishes reading this pass's requests
            # first (one hop, same thread), then ``_dispatch`` runs the earliest deadline.
            self._schedule_dispatch(1)

    def _serve(self, ireq: InferenceRequest) -> None:
        if self.pool is None:
            res = self.sched.run(ireq)
            if res.hold_ms > 0:
                self.loop.call_later(res.hold_ms / 1000.0, self._done, ireq)
            else:
                self._done(ireq)
        else:
            self.pool.submit(self._run_in_thread, ireq)

    def _run_in_thread(self, ireq: InferenceRequest) -> None:
        res = self.sched.run(ireq)
        if res.hold_ms > 0:
            time.sleep(res.hold_ms / 1000.0)
        self.loop.call_soon_threadsafe(self._done, ireq)

    def _done(self, ireq: InferenceRequest) -> None:
        try:
            self._answer(ireq)
        finally:
            self.sched.release(ireq)

    def _on_free(self) -> None:
        # A slot freed while requests wait. Pick the next one only after the loop has read
        # what arrived during the inference (two hops: one poll of the sockets in between,
        # on uvloop and on asyncio alike), so that EDF sees every request that is here.
        self._schedule_dispatch(2)

    def _schedule_dispatch(self, hops: int) -> None:
        if not self._dispatch_pending:
            self._dispatch_pending = True
            if hops == 1:
                self.loop.call_soon(self._dispatch)
            else:
                self.loop.call_soon(self.loop.call_soon, self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_pending = False
        ireq = self.sched.take()
        while ireq is not None:
            self._serve(ireq)
            if self.pool is None:
                return  # inline: _done -> release -> _on_free schedules the next one
            ireq = self.sched.take()

    def _answer(self, ireq: InferenceRequest) -> None:
        conn, req, parsed = ireq.context
        res = ireq.result
        assert res is not None
        params: dict[str, Any] = {
            "variant": res.variant,
            "predicted_ms": round(res.predicted_ms, 4),
            "queue_ms": round(res.queue_ms, 4),
            "inference_ms": round(res.inference_ms, 4),
            "total_ms": 0.0,
            "deadline_ms": ireq.deadline_ms,
            "deadline_met": False,
            "slowdown": round(res.slowdown, 4),
            "policy": res.policy,
            "read_delay_ms": round((req.read_at - req.arrival) * 1000.0, 4),
            "arrival_ns": int(req.arrival * 1e9),
        }
        seq = {"X-Edgekit-Dispatch-Seq": str(res.dispatch_seq)}
        if res.outcome == "rejected":
            self.metrics.count("rejected")
            params["total_ms"] = round((time.perf_counter() - ireq.arrival) * 1000.0, 4)
            return self._error(conn, req, 408, res.message, seq, {"error": res.message, "parameters": params})
        if res.outcome != "ok":
            self.metrics.count("error")
            return self._error(conn, req, 500, res.message, seq)
        total = (time.perf_counter() - ireq.arrival) * 1000.0
        met = total <= ireq.deadline_ms
        params["total_ms"] = round(total, 4)
        params["deadline_met"] = met
        data, headers = encode_infer_response(res.label, res.scores, parsed.outputs, self.model_name,
                                              parsed.request_id, params)
        headers.update(seq)
        conn.respond(200, data, headers, False, req)
        written = time.perf_counter()
        m = self.metrics
        m.answered(res.variant or "", met, (written - ireq.arrival), res.queue_ms / 1000.0)
        m.observe_inference(res.variant or "", res.inference_ms)
        self.sched.record_overhead((written - ireq.arrival) * 1000.0 - res.total_ms)

    # ------------------------------------------------------------ reload

    def _reload_request(self, conn: HttpConnection, req: Request) -> None:
        path = None
        if req.body.strip():
            doc = loads_json(req.body, "the reload request")
            if not isinstance(doc, dict):
                raise ProtocolError(
                    400, "the reload request must be a JSON object like {\"table\": \"/path/selected.json\"}"
                )
            path = doc.get("table")
            if path is not None and (not isinstance(path, str) or not path or len(path) > 4096 or "\0" in path):
                raise ProtocolError(400, "'table' must be a path string")
        if self._reloading:
            raise ProtocolError(409, "a reload is already running; retry when it ends", headers={"Retry-After": "1"})
        self.start_reload(path, reply=(conn, req))

    def start_reload(self, path: str | None = None, reply=None) -> None:
        """Reload on a helper thread (loading models takes a while); serving goes on meanwhile."""
        if self._reloading:
            self._reload_again = True
            return
        self._reloading = True

        def work() -> None:
            res = self.clf.reload(path)
            self.loop.call_soon_threadsafe(self._reloaded, res, reply)

        threading.Thread(target=work, name="edgekit-reload", daemon=True).start()

    def _reloaded(self, res, reply) -> None:
        self._reloading = False
        self.metrics.reloaded(res.ok)
        self.metrics.set_ready(self.clf.table.variants, set(self.clf.selector.variants))
        log(res.message)
        if reply is not None:
            conn, req = reply
            if res.ok:
                self._json(conn, req, 200, {"reloaded": True, "message": res.message, "variants": list(res.variants)})
            else:
                self._error(conn, req, 400, res.message, body={"reloaded": False})
        if self._reload_again and not self.server.draining:
            self._reload_again = False
            self.start_reload()

    # ------------------------------------------------------------ descriptions

    def model_metadata(self) -> dict:
        clf = self.clf
        return {
            "name": self.model_name,
            "versions": [MODEL_VERSION],
            "platform": "edgekit-adaptive",
            "inputs": [{"name": "input", "datatype": "UINT8", "shape": [-1, *clf.input_hwc]}],
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": [-1, clf.classes]},
                {"name": "class", "datatype": "INT64", "shape": [-1]},
            ],
            "parameters": {
                "accepts_datatypes": sorted(INPUT_DTYPES),
                "labels": list(clf.labels),
                "policy": str(clf.policy),
                "miss": clf.options.miss,
                "deadline_parameter": "deadline_ms",
            },
            "variants": clf.variants_status(),
        }

    def status(self) -> dict:
        clf = self.clf
        return {
            "ready": self.ready,
            "draining": self.server.draining,
            "table": clf.table_path,
            "generation": clf.generation,
            "profile": clf.profile.name,
            "workers": self.workers,
            "queue_depth": self.sched.depth,
            "queue_size": self.sched.queue_size,
            "busy_workers": self.sched.busy,
            "overhead_ms": self.sched.overhead_ms,
            "selector": clf.selector.describe(),
            "variants": clf.variants_status(),
            "transport": {
                "loop": loop_name(self.loop),
                "open_connections": self.server.open_connections,
                "max_connections": self.server.max_connections,
                "inference": "inline on the event loop" if self.pool is None else f"{self.workers} threads",
            },
            "uptime_s": round(time.time() - self.started, 3),
        }
