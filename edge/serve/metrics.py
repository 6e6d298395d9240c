"""The daemon's Prometheus metrics: plain counters on the request path, exposed by a ``prometheus_client`` collector.

Every counter here is touched only by the event loop's thread, so the request path pays an
integer increment and a ``bisect`` per histogram, not a lock and a labelled lookup per
metric; ``prometheus_client`` builds the metric families and the exposition text when
``/metrics`` is scraped.
"""

from __future__ import annotations

import bisect
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

# What generate_latest writes: the classic text format every Prometheus version scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds, as Prometheus convention asks; dense below 50 ms where edge CNN deadlines live.
LATENCY_BUCKETS = (
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
)
OUTCOMES = ("met", "missed", "rejected", "queue_full", "invalid", "unauthorized", "shutting_down", "error")


class Hist:
    """Counts per bucket, sum and count: what a Prometheus histogram exposes."""

    __slots__ = ("counts", "sum", "n")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, v)] += 1
        self.sum += v
        self.n += 1

    def buckets(self) -> list[tuple[str, int]]:
        out, cum = [], 0
        for b, c in zip(LATENCY_BUCKETS, self.counts):
            cum += c
            out.append((repr(b), cum))
        out.append(("+Inf", self.n))
        return out


class ServerMetrics:
    """Everything the daemon counts, in one place."""

    def __init__(self, queue_depth: Callable[[], float] | None = None, slowdown: Callable[[], float] | None = None,
                 connections: Callable[[], float] | None = None, buffered_bytes: Callable[[], float] | None = None):
        """The gauges read their value when scraped: the EDF queue's depth, the slowdown estimate, and the
        transport's open connections and request bytes it holds in memory."""
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.misses = 0
        self.by_variant: dict[str, int] = {}
        self.latency = Hist()
        self.queue_wait = Hist()
        self.inference: dict[str, Hist] = {}
        self.reloads = {"ok": 0, "failed": 0}
        self.shed: dict[str, int] = {}
        self.ready: dict[str, float] = {}
        self._queue_depth = queue_depth or (lambda: 0.0)
        self._slowdown = slowdown or (lambda: 1.0)
        self._connections = connections or (lambda: 0.0)
        self._buffered_bytes = buffered_bytes or (lambda: 0.0)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # ------------------------------------------------------------ the request path

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] += 1

    def value(self, outcome: str) -> int:
        return self.outcomes[outcome]

    def observe_inference(self, variant: str, ms: float) -> None:
        h = self.inference.get(variant)
        if h is None:
            h = self.inference[variant] = Hist()
        h.observe(ms / 1000.0)

    def answered(self, variant: str, met: bool, total_s: float, queue_s: float) -> None:
        if met:
            self.outcomes["met"] += 1
        else:
            self.outcomes["missed"] += 1
            self.misses += 1
        self.by_variant[variant] = self.by_variant.get(variant, 0) + 1
        self.latency.observe(total_s)
        self.queue_wait.observe(queue_s)

    def reloaded(self, ok: bool) -> None:
        self.reloads["ok" if ok else "failed"] += 1

    def shed_connection(self, reason: str) -> None:
        self.shed[reason] = self.shed.get(reason, 0) + 1

    def transport_event(self, kind: str, reason: str) -> None:
        """What the listener reports: a connection shed (cap, deadline) or a request it refused itself."""
        if kind == "shed":
            self.shed_connection(reason)
        elif kind == "refused":
            self.count("invalid")

    def set_ready(self, table_variants: Iterable[str], serving: set[str]) -> None:
        self.ready = {v: (1.0 if v in serving else 0.0) for v in table_variants}

    # ------------------------------------------------------------ exposition

    def collect(self):
        c = CounterMetricFamily("edgekit_requests", "Inference requests by outcome", labels=["outcome"])
        for o, n in self.outcomes.items():
            c.add_metric([o], n)
        yield c
        yield CounterMetricFamily("edgekit_deadline_misses", "Answered inference requests that missed their deadline",
                                  value=self.misses)
        c = CounterMetricFamily("edgekit_variant_requests", "Requests answered by each variant", labels=["variant"])
        for v, n in self.by_variant.items():
            c.add_metric([v], n)
        yield c
        yield GaugeMetricFamily("edgekit_queue_depth", "Requests waiting in the EDF queue", value=self._queue_depth())
        yield GaugeMetricFamily("edgekit_slowdown_factor", "Online estimate of observed/table latency",
                                value=self._slowdown())
        yield GaugeMetricFamily("edgekit_open_connections", "Client connections open now", value=self._connections())
        yield GaugeMetricFamily("edgekit_buffered_request_bytes",
                                "Request bytes held in memory across all connections now (capped by --max-buffered-mb)",
                                value=self._buffered_bytes())
        c = CounterMetricFamily("edgekit_connections_shed",
                                "Connections closed to stay under the cap or past a deadline", labels=["reason"])
        for r, n in self.shed.items():
            c.add_metric([r], n)
        yield c
        for name, doc, h in (
            ("edgekit_request_duration_seconds", "Arrival (first byte received) to response written", self.latency),
            ("edgekit_queue_wait_seconds", "Arrival to the start of inference", self.queue_wait),
        ):
            yield HistogramMetricFamily(name, doc, buckets=h.buckets(), sum_value=h.sum)
        f = HistogramMetricFamily("edgekit_inference_duration_seconds", "Model invocation time by variant",
                                  labels=["variant"])
        for v, h in self.inference.items():
            f.add_metric([v], h.buckets(), h.sum)
        yield f
        c = CounterMetricFamily("edgekit_table_reloads", "Selected-table reloads by result", labels=["result"])
        for r, n in self.reloads.items():
            c.add_metric([r], n)
        yield c
        g = GaugeMetricFamily("edgekit_variant_ready", "1 when a variant is loaded and passed its checks",
                              labels=["variant"])
        for v, x in self.ready.items():
            g.add_metric([v], x)
        yield g

    def render(self) -> bytes:
        return generate_latest(self.registry)
