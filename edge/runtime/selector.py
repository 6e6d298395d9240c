"""Run-time selection: the most accurate variant whose predicted latency fits the time left (O(log K)).

The selected table's variants are sorted by latency and accuracy together, so "the most
accurate variant that fits" is "the last variant whose predicted latency is <= the time
left": one ``bisect`` over a precomputed array.  Predicted latency = the variant's table
quantile x the online slowdown factor (``edge.runtime.slowdown``), so the division is done once
on the time left instead of once per variant.

Policies (``--policy``):

- ``adaptive``        quantile latency x online slowdown factor (the default); with requests
                      waiting, it picks no variant that would leave one of them (EDF order)
                      without time for the fastest variant; under open-loop load it also prices
                      the requests likely to arrive while a long variant runs (``edge.runtime.load``).
- ``adaptive-greedy`` the same without pricing the arrivals (ablation of the load term).
- ``adaptive-cold``   the same without re-warming the fastest variant after a longer one (ablation;
                      ``edge.runtime.scheduler``, ``Scheduler.rewarm``).
- ``quantile-table``  quantile latency, no online correction (ablation of the filter);
                      ``oracle-free`` is accepted as an alias.
- ``mean-table``      the paper's baseline: mean latency, no correction.
- ``fastest``, ``most-accurate``, ``static:<variant>``: fixed choices, for comparison.

When nothing fits, the miss policy decides: ``best-effort`` runs the fastest variant and
flags the miss; ``reject`` answers at once that the deadline cannot be met.

**At rest.**  The table's quantiles are timed back to back (``edgekit bench``); a request that
finds its slot idle for ``REST_GAP_MS`` or more pays a cold start on top (evicted caches, runtime
threads asleep), which the table measures apart as ``rest_p50_ms``.  Such a request is predicted
at the variant's quantile x its rest/back-to-back ratio (adaptive only), and its observed time is
compared to ``rest_p50_ms``, so the slowdown factor keeps meaning "slower than the table", ~1 on an
idle board, instead of learning the cold start (it read 3.5 to 4.8 at rest on an rpi4 setting
before).  Tables without ``rest_p50_ms`` behave as before.

**At a request's cadence.**  Between those, a daemon's requests find their slot idle for their client's
round trip (a few tenths of a millisecond over loopback), and each run pays part of the cold start: on the
demo's front through the daemon at rest, the invokes took 5.5x their table p50 for a 2.4 us net and 1.3x for
a 0.1 ms one. One slowdown factor cannot fit both: learnt mostly from the microsecond nets (2.27), it
over-predicted the longer ones by 1.3-1.8x, so adaptive ran shorter nets than the deadlines allowed. A
request whose slot was idle from ``IDLE_FROM_MS`` to ``REST_GAP_MS`` is therefore predicted at the variant's
quantile x its ``gap_p50_ms``/back-to-back ratio (adaptive only) and observed against ``gap_p50_ms``, as at
rest. The idle level is ``HOT``, ``IDLE`` or ``REST`` (``idle_level``).

**After a switch.**  The table times each variant back to back, its own weights and code in cache. A
request served by another variant than its slot's last one pays for bringing them back, and that
costs the microsecond variants most: on the demo's front in process, a switched-to run took 1.65x its
table p50 for a 3 us net against 1.2x when it repeated, and 1.7x for the 0.15 ms one. Adaptive learns a
*switch scale* per variant online (an EWMA of observed / (table p50 x slowdown factor) over its
switched-to runs, within [1, ``SWITCH_MAX``]), predicts a switched-to run at quantile x factor x that
scale, and feeds the filter the switch-corrected ratio, so that the factor keeps meaning "slower than
the table". The baselines keep the table, as at rest.

**Additive interference.**  A slowdown factor scales every variant alike; a task that takes the core in
bursts (``evaluate --contention rt``: 50 us of every 100 us) adds up to a burst to whichever run it lands
on, whatever its length, which costs a 3 us net 17x and a 0.15 ms one 1.3x. Adaptive keeps the excess of
its last ``EXCESS_N`` runs over median x factor (x the rest or switch scale) and, every ``EXCESS_EVERY``
runs, takes the selector's quantile of them; each variant's prediction adds what of that its own table
tail (quantile - median) does not already allow. On a quiet core the excess stays within the tails and
the term is zero. In process under that task adaptive's on-time accuracy read 60.93 and 61.47 % with it against
58.30 % without (separate sets of three runs on the demo's bundle, docs/policy-comparison.md).
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

from edge.core.errors import UsageError
from edge.runtime.slowdown import NoSlowdown, SlowdownFilter, make_filter
from edge.tables.table import IDLE_FROM_MS, QUANTILES, REST_GAP_MS, LatencyRow

QUANTILE_SHARE = {"mean": 0.50, "p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99, "max": 1.0}

POLICIES = ("adaptive", "adaptive-greedy", "adaptive-cold", "quantile-table", "mean-table", "fastest",
            "most-accurate", "static:<variant>")
POLICY_ALIASES = {"oracle-free": "quantile-table"}
MISS_POLICIES = ("best-effort", "reject")
SWITCH_ALPHA = 0.1  # EWMA weight of a switched-to run in its variant's switch scale
SWITCH_MAX = 4.0
EXCESS_N = 64  # recent runs whose additive excess over the prediction's median sets the additive term
EXCESS_EVERY = 16  # runs between recomputing it
# How long a slot was idle before a run (module docstring): back to back, at a request's cadence, at rest.
HOT, IDLE, REST = 0, 1, 2


def idle_level(idle_s: float) -> int:
    """HOT, IDLE or REST for a slot idle ``idle_s`` seconds since its last run ended."""
    return REST if idle_s >= REST_GAP_MS / 1000.0 else IDLE if idle_s >= IDLE_FROM_MS / 1000.0 else HOT


@dataclass(frozen=True)
class Policy:
    kind: str  # adaptive | quantile-table | mean-table | fastest | most-accurate | static
    variant: str | None = None  # for static

    @classmethod
    def from_string(cls, s: str) -> "Policy":
        s = str(s).strip()
        if s.startswith("static:"):
            v = s[len("static:"):]
            if not v:
                raise UsageError("static policy needs a variant: static:<artifact_id>@<setting>")
            return cls("static", v)
        s = POLICY_ALIASES.get(s, s)
        if s not in POLICIES or s.startswith("static"):
            raise UsageError(f"unknown policy '{s}'; available: {list(POLICIES) + sorted(POLICY_ALIASES)}")
        return cls(s)

    def __str__(self) -> str:
        return f"static:{self.variant}" if self.kind == "static" else self.kind


class Decision(NamedTuple):
    index: int  # type: ignore[assignment]  # into Selector.variants (-1 when rejected); shadows tuple.index
    variant: str | None
    predicted_ms: float  # predicted latency of the chosen variant (of the fastest when rejected)
    fits: bool  # predicted_ms <= the time left
    reject: bool  # nothing fits and the miss policy is reject


class Selector:
    """Picks a variant per request from a monotonic table; thread-safe (the filter locks itself)."""

    def __init__(
        self,
        rows: Sequence[LatencyRow],
        quantile: str = "p95",
        policy: str | Policy = "adaptive",
        miss: str = "best-effort",
        slowdown: SlowdownFilter | None = None,
    ):
        if not rows:
            raise UsageError("the selector needs at least one variant")
        if quantile not in QUANTILES:
            raise UsageError(f"unknown latency quantile '{quantile}'; available: {list(QUANTILES)}")
        if miss not in MISS_POLICIES:
            raise UsageError(f"unknown miss policy '{miss}'; available: {list(MISS_POLICIES)}")
        self.policy = policy if isinstance(policy, Policy) else Policy.from_string(policy)
        self.quantile = quantile
        self.miss = miss
        self.reject_on_miss = miss == "reject"
        rows = sorted(rows, key=lambda r: (r.latency(quantile), r.accuracy))
        self.rows = tuple(rows)
        self.variants = tuple(r.variant for r in rows)
        self.index = {v: i for i, v in enumerate(self.variants)}
        self.accuracy = tuple(float(r.accuracy) for r in rows)
        # What the ratio is observed against: the median, so that ratio ~ 1 on a healthy board
        # and quantile x factor keeps predicting the tail.
        self.median = tuple(max(float(r.p50_ms), 1e-6) for r in rows)
        # At rest (module docstring): how much more a run costs after REST_GAP_MS idle; 1 when not measured.
        self.rest_scale = tuple(max(1.0, float(r.rest_p50_ms) / m) if r.rest_p50_ms > 0 else 1.0
                                for r, m in zip(rows, self.median))
        self.rest_median = tuple(m * k for m, k in zip(self.median, self.rest_scale))
        # At a request's cadence (module docstring): after GAP_MS idle; 1 when not measured.
        self.gap_scale = tuple(max(1.0, float(r.gap_p50_ms) / m) if r.gap_p50_ms > 0 else 1.0
                               for r, m in zip(rows, self.median))
        self.gap_median = tuple(m * k for m, k in zip(self.median, self.gap_scale))
        kind = self.policy.kind
        self.base = tuple(float(r.mean_ms if kind == "mean-table" else r.latency(quantile)) for r in rows)
        # Baselines that trust the table do not correct; the filter still runs for metrics.
        self.corrects = kind in ("adaptive", "adaptive-greedy", "adaptive-cold")
        # Only adaptive predicts the cold start; the baselines keep the table as the paper does.
        self.base_rest = tuple(b * k for b, k in zip(self.base, self.rest_scale)) if self.corrects else self.base
        self.base_gap = tuple(b * k for b, k in zip(self.base, self.gap_scale)) if self.corrects else self.base
        self.switch = [1.0] * len(rows)  # per variant: a switched-to run / a repeated one (learnt, adaptive only)
        # Additive interference (adaptive): the quantile of recent runs' excess over median x factor, less the
        # part of it the table's own tail (its quantile over its median) already allows, per variant.
        self.margin = tuple(max(0.0, b - m) for b, m in zip(self.base, self.median))
        self._excess: deque[float] = deque(maxlen=EXCESS_N)
        self._excess_n = 0  # runs noted in all
        self.excess_q = 0.0
        self.add = [0.0] * len(rows)
        # Per idle level (HOT, IDLE, REST): the bases, their suffix minima, what a run is observed against.
        self._bases = (self.base, self.base_gap, self.base_rest)
        self._suffix_mins = tuple(_suffix_min(b) for b in self._bases)
        self._medians = (self.median, self.gap_median, self.rest_median)
        self.slowdown = slowdown if slowdown is not None else make_filter("kalman")
        # Adaptive also leaves the requests waiting behind this one time to meet their deadlines
        # (edge.runtime.scheduler); the paper's policy and the other baselines look at one request alone.
        self.plans_queue = self.corrects
        # ... and, adaptive alone, the requests likely to arrive while a long variant runs (edge.runtime.load).
        self.prices_load = kind in ("adaptive", "adaptive-cold")
        # ... and (not adaptive-cold) after a longer variant runs the fastest once, so that a tight request next
        # does not find it cold (``Scheduler.rewarm``).
        self.rewarms = kind in ("adaptive", "adaptive-greedy")
        self._fixed: int | None = None
        if kind == "fastest":
            self._fixed = 0
        elif kind == "most-accurate":
            self._fixed = len(rows) - 1
        elif kind == "static":
            if self.policy.variant not in self.index:
                raise UsageError(
                    f"static policy names unknown variant '{self.policy.variant}'; available: {list(self.variants)}"
                )
            self._fixed = self.index[self.policy.variant]

    def __len__(self) -> int:
        return len(self.variants)

    @property
    def factor(self) -> float:
        """The slowdown factor this policy applies (1 for the non-adaptive ones)."""
        return self.slowdown.factor if self.corrects else 1.0

    def predict(self, index: int, idle: int = HOT) -> float:
        return self._bases[idle][index] * (self.slowdown.factor if self.corrects else 1.0)

    def select(self, remaining_ms: float, idle: int = HOT, last: int = -1) -> Decision:
        """The variant for a request with ``remaining_ms`` left (after queueing and overhead); ``idle``: how long
        its slot has been idle (HOT, IDLE, REST: ``idle_level``); ``last``: the variant its slot ran last (-1:
        none), any other one pays its switch scale (adaptive)."""
        f = self.slowdown.factor if self.corrects else 1.0
        base, suffix_min = self._bases[idle], self._suffix_mins[idle]
        fixed = self._fixed
        if fixed is not None:
            pred = base[fixed] * f
            if pred <= remaining_ms:
                return Decision(fixed, self.variants[fixed], pred, True, False)
            if self.reject_on_miss:
                return Decision(-1, None, pred, False, True)
            return Decision(fixed, self.variants[fixed], pred, False, False)
        i = bisect.bisect_right(suffix_min, remaining_ms / f) - 1
        if i >= 0:
            if not self.corrects:
                return Decision(i, self.variants[i], base[i] * f, True, False)
            # The most accurate that fits with its switch scale and the additive term (``_corrected``); the
            # bisect's pick is an upper bound, as both only add.
            while i >= 0:
                pred = self._corrected(i, base, f, idle, last)
                if pred <= remaining_ms:
                    return Decision(i, self.variants[i], pred, True, False)
                i -= 1
        pred = base[0] * f + (self.add[0] if self.corrects else 0.0)
        if self.reject_on_miss:
            return Decision(-1, None, pred, False, True)
        return Decision(0, self.variants[0], pred, False, False)

    def _corrected(self, i: int, base: tuple[float, ...], f: float, idle: int, last: int) -> float:
        """Adaptive's prediction of variant ``i``: its base x the factor, x its switch scale unless its slot ran it
        last or it runs at rest (the rest scale is in ``base_rest`` already), plus the additive term."""
        return base[i] * f * (1.0 if idle == REST or i == last else self.switch[i]) + self.add[i]

    def decision(self, index: int, idle: int = HOT, last: int = -1) -> Decision:
        """The decision for variant ``index``, which fits (the scheduler's load-aware pick among those that fit)."""
        return Decision(index, self.variants[index], self._predicted(index, idle, last), True, False)

    def _predicted(self, i: int, idle: int, last: int) -> float:
        base = self._bases[idle]
        if not self.corrects:
            return base[i]
        return self._corrected(i, base, self.slowdown.factor, idle, last)

    def predictions(self, upto: int, idle: int = HOT, last: int = -1) -> list[float]:
        """The predicted latency of variants 0..``upto`` as ``decision`` gives each (for the load-aware pick)."""
        return [self._predicted(i, idle, last) for i in range(upto + 1)]

    def observe(self, index: int, observed_ms: float, idle: int = HOT, switched: bool = False) -> float:
        """Feed the measured inference time of variant ``index`` (run after ``idle``: HOT, IDLE or REST;
        ``switched``: its slot ran another variant last); returns the new factor."""
        expected = self._medians[idle][index]
        if switched and self.corrects and idle != REST:  # at rest the cold start is in rest_median already
            f = self.slowdown.factor
            r = observed_ms / (expected * f) if f > 0 else 1.0
            if r == r:  # not NaN
                sw = self.switch[index]
                self.switch[index] = min(SWITCH_MAX, max(1.0, sw + SWITCH_ALPHA * (r - sw)))
            expected *= self.switch[index]
        if self.corrects:
            self._note_excess(observed_ms - expected * self.slowdown.factor)
        return self.slowdown.update(observed_ms, expected)

    def _note_excess(self, excess_ms: float) -> None:
        """One run's additive excess over its median prediction; every EXCESS_EVERY runs, the additive term per
        variant: the selector's quantile of the recent excesses, less what the variant's table tail allows."""
        if not excess_ms == excess_ms:  # NaN
            return
        self._excess.append(excess_ms)
        self._excess_n += 1
        if self._excess_n % EXCESS_EVERY or self._excess_n < EXCESS_N // 2:
            return
        q = recent_quantile(self._excess, self.quantile)
        self.excess_q = max(0.0, q)
        f = self.slowdown.factor
        self.add = [max(0.0, self.excess_q - m * f) for m in self.margin]

    def describe(self) -> dict:
        return {
            "policy": str(self.policy),
            "miss": self.miss,
            "quantile": self.quantile,
            "slowdown": self.slowdown.describe(),
            "variants": [
                {"variant": v, "base_ms": b, "accuracy": a, "predicted_ms": self.predict(i),
                 "predicted_at_rest_ms": self.predict(i, REST),
                 "predicted_at_cadence_ms": self.predict(i, IDLE),
                 "switch_scale": round(self.switch[i], 4) if self.corrects else 1.0}
                for i, (v, b, a) in enumerate(zip(self.variants, self.base, self.accuracy))
            ],
        }


def recent_quantile(values: Iterable[float], quantile: str) -> float:
    """The ``quantile`` (a table quantile's name: p95...) of recent samples, as the runtime reads its own tails:
    the sorted sample at that share of its length (the largest for ``max``); ``values`` must not be empty."""
    recent = sorted(values)
    return recent[min(len(recent) - 1, int(QUANTILE_SHARE.get(quantile, 0.95) * len(recent)))]


def _suffix_min(base: Sequence[float]) -> list[float]:
    """Suffix minimum of the base latencies: non-decreasing, and the last i with base[i] <= t is the
    last i with suffix_min[i] <= t. It equals ``base`` when the table is monotonic in the latency
    used; mean-table may not be (nor, at rest, a table whose cold starts differ by variant)."""
    suf = list(base)
    for i in range(len(suf) - 2, -1, -1):
        suf[i] = min(suf[i], suf[i + 1])
    return suf


def make_selector(
    rows: Sequence[LatencyRow],
    quantile: str = "p95",
    policy: str = "adaptive",
    miss: str = "best-effort",
    filter_name: str = "kalman",
    slowdown: SlowdownFilter | None = None,
) -> Selector:
    """A selector with its own filter (``filter_name``), or sharing ``slowdown`` across reloads."""
    if slowdown is None:
        slowdown = make_filter(filter_name) if filter_name else NoSlowdown()
    return Selector(rows, quantile=quantile, policy=policy, miss=miss, slowdown=slowdown)
