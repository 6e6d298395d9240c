"""Busy polling after an answer: the daemon's core stays awake for a short window instead of sleeping in epoll.

Between two requests of a client the daemon's core waits for the client's round trip (a few hundred
microseconds over loopback). A core that sleeps that long wakes up slowly and runs the next inference
with cold caches: on the 2-core VMs of docs/serving-path.md a 20 us variant took about 52 us after such
a gap. With ``--spin-us N`` the listener polls its sockets without blocking for up to N microseconds
after each answer, when nothing else is waiting, and hands back to the event loop as soon as one is
readable. It costs CPU time, at most N microseconds per answer, and it is off by default: a board on a
battery or sharing its cores with other work may prefer to sleep. Linux's ``SO_BUSY_POLL`` does the
same below the socket layer, but only for devices with a NAPI queue, not for loopback or a Unix socket.
"""

from __future__ import annotations

import select
import time

from edge.core.errors import UsageError

MAX_SPIN_US = 100_000  # a window past 0.1 s is a misconfiguration, not busy polling


def check_spin_us(us: int, what: str = "spin_us") -> int:
    """``us`` when it is a busy-polling window an option may ask for (0: off); else UsageError naming ``what``."""
    if not 0 <= int(us) <= MAX_SPIN_US:
        raise UsageError(f"{what} must be 0 (off) to {MAX_SPIN_US} microseconds, got {us}")
    return int(us)


class SpinPoll:
    """The sockets the event loop reads, in an epoll set of its own, polled without blocking."""

    def __init__(self, window_us: float):
        if not 0 < window_us <= MAX_SPIN_US:
            raise ValueError(f"spin window must be in (0, {MAX_SPIN_US}] us, got {window_us}")
        self.window_s = float(window_us) / 1e6
        self._ep = select.epoll()
        self._fds: set[int] = set()
        self.spins = 0  # windows polled
        self.woken = 0  # of them, ended by a readable socket

    def watch(self, fd: int) -> None:
        if fd not in self._fds:
            self._ep.register(fd, select.EPOLLIN)
            self._fds.add(fd)

    def unwatch(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.discard(fd)
            try:
                self._ep.unregister(fd)
            except OSError:  # closed already: the kernel dropped it from the set
                pass

    def spin(self) -> bool:
        """Poll until a watched socket is readable (True) or the window has passed (False)."""
        if not self._fds:
            return False
        self.spins += 1
        poll, clock = self._ep.poll, time.perf_counter
        end = clock() + self.window_s
        while clock() < end:
            if poll(0):
                self.woken += 1
                return True
        return False

    def close(self) -> None:
        self._fds.clear()
        self._ep.close()
