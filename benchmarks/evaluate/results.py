"""The results of a policy comparison as frozen dataclasses, and the ``results.json`` they write."""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from benchmarks.evaluate.contention import ContentionSpec
from benchmarks.evaluate.loadgen import RequestRecord
from benchmarks.evaluate.placement import Placement
from benchmarks.evaluate.plane import plane_data
from benchmarks.evaluate.workload import Workload
from edge.tables.table import LatencyRow

KIND = "policy-comparison"
VERSION = 7  # 3: the headline (on-time accuracy), answer accuracy, the accuracy-miss plane, each run's quantile;
# 4: open loop through the daemon, the oracle's server held for the daemon's measured work per request and fed
# the requests as adaptive's daemon received them (so --repeat does not reuse a run of the looser oracle);
# 5: in process under open-loop arrivals, the oracle is charged each request's own floor from adaptive's run;
# 6: open loop through the daemon too (its wait behind the requests before it taken out by the server model);
# 7: charged adaptive's floors and the best static CNN's in turn, the oracle keeps the better (floors_from, by_floors)
HEADLINE = "on_time_accuracy"
HEADLINE_NOTE = ("on-time accuracy: the share of all requests answered correctly and within their deadline (on the "
                 "daemon's clock); a late, rejected or failed request counts against it. Goodput, the same answers "
                 "per second, stands beside it for open-loop arrivals only: in closed loop it is throughput, which "
                 "favours the fastest model by construction")
HELD_OUT_NOTE = ("table accuracy: the benchmark's 'select' half of the eval set; served: this workload's "
                 "images, drawn from the disjoint 'serve' half")


def clock_name(transport: str) -> str:
    """Whose clock judges a deadline: the daemon's (from a request's first bytes at its socket to its answer
    written), or in process the application's (from the request's arrival to classify's return)."""
    return "application's" if transport == "inproc" else "daemon's"


def clock_short(transport: str) -> str:
    """The same, as a table column or an axis says it: "daemon" or "app"."""
    return "app" if transport == "inproc" else "daemon"


def variant_labels(rows: tuple[LatencyRow, ...]) -> dict[str, str]:
    """Short names V0..Vk-1 in latency order, for tables and plots."""
    return {r.variant: f"V{j}" for j, r in enumerate(rows)}


@dataclass(frozen=True)
class Host:
    """The machine the comparison ran on."""

    machine: str
    os: str
    cores: int
    python: str
    cpu_model: str

    @classmethod
    def here(cls) -> Host:
        try:
            from benchmarks.bench.sysinfo import device_name as cpu_model

            model = cpu_model()
        except Exception:
            model = platform.processor() or ""
        return cls(platform.machine(), platform.platform(), os.cpu_count() or 1, platform.python_version(), model)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ServingProbe:
    """One serving-floor probe: closed-loop requests to one variant with no deadline pressure (ms, rounded)."""

    floor_ms: float  # p50 of the daemon's total minus inference: the floor on the daemon's clock
    e2e_overhead_ms: float  # p50 of end to end minus inference
    inference_p50_ms: float
    throughput_rps: float  # closed loop: the variant's capacity with this client
    # The server's threads' time on a core per answered request, less the mean inference (ms): how long a request
    # keeps the server busy besides its inference, the wake-up, reading, checking, answering and what follows
    # the answer. None in process (the floor is that time there) or where /proc does not say.
    busy_ms: float | None = None
    # Every answered request's (daemon floor, end-to-end overhead), ms: the distribution the oracle's
    # floors are drawn from (benchmarks.evaluate.command.draw_floors). Not written to results.json.
    samples_ms: tuple[tuple[float, float], ...] = dataclasses.field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("samples_ms")
        if self.samples_ms:
            floors = np.asarray([f for f, _ in self.samples_ms])
            d["floor_p90_ms"] = round(float(np.percentile(floors, 90)), 4)
            d["floor_p99_ms"] = round(float(np.percentile(floors, 99)), 4)
        return d


@dataclass(frozen=True)
class Probes:
    """The probes one comparison ran: the fastest variant quiet, and under contention and the most accurate
    variant's capacity when the oracle or the overload arrivals need them."""

    fastest: ServingProbe
    fastest_under_contention: ServingProbe | None = None
    most_accurate: ServingProbe | None = None

    def to_json(self) -> dict[str, Any]:
        return {name: p.to_json() for name, p in (("fastest", self.fastest),
                                                  ("fastest_under_contention", self.fastest_under_contention),
                                                  ("most_accurate", self.most_accurate)) if p is not None}


@dataclass(frozen=True)
class Overload:
    """Open-loop arrivals at ``factor`` x the most accurate variant's closed-loop capacity."""

    factor: float
    capacity_rps: float
    rate_rps: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Slowdown:
    """How much the contention slowed one policy's served inferences (``benchmarks.evaluate.command``'s
    ``achieved_slowdown``); all None when no variant was served often enough inside and outside the window."""

    slowdown: float | None
    inside_ratio: float | None
    outside_ratio: float | None
    variants: Mapping[str, float] = field(default_factory=dict)  # per variant: inside / outside

    def to_json(self) -> dict[str, Any]:
        return {"slowdown": self.slowdown, "inside_ratio": self.inside_ratio, "outside_ratio": self.outside_ratio,
                "variants": dict(self.variants)}


@dataclass(frozen=True)
class DaemonRun:
    """What only a policy served by a daemon has."""

    served_as: str  # the daemon's --policy (best-static is served as static:<variant>)
    daemon_log: str  # file name beside results.json
    slowdown: Slowdown | None  # None without contention
    quantile: str | None = None  # the daemon's --quantile (None: its default, the table's)


@dataclass(frozen=True)
class PolicyResult:
    """One policy's run over the workload: every request as the load generator saw it, and their summary."""

    summary: Mapping[str, Any]  # ``benchmarks.evaluate.loadgen.summarize``'s, the same as `edgekit loadgen` prints
    records: tuple[RequestRecord, ...]
    truncated: bool  # stopped by --duration before the last request
    contention_s: tuple[tuple[float, float], ...]  # [on, off] seconds from the run's start
    daemon: DaemonRun | None = None  # None for the oracle, which no daemon serves

    def to_json(self) -> dict[str, Any]:
        summary = dict(self.summary)
        if self.daemon is not None:
            summary["slowdown"] = None if self.daemon.slowdown is None else self.daemon.slowdown.to_json()
        out: dict[str, Any] = {"summary": summary, "truncated": self.truncated,
                               "contention_s": [list(iv) for iv in self.contention_s]}
        if self.daemon is not None:
            out["daemon_log"] = self.daemon.daemon_log
        out["records"] = [r.to_dict() for r in self.records]
        if self.daemon is not None:
            out["served_as"] = self.daemon.served_as
            out["quantile"] = self.daemon.quantile
        return out


@dataclass(frozen=True)
class HeldOutAccuracy:
    """One variant's accuracy in its table and on the images this workload served (rounded)."""

    table: float
    served: float
    gap: float  # served - table


@dataclass(frozen=True)
class HeldOut:
    """Per variant (by short label), the table's accuracy against the served images' accuracy."""

    variants: Mapping[str, HeldOutAccuracy]

    def to_json(self) -> dict[str, Any]:
        return {"note": HELD_OUT_NOTE, "variants": {k: dataclasses.asdict(v) for k, v in self.variants.items()}}


@dataclass(frozen=True)
class BestStatic:
    """The paper's non-adaptive baseline, picked from the oracle pass's measured times."""

    variant: str
    label: str
    max_miss: float
    predicted_miss_rates: Mapping[str, float]  # by short label: each variant serving every request alone

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "label": self.label, "max_miss": self.max_miss,
                "predicted_miss_rates": dict(self.predicted_miss_rates)}


@dataclass(frozen=True)
class ServerCheck:
    """The oracle's simulated server checked against a real one: the best static CNN served alone by the oracle's
    server model (its floors, its arrivals, its hold) beside the same CNN's real run, both on the serving clock."""

    label: str  # the best static CNN's short label
    simulated_miss: float  # its miss rate on the oracle's server
    measured_miss: float  # its miss rate in its own run

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "simulated_miss": self.simulated_miss, "measured_miss": self.measured_miss}


@dataclass(frozen=True, eq=False)  # arrays: no field-wise ==
class OracleResult:
    """The oracle's inputs: every variant's measured time and answer on every request, and the overhead added."""

    method: str
    overhead_ms: float  # end to end, from the probe
    daemon_overhead_ms: float  # on the daemon's clock, from the probe
    overhead_source: str
    pass_wall_s: float
    variants: tuple[str, ...]
    latency_ms: np.ndarray  # (count, K)
    preds: np.ndarray  # (count, K)
    variant_accuracy_on_workload: Mapping[str, float]
    choice: str = ""  # how it chose (benchmarks.evaluate.oracle.oracle_records)
    # Open loop: the request-by-request choice's on-time accuracy and goodput, beside the planned one's
    greedy: Mapping[str, float] | None = None
    # Open loop: the least time a request kept the simulated server busy besides its inference (the probe's busy_ms)
    busy_ms: float | None = None
    server_check: ServerCheck | None = None  # its server model serving the best static CNN alone, against its run
    floors_from: str = ""  # the run whose floors it was charged (command.OWN_FLOORS_FROM), or "probe"
    # Its on-time accuracy and goodput charged each run's floors ({run: {on_time_accuracy, goodput_rps}})
    by_floors: Mapping[str, Mapping[str, float | None]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "overhead_ms": self.overhead_ms,
            "daemon_overhead_ms": self.daemon_overhead_ms,
            "overhead_source": self.overhead_source,
            "pass_wall_s": self.pass_wall_s,
            "variants": list(self.variants),
            "latency_ms": np.round(self.latency_ms, 4).tolist(),
            "preds": self.preds.tolist(),
            "variant_accuracy_on_workload": dict(self.variant_accuracy_on_workload),
            "choice": self.choice,
            "greedy": None if self.greedy is None else dict(self.greedy),
            "busy_ms": self.busy_ms,
            "server_check": None if self.server_check is None else self.server_check.to_json(),
            "floors_from": self.floors_from,
            "by_floors": None if self.by_floors is None else {k: dict(v) for k, v in self.by_floors.items()},
        }


@dataclass(frozen=True, eq=False)  # the workload's arrays: no field-wise ==
class Evaluation:
    """One policy comparison: what it ran on, the same workload for every policy, and each policy's run.

    ``complete`` is False in ``results.partial.json``, written after each policy so that an
    interrupted run keeps the policies it finished; it then lacks the oracle and the achieved slowdown.
    """

    created: str  # UTC, ISO 8601
    host: Host
    placement: Placement
    bundle: str
    table: str
    profile: str  # the runtime settings the oracle pass used
    selection: Mapping[str, Any]  # the selected table's parameters (``SelectionParams.to_dict``)
    deadline_spec: str  # as asked (auto, or the spec); the drawn one is the workload's
    warmup: int
    duration_limit_s: float
    rows: tuple[LatencyRow, ...]  # the selected variants in latency order
    workload: Workload
    contention: ContentionSpec
    policies: Mapping[str, PolicyResult] = field(default_factory=dict)  # in the order they ran
    probes: Probes | None = None
    overload: Overload | None = None
    held_out: HeldOut | None = None
    best_static: BestStatic | None = None
    oracle: OracleResult | None = None
    achieved_slowdown: float | None = None  # the median over the policies whose slowdown was measured
    complete: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)  # the rest of what was asked (EvaluateOptions.record)
    transport: str = "daemon"  # a key of benchmarks.evaluate.command.TRANSPORTS: daemon | inproc

    @property
    def clock(self) -> str:
        """Whose clock the deadlines are judged on: "daemon's" or "application's"."""
        return clock_name(self.transport)

    @property
    def labels(self) -> dict[str, str]:
        return variant_labels(self.rows)

    @property
    def window(self) -> tuple[int, int]:
        """[start, stop) of the requests under contention."""
        return self.contention.window(self.workload.count)

    @property
    def open_loop(self) -> bool:
        """Requests arrive on a schedule (Poisson), not one after the answer to the last."""
        return self.workload.arrivals_s is not None

    def headline(self) -> dict[str, dict[str, float | None]]:
        """Per policy, the headline figure (on-time accuracy) and, with open-loop arrivals, the goodput beside it."""
        out: dict[str, dict[str, float | None]] = {}
        for name, p in self.policies.items():
            h: dict[str, float | None] = {HEADLINE: p.summary.get(HEADLINE)}
            if self.open_loop:
                h["goodput_rps"] = p.summary.get("goodput_rps")
            out[name] = h
        return out

    @property
    def truncated(self) -> list[str]:
        """The policies stopped by --duration before their last request."""
        return [n for n, p in self.policies.items() if p.truncated]

    def to_json(self) -> dict[str, Any]:
        labels = self.labels
        c = self.contention
        out: dict[str, Any] = {
            "kind": KIND,
            "version": VERSION,
            "created": self.created,
            "host": self.host.to_json(),
            "placement": self.placement.to_dict(),
            "bundle": self.bundle,
            "table": self.table,
            "profile": self.profile,
            "transport": self.transport,
            "selection": dict(self.selection),
            "deadline_spec": self.deadline_spec,
            "warmup": self.warmup,
            "duration_limit_s": self.duration_limit_s,
            **({"options": dict(self.options)} if self.options else {}),
            "variants": [
                {"label": labels[r.variant], "variant": r.variant, "accuracy": r.accuracy,
                 "p50_ms": r.p50_ms, "p95_ms": r.p95_ms, "p99_ms": r.p99_ms, "mean_ms": r.mean_ms}
                for r in self.rows
            ],
            "variant_labels": labels,
            "complete": self.complete,
            "headline": {"figure": HEADLINE, "note": HEADLINE_NOTE.replace("daemon's", self.clock),
                         "open_loop": self.open_loop, "policies": self.headline()},
            "policies": {name: p.to_json() for name, p in self.policies.items()},
        }
        if self.probes is not None:
            out["probe"] = self.probes.to_json()
        if self.overload is not None:
            out["overload"] = self.overload.to_json()
        out["workload"] = self.workload.to_dict()
        out["contention"] = {"spec": c.describe(), "kind": c.kind, "what": c.what(), "share": c.share,
                             "load": c.load, "quota": c.quota, "window": list(self.window)}
        if self.complete:
            # Known once every policy ran: a partial file has no value yet rather than a None that
            # would read as "measured nothing".
            out["contention"]["achieved_slowdown"] = self.achieved_slowdown
        if self.held_out is not None:
            out["held_out"] = self.held_out.to_json()
        if self.best_static is not None:
            out["best_static"] = self.best_static.to_json()
        if self.oracle is not None:
            out["oracle"] = self.oracle.to_json()
        out["plane"] = plane_data(self).to_json()
        return out
