"""Which cores the daemon (and its inference threads) get, and which the load generator gets."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """``server`` and ``client`` core sets; both None on a single core (nothing to separate)."""

    server: frozenset[int] | None
    client: frozenset[int] | None

    def describe(self) -> str:
        if self.server is None:
            return "one core: the daemon and the load generator share it"
        return f"daemon on cpu {sorted(self.server)}, load generator on cpu {sorted(self.client or ())}"

    def to_dict(self) -> dict:
        return {"server_cpus": None if self.server is None else sorted(self.server),
                "client_cpus": None if self.client is None else sorted(self.client)}

    def pin_self(self, which: str) -> set[int] | None:
        """Pin this process to the ``client`` or ``server`` cores; returns the affinity to restore."""
        cpus = self.client if which == "client" else self.server
        if cpus is None:
            return None
        old = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cpus)
        return old


def place() -> Placement:
    """The first half of this process's cores (at least one) for the daemon, the rest for the client."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return Placement(None, None)
    if len(cpus) < 2:
        return Placement(None, None)
    k = max(1, len(cpus) // 2)
    return Placement(frozenset(cpus[:k]), frozenset(cpus[k:]))


@contextlib.contextmanager
def client_side(p: Placement):
    """Run this process on the client cores for the block (when placed), then restore its affinity."""
    restore = p.pin_self("client")
    try:
        yield p
    finally:
        if restore is not None:
            os.sched_setaffinity(0, restore)
