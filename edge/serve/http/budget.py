"""The transport's byte budget: request bytes held by all connections together, against one cap.

Every connection charges what it holds: a head that has not ended yet, then, once its headers
end, the head and the whole announced body (reserved before any of the body is read, so the
check is one comparison and a body can never outgrow its reservation), until the request is
answered or the connection closes. A body that would take the total past the cap is refused
(``HttpConnection`` answers 503); requests without a body are never refused by it, so health
checks keep being answered while bodies flood in.

Freed bodies go back to the C library's heap, which keeps them resident unless told otherwise:
after a large release (a quarter of the cap) the listener's sweep calls ``settle``, which asks
glibc to hand the free pages back to the system (``malloc_trim``), so that the daemon's memory
returns to where it was after a flood. One large body at a time never triggers it.
"""

from __future__ import annotations

from typing import Callable


def _find_malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)`` (None with another C library, where it does not exist)."""
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError, ImportError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


_MALLOC_TRIM = _find_malloc_trim()


class ByteBudget:
    """``used`` bytes held by the connections of one listener, against ``cap``; ``peak`` since the last settle."""

    __slots__ = ("cap", "used", "peak")

    def __init__(self, cap: int):
        self.cap = cap
        self.used = 0
        self.peak = 0

    def reserve(self, n: int, refusable: bool) -> bool:
        """Take ``n`` bytes for a request whose headers just ended, unless ``refusable`` (it has a body)
        and they would take the total past the cap; whether they were taken."""
        used = self.used + n
        if refusable and used > self.cap:
            return False
        self.used = used
        if used > self.peak:
            self.peak = used
        return True

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def give(self, n: int) -> None:
        self.used -= n

    def settle(self) -> bool:
        """Return freed memory to the system when a quarter of the cap or more was given back since
        the last time; whether it did. Called by the listener's sweep, never per request."""
        if self.peak - self.used < self.cap // 4:
            return False
        self.peak = self.used
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM()
        return True
