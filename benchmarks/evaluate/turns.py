"""Policies taking turns on one workload: the request ranges of the turns, and the loop that serves them.

This project's VM runs in phases (``python -m benchmarks.perf.host_phases``): the same work took 2x as long in
some seconds as in others. Served one after another, a policy's figure said which phase it fell in. Taking turns
of ``--interleave`` requests (requests [0, 100) with every policy, then [100, 200) starting with the next one, and
so on) gives every policy the same mix of phases. Each policy's clock stops between its turns, so under open-loop
arrivals a backlog carries over. Both transports use it: in process (``benchmarks.evaluate.inproc``) and through
one daemon per policy, all up at once (``benchmarks.evaluate.command``; under open-loop arrivals a turn ends when
its daemon has answered the turn's requests, so the daemon's queue drains at each turn's end: what the next turn's
first requests, sent at once when their arrival has passed on the policy's clock, find instead of the queue).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from benchmarks.evaluate.loadgen import RequestRecord
from edge.core.errors import UsageError

INTERLEAVE = 100  # requests per turn when the policies of a closed-loop comparison take turns (0: none)

# send(policy index, request index, t0) -> its record: t0 is the policy's own clock origin (perf_counter seconds)
Send = Callable[[int, int, float], RequestRecord]
# serve_span(policy index, start, stop, t0) -> the records of requests [start, stop), all answered
ServeSpan = Callable[[int, int, int, float], list[RequestRecord]]


def turns(count: int, block: int, window: tuple[int, int] = (0, 0)) -> list[tuple[int, int]]:
    """The [start, stop) request ranges of the turns: every ``block`` requests, split also at the contention
    window's edges so that each turn lies wholly inside or wholly outside it."""
    if block < 1:
        raise UsageError(f"a turn needs at least 1 request, got {block}")
    edges = set(range(0, count, block)) | {count}
    edges |= {min(max(int(w), 0), count) for w in window if window[1] > window[0]}
    e = sorted(edges)
    return list(zip(e[:-1], e[1:]))


def take_span_turns(spans: Sequence[tuple[int, int]], policies: int, serve_span: ServeSpan, budget_s: float,
                    progress: Callable[[int, int], None] | None = None, count: int = 0
                    ) -> tuple[list[list[RequestRecord]], list[float], bool]:
    """Serve every span with every policy, turn k starting with policy k mod ``policies``: (each policy's records,
    each policy's own wall time, whether ``budget_s`` cut the turns). Each policy keeps its own clock: its records'
    arrival offsets and its wall time count only its own turns, and a turn starts where the policy's last one
    ended on that clock (under open-loop arrivals a policy that ended behind its arrivals starts the next turn as
    far behind). ``serve_span(m, start, stop, t0)`` serves requests [start, stop) with policy ``m`` on the clock
    that started at ``t0`` and returns their records once all are answered."""
    records: list[list[RequestRecord]] = [[] for _ in range(policies)]
    own = [0.0] * policies
    end = time.perf_counter() + budget_s
    for k, (s, e) in enumerate(spans):
        if time.perf_counter() >= end:
            return records, own, True
        for j in range(policies):
            m = (k + j) % policies
            t0 = time.perf_counter() - own[m]
            records[m].extend(serve_span(m, s, e, t0))
            own[m] = time.perf_counter() - t0
        if progress is not None:
            progress(e, count)
    return records, own, False


def take_turns(spans: Sequence[tuple[int, int]], policies: int, send: Send, budget_s: float,
               on_request: Callable[[int], None] | None = None,
               progress: Callable[[int, int], None] | None = None, count: int = 0
               ) -> tuple[list[list[RequestRecord]], list[float], bool]:
    """``take_span_turns`` one request at a time: each turn sends its requests in order, ``send(m, i, t0)`` returning
    each one's record. ``on_request(i)`` runs before each request is sent and before its clock starts (the
    contention schedule: starting a hog takes milliseconds)."""

    def serve_span(m: int, start: int, stop: int, t0: float) -> list[RequestRecord]:
        out = []
        for i in range(start, stop):
            if on_request is not None:
                on_request(i)
            out.append(send(m, i, t0))
        return out

    return take_span_turns(spans, policies, serve_span, budget_s, progress, count)
