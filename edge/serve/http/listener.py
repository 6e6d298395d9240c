"""The daemon's HTTP/1.1 listener on an event loop (uvloop when installed): connection caps, deadlines, draining.

One thread, no thread per connection (each is an ``edge.serve.http.connection.HttpConnection``).  Each
request is stamped with the time its first bytes reached the kernel (``SO_TIMESTAMPNS``
through ``recvmsg``), so time spent behind a running inference, in the socket buffer,
counts against the request's deadline even though the loop reads it only when the
inference ends.  Where the kernel gives no stamp the time of the first read is used.

Bounds, whatever a client sends:
- at most ``max_connections`` open (and never more than the file-descriptor limit
  allows); past the cap the connection idle the longest, or the one whose partial request
  started the earliest, is closed to make room: health checks and real requests from a
  fresh connection keep being answered while thousands of idle or trickling ones are open;
- a request's headers must arrive within ``header_timeout_s`` of its first byte and its
  body within ``body_timeout_s`` of its headers (a byte a second does not reset them);
  idle keep-alive connections close after ``idle_timeout_s``; a client that does not
  read its answer is dropped after ``write_timeout_s``;
- bytes outside a request do not reset a deadline either: empty lines before a request line
  start its header clock (a client sending a CRLF a second is answered 408 and closed);
- the request bytes held by all connections together (heads, bodies being read, requests
  waiting or being served) stay under ``max_buffered_bytes`` (``buffered_bytes`` says how
  many now): a body that does not fit gets a 503 with ``Connection: close`` before any of it is
  read, and a closed connection gives back everything it held at once;
- headers are capped in count and size; the body is capped and its length checked when
  the headers end, before any of it is read, and so is the application's authorization;
- framing is strict (``edge.serve.http.connection``), and a malformed request gets a 400
  with a status line after the answers to the requests read before it.

On SIGTERM (``begin_drain``) the listener stops accepting, reads what the kernel already holds
for each connection, and closes at once every connection that holds no complete request.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
import time
from typing import Any, Callable

from edge.serve.http.budget import ByteBudget
from edge.serve.http.connection import SO_TIMESTAMPNS, App, HttpConnection, TransportLimits
from edge.serve.http.heads import HeadCache
from edge.serve.http.spin import SpinPoll

FD_RESERVE = 64  # descriptors kept free for model files, table reloads and logs


def _realtime_offset_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_REALTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class Listener:
    """Accepts connections on a listening socket and feeds complete requests to ``app``."""

    def __init__(self, app: App, loop: asyncio.AbstractEventLoop, limits: TransportLimits,
                 on_event: Callable[[str, str], Any] | None = None, idle: Callable[[], bool] | None = None,
                 awake: Callable[[float], Any] | None = None):
        """``idle``: whether the application has nothing waiting or running, when busy polling may start
        (``limits.spin_us``); ``awake(t)``: told, after each spin, that the core was kept awake until t."""
        self.app = app
        self.loop = loop
        self.limits = limits
        self.budget = ByteBudget(limits.max_buffered_bytes)
        self.heads = HeadCache()
        self.conns: set[HttpConnection] = set()
        self.draining = False
        self.listener: socket.socket | None = None
        self.on_event = on_event or (lambda kind, reason: None)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fd_cap = max(8, (soft if soft != resource.RLIM_INFINITY else 1 << 20) - FD_RESERVE)
        self.max_connections = min(limits.max_connections, fd_cap)
        self._sweeper: asyncio.TimerHandle | None = None
        self._accept_paused = False
        # CLOCK_REALTIME - CLOCK_MONOTONIC, to turn kernel receive stamps into perf_counter time;
        # refreshed by the sweep, not per read (NTP slews it by well under a microsecond a second).
        self.realtime_offset_ns = _realtime_offset_ns()
        self.spin = SpinPoll(limits.spin_us) if limits.spin_us else None
        self._app_idle = idle or (lambda: True)
        self._awake = awake or (lambda t: None)
        self._spin_pending = False

    def listen(self, host: str, port: int, backlog: int = 1024) -> tuple[str, int]:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
            s.listen(backlog)
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        self.listener = s
        self._read_listener()
        self._sweeper = self.loop.call_later(0.25, self._sweep)
        return s.getsockname()[:2]

    def _read_listener(self) -> None:
        assert self.listener is not None
        self.loop.add_reader(self.listener.fileno(), self._on_accept)
        if self.spin is not None:
            self.spin.watch(self.listener.fileno())

    def _stop_listener(self, close: bool) -> None:
        assert self.listener is not None
        self.loop.remove_reader(self.listener.fileno())
        if self.spin is not None:
            self.spin.unwatch(self.listener.fileno())
        if close:
            self.listener.close()
            self.listener = None

    # ------------------------------------------------------------ busy polling

    def answered(self) -> None:
        """An answer went out: poll for the next request for up to ``limits.spin_us`` before the loop sleeps,
        once what this pass of the loop scheduled has run (two hops) and if the application is idle."""
        if self.spin is not None and not self._spin_pending:
            self._spin_pending = True
            self.loop.call_soon(self.loop.call_soon, self._spin)

    def _spin(self) -> None:
        self._spin_pending = False
        if self.spin is not None and not self.draining and self._app_idle():
            self.spin.spin()
            self._awake(time.perf_counter())

    @property
    def open_connections(self) -> int:
        return len(self.conns)

    @property
    def buffered_bytes(self) -> int:
        """Request bytes the connections hold now (at most ``limits.max_buffered_bytes`` plus bodiless heads)."""
        return self.budget.used

    def on_refused(self, status: int) -> None:
        self.on_event("refused", str(status))

    def on_shed(self, reason: str) -> None:
        self.on_event("shed", reason)

    def _accept_one(self) -> bool:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # Out of descriptors: stop accepting for a moment instead of spinning on a
                # listener that stays readable, and make room.
                self._shed(reason="fd_limit")
                self._pause_accept(0.05)
            return False
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if SO_TIMESTAMPNS:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:
                pass
        conn = HttpConnection(self, sock)
        self.conns.add(conn)
        if len(self.conns) > self.max_connections:
            self._shed(spare=conn, reason="cap")
        if not conn.closed:
            conn.start()
        return True

    def _on_accept(self) -> None:
        for _ in range(64):
            if not self._accept_one():
                break

    def _pause_accept(self, seconds: float) -> None:
        if self._accept_paused or self.listener is None:
            return
        self._accept_paused = True
        self._stop_listener(close=False)

        def again() -> None:
            self._accept_paused = False
            if self.listener is not None:
                self._read_listener()
        self.loop.call_later(seconds, again)

    def _shed(self, spare: HttpConnection | None = None, reason: str = "cap") -> None:
        victims = [c for c in self.conns if not c.busy and not c.pipeline and c is not spare]
        if not victims:
            if spare is not None:  # everyone is being served: the newcomer waits its turn elsewhere
                spare.close()
                self.on_event("shed", reason)
            return
        victim = min(victims, key=HttpConnection.shed_key)
        victim.close()
        self.on_event("shed", reason)

    def forget(self, conn: HttpConnection) -> None:
        self.conns.discard(conn)

    def _sweep(self) -> None:
        self.realtime_offset_ns = _realtime_offset_ns()
        self.budget.settle()
        now = time.perf_counter()
        for c in list(self.conns):
            exp = c.expired(now)
            if exp is None:
                continue
            status, reason = exp
            self.on_event("shed", reason)
            if status:
                timeout_s = self.limits.header_timeout_s if reason == "header" else self.limits.body_timeout_s
                c.fail(status, f"the request's {reason} did not arrive in time ({timeout_s:g} s)")
            else:
                c.close()
        self._sweeper = self.loop.call_later(0.25, self._sweep)

    # ------------------------------------------------------------ shutdown

    def begin_drain(self) -> None:
        """Stop listening, but first take every connection the kernel already accepted and read what
        it already holds for each, so a request sent before the signal gets an answer (a 503 if it asks
        for work) instead of a reset. Then close at once every connection that holds no complete
        request (an idle one, or one partway through a request, which gets a 503); the others close
        after their answers."""
        if self.draining:
            return
        self.draining = True
        if self.listener is not None:
            for _ in range(100_000):
                if not self._accept_one():
                    break
            self._stop_listener(close=True)
        for c in list(self.conns):
            c.drain()

    def idle(self) -> bool:
        """No connection holds a request, or part of one, or an answer still being written."""
        return not any(c.busy or c.pipeline or c.out or c.reading_request for c in self.conns)

    def close_all(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for c in list(self.conns):
            c.close()
        if self.listener is not None:
            self._stop_listener(close=True)
        if self.spin is not None:
            self.spin.close()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (Linux, macOS), else asyncio's."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    mod = type(loop).__module__.split(".")[0]
    return "uvloop" if mod == "uvloop" else "asyncio"
