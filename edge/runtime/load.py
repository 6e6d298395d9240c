"""Load-aware choice: what a long variant costs the requests likely to arrive while it runs.

The greedy choice (``edge.runtime.selector``) picks the most accurate variant that fits one request's time
left, and the scheduler already keeps it from starving the requests waiting (``Scheduler._budget_ms``).
Under open-loop arrivals that is not enough: a request that arrives *while* a long variant runs waits for
it, and one whose deadline is shorter than that wait plus the fastest variant is lost however it is served
next. This module prices that loss and lets adaptive trade a little accuracy on the request at hand for the
requests behind it, in the spirit of SuperServe's SlackFit (NSDI'25) and of accuracy scaling under load
(Proteus, ASPLOS'24), with two measured inputs:

- the **arrival rate while busy**: requests that arrived while a slot was busy or others waited, per ms of
  slot-busy time (decayed sums, so it follows a changing load). A closed-loop client, which sends its next
  request only after the answer, contributes nothing, so the rule stays out of the way there; under Poisson
  arrivals it reads the arrival rate (PASTA);
- the **deadlines** of the last ``DEADLINE_SAMPLE`` requests, as an empirical distribution F.

A variant of predicted latency L then costs ``rate * integral_0^L F(w + need) dw`` lost requests, where
``need`` is what a request needs at the least (the serving overhead, the runtime's own work around its invoke
and the fastest variant: ``Scheduler.need_ms``): a request
arriving w ms into the run waits L - w, and is lost if its deadline is under that plus ``need``. The choice
maximizes ``accuracy - value * cost`` over the variants that fit (``value``: the fastest variant's accuracy,
the least a served request is worth). With ``sorted deadlines`` and prefix sums the integral is two bisects.

It costs nothing measurable when there is no open-loop load: below ``MIN_ARRIVALS`` expected arrivals during
the greedy choice it is one multiplication and one comparison, and the greedy choice stands.
"""

from __future__ import annotations

import bisect
from collections import deque
from itertools import accumulate

MIN_ARRIVALS = 0.05  # expected arrivals during the greedy choice below which the load is left out
DECAY = 0.98  # per run: the arrival rate follows the last ~50 runs
DEADLINE_SAMPLE = 256  # recent relative deadlines (the empirical F)
REFRESH = 32  # arrivals between re-sorting the deadline sample (only while the load is priced)


class ArrivalLoad:
    """The arrival rate while busy and the recent deadlines; fed by the scheduler, read at each choice."""

    __slots__ = ("busy_arrivals", "_seen", "_k", "_t", "rate", "_deadlines", "_sorted", "_prefix", "_stale")

    def __init__(self) -> None:
        self.busy_arrivals = 0  # requests that arrived while a slot was busy or others waited
        self._seen = 0  # busy_arrivals at the last run
        self._k = 0.0  # decayed busy arrivals
        self._t = 0.0  # decayed busy ms
        self.rate = 0.0  # arrivals per ms of busy time
        self._deadlines: deque[float] = deque(maxlen=DEADLINE_SAMPLE)
        self._sorted: list[float] = []
        self._prefix: list[float] = []
        self._stale = 0

    def arrived(self, deadline_ms: float, busy: bool) -> None:
        """A request was admitted with ``deadline_ms``; ``busy``: a slot was busy or others waited."""
        self._deadlines.append(deadline_ms)
        self._stale += 1
        if busy:
            self.busy_arrivals += 1

    def ran(self, busy_ms: float) -> None:
        """A slot was held ``busy_ms`` for one request: fold the arrivals since the last run into the rate."""
        k = self.busy_arrivals - self._seen
        self._seen = self.busy_arrivals
        self._k = DECAY * self._k + k
        self._t = DECAY * self._t + max(busy_ms, 0.0)
        self.rate = self._k / self._t if self._t > 0 else 0.0

    def priced(self, latency_ms: float) -> bool:
        """Whether the load is worth pricing for a choice of ``latency_ms``."""
        return self.rate * latency_ms >= MIN_ARRIVALS and bool(self._deadlines)

    def _refresh(self) -> None:
        if self._stale >= REFRESH or not self._sorted:
            self._sorted = sorted(self._deadlines)
            self._prefix = [0.0, *accumulate(self._sorted)]
            self._stale = 0

    def _g(self, x: float) -> float:
        """integral_0^x F(t) dt for the empirical F of the deadline sample: mean of max(0, x - d)."""
        k = bisect.bisect_right(self._sorted, x)
        return (k * x - self._prefix[k]) / len(self._sorted)

    def lost(self, latency_ms: float, need_ms: float) -> float:
        """Expected requests lost to a run of ``latency_ms``: arrivals during it that can no longer make their
        deadline with ``need_ms`` (the serving overhead, the runtime's own work and the fastest variant) after
        waiting for it."""
        self._refresh()
        return self.rate * (self._g(latency_ms + need_ms) - self._g(need_ms))

    def choose(self, predicted: list[float] | tuple[float, ...], accuracy: tuple[float, ...], greedy: int,
               need_ms: float) -> int:
        """The variant among 0..``greedy`` (all fit) with the most accuracy net of the arrivals it would lose.

        Accuracy rises with the index and a price is never negative, so the scan downwards stops at the first
        variant whose accuracy alone cannot beat the best score so far."""
        self._refresh()
        value = accuracy[0] * self.rate
        g0 = self._g(need_ms)
        g = self._g
        best, best_score = greedy, accuracy[greedy] - value * (g(predicted[greedy] + need_ms) - g0)
        for i in range(greedy - 1, -1, -1):
            a = accuracy[i]
            if a <= best_score:
                break
            score = a - value * (g(predicted[i] + need_ms) - g0)
            if score > best_score:
                best, best_score = i, score
        return best

    def describe(self) -> dict:
        return {"busy_arrival_rate_per_s": round(self.rate * 1000.0, 1), "deadline_sample": len(self._deadlines)}
