"""The Python client for the edgekit daemon, the module a user imports: ``from edge.v2.client import Client``.

``Client(url).classify(image, deadline_ms)`` speaks the Open Inference Protocol over one keep-alive
HTTP/1.1 connection (stdlib only), sending the image as a binary tensor by default.  One Client per
thread: the connection is not shared between threads.  What it answers (``Classification``) and
raises (``ClientError``) live with the codec's client side, ``edge.v2.client_codec``; the daemon's
side is ``edge.v2.codec``.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from typing import Any

import numpy as np

from edge.core.errors import UsageError
from edge.v2 import client_codec  # the module, not its names: Classification and ClientError are imported from there

__all__ = ["Client", "ClientConnection"]


class ClientConnection:
    """One keep-alive HTTP/1.1 connection, reopened when the daemon closes it (shared by loadgen)."""

    def __init__(self, host: str, port: int, timeout: float = 30.0):
        self.host, self.port, self.timeout = host, port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def _open(self) -> http.client.HTTPConnection:
        c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        c.connect()
        # Small request bodies: don't let Nagle hold them back.
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return c

    def connect(self) -> None:
        """Open the connection now, so the first timed request does not pay for it."""
        if self._conn is None:
            try:
                self._conn = self._open()
            except OSError:
                self._conn = None  # the next request opens it again and raises the error

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body); retries once on a new connection if a kept-alive one was closed."""
        for attempt in (0, 1):
            conn = self._conn
            fresh = conn is None
            if conn is None:
                conn = self._conn = self._open()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
                rh = {k.lower(): v for k, v in resp.getheaders()}
                if rh.get("connection", "").lower() == "close":
                    self.close()
                return resp.status, rh, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                self.close()
                # A reused connection the daemon already closed: retry once on a new one.
                if fresh or attempt:
                    raise
            except Exception:
                self.close()
                raise
        raise ConnectionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            finally:
                self._conn = None

    def __enter__(self) -> "ClientConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", model: str = "edgekit", token: str | None = None,
                 binary: bool = True, timeout: float = 30.0):
        u = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if u.scheme not in ("http", ""):
            raise UsageError(f"only http:// URLs are supported, got {url!r} (put a TLS proxy in front for https)")
        if not u.hostname:
            raise UsageError(f"no host in URL {url!r}")
        self.host = u.hostname
        self.port = u.port or 80
        self.base = u.path.rstrip("/")
        self.model = model
        self.token = token
        self.binary = binary
        self.timeout = timeout
        self._conn = ClientConnection(self.host, self.port, timeout)

    # ------------------------------------------------------------ transport

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for one request; reconnects once if the kept-alive connection was closed."""
        hdrs = dict(headers or {})
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        return self._conn.request(method, self.base + path, body, hdrs)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _get_json(self, path: str) -> tuple[int, Any]:
        status, _, data = self.request("GET", path)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            raise client_codec.ClientError(status, f"answer is not JSON: {data[:100]!r}") from None

    # ------------------------------------------------------------ API

    def live(self) -> bool:
        return self._get_json("/v2/health/live")[0] == 200

    def ready(self) -> bool:
        return self._get_json("/v2/health/ready")[0] == 200

    def metadata(self) -> dict:
        status, doc = self._get_json(f"/v2/models/{urllib.parse.quote(self.model, safe='')}")
        if status != 200:
            message = (doc or {}).get("error", "") if isinstance(doc, dict) else str(doc)
            raise client_codec.ClientError(status, message)
        return doc

    def reload(self, table: str | None = None) -> dict:
        body = json.dumps({"table": table}).encode() if table else b""
        status, _, data = self.request("POST", "/admin/reload", body, {"Content-Type": "application/json"})
        doc = json.loads(data) if data else {}
        if status != 200:
            raise client_codec.ClientError(status, doc.get("error", ""))
        return doc

    def encode(
        self, image: np.ndarray, deadline_ms: float, request_id: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The request body and headers ``classify`` sends (exposed for load generators)."""
        return client_codec.encode_infer_request(image, deadline_ms, request_id, self.binary)

    def classify(
        self, image: np.ndarray, deadline_ms: float, request_id: str | None = None
    ) -> client_codec.Classification:
        """Classify one uint8 (or 0..255 float) image with a relative deadline in ms."""
        body, headers = self.encode(image, deadline_ms, request_id)
        status, rh, data = self.request(
            "POST", f"/v2/models/{urllib.parse.quote(self.model, safe='')}/infer", body, headers
        )
        return client_codec.decode_infer_response(status, rh, data)
