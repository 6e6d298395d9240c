"""A Listener on its own event loop thread with a small application, for the transport's in-process tests.

The application (``EchoApp``) is a real ``App``: it authorizes by a bearer token and answers each
request with what the transport handed it (method, target, body size and its first bytes), at
once or, for targets under ``/hold``, when the test releases it, as a slow inference would.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Callable

from edge.serve.http.connection import HttpConnection, Request, TransportLimits
from edge.serve.http.listener import Listener, new_event_loop
from edge.v2.errors import ProtocolError


class EchoApp:
    def __init__(self, token: str | None = None):
        self.token = token
        self.held: list[tuple[HttpConnection, Request]] = []
        self.seen: list[Request] = []

    def authorize(self, method: str, target: str, headers: dict[str, str]) -> ProtocolError | None:
        if self.token is None or headers.get("authorization") == f"Bearer {self.token}":
            return None
        return ProtocolError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    def handle(self, conn: HttpConnection, req: Request) -> None:
        self.seen.append(req)
        if req.target.startswith("/hold"):
            self.held.append((conn, req))
            return
        self.answer(conn, req)

    def answer(self, conn: HttpConnection, req: Request) -> None:
        doc = {"method": req.method, "target": req.target, "body": len(req.body),
               "start": req.body[:16].decode("latin-1")}
        conn.respond(200, json.dumps(doc).encode(), None, False, req)

    def error_body(self, message: str) -> bytes:
        return json.dumps({"error": message}).encode()


class Transport:
    """``Listener`` + ``EchoApp`` serving on 127.0.0.1 from a background thread; ``call`` runs code on its loop."""

    def __init__(self, limits: TransportLimits | None = None, token: str | None = None):
        self.limits = limits or TransportLimits()
        self.app = EchoApp(token)
        self.loop = new_event_loop()
        self.events: list[tuple[str, str]] = []
        self.listener = Listener(self.app, self.loop, self.limits, on_event=lambda k, r: self.events.append((k, r)))
        self.host, self.port = self.listener.listen("127.0.0.1", 0)
        self._thread = threading.Thread(target=self.loop.run_forever, name="transport-test-loop", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """``fn()`` run on the loop thread (where the listener's state lives); its result."""
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:  # handed back to the test thread
                box.append((False, exc))
            done.set()
        self.loop.call_soon_threadsafe(run)
        assert done.wait(timeout), "the loop did not run the call"
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def wait_for(self, what: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Poll ``what`` on the loop until it is true; its last value (the test asserts on it)."""
        end = time.monotonic() + timeout
        while True:
            v = self.call(what)
            if v or time.monotonic() > end:
                return v
            time.sleep(0.01)

    @property
    def buffered(self) -> int:
        return self.call(lambda: self.listener.buffered_bytes)

    def release(self, n: int = 1) -> None:
        """Answer the first ``n`` held requests."""
        def go() -> None:
            for _ in range(n):
                conn, req = self.app.held.pop(0)
                self.app.answer(conn, req)
        self.call(go)

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def close(self) -> None:
        self.call(self.listener.close_all)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def read_answers(s: socket.socket, count: int, timeout: float = 5.0) -> list[tuple[int, dict[str, str], bytes]]:
    """Read ``count`` HTTP answers (status, lower-case headers, body) from ``s``, fewer if it closes first."""
    s.settimeout(timeout)
    buf = b""
    out: list[tuple[int, dict[str, str], bytes]] = []
    end = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < end:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            lines = buf[:head_end].decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
            n = int(headers.get("content-length", "0"))
            if len(buf) >= head_end + 4 + n:
                out.append((status, headers, buf[head_end + 4: head_end + 4 + n]))
                buf = buf[head_end + 4 + n:]
                continue
        try:
            chunk = s.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            break
        buf += chunk
    return out


def closed_by_peer(s: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the other end closes ``s`` within ``timeout`` (what it sends before is read and dropped)."""
    s.settimeout(timeout)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if not s.recv(65536):
                return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
    return False
