"""One HTTP/1.1 connection of the daemon: strict framing over httptools, kernel arrival stamps, ordered answers.

Each request is stamped with the time its first bytes reached the kernel (``SO_TIMESTAMPNS``
through ``recvmsg``); where the kernel gives no stamp the time of the first read is used.

Framing is done here, around httptools: each head is found by the empty line that ends it and
its request line is checked (``METHOD target HTTP/x.y``, single spaces, CRLF) before the parser
sees it; each body is cut at its Content-Length. So the requests of one read are answered in
order even when bad bytes follow them (they get their answers, then a 400 that quotes the bad
bytes), and a head that has not ended is held here, counted, and refused at once when it cannot
become a request. Headers are capped in count and size; the body is capped and its length
checked when the headers end, before any of it is read, and so is the application's
authorization (``Expect: 100-continue`` is answered only then). Content-Length is digits only
and given once, no chunked bodies, exactly one Host on HTTP/1.1; ``Upgrade`` is ignored (this
daemon speaks HTTP/1.1 only). Every byte a connection holds is charged to the listener's
``ByteBudget`` (``edge.serve.http.budget``) and given back when it is answered or closed. A head
whose exact bytes were parsed and checked before is taken from the listener's cache of checked heads
(``edge.serve.http.heads``) instead of being parsed again, its body cut here; the budget and the
application's authorization are still checked for every request. The listener that owns the
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
from edge.serve.http.budget import ByteBudget
from edge.serve.http.heads import CheckedHead, HeadCache
from edge.serve.http.spin import SpinPoll, check_spin_us
from edge.v2.errors import ProtocolError

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform.startswith("linux") else None)
_TS = struct.Struct("@ll")  # struct timespec
_ANC = socket.CMSG_SPACE(_TS.size) if SO_TIMESTAMPNS else 0
_DIGITS = re.compile(rb"[0-9]{1,15}")
_METHOD = rb"[A-Za-z][A-Za-z-]{0,31}"
_REQUEST_LINE = re.compile(_METHOD + rb" [^\x00-\x20\x7f]+ HTTP/[0-9]\.[0-9]\r\n")
# What the start of a request line may look like before its end has arrived: anything else
# (a TLS hello, binary, a body that ran past its Content-Length) is refused without waiting.
_LINE_START = re.compile(_METHOD + rb"(?: [^\x00-\x20\x7f]*(?: [HTP0-9/.]{0,8}\r?)?)?")
_EMPTY_LINES = re.compile(rb"[\r\n]+")  # before a request line: ignored, but they start its header clock
_BARE_LF = re.compile(rb"(?<!\r)\n")
_HEAD_END = b"\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LINGER_BYTES = 16 << 20  # after refusing a request, read and drop this much of what the client still sends
LINGER_S = 2.0
READ_SIZE = 1 << 16
SMALL_PIECE = 8 << 10  # a body piece up to this size is copied for the parser; a larger one is viewed


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
    size: int = 0  # bytes charged for it to the listener's budget (head and body) until it is answered


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
    # Request bytes held by all connections together (heads, bodies being read, requests waiting
    # or being served); a body that would go past it gets a 503. 64 MiB suits a test or an
    # embedded listener; ``edgekit serve`` sets it from --max-buffered-mb (a share of the board's memory).
    max_buffered_bytes: int = 64 << 20
    # Busy polling: after an answer, with nothing else to do, poll the sockets for up to this many
    # microseconds instead of sleeping in epoll (edge.serve.http.spin; 0: off, the default).
    spin_us: int = 0

    def __post_init__(self) -> None:
        for k in ("max_connections", "max_body_bytes", "max_header_bytes", "max_headers", "max_pipelined",
                  "max_buffered_bytes"):
            if int(getattr(self, k)) < 1:
                raise UsageError(f"{k} must be at least 1")
        for k in ("header_timeout_s", "body_timeout_s", "idle_timeout_s", "write_timeout_s"):
            v = float(getattr(self, k))
            if not 0 < v < 1e6:
                raise UsageError(f"{k} must be a positive number of seconds")
        check_spin_us(self.spin_us)
        if self.max_buffered_bytes < self.max_body_bytes:
            raise UsageError(f"max_buffered_bytes ({self.max_buffered_bytes}) must be at least max_body_bytes "
                             f"({self.max_body_bytes}): one request of the largest size must fit")

    @property
    def max_head_bytes(self) -> int:
        """A whole head: the request line (its target up to max_header_bytes), the fields (up to
        max_header_bytes) and the empty lines before it."""
        return 2 * self.max_header_bytes + 1024


class ConnectionOwner(Protocol):
    """What a connection needs from the listener that accepted it (edge.serve.http.listener.Listener)."""

    app: App
    loop: asyncio.AbstractEventLoop
    limits: TransportLimits
    budget: ByteBudget
    heads: HeadCache  # the heads checked so far, by their bytes
    draining: bool
    realtime_offset_ns: int
    spin: SpinPoll | None  # busy polling's epoll set: the connection adds its socket while it reads

    def on_refused(self, status: int) -> None: ...

    def answered(self) -> None: ...  # an answer went out on a connection that stays open

    def on_shed(self, reason: str) -> None: ...

    def forget(self, conn: "HttpConnection") -> None: ...


class BufferFull(ProtocolError):
    """A body that does not fit in the listener's byte budget now (503, counted as shed, not as invalid)."""


_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
# Header names as sent -> lower case, so that the usual few are decoded once, not per request;
# bounded (past it a name is decoded each time), so a client sending made-up names cannot grow it.
_HEADER_NAMES: dict[bytes, str] = {}
_HEADER_NAMES_CAP = 256


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
    line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
    if headers:
        extra = "".join([f"{k}: {v}\r\n" for k, v in headers.items()]).encode("latin-1", "replace")
        if "Content-Type" not in headers:
            extra = b"Content-Type: application/json\r\n" + extra
    else:
        extra = b"Content-Type: application/json\r\n"
    return b"%s%sServer: edgekit\r\nContent-Length: %d\r\n%s%s\r\n" % (
        line, _DATE.get(), length, extra, b"Connection: close\r\n" if close else b"")


def _line_error(head: bytes | bytearray | memoryview, after_body: bool | None) -> str:
    """What is wrong with the bytes where a request line should be, quoting them."""
    line = bytes(head[:120]).split(b"\n", 1)[0].rstrip(b"\r")
    shown = repr(line[:60].decode("latin-1")) + ("..." if len(line) > 60 else "")
    if after_body:
        return (f"the bytes after a request's body are not a request line ({shown}); "
                "is that request's Content-Length shorter than its body?")
    if line[:1] == b" " or b"  " in line:
        return f"malformed request line {shown}: separate the method, target and version by single spaces"
    return f"malformed request line {shown}; send 'METHOD /path HTTP/1.1' ending in CRLF"


class HttpConnection:
    """One client connection: reads with ``recvmsg``, frames and parses, answers in order."""

    __slots__ = ("server", "sock", "fd", "parser", "reading", "closed", "busy", "pipeline", "current", "out",
                 "writing_since", "last_active", "req_start", "req_read_at", "head_at", "body_at", "close_after",
                 "last_request", "refusal", "held", "linger_until", "linger_left",
                 "_url", "_headers", "_hbytes", "_body", "_keep", "_method", "_left", "_raw", "_size", "_expect",
                 "_continue", "_head", "_head_len", "_line_ok", "_blank", "_stamp", "_stamp_read", "_checked")

    def __init__(self, server: ConnectionOwner, sock: socket.socket):
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.reading = False
        self.closed = False
        self.busy = False  # the application holds a request of this connection
        self.pipeline: collections.deque[Request] = collections.deque()
        self.current: Request | None = None  # the request the application holds
        self.out = bytearray()
        self.writing_since = 0.0
        self.last_active = time.perf_counter()
        self.req_start: float | None = None  # kernel arrival of the request being read
        self.req_read_at = 0.0
        self.head_at: float | None = None  # first read of a byte outside a request (empty lines too): header clock
        self.body_at: float | None = None  # when the headers of the request being read ended: body clock
        self.close_after = False  # close once the pending output is written
        self.last_request = False  # a request said Connection: close; what follows it is not read
        self.refusal: tuple[int, str, dict[str, str] | None] | None = None  # sent once the answers before it are
        self.held = 0  # bytes of this connection charged to server.budget
        self._stamp = self._stamp_read = 0.0  # arrival and read time of the bytes being parsed
        self.linger_until = 0.0  # refused: drop input until then, so the client reads our answer, not a reset
        self.linger_left = 0
        self._head = bytearray()  # a head that has not ended in the reads so far
        self._head_len = 0
        self._line_ok = False  # the held head's request line has ended and was checked
        self._blank = 0  # bytes of empty lines before the request line being waited for
        self._left = 0  # body bytes of the request being read still to come
        self._raw = False  # its body is cut here, not by the parser (httptools ends an upgrade request at its head)
        self._size = 0  # bytes charged for the request being read, from when its headers end
        self._expect = False  # it asked for 100 Continue
        self._continue = False  # a 100 Continue is owed once the answers before it are out
        # What the head just parsed gave, when it may be cached: url, headers, method, keep-alive, body length.
        self._checked: tuple[bytes, dict[str, str], str, bool, int] | None = None
        self._reset_message()

    # ------------------------------------------------------------ parser callbacks

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._hbytes = 0
        self._body: list[bytes] = []
        self._keep = True
        self._method = ""

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.server.limits.max_header_bytes:
            raise ProtocolError(414, "the request target is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hbytes += len(name) + len(value) + 4
        lim = self.server.limits
        h = self._headers
        if self._hbytes > lim.max_header_bytes or len(h) >= lim.max_headers:
            raise ProtocolError(431, f"request headers are over {lim.max_header_bytes} bytes or "
                                     f"{lim.max_headers} fields")
        key = _HEADER_NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_HEADER_NAMES) < _HEADER_NAMES_CAP:
                _HEADER_NAMES[bytes(name)] = key
        if key == "content-length" and not _DIGITS.fullmatch(value):
            raise ProtocolError(400, "Content-Length must be decimal digits only")
        if key == "host" and "host" in h:
            raise ProtocolError(400, "more than one Host header; send exactly one")
        h[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        p = self.parser
        assert p is not None
        h = self._headers
        lim = self.server.limits
        version = p.get_http_version()
        if version != "1.1" and version != "1.0":
            raise ProtocolError(505, "only HTTP/1.1 and HTTP/1.0 are served")
        if version == "1.1" and "host" not in h:
            raise ProtocolError(400, "HTTP/1.1 requests need a Host header")
        if "transfer-encoding" in h:
            raise ProtocolError(411, "chunked transfer encoding is not supported; send a Content-Length")
        method = self._method = p.get_method().decode("latin-1")
        if method == "CONNECT":
            raise ProtocolError(405, "method CONNECT is not allowed; this daemon is no proxy: use GET or POST",
                                {"Allow": "GET, HEAD, POST"})
        n = int(h.get("content-length", "0"))
        if method == "POST" and "content-length" not in h:
            raise ProtocolError(411, "missing Content-Length header")
        err = self.server.app.authorize(method, self._url.decode("latin-1"), h)
        if err is not None:
            raise err
        if n > lim.max_body_bytes:
            raise ProtocolError(413, f"request body is {n} bytes; this daemon accepts at most {lim.max_body_bytes}")
        enc = h.get("content-encoding")
        if n and enc and enc.lower() != "identity":
            raise ProtocolError(415, f"Content-Encoding {enc[:40]!r} is not supported; send the body uncompressed")
        expect = h.get("expect")
        if expect is not None and version == "1.1":  # an HTTP/1.0 client's Expect is ignored (RFC 9110 10.1.1)
            if expect.strip().lower() != "100-continue":
                raise ProtocolError(417, f"Expect {expect[:40]!r} is not supported; only 100-continue is")
            self._expect = n > 0
        keep, upgrade = p.should_keep_alive(), p.should_upgrade()
        self._admit(n, keep, n > 0 and upgrade)
        if not upgrade and expect is None:
            self._checked = (self._url, h, method, keep, n)

    def _admit(self, n: int, keep: bool, raw: bool) -> None:
        """Take a head whose checks passed and whose body is ``n`` bytes: reserve its bytes in the budget."""
        size = self._head_len + n
        budget = self.server.budget
        if not budget.reserve(size, refusable=n > 0):
            raise BufferFull(503, f"the daemon holds {budget.used} bytes of requests, near its cap of "
                                  f"{budget.cap} (max_buffered_bytes); retry later", {"Retry-After": "1"})
        self.held += size
        self._size = size
        self._keep = keep
        self._left = n
        self._raw = raw
        self.head_at = None
        self.body_at = time.perf_counter() if n else None

    def _replay(self, checked: CheckedHead) -> None:
        """Take a head seen before as parsing it would (``on_url`` to ``on_headers_complete``, then
        ``on_message_complete`` when it has no body), with its body cut here, not by the parser; what
        depends on the moment (the application's authorization, the byte budget) is checked again."""
        headers = dict(checked.headers)
        self._url = checked.url
        self._headers = headers
        self._method = checked.method
        err = self.server.app.authorize(checked.method, checked.target, headers)
        if err is not None:
            raise err
        n = checked.length
        self._admit(n, checked.keep_alive, n > 0)
        if not n:
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._raw:  # an upgrade request with a body ends when _feed has cut its body, not at its head
            return
        method = self._method
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        start = self.req_start if self.req_start is not None else self._stamp
        req = Request(method, self._url.decode("latin-1"), self._headers, body, start, self.req_read_at,
                      self._keep and not self.server.draining, method == "HEAD", self._size)
        self.pipeline.append(req)
        if not self._keep:
            self.last_request = True
            self.pause()
        self._size = 0
        self.req_start = None
        self.body_at = None
        self._reset_message()

    # ------------------------------------------------------------ framing

    def _feed(self, data: bytes) -> None:
        """Frame one read: hold a head until its empty line arrives, check its request line, feed it to the
        parser, then cut its body; every request that ends here goes to the pipeline. A refusal raises."""
        p = self.parser
        if p is None:
            return
        n = len(data)
        pos = 0
        after: bool | None = None  # a request ended in this read just before ``pos`` (True: one with a body)
        while pos < n:
            if self.closed or self.last_request:
                return
            left = self._left
            if left:
                take = left if left <= n - pos else n - pos
                self._left = left - take
                if self._raw:
                    self._body.append(data[pos:pos + take])
                    if not self._left:
                        self._raw = False
                        self.on_message_complete()
                elif take == n:
                    p.feed_data(data)
                elif take <= SMALL_PIECE:
                    p.feed_data(data[pos:pos + take])
                else:  # a view, not a copy: the parser copies what it hands to on_body anyway
                    p.feed_data(memoryview(data)[pos:pos + take])
                pos += take
                if not self._left:
                    after = True
                continue
            if self._head:  # the rest of a head begun in an earlier read (pos is 0)
                buf = self._head
                old = len(buf)
                buf += data
                end = buf.find(_HEAD_END, old - 3 if old > 3 else 0)
                if end < 0:
                    self._charge(n)
                    self._check_held(old, after)
                    return
                end += 4
                head = bytes(buf[:end])
                pos = end - old
                self._release(old)  # what it held: the bytes of this read were not charged
                buf.clear()
                self._line_ok = False
            else:
                if data[pos] == 13 or data[pos] == 10:
                    stop = _EMPTY_LINES.match(data, pos)
                    assert stop is not None
                    self._blank += stop.end() - pos
                    pos = stop.end()
                    cap = self.server.limits.max_head_bytes
                    if self._blank > cap:
                        raise ProtocolError(400, f"over {cap} bytes of empty lines where a request line should be")
                    if pos == n:
                        # Only empty lines: they start the header clock, so that a client sending one a
                        # second does not hold the connection forever; but not right after a request in
                        # the same read (old clients end a POST body with an extra CRLF).
                        if self.head_at is None and after is None:
                            self.head_at = self._stamp_read
                        return
                if self.head_at is None:
                    self.head_at = self._stamp_read
                self.req_start, self.req_read_at = self._stamp, self._stamp_read
                end = data.find(_HEAD_END, pos)
                if end < 0:
                    self._head += memoryview(data)[pos:]
                    self._charge(n - pos)
                    self._check_held(0, after)
                    return
                end += 4
                head = data if (pos == 0 and end == n) else data[pos:end]
                pos = end
            self._head_len = len(head)
            self._blank = 0
            heads = self.server.heads
            checked = heads.get(head)
            if checked is not None:  # the same bytes as a head checked before: the same result
                self._replay(checked)
            else:
                # httptools takes several spaces for one between the parts of the request line; a line
                # with a space where a part should start, or two in a row, is checked in full here.
                if (head[0] == 32 or b"  " in head) and _REQUEST_LINE.match(head) is None:
                    raise ProtocolError(400, _line_error(head, after))
                self._checked = None
                try:
                    p.feed_data(head)
                except httptools.HttpParserUpgrade:
                    pass  # this daemon speaks HTTP/1.1 only: a request asking to upgrade is served as it is
                except httptools.HttpParserInvalidMethodError:
                    if _REQUEST_LINE.match(head) is None:
                        raise ProtocolError(400, _line_error(head, after)) from None
                    method = head.split(b" ", 1)[0].decode("latin-1")  # a well-formed line, a method nobody serves
                    raise ProtocolError(405, f"method {method} is not allowed; use GET or POST",
                                        {"Allow": "GET, HEAD, POST"}) from None
                if self._checked is not None:
                    heads.put(head, *self._checked)
                    self._checked = None
            after = False if not self._left else None
            if self._expect:
                self._expect = False
                if self._left > n - pos:  # the body is not all here: the client is waiting to be asked
                    if self.busy or self.pipeline:
                        self._continue = True
                    else:
                        self._write(CONTINUE, False)

    def _check_held(self, old: int, after: bool | None) -> None:
        """Refuse at once a held head that cannot become a request; ``old`` bytes of it were checked before."""
        buf = self._head
        cap = self.server.limits.max_head_bytes
        if len(buf) > cap:
            raise ProtocolError(431, f"the request head is over {cap} bytes and has not ended "
                                     "(an empty line ends the headers)")
        if not self._line_ok:
            lf = buf.find(b"\n", old)
            if lf < 0:
                if len(buf) <= 256 and _LINE_START.fullmatch(buf) is None:
                    raise ProtocolError(400, _line_error(buf, after))
                return
            if _REQUEST_LINE.match(buf) is None:
                raise ProtocolError(400, _line_error(buf, after))
            self._line_ok = True
            old = lf + 1
        if _BARE_LF.search(buf, old - 1 if old else 0):
            raise ProtocolError(400, "a header line ends in a bare LF; end every line of the head with CRLF")

    # ------------------------------------------------------------ the byte budget

    def _charge(self, n: int) -> None:
        self.server.budget.take(n)
        self.held += n

    def _release(self, n: int) -> None:
        self.server.budget.give(n)
        self.held -= n

    def _release_head(self) -> None:
        self._release(len(self._head))
        self._head.clear()
        self._line_ok = False

    def _drop_partial(self) -> None:
        """Forget the request being read (its head or body so far), and give back what it held."""
        if self._head:
            self._release_head()
        if self._size:
            self._release(self._size)
            self._size = 0
        self._left = 0
        self._raw = self._expect = self._continue = False
        self.req_start = self.head_at = self.body_at = None
        self._reset_message()

    # ------------------------------------------------------------ I/O

    def start(self) -> None:
        self.reading = True
        self.server.loop.add_reader(self.fd, self._on_read)
        if self.server.spin is not None:
            self.server.spin.watch(self.fd)

    def pause(self) -> None:
        if self.reading:
            self.reading = False
            self._stop_reading()

    def _stop_reading(self) -> None:
        self.server.loop.remove_reader(self.fd)
        if self.server.spin is not None:
            self.server.spin.unwatch(self.fd)

    def resume(self) -> None:
        """Read again, unless something still holds reading back: a pending refusal or close, the last
        request read, output the client has not taken, or a full pipeline."""
        if (not self.reading and not self.closed and not self.close_after and self.refusal is None
                and not self.last_request and not self.out
                and len(self.pipeline) < self.server.limits.max_pipelined):
            self.start()

    def _on_read(self) -> bool:
        """Read once and act on it; whether bytes were read and the connection still reads."""
        try:
            if _ANC:
                data, anc, _, _ = self.sock.recvmsg(READ_SIZE, _ANC)
            else:
                data, anc = self.sock.recv(READ_SIZE), None
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self.close()
            return False
        if not data:
            self.close()
            return False
        if self.linger_until:
            self.linger_left -= len(data)
            if self.linger_left <= 0 or time.perf_counter() > self.linger_until:
                self.close()
            return False
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
            self._feed(data)
        except BufferFull as e:
            self.fail(e.status, e.message, e.headers, shed="buffered_bytes")
        except ProtocolError as e:
            self.fail(e.status, e.message, e.headers)
        except httptools.HttpParserCallbackError as exc:  # our own refusal, raised in a parser callback
            self._fail_from(exc.__context__, exc)
        except httptools.HttpParserError as exc:
            msg = str(exc) or type(exc).__name__
            self.fail(400, f"malformed HTTP request: {msg}")
        if self.pipeline and not self.closed:
            if len(self.pipeline) >= self.server.limits.max_pipelined:
                self.pause()
            self._next()
        return self.reading and not self.closed

    def _fail_from(self, inner: BaseException | None, exc: BaseException) -> None:
        if isinstance(inner, BufferFull):
            self.fail(inner.status, inner.message, inner.headers, shed="buffered_bytes")
        elif isinstance(inner, ProtocolError):
            self.fail(inner.status, inner.message, inner.headers)
        else:
            self.fail(400, f"malformed HTTP request: {inner or exc}")

    def fail(self, status: int, message: str, headers: dict[str, str] | None = None,
             shed: str | None = None) -> None:
        """Refuse what the client sends from here on: the stream cannot be trusted past this point. The
        requests already read are answered first, in order; then this refusal, then the connection closes.
        ``shed`` names why the daemon, not the request, is the cause (counted as shed, not as refused)."""
        if self.closed:
            return
        self.pause()
        self._drop_partial()
        if self.refusal is not None:
            return
        if shed is None:
            self.server.on_refused(status)
        else:
            self.server.on_shed(shed)
        self.refusal = (status, message, headers)
        if not self.busy and not self.pipeline:
            self._send_refusal()

    def _send_refusal(self) -> None:
        assert self.refusal is not None
        status, message, headers = self.refusal
        body = self.server.app.error_body(message)
        self._write(encode_head(status, len(body), headers, True) + body, close=True, linger=True)

    def _next(self) -> None:
        if self.busy or not self.pipeline or self.closed:
            return
        req = self.pipeline.popleft()
        self.busy = True
        self.current = req
        self.server.app.handle(self, req)

    def respond(self, status: int, body: bytes, headers: dict[str, str] | None = None, close: bool = False,
                req: Request | None = None) -> None:
        """Send the answer to the request this connection's application holds."""
        self.busy = False
        held, self.current = self.current, None
        if self.closed:
            return  # what it held went back when the connection closed
        if held is not None:
            self.server.budget.give(held.size)
            self.held -= held.size
        req = req or held
        close = close or (req is not None and not req.keep_alive) or self.server.draining
        if req is not None and req.head_only:
            data = encode_head(status, len(body), headers, close)
        else:
            data = encode_head(status, len(body), headers, close) + body
        self._write(data, close)
        if close or self.closed:
            return
        if self.pipeline:
            self.server.loop.call_soon(self._next)
        elif self.refusal is not None:
            self._send_refusal()
        else:
            if self._continue:
                self._continue = False
                if self._left:
                    self._write(CONTINUE, False)
            self.resume()
            if self.server.spin is not None and not self.out:
                self.server.answered()

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
            self.pause()  # a client that does not take its answers does not get to send more requests
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
            else:
                self.resume()

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
            self.start()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.reading:
            self._stop_reading()
            self.reading = False
        if self.out:
            self.server.loop.remove_writer(self.fd)
            self.out.clear()
        try:
            self.sock.close()
        except OSError:
            pass
        # Everything it holds goes now, not when the cycle collector runs: the parser holds this
        # connection's bound methods (a cycle), so it is dropped here, with the buffers and requests.
        self.parser = None
        self.server.budget.give(self.held)
        self.held = self._size = self._left = 0
        self.pipeline.clear()
        self.current = None
        self.refusal = None
        self._head = bytearray()
        self._reset_message()
        self.server.forget(self)

    # ------------------------------------------------------------ deadlines and draining

    @property
    def reading_request(self) -> bool:
        """Part of a request has been read (its head or body so far), not all of it."""
        return self.req_start is not None

    def expired(self, now: float) -> tuple[int, str] | None:
        """(status, reason) when a deadline has passed; status 0 means close without an answer."""
        lim = self.server.limits
        if self.linger_until:
            return (0, "linger") if now > self.linger_until else None
        if self.out and now - self.writing_since > lim.write_timeout_s:
            return 0, "write"
        if self.busy:
            return None
        if self.head_at is not None:
            return (408, "header") if now - self.head_at > lim.header_timeout_s else None
        if self.body_at is not None:
            return (408, "body") if now - self.body_at > lim.body_timeout_s else None
        if not self.pipeline and self.refusal is None and now - self.last_active > lim.idle_timeout_s:
            return 0, "idle"
        return None

    def shed_key(self) -> float:
        """Which connection goes first when over the cap: the oldest partial request, else the longest idle."""
        if self.linger_until:
            return 0.0
        if self.head_at is not None:
            return self.head_at
        return self.req_read_at if self.req_start is not None else self.last_active

    def drain(self) -> None:
        """The daemon is stopping: take in what the kernel already holds for this connection (requests
        sent before the signal are answered, not reset), then close it at once unless it owes an answer.
        A partial request gets a 503; an idle connection just closes."""
        reads = (self.server.limits.max_body_bytes + self.server.limits.max_head_bytes) // READ_SIZE + 2
        for _ in range(reads):
            if self.closed or self.linger_until or not self.reading or not self._on_read():
                break
        if self.closed or self.linger_until or self.busy or self.pipeline:
            return  # it owes an answer: every answer while draining closes its connection
        if self.reading_request:
            self.fail(503, "the daemon is shutting down; this request had not all arrived: retry it elsewhere "
                           "or later", {"Retry-After": "1"}, shed="drain")
        elif self.out:
            self.close_after = True
            self.pause()
        else:
            self.close()
