"""Policies taking turns on one workload: the request ranges of the turns, and the loop that serves them.

This project's VM runs in phases (``python -m benchmarks.perf.host_phases``): the same work took 2x as long in
some seconds as in others. Served one after another, a policy's figure said which phase it fell in. Taking turns
of ``--interleave`` requests (requests [0, 100) with every policy, then [100, 200) starting with the next one, and
so on) gives every policy the same mix of phases. Both transports use it: in process (``benchmarks.evaluate.inproc``,
closed loop and open loop: each policy's clock stops between its turns, so a backlog carries over) and, in closed
loop only, through one daemon per policy, all up at once (``benchmarks.evaluate.command``). Open loop through the
daemon was tried (2026-12-07, docs/policy-comparison.md) and dropped: a turn has to end when its daemon has answered
its requests, and a daemon that idled through the other policies' turns answered its next turn's first requests
after a 0.3 ms wake-up, so they missed (0-16 % on time against 51-60 % for the rest), with no narrower spread to
show for it.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from benchmarks.evaluate.loadgen import RequestRecord
from edge.core.errors import UsageError

INTERLEAVE = 100  # requests per turn when the policies of a closed-loop comparison take turns (0: none)

# send(policy index, request index, t0) -> its record: t0 is the policy's own clock origin (perf_counter seconds)
Send = Callable[[int, int, float], RequestRecord]


def turns(count: int, block: int, window: tuple[int, int] = (0, 0)) -> list[tuple[int, int]]:
    """The [start, stop) request ranges of the turns: every ``block`` requests, split also at the contention
    window's edges so that each turn lies wholly inside or wholly outside it."""
    if block < 1:
        raise UsageError(f"a turn needs at least 1 request, got {block}")
    edges = set(range(0, count, block)) | {count}
    edges |= {min(max(int(w), 0), count) for w in window if window[1] > window[0]}
    e = sorted(edges)
    return list(zip(e[:-1], e[1:]))


def take_turns(spans: Sequence[tuple[int, int]], policies: int, send: Send, budget_s: float,
               on_request: Callable[[int], None] | None = None,
               progress: Callable[[int, int], None] | None = None, count: int = 0
               ) -> tuple[list[list[RequestRecord]], list[float], bool]:
    """Serve every span with every policy, turn k starting with policy k mod ``policies``: (each policy's records,
    each policy's own wall time, whether ``budget_s`` cut the turns). Each policy keeps its own clock: its records'
    arrival offsets and its wall time count only its own turns. ``on_request(i)`` runs before each request is sent
    and before its clock starts (the contention schedule: starting a hog takes milliseconds)."""
    records: list[list[RequestRecord]] = [[] for _ in range(policies)]
    own = [0.0] * policies
    end = time.perf_counter() + budget_s
    for k, (s, e) in enumerate(spans):
        if time.perf_counter() >= end:
            return records, own, True
        for j in range(policies):
            m = (k + j) % policies
            recs = records[m]
            t0 = time.perf_counter() - own[m]
            for i in range(s, e):
                if on_request is not None:
                    on_request(i)
                recs.append(send(m, i, t0))
            own[m] = time.perf_counter() - t0
        if progress is not None:
            progress(e, count)
    return records, own, False
