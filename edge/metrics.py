"""Prometheus text-format metrics (counters, gauges, histograms with labels) without a client library."""

from __future__ import annotations

import bisect
import math
import threading
from typing import Callable, Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds, as Prometheus convention asks; dense below 50 ms where edge CNN deadlines live.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
)


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help_: str, labels: Sequence[str] = ()):
        self.name, self.help, self.labelnames = name, help_, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str] | None) -> tuple[str, ...]:
        labels = labels or {}
        if set(labels) != set(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {list(self.labelnames)}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name, help_, labels=()):
        super().__init__(name, help_, labels)
        self._values: dict[tuple[str, ...], float] = {}
        if not self.labelnames:
            self._values[()] = 0.0

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        k = self._key(labels)
        with self._lock:
            self._values[k] = self._values.get(k, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_fmt(v)}" for k, v in items]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name, help_, labels=(), fn: Callable[[], float] | None = None):
        super().__init__(name, help_, labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._fn = fn
        if not self.labelnames and fn is None:
            self._values[()] = 0.0

    def set(self, value: float, **labels: str) -> None:
        k = self._key(labels)
        with self._lock:
            self._values[k] = float(value)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def value(self, **labels: str) -> float:
        if self._fn is not None and not self.labelnames:
            return float(self._fn())
        return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        if self._fn is not None:
            return self.header() + [f"{self.name} {_fmt(float(self._fn()))}"]
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_fmt(v)}" for k, v in items]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name, help_, labels=(), buckets: Iterable[float] = LATENCY_BUCKETS):
        super().__init__(name, help_, labels)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        # per label set: [counts per bucket (non-cumulative) + overflow], sum, count
        self._data: dict[tuple[str, ...], list] = {}

    def observe(self, value: float, **labels: str) -> None:
        k = self._key(labels)
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            d = self._data.get(k)
            if d is None:
                d = self._data[k] = [[0] * (len(self.buckets) + 1), 0.0, 0]
            d[0][i] += 1
            d[1] += value
            d[2] += 1

    def count(self, **labels: str) -> int:
        d = self._data.get(self._key(labels))
        return 0 if d is None else d[2]

    def render(self) -> list[str]:
        out = self.header()
        with self._lock:
            items = sorted((k, [list(v[0]), v[1], v[2]]) for k, v in self._data.items())
        for k, (counts, total, n) in items:
            cum = 0
            for b, c in zip(self.buckets, counts):
                cum += c
                le = 'le="%s"' % _fmt(b)
                out.append(f"{self.name}_bucket{_labels(self.labelnames, k, le)} {cum}")
            inf = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(self.labelnames, k, inf)} {n}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, k)} {_fmt(total)}")
            out.append(f"{self.name}_count{_labels(self.labelnames, k)} {n}")
        return out


class Registry:
    def __init__(self):
        self._metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        self._metrics.append(metric)
        return metric

    def counter(self, name, help_, labels=()) -> Counter:
        return self.add(Counter(name, help_, labels))  # type: ignore[return-value]

    def gauge(self, name, help_, labels=(), fn=None) -> Gauge:
        return self.add(Gauge(name, help_, labels, fn))  # type: ignore[return-value]

    def histogram(self, name, help_, labels=(), buckets=LATENCY_BUCKETS) -> Histogram:
        return self.add(Histogram(name, help_, labels, buckets))  # type: ignore[return-value]

    def render(self) -> str:
        lines: list[str] = []
        for m in self._metrics:
            lines.extend(m.render())
        return "\n".join(lines) + "\n"


class ServerMetrics:
    """The daemon's metrics, all in one place so the scheduler and the HTTP layer share them."""

    def __init__(self, queue_depth: Callable[[], float] | None = None, slowdown: Callable[[], float] | None = None):
        r = self.registry = Registry()
        self.requests = r.counter(
            "edgekit_requests_total",
            "Inference requests by outcome (met, missed, rejected, queue_full, invalid, unauthorized, shutting_down)",
            ("outcome",),
        )
        self.misses = r.counter("edgekit_deadline_misses_total", "Answered inference requests that missed their deadline")
        self.variant = r.counter("edgekit_variant_requests_total", "Requests answered by each variant", ("variant",))
        self.queue_depth = r.gauge("edgekit_queue_depth", "Requests waiting in the EDF queue", fn=queue_depth or (lambda: 0))
        self.slowdown = r.gauge("edgekit_slowdown_factor", "Online estimate of observed/table latency",
                                fn=slowdown or (lambda: 1.0))
        self.latency = r.histogram("edgekit_request_duration_seconds", "Arrival to response, per answered request")
        self.queue_wait = r.histogram("edgekit_queue_wait_seconds", "Time from arrival to dequeue")
        self.inference = r.histogram("edgekit_inference_duration_seconds", "Model invocation time by variant", ("variant",))
        self.reloads = r.counter("edgekit_table_reloads_total", "Selected-table reloads by result", ("result",))
        self.ready = r.gauge("edgekit_variant_ready", "1 when a variant is loaded and passed its canary", ("variant",))

    def render(self) -> str:
        return self.registry.render()
