"""The daemon's application: the Open Inference Protocol (KServe v2) route table over the data plane.

The transport (``edge.serve.http.listener``) calls ``V2App.handle`` with each complete request.
The app matches it to a route, (method, path pattern) -> handler, and the handler asks the data
plane (``edge.serve.dataplane``) and writes its answer; a refusal, whatever raised it, is
answered through ``edge.serve.errors.refusal``. ``edge.serve.server.Server`` builds it.
"""

from __future__ import annotations

import functools
import hmac
import json
import traceback
from typing import Any, Callable, Iterable
from urllib.parse import unquote, urlsplit

from edge.serve.dataplane import DataPlane
from edge.serve.errors import Refusal, Unauthorized, refusal
from edge.serve.http.connection import HttpConnection, Request
from edge.serve.log import log
from edge.serve.metrics import CONTENT_TYPE, ServerMetrics
from edge.v2.errors import JSON_SEPARATORS, ProtocolError, encode_error

Handler = Callable[..., None]  # handler(conn, req, **the pattern's captured segments)


class RouteTable:
    """(method, path pattern) -> handler. ``{name}`` in a pattern matches any one path segment;
    a GET route answers HEAD too. The first pattern that matches a path decides."""

    def __init__(self, routes: Iterable[tuple[str, str, Handler]]):
        self._patterns: dict[int, dict[tuple[str, ...], dict[str, Handler]]] = {}
        for method, pattern, handler in routes:
            segs = tuple(x for x in pattern.split("/") if x)
            self._patterns.setdefault(len(segs), {}).setdefault(segs, {})[method] = handler

    def match(self, segments: list[str]) -> tuple[dict[str, Handler], dict[str, str]] | None:
        """The handlers by method of the first pattern that ``segments`` match, and its captured segments."""
        for pattern, handlers in self._patterns.get(len(segments), {}).items():
            params = {}
            for want, got in zip(pattern, segments):
                if want[:1] == "{":
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                return handlers, params
        return None

    def resolve(self, method: str, segments: list[str], target: str) -> tuple[Handler, dict[str, str]]:
        """The handler of ``method`` on ``segments``; ProtocolError 404 (no route) or 405 (with ``Allow``)."""
        found = self.match(segments)
        if found is None:
            raise ProtocolError(404, f"no such endpoint: {method} {target[:200]}")
        handlers, params = found
        h = handlers.get(method) or (handlers.get("GET") if method == "HEAD" else None)
        if h is None:
            raise ProtocolError(405, f"{method} is not allowed here; use {' or '.join(handlers)}",
                                headers={"Allow": ", ".join(handlers)})
        return h, params


class V2App:
    """The v2 routes over a ``DataPlane``: the application the transport calls."""

    def __init__(self, plane: DataPlane, metrics: ServerMetrics, token: str | None = None, access_log: bool = False):
        self.plane = plane
        self.metrics = metrics
        self.access_log = access_log
        self._token = token.encode() if token else None
        self.routes = RouteTable([
            ("GET", "/v2/health/live", self._live),
            ("GET", "/v2/health/ready", self._server_ready),
            ("GET", "/v2", self._server_metadata),
            ("GET", "/metrics", self._metrics),
            ("GET", "/admin/status", self._status),
            ("POST", "/admin/reload", self._reload),
            ("POST", "/v2/repository/models/{name}/load", self._reload),
            ("POST", "/v2/repository/index", self._repository_index),
            ("GET", "/v2/models/{name}", self._model_metadata),
            ("GET", "/v2/models/{name}/ready", self._model_ready),
            ("POST", "/v2/models/{name}/infer", self._infer),
        ])

    # ------------------------------------------------------------ transport hooks

    def error_body(self, message: str) -> bytes:
        return encode_error(message)

    def authorize(self, method: str, target: str, headers: dict[str, str]) -> ProtocolError | None:
        if self._token is None or target.startswith("/v2/health/"):
            return None
        got = headers.get("authorization", "")
        scheme, _, cred = got.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(cred.strip().encode("utf-8", "replace"), self._token):
            return None
        r = refusal(Unauthorized())
        self._count(r)
        return r.error

    def handle(self, conn: HttpConnection, req: Request) -> None:
        try:
            self._route(conn, req)
        except Exception as exc:
            r = refusal(exc)
            if r.close:  # a bug: say so, keep serving
                traceback.print_exc()
            self._send_refusal(conn, req, r)
        if self.access_log:
            log(f"{req.method} {req.target[:200]}")

    # ------------------------------------------------------------ routing

    def _route(self, conn: HttpConnection, req: Request) -> None:
        path = req.target.split("?", 1)[0] if req.target.startswith("/") else urlsplit(req.target).path
        if path.endswith("/infer") and req.method == "POST":
            # The hot path, matched without the table: POST /v2/models/{name}/infer.
            p = path.split("/")
            if len(p) == 5 and p[1] == "v2" and p[2] == "models":
                return self._infer(conn, req, unquote(p[3]))
        p = [unquote(x) for x in path.split("/") if x]
        if len(p) >= 5 and p[:2] == ["v2", "models"] and p[3] == "versions":
            # /v2/models/{name}/versions/{version}/...: the same routes, for the one version served.
            self.plane.check_version(p[2], p[4])
            p = p[:3] + p[5:]
        handler, params = self.routes.resolve(req.method, p, req.target)
        handler(conn, req, **params)

    # ------------------------------------------------------------ handlers

    def _live(self, conn: HttpConnection, req: Request) -> None:
        self._json(conn, req, 200, self.plane.live())

    def _server_ready(self, conn: HttpConnection, req: Request) -> None:
        doc = self.plane.server_ready()
        self._json(conn, req, 200 if doc["ready"] else 503, doc)

    def _server_metadata(self, conn: HttpConnection, req: Request) -> None:
        self._json(conn, req, 200, self.plane.server_metadata())

    def _metrics(self, conn: HttpConnection, req: Request) -> None:
        conn.respond(200, self.metrics.render(), {"Content-Type": CONTENT_TYPE}, False, req)

    def _status(self, conn: HttpConnection, req: Request) -> None:
        self._json(conn, req, 200, self.plane.status())

    def _reload(self, conn: HttpConnection, req: Request, name: str | None = None) -> None:
        self.plane.reload(name, req.body, functools.partial(self._reply, conn, req))

    def _repository_index(self, conn: HttpConnection, req: Request) -> None:
        self._json(conn, req, 200, self.plane.repository_index())

    def _model_metadata(self, conn: HttpConnection, req: Request, name: str) -> None:
        self._json(conn, req, 200, self.plane.model_metadata(name))

    def _model_ready(self, conn: HttpConnection, req: Request, name: str) -> None:
        doc = self.plane.model_ready(name)
        self._json(conn, req, 200 if doc["ready"] else 503, doc)

    def _infer(self, conn: HttpConnection, req: Request, name: str) -> None:
        self.plane.infer(name, req.body, req.headers.get("inference-header-content-length"), req.arrival,
                         req.read_at, functools.partial(self._reply, conn, req))

    # ------------------------------------------------------------ responses

    def _reply(self, conn: HttpConnection, req: Request, answer: Any, headers: dict[str, str] | None) -> None:
        """The data plane's later answer: an encoded body, a JSON document, or the error that refused it."""
        if isinstance(answer, bytes):
            conn.respond(200, answer, headers, False, req)
        elif isinstance(answer, Exception):
            self._send_refusal(conn, req, refusal(answer), headers)
        else:
            self._json(conn, req, 200, answer, headers)

    def _json(self, conn: HttpConnection, req: Request, status: int, doc: Any,
              headers: dict[str, str] | None = None) -> None:
        conn.respond(status, json.dumps(doc, separators=JSON_SEPARATORS).encode(), headers, False, req)

    def _count(self, r: Refusal) -> None:
        if r.outcome is not None:
            self.metrics.count(r.outcome)

    def _send_refusal(self, conn: HttpConnection, req: Request, r: Refusal,
                      headers: dict[str, str] | None = None) -> None:
        self._count(r)
        e = r.error
        conn.respond(e.status, encode_error(e.message, e.body), {**e.headers, **headers} if headers else e.headers,
                     r.close, req)
