"""A process's time on a core, read from Linux's ``/proc``: every thread's counters summed.

``cpu_ns`` reads the scheduler's nanosecond counter (``/proc/PID/task/*/schedstat``); ``cpu_ticks`` the
user and system clock ticks (``/proc/PID/task/*/stat``, 10 ms each), whose shares split the former.
Both return None off Linux or once the process is gone. A thread that has ended is no longer counted, so read
both ends of a span while the threads that matter run (a server's do).
"""

from __future__ import annotations

import os
from typing import Callable


def _per_task(pid: int, name: str, read: Callable[[str], tuple[int, ...]]) -> tuple[int, ...] | None:
    """The sums over the process's threads of what ``read`` takes from each one's ``/proc/PID/task/TID/<name>``;
    None off Linux or when the process is gone."""
    total: tuple[int, ...] | None = None
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/{name}") as fh:
                got = read(fh.read())
            total = got if total is None else tuple(a + b for a, b in zip(total, got))
    except (OSError, ValueError, IndexError):
        return None
    return total


def cpu_ns(pid: int) -> int | None:
    """Nanoseconds the process's threads have run on a core (``/proc/PID/task/*/schedstat``); None off Linux."""
    got = _per_task(pid, "schedstat", lambda text: (int(text.split()[0]),))
    return None if got is None else got[0]


def _user_system(stat: str) -> tuple[int, int]:
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return int(fields[11]), int(fields[12])


def cpu_ticks(pid: int) -> tuple[int, int] | None:
    """(user, system) clock ticks the process's threads have run (``/proc/PID/task/*/stat``); None off Linux."""
    got = _per_task(pid, "stat", _user_system)
    return None if got is None else (got[0], got[1])
