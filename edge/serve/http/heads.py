"""Request heads already checked: a bounded cache, so that a head a client sends again is not parsed again.

A client that sends one kind of request (the same target, headers and body size, as a camera
application does) sends the same head bytes every time. ``HttpConnection`` keeps, per listener,
what parsing and checking such a head gave (its target, headers, method, keep-alive and body
length) keyed by its exact bytes, and serves a head it has seen from there: the same bytes under
the same listener's limits give the same result, so no check is dropped. Only heads that parsed
cleanly, and that ask for nothing the transport must do once per request (``Expect:
100-continue``, an upgrade), are kept; what still depends on the moment, the byte budget and the
application's authorization, is checked again for each request. The cache holds at most
``MAX_HEADS`` heads of at most ``MAX_HEAD_BYTES`` bytes each, and forgets the oldest first.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HEADS = 64
MAX_HEAD_BYTES = 2048


@dataclass(frozen=True, slots=True)
class CheckedHead:
    """What parsing and checking one head gave."""

    url: bytes
    target: str
    headers: dict[str, str]  # copied into each request made from it
    method: str
    keep_alive: bool
    length: int  # Content-Length


class HeadCache:
    """At most ``capacity`` checked heads by their exact bytes, the oldest forgotten first."""

    __slots__ = ("capacity", "_heads")

    def __init__(self, capacity: int = MAX_HEADS):
        self.capacity = capacity
        self._heads: dict[bytes, CheckedHead] = {}

    def get(self, head: bytes) -> CheckedHead | None:
        return self._heads.get(head) if len(head) <= MAX_HEAD_BYTES else None

    def put(self, head: bytes, url: bytes, headers: dict[str, str], method: str, keep_alive: bool,
            length: int) -> None:
        """Keep what parsing and checking ``head`` gave (``headers`` is copied: the request takes the original)."""
        if len(head) > MAX_HEAD_BYTES or head in self._heads:
            return
        if len(self._heads) >= self.capacity:
            del self._heads[next(iter(self._heads))]
        self._heads[head] = CheckedHead(url, url.decode("latin-1"), dict(headers), method, keep_alive, length)

    def __len__(self) -> int:
        return len(self._heads)
