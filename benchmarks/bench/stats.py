"""Latency statistics (percentiles, mean, std) of timed runs, and latency CDFs for plots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edge.core.errors import UsageError
from edge.tables.table import LatencyTimes

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LatencyStats(LatencyTimes):
    """Summary of one variant's timed runs, in milliseconds: a table row's timing fields and how many runs."""

    count: int


def summarize_ns(samples_ns: Sequence[int] | np.ndarray) -> LatencyStats:
    """Summarize per-run times given in nanoseconds (``time.perf_counter_ns`` deltas)."""
    a = np.asarray(samples_ns, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise UsageError("need at least one timed run to summarize")
    return summarize_ms(a / 1e6)


def summarize_ms(samples_ms: Sequence[float] | np.ndarray) -> LatencyStats:
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise UsageError("need at least one timed run to summarize")
    # Linear interpolation (numpy's default, = R type 7): monotone in q, so p50 <= p90 <= ... <= max.
    p50, p90, p95, p99 = (float(v) for v in np.percentile(a, PERCENTILES))
    return LatencyStats(
        count=int(a.size),
        mean_ms=float(a.mean()),
        std_ms=float(a.std(ddof=1)) if a.size > 1 else 0.0,
        min_ms=float(a.min()),
        p50_ms=p50,
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
        max_ms=float(a.max()),
    )


def cdf_from_percentiles(points: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """A coarse CDF (x in ms, y in [0, 1]) from min/p50/p90/p95/p99/max when raw samples are missing."""
    order = [("min", 0.0), ("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)]
    xs, ys = [], []
    for key, q in order:
        if key in points:
            xs.append(float(points[key]))
            ys.append(q)
    return np.maximum.accumulate(np.asarray(xs)), np.asarray(ys)


def empirical_cdf(samples_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.sort(np.asarray(samples_ms, dtype=np.float64))
    y = np.arange(1, x.size + 1) / x.size
    return x, y
