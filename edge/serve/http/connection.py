"""One HTTP/1.1 connection of the daemon: httptools parsing, kernel arrival stamps, strict framing, ordered answers.

Each request is stamped with the time its first bytes reached the kernel (``SO_TIMESTAMPNS``
through ``recvmsg``); where the kernel gives no stamp the time of the first read is used.
Headers are capped in count and size; the body is capped and its length checked when the
headers end, before any of it is read, and so is the application's authorization. Framing is
strict: Content-Length is digits only and given once, no chunked bodies, Host is required on
HTTP/1.1, and a malformed request gets a 400 with a status line. The listener that owns the
connections, and the limits and deadlines it applies, are ``edge.serve.http.listener``.
"""

from __future__ import annotations

import asyncio
import collections
import re
import socket
import struct
import sys
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol

import httptools

from edge.core.errors import UsageError
from edge.v2.errors import ProtocolError

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform.startswith("linux") else None)
_TS = struct.Struct("@ll")  # struct timespec
_ANC = socket.CMSG_SPACE(_TS.size) if SO_TIMESTAMPNS else 0
_DIGITS = re.compile(rb"[0-9]{1,15}")
_REQUEST_LINE = re.compile(rb"([A-Za-z]{1,20}) [^ \r\n]+ HTTP/1\.[01]\r?\n")
LINGER_BYTES = 16 << 20  # after refusing a request, read and drop this much of what the client still sends
LINGER_S = 2.0
READ_SIZE = 1 << 16


@dataclass
class Request:
    method: str
    target: str  # the request target as sent (path and query)
    headers: dict[str, str]  # lower-case names; a repeated name keeps the last value
    body: bytes
    arrival: float  # CLOCK_MONOTONIC seconds when its first bytes reached the kernel (perf_counter clock)
    read_at: float  # CLOCK_MONOTONIC seconds when the daemon first read them
    keep_alive: bool
    head_only: bool = False


class App(Protocol):
    def authorize(self, method: str, target: str, headers: dict[str, str]) -> ProtocolError | None:
        """Called when the headers end, before the body is read: an error to refuse the request."""

    def handle(self, conn: "HttpConnection", req: Request) -> None:
        """Answer ``req`` now or later with ``conn.respond``, exactly once."""

    def error_body(self, message: str) -> bytes: ...


@dataclass(frozen=True)
class TransportLimits:
    max_connections: int = 512
    max_body_bytes: int = 8 << 20
    max_header_bytes: int = 16 << 10
    max_headers: int = 64
    header_timeout_s: float = 5.0
    body_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    write_timeout_s: float = 10.0
    max_pipelined: int = 4

    def __post_init__(self) -> None:
        for k in ("max_connections", "max_body_bytes", "max_header_bytes", "max_headers", "max_pipelined"):
            if int(getattr(self, k)) < 1:
                raise UsageError(f"{k} must be at least 1")
        for k in ("header_timeout_s", "body_timeout_s", "idle_timeout_s", "write_timeout_s"):
            v = float(getattr(self, k))
            if not 0 < v < 1e6:
                raise UsageError(f"{k} must be a positive number of seconds")


class ConnectionOwner(Protocol):
    """What a connection needs from the listener that accepted it (edge.serve.http.listener.Listener)."""

    app: App
    loop: asyncio.AbstractEventLoop
    limits: TransportLimits
    draining: bool
    realtime_offset_ns: int

    def on_refused(self, status: int) -> None: ...

    def forget(self, conn: "HttpConnection") -> None: ...


_REASONS = {s.value: s.phrase for s in HTTPStatus}


class _DateCache:
    __slots__ = ("sec", "value")

    def __init__(self):
        self.sec = -1
        self.value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.sec:
            self.sec = now
            self.value = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.value


_DATE = _DateCache()


def encode_head(status: int, length: int, headers: dict[str, str] | None, close: bool) -> bytes:
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Unknown").encode()), _DATE.get(),
             b"Server: edgekit\r\nContent-Length: %d\r\n" % length]
    if headers:
        if "Content-Type" not in headers:
            parts.append(b"Content-Type: application/json\r\n")
        for k, v in headers.items():
            parts.append(f"{k}: {v}\r\n".encode("latin-1", "replace"))
    else:
        parts.append(b"Content-Type: application/json\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class HttpConnection:
    """One client connection: reads with ``recvmsg``, parses, answers in order."""

    __slots__ = ("server", "sock", "fd", "parser", "reading", "closed", "busy", "pipeline", "out",
                 "writing_since", "last_active", "req_start", "req_read_at", "headers_done_at", "close_after",
                 "_url", "_headers", "_hbytes", "_body", "_keep", "_stamp", "_stamp_read",
                 "linger_until", "linger_left")

    def __init__(self, server: ConnectionOwner, sock: socket.socket):
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.parser = httptools.HttpRequestParser(self)
        self.reading = False
        self.closed = False
        self.busy = False  # the application holds a request of this connection
        self.pipeline: collections.deque[Request] = collections.deque()
        self.out = bytearray()
        self.writing_since = 0.0
        self.last_active = time.perf_counter()
        self.req_start: float | None = None  # kernel arrival of the request being read
        self.req_read_at = 0.0
        self.headers_done_at: float | None = None
        self.close_after = False  # close once the pending output is written
        self._stamp = self._stamp_read = 0.0  # arrival and read time of the bytes being parsed
        self.linger_until = 0.0  # refused: drop input until then, so the client reads our answer, not a reset
        self.linger_left = 0
        self._reset_message()

    # ------------------------------------------------------------ parser callbacks

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._hbytes = 0
        self._body: list[bytes] = []
        self._keep = True

    def on_message_begin(self) -> None:
        self._reset_message()
        if self.req_start is None:
            self.req_start, self.req_read_at = self._stamp, self._stamp_read

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.server.limits.max_header_bytes:
            raise ProtocolError(414, "the request target is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hbytes += len(name) + len(value) + 4
        lim = self.server.limits
        if self._hbytes > lim.max_header_bytes or len(self._headers) >= lim.max_headers:
            raise ProtocolError(431, f"request headers are over {lim.max_header_bytes} bytes or "
                                     f"{lim.max_headers} fields")
        key = name.decode("latin-1").lower()
        if key == "content-length" and not _DIGITS.fullmatch(value):
            raise ProtocolError(400, "Content-Length must be decimal digits only")
        self._headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        p = self.parser
        h = self._headers
        self.headers_done_at = time.perf_counter()
        version = p.get_http_version()
        if version != "1.1" and version != "1.0":
            raise ProtocolError(505, "only HTTP/1.1 and HTTP/1.0 are served")
        if version == "1.1" and "host" not in h:
            raise ProtocolError(400, "HTTP/1.1 requests need a Host header")
        if "transfer-encoding" in h:
            raise ProtocolError(411, "chunked transfer encoding is not supported; send a Content-Length")
        method = p.get_method().decode("latin-1")
        n = int(h.get("content-length", "0"))
        if method == "POST" and "content-length" not in h:
            raise ProtocolError(411, "missing Content-Length header")
        app = self.server.app
        err = app.authorize(method, self._url.decode("latin-1"), h)
        if err is not None:
            raise err
        if n > self.server.limits.max_body_bytes:
            raise ProtocolError(413, f"request body is {n} bytes; this daemon accepts at most "
                                 f"{self.server.limits.max_body_bytes}")
        enc = h.get("content-encoding")
        if n and enc and enc.lower() != "identity":
            raise ProtocolError(415, f"Content-Encoding {enc[:40]!r} is not supported; send the body uncompressed")
        self._keep = p.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        p = self.parser
        method = p.get_method().decode("latin-1")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        start = self.req_start if self.req_start is not None else self._stamp
        req = Request(method, self._url.decode("latin-1"), self._headers, body, start, self.req_read_at,
                      self._keep and not self.server.draining, method == "HEAD")
        self.pipeline.append(req)
        self.req_start = None
        self.headers_done_at = None
        self._reset_message()

    # ------------------------------------------------------------ I/O

    def start(self) -> None:
        self.reading = True
        self.server.loop.add_reader(self.fd, self._on_read)

    def pause(self) -> None:
        if self.reading:
            self.reading = False
            self.server.loop.remove_reader(self.fd)

    def resume(self) -> None:
        if not self.reading and not self.closed and not self.close_after:
            self.start()

    def _on_read(self) -> None:
        try:
            if _ANC:
                data, anc, _, _ = self.sock.recvmsg(READ_SIZE, _ANC)
            else:
                data, anc = self.sock.recv(READ_SIZE), None
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        if self.linger_until:
            self.linger_left -= len(data)
            if self.linger_left <= 0 or time.perf_counter() > self.linger_until:
                self.close()
            return
        now = time.perf_counter()
        self.last_active = now
        arrival = now
        if anc:
            level, kind, payload = anc[0]
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= _TS.size:
                sec, nsec = _TS.unpack_from(payload)
                k = (sec * 1_000_000_000 + nsec - self.server.realtime_offset_ns) / 1e9
                # A stamp from the future or from long ago is a clock step, not an arrival.
                if now - 60.0 < k <= now:
                    arrival = k
        self._stamp, self._stamp_read = arrival, now
        try:
            self.parser.feed_data(data)
        except ProtocolError as e:
            self.fail(e.status, e.message, e.headers)
            return
        except httptools.HttpParserCallbackError as exc:  # our own refusal, raised in a parser callback
            inner = exc.__context__
            if isinstance(inner, ProtocolError):
                self.fail(inner.status, inner.message, inner.headers)
            else:
                self.fail(400, f"malformed HTTP request: {inner or exc}")
            return
        except httptools.HttpParserUpgrade:
            self.fail(400, "protocol upgrades are not supported")
            return
        except httptools.HttpParserInvalidMethodError:
            m = _REQUEST_LINE.match(data)
            if m:  # a well-formed request line with a method nobody serves
                self.fail(405, f"method {m.group(1).decode()} is not allowed; use GET or POST",
                           {"Allow": "GET, HEAD, POST"})
            else:
                self.fail(400, "malformed HTTP request line; send 'METHOD /path HTTP/1.1'")
            return
        except httptools.HttpParserError as exc:
            msg = str(exc) or type(exc).__name__
            self.fail(400, f"malformed HTTP request: {msg}")
            return
        if self.pipeline:
            if len(self.pipeline) >= self.server.limits.max_pipelined:
                self.pause()
            self._next()

    def fail(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer a request the transport refuses, then close: the rest of the stream cannot be trusted."""
        self.pause()
        self.pipeline.clear()
        self.req_start = None
        self.server.on_refused(status)
        if self.busy:  # a pipelined request went bad behind one the application holds: give up on both
            self.close()
            return
        body = self.server.app.error_body(message)
        self._write(encode_head(status, len(body), headers, True) + body, close=True, linger=True)

    def _next(self) -> None:
        if self.busy or not self.pipeline or self.closed:
            return
        req = self.pipeline.popleft()
        self.busy = True
        self.server.app.handle(self, req)

    def respond(self, status: int, body: bytes, headers: dict[str, str] | None = None, close: bool = False,
                req: Request | None = None) -> None:
        """Send the answer to the request this connection's application holds."""
        if self.closed:
            self.busy = False
            return
        close = close or (req is not None and not req.keep_alive) or self.server.draining
        if req is not None and req.head_only:
            data = encode_head(status, len(body), headers, close)
        else:
            data = encode_head(status, len(body), headers, close) + body
        self.busy = False
        self._write(data, close)
        if not close and not self.closed:
            if self.pipeline:
                self.server.loop.call_soon(self._next)
            self.resume()

    def _write(self, data: bytes, close: bool, linger: bool = False) -> None:
        if close:
            self.close_after = True
            self.pause()
            if linger:
                self.linger_until = time.perf_counter() + LINGER_S
                self.linger_left = LINGER_BYTES
        if not self.out:
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self.close()
                return
            if n == len(data):
                self.last_active = time.perf_counter()
                if close:
                    self._close_or_linger()
                return
            data = data[n:]
            self.writing_since = time.perf_counter()
            self.server.loop.add_writer(self.fd, self._on_write)
        self.out += data

    def _on_write(self) -> None:
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self.out[:n]
        if not self.out:
            self.server.loop.remove_writer(self.fd)
            self.last_active = time.perf_counter()
            if self.close_after:
                self._close_or_linger()

    def _close_or_linger(self) -> None:
        if not self.linger_until:
            self.close()
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        if not self.reading:
            self.reading = True
            self.server.loop.add_reader(self.fd, self._on_read)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = self.server.loop
        if self.reading:
            loop.remove_reader(self.fd)
            self.reading = False
        if self.out:
            loop.remove_writer(self.fd)
            self.out.clear()
        try:
            self.sock.close()
        except OSError:
            pass
        self.server.forget(self)

    # ------------------------------------------------------------ deadlines

    def expired(self, now: float) -> tuple[int, str] | None:
        """(status, reason) when a deadline has passed; status 0 means close without an answer."""
        lim = self.server.limits
        if self.linger_until:
            return (0, "linger") if now > self.linger_until else None
        if self.out and now - self.writing_since > lim.write_timeout_s:
            return 0, "write"
        if self.busy:
            return None
        if self.req_start is not None:
            if self.headers_done_at is None:
                if now - self.req_read_at > lim.header_timeout_s:
                    return 408, "header"
            elif now - self.headers_done_at > lim.body_timeout_s:
                return 408, "body"
            return None
        if not self.pipeline and now - self.last_active > lim.idle_timeout_s:
            return 0, "idle"
        return None

    def shed_key(self) -> float:
        """Which connection goes first when over the cap: the oldest partial request, else the longest idle."""
        if self.linger_until:
            return 0.0
        return self.req_read_at if self.req_start is not None else self.last_active
