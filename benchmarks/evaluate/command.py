"""`edgekit evaluate`: run the same deadline workload against each serving policy and an oracle.

Every daemon policy gets a fresh `edgekit serve` subprocess and exactly the same requests
(images, deadlines, arrival times, contention window). The oracle is computed from a
separate in-process pass that runs every selected variant on every request's image, back
to back, under the same contention schedule (``benchmarks.evaluate.oracle``).

``evaluate`` runs the phases below in order: the plan, the serving-floor probes, the workload,
the oracle's timing pass and the best static CNN, one run per daemon policy (with ``--statics all``
and ``--plane`` also each selected variant served alone and adaptive at each latency quantile, for the
accuracy-miss plane: ``benchmarks.evaluate.plane``), the oracle's choices, the summary, and the files;
the results are a ``benchmarks.evaluate.results.Evaluation``. ``--repeat N`` runs all of it N times with
the workload seeds seed, seed+1, ... and reports the median and range of every figure
(``benchmarks.evaluate.repeats``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from benchmarks.evaluate.contention import ContentionSchedule, ContentionSpec
from benchmarks.evaluate.daemon_proc import Daemon, serve_argv
from benchmarks.evaluate.inproc import InProcess, TurnPolicy, probe_inproc, run_inproc, run_inproc_turns
from benchmarks.evaluate.loadgen import (
    DEFAULT_DURATION_S,
    MAX_DURATION_S,
    ClosedLoopClient,
    RequestRecord,
    load_eval_set,
    run_load,
    summarize,
    wait_ready,
)
from benchmarks.evaluate.oracle import (
    BEST_STATIC_MAX_MISS,
    ORACLE_METHOD,
    OraclePass,
    best_static,
    floors_behind_queue,
    oracle_pass,
    oracle_records,
    static_miss_rates,
)
from benchmarks.evaluate.placement import Placement, client_side, place
from benchmarks.evaluate.plane import PLANE_QUANTILES, adaptive_name
from benchmarks.evaluate.probe import PROBE_COUNT, probe_serving
from benchmarks.evaluate.repeats import Repeats, aggregate, write_repeats
from benchmarks.evaluate.report import render_text, write_report
from benchmarks.evaluate.results import KIND as RESULTS_KIND
from benchmarks.evaluate.results import VERSION as RESULTS_VERSION
from benchmarks.evaluate.results import (
    BestStatic,
    DaemonRun,
    Evaluation,
    HeldOut,
    HeldOutAccuracy,
    Host,
    OracleResult,
    Overload,
    PolicyResult,
    Probes,
    ServerCheck,
    ServingProbe,
    Slowdown,
    clock_name,
    variant_labels,
)
from benchmarks.evaluate.turns import INTERLEAVE, take_turns, turns
from benchmarks.evaluate.workload import MAX_COUNT, Workload, WorkloadError, make_workload
from edge.core.atomic import atomic_write_json, atomic_write_text
from edge.core.errors import UsageError
from edge.runtime.selector import POLICIES, POLICY_ALIASES, Policy
from edge.serve.http.spin import check_spin_us
from edge.tables.table import QUANTILES, LatencyRow, LatencyTable

EVALUATE_ONLY = ("best-static", "oracle")  # computed here, not daemon policies (benchmarks.evaluate.oracle)
DEFAULT_POLICIES = ("adaptive", "mean-table", "quantile-table", "most-accurate", "best-static", "oracle")
DEFAULT_COUNT = 300
MAX_REPEAT = 20
STATICS = ("pass", "all")  # the plane's variants alone: predicted by the oracle pass, or each served by the daemon
WARMUP_SEED_OFFSET = 7919  # warm-up requests come from a different stream than the measured ones


# ----------------------------------------------------------------------------- selected table


def load_selected(path: str | Path) -> tuple[LatencyTable, dict[str, Any]]:
    """The selected table (kind 'selected', monotonic) and its selection parameters, rows in latency order."""
    from edge.tables.table import SelectedTable

    t = SelectedTable.load(path)
    return t.as_latency_table(), t.params.to_dict()


def auto_deadline(rows: tuple[LatencyRow, ...], floor_ms: float = 0.0) -> str:
    """Uniform between floor + the fastest variant's p95 and floor + 1.1 x the slowest's: every
    deadline leaves room for the measured serving floor, and the range spans the whole front."""
    p95 = [r.p95_ms for r in rows]
    lo, hi = floor_ms + min(p95), floor_ms + 1.1 * max(p95)
    return f"uniform:{lo:.4g}:{hi:.4g}" if hi > lo else f"fixed:{lo:.4g}"


def parse_policies(text: str) -> list[str]:
    """The comma-separated policies to compare: the daemon's (``edge.runtime.selector.Policy``) and the evaluation's
    own."""
    pols = [p.strip() for p in text.split(",") if p.strip()]
    if not pols:
        raise UsageError("--policies is empty; e.g. --policies adaptive,mean-table,oracle")
    for p in pols:
        if p in EVALUATE_ONLY:
            continue
        try:
            Policy.from_string(p)
        except ValueError:
            available = (*POLICIES, *POLICY_ALIASES, *EVALUATE_ONLY)
            raise UsageError(f"unknown policy '{p}'; available: {', '.join(available)}") from None
    if len(set(pols)) != len(pols):
        raise UsageError(f"--policies lists a policy twice: {text}")
    return pols


def overload_factor(arrival: str) -> float | None:
    """FACTOR of ``--arrival overload[:FACTOR]`` (1.2 when left out); None for any other arrival."""
    if not arrival.startswith("overload"):
        return None
    _, _, f = arrival.partition(":")
    try:
        factor = float(f) if f else 1.2
    except ValueError:
        raise UsageError(f"bad --arrival {arrival!r}: use overload[:FACTOR], e.g. overload:1.2") from None
    if not 0.1 <= factor <= 10:
        raise UsageError(f"--arrival overload factor must be in [0.1, 10], got {factor:g}")
    return factor


# ----------------------------------------------------------------------------- options and plan


@dataclass(frozen=True)
class EvaluateOptions:
    """What one comparison was asked for; checked when built."""

    bundle: str
    table: str
    out: Path
    policies: tuple[str, ...] = DEFAULT_POLICIES  # in the order they run
    profile: str | None = None  # the daemon's; None: the bundle's (the oracle pass: the table's)
    count: int = DEFAULT_COUNT
    deadline: str = "auto"
    arrival: str = "closed"
    contention: ContentionSpec = ContentionSpec()
    seed: int = 0
    duration_s: float = DEFAULT_DURATION_S  # cap on each policy's run
    warmup: int = 20
    miss: str = "best-effort"
    quantile: str | None = None
    start_timeout_s: float = 180.0
    plots: bool = True
    quiet: bool = False
    statics: str = "pass"  # "all": each selected variant also served alone by the daemon (static:<variant>)
    plane: bool = False  # the whole plane: statics all, and adaptive at each of PLANE_QUANTILES
    repeat: int = 1  # runs of the whole comparison, seeds seed .. seed+repeat-1
    transport: str = "daemon"  # one of TRANSPORTS (below)
    interleave: int = INTERLEAVE  # requests per turn as the policies take turns (0: none; daemon: closed loop)
    spin_us: int = 0  # the daemons busy-poll this long after each answer (edgekit serve --spin-us; 0: off)

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_COUNT:
            raise UsageError(f"--count must be in [1, {MAX_COUNT}], got {self.count}")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise UsageError(f"--duration must be in (0, {MAX_DURATION_S:g}] seconds per policy, "
                             f"got {self.duration_s:g}")
        if not 0 <= self.warmup <= 1000:
            raise UsageError(f"--warmup must be in [0, 1000], got {self.warmup}")
        if self.statics not in STATICS:
            raise UsageError(f"--statics must be one of {', '.join(STATICS)}, got {self.statics!r}")
        if self.transport not in TRANSPORTS:
            raise UsageError(f"--transport must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}")
        if not 0 <= self.interleave <= MAX_COUNT:
            raise UsageError(f"--interleave must be in [0, {MAX_COUNT}] requests per turn, got {self.interleave}")
        check_spin_us(self.spin_us, "--spin-us")
        if self.spin_us and self.transport != "daemon":
            raise UsageError("--spin-us is the daemon's busy polling; in process there is no transport to poll "
                             "(drop it, or use --transport daemon)")
        if not 1 <= self.repeat <= MAX_REPEAT:
            raise UsageError(f"--repeat must be in [1, {MAX_REPEAT}], got {self.repeat}")
        overload_factor(self.arrival)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvaluateOptions:
        return cls(
            bundle=args.bundle, table=args.table, out=Path(args.out), policies=tuple(parse_policies(args.policies)),
            profile=args.profile, count=args.count, deadline=args.deadline, arrival=args.arrival,
            contention=ContentionSpec.parse(args.contention, quota=args.quota), seed=args.seed,
            duration_s=args.duration, warmup=args.warmup, miss=args.miss, quantile=args.quantile,
            plots=not args.no_plots, statics=args.statics, plane=args.plane, repeat=args.repeat,
            transport=args.transport, interleave=args.interleave, spin_us=args.spin_us,
        )

    @property
    def overload(self) -> float | None:
        return overload_factor(self.arrival)

    def record(self) -> dict[str, Any]:
        """What else the run was asked, for results.json (a repeat reuses a finished run only when it matches)."""
        return {"policies": list(self.policies), "profile": self.profile, "arrival": self.arrival,
                "miss": self.miss, "quantile": self.quantile, "duration_s": self.duration_s,
                "statics": self.statics, "plane": self.plane, "transport": self.transport,
                "interleave": self.interleave, "turns": TURNS_VERSION, "spin_us": self.spin_us}

    def takes_turns(self, wl: Workload) -> bool:
        """Whether the policies take turns (``benchmarks.evaluate.turns``, each policy on its own clock):
        ``interleave`` > 0, and in process always (under open-loop arrivals a backlog carries over); through the
        daemon in closed loop, with a contention kind that acts on cores, not on one process (a CPU quota is put on
        one daemon's process; and under open-loop arrivals a daemon woken at its turn's start misses the turn's
        first requests, ``benchmarks.evaluate.turns``: those runs go one after another)."""
        if self.interleave <= 0:
            return False
        if self.transport == "inproc":
            return True
        return wl.closed and self.contention.kind != "quota"

    @property
    def serves_statics(self) -> bool:
        return self.plane or self.statics == "all"

    @property
    def needs_oracle_pass(self) -> bool:
        """The oracle and the best static CNN both come from the oracle's timing pass."""
        return "oracle" in self.policies or "best-static" in self.policies


@dataclass(frozen=True, eq=False)  # arrays: no field-wise ==
class Plan:
    """What every phase reads, loaded once: the options, the front, the serving images, the cores."""

    opts: EvaluateOptions
    rows: tuple[LatencyRow, ...]  # the selected variants in latency order
    selection: Mapping[str, Any]
    images: np.ndarray
    labels: np.ndarray
    bundle: Any  # the opened bundle (``edge.bundle.reader``), for the oracle pass
    profile: str  # the runtime settings the table was measured with, for the oracle pass
    token: str | None
    placement: Placement

    @property
    def inproc(self) -> InProcess:
        """What an in-process run opens (``--transport inproc``)."""
        o, p = self.opts, self.placement
        return InProcess(o.bundle, o.table, o.profile, o.miss, p.server, p.client)

    def log(self, what: str) -> Path:
        """The log file of one daemon (or in-process classifier) beside results.json."""
        prefix = "app" if self.opts.transport == "inproc" else "daemon"
        return self.opts.out / f"{prefix}-{what.replace(':', '_').replace('/', '_').replace('@', '_')}.log"

    def say(self, text: str) -> None:
        if not self.opts.quiet:
            print(text, flush=True)

    def progress(self, label: str) -> Callable[[int, int], None] | None:
        return None if self.opts.quiet else _progress(label)


def _progress(label: str) -> Callable[[int, int], None]:
    """Progress on one updating line on a terminal, every quarter as its own line in a log."""
    tty = sys.stdout.isatty()
    step = [0]

    def cb(done: int, total: int) -> None:
        parts = 20 if tty else 4
        k = done * parts // max(total, 1)
        if k > step[0] or done == total:
            step[0] = k
            if tty:
                print(f"\r  {label}: {done}/{total}", end="\n" if done == total else "", flush=True)
            else:
                print(f"  {label}: {done}/{total}", flush=True)

    return cb


def make_plan(opts: EvaluateOptions) -> Plan:
    """Load the selected table and the bundle's serving images, and place the daemon and the client."""
    opts.out.mkdir(parents=True, exist_ok=True)
    sel, selection = load_selected(opts.table)
    images, labels, b = load_eval_set(opts.bundle)
    # The daemon resolves its own profile (the bundle's unless told); the oracle pass needs the
    # runtime settings the table was measured with.
    prof = opts.profile or sel.header.profile or b.profile
    token = os.environ.get("EDGEKIT_TOKEN")  # the daemon requires it when set in its environment
    return Plan(opts, sel.rows, selection, images, labels, b, prof, token, place())


# ----------------------------------------------------------------------------- the serving floor


def _probe_daemon(plan: Plan, variant: str, log: Path, contention: ContentionSpec | None) -> ServingProbe:
    o = plan.opts
    return probe_serving(o.bundle, o.table, variant, o.profile, o.miss, plan.images, plan.labels, plan.placement,
                         log, o.start_timeout_s, plan.token, contention=contention, spin_us=o.spin_us)


def _probe_inproc(plan: Plan, variant: str, log: Path, contention: ContentionSpec | None) -> ServingProbe:
    return probe_inproc(plan.inproc, variant, plan.images, plan.labels, log, PROBE_COUNT, contention=contention)


def _probe(plan: Plan, variant: str, what: str, contention: ContentionSpec | None = None) -> ServingProbe:
    """One serving-floor probe with the comparison's transport."""
    return TRANSPORTS[plan.opts.transport].probe(plan, variant, plan.log(what), contention)


def probe_floors(plan: Plan) -> Probes | None:
    """The serving floor, measured with the same client and the fastest variant (quiet, and under
    contention for the oracle pass), and the most accurate variant's capacity for overload arrivals;
    None when nothing needs them."""
    o = plan.opts
    if not (o.deadline == "auto" or o.needs_oracle_pass or o.overload):
        return None
    plan.say(f"evaluate: probing the serving floor with the fastest variant ({PROBE_COUNT} requests)")
    fastest = _probe(plan, plan.rows[0].variant, "probe-fastest")
    busy = "" if fastest.busy_ms is None else (f"; the daemon's own work per request besides the inference "
                                               f"{fastest.busy_ms:.3f} ms on its core")
    plan.say(f"evaluate: serving floor {fastest.floor_ms:.3f} ms on the {clock_name(o.transport)} clock "
             f"({fastest.e2e_overhead_ms:.3f} ms end to end){busy}")
    contended = None
    # The floor inside the contention window, for the oracle and the best static CNN.
    if o.contention.active and o.needs_oracle_pass:
        contended = _probe(plan, plan.rows[0].variant, "probe-contention", contention=o.contention)
        plan.say(f"evaluate: serving floor under {o.contention.describe()}: {contended.floor_ms:.3f} ms on the "
                 f"{clock_name(o.transport)} clock ({contended.e2e_overhead_ms:.3f} ms end to end)")
    capacity = _probe(plan, plan.rows[-1].variant, "probe-most-accurate") if o.overload else None
    return Probes(fastest, contended, capacity)


def draw_floors(probe: ServingProbe, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` serving overheads (end to end, daemon clock), each a measured request of the probe drawn
    at random (the pair kept together): the oracle and the best static CNN face the floor's jitter as
    the daemon's policies do. A probe without samples charges its medians."""
    if not probe.samples_ms:
        return np.full(count, probe.e2e_overhead_ms), np.full(count, probe.floor_ms)
    s = np.asarray(probe.samples_ms, dtype=np.float64)
    pick = rng.integers(0, len(s), size=count)
    return s[pick, 1].copy(), s[pick, 0].copy()


def _floors(probe: ServingProbe, contended: ServingProbe | None, count: int,
            cspec: ContentionSpec, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per request, the serving overhead end to end and on the daemon's clock, drawn from the quiet
    probe's measured requests, and inside the contention window from the contended probe's (seeded by
    the workload's seed, so every policy comparison of one seed charges the same floors)."""
    rng = np.random.default_rng([int(seed), 0xF100])
    e2e, daemon = draw_floors(probe, count, rng)
    if contended is not None:
        a, z = cspec.window(count)
        e2e[a:z], daemon[a:z] = draw_floors(contended, z - a, rng)
    return e2e, daemon


# ----------------------------------------------------------------------------- the workload


def overload_arrivals(plan: Plan, probes: Probes | None) -> Overload | None:
    """With ``--arrival overload``: the Poisson rate, from the most accurate variant's measured capacity."""
    factor = plan.opts.overload
    if factor is None:
        return None
    assert probes is not None and probes.most_accurate is not None
    capacity = probes.most_accurate.throughput_rps
    rate = factor * capacity
    plan.say(f"evaluate: overload: the most accurate variant serves {capacity:.0f} requests/s "
             f"closed loop; open-loop Poisson arrivals at {factor:g}x = {rate:.0f}/s")
    return Overload(factor=factor, capacity_rps=capacity, rate_rps=round(rate, 1))


def draw_workload(plan: Plan, probes: Probes | None, overload: Overload | None) -> tuple[Workload, Workload | None]:
    """The requests every policy gets, and the unmeasured warm-up requests (None without warm-up)."""
    o = plan.opts
    floor = probes.fastest.floor_ms if probes else 0.0
    dspec = auto_deadline(plan.rows, floor) if o.deadline == "auto" else o.deadline
    arrival = f"poisson:{overload.factor * overload.capacity_rps:.1f}" if overload else o.arrival
    n_images = plan.images.shape[0]
    try:
        wl = make_workload(n_images, o.count, dspec, arrival, o.seed)
        warm = make_workload(n_images, max(1, o.warmup), dspec, "closed", o.seed + WARMUP_SEED_OFFSET) \
            if o.warmup else None
    except WorkloadError as exc:
        raise UsageError(str(exc)) from None
    cspec = o.contention
    plan.say(f"evaluate: {len(plan.rows)} selected variants, {wl.count} requests per policy, deadlines "
             f"{wl.deadline} ms, arrivals {wl.arrival}, contention {cspec.describe()}, seed {o.seed}")
    if cspec.active:
        a, z = cspec.window(wl.count)
        plan.say(f"evaluate: contention while requests {a}..{z - 1} are issued (same for every policy): "
                 f"{cspec.what()}")
    return wl, warm


# ----------------------------------------------------------------------------- the oracle pass


def time_oracle(plan: Plan, wl: Workload, schedule: ContentionSchedule) -> OraclePass:
    """Every selected variant on every request, on the daemon's cores, under the same contention schedule."""
    plan.say(f"evaluate: oracle: timing all {len(plan.rows)} variants on every request")
    plan.placement.pin_self("server")
    schedule.target(os.getpid())
    try:
        return oracle_pass(plan.bundle, plan.rows, plan.images, wl, plan.profile, schedule,
                           progress=plan.progress("oracle pass"))
    finally:
        plan.placement.pin_self("client")


def held_out(plan: Plan, wl: Workload, op: OraclePass) -> HeldOut:
    """Each variant's accuracy on this workload's images against its table's."""
    served = np.mean(op.preds == plan.labels[wl.image_indices][:, None], axis=0)
    labels = variant_labels(plan.rows)
    return HeldOut({labels[r.variant]: HeldOutAccuracy(table=round(r.accuracy, 4), served=round(float(a), 4),
                                                       gap=round(float(a) - r.accuracy, 4))
                    for r, a in zip(plan.rows, served)})


def pick_best_static(plan: Plan, wl: Workload, op: OraclePass, daemon_floor: np.ndarray,
                     busy_ms: float | None = None) -> BestStatic:
    """The most accurate variant that would have missed at most BEST_STATIC_MAX_MISS serving every request
    (``busy_ms``: the server's measured work per request, which holds up the requests behind it)."""
    labels = variant_labels(plan.rows)
    miss_rates = static_miss_rates(op, wl, daemon_floor, busy_ms or 0.0)  # on the daemon's clock
    pick = plan.rows[best_static(plan.rows, miss_rates)]
    plan.say(f"evaluate: best static CNN (most accurate with at most {BEST_STATIC_MAX_MISS:.0%} misses in the "
             f"oracle pass): {labels[pick.variant]} {pick.variant}")
    return BestStatic(variant=pick.variant, label=labels[pick.variant], max_miss=BEST_STATIC_MAX_MISS,
                      predicted_miss_rates={labels[r.variant]: round(float(m), 4)
                                            for r, m in zip(plan.rows, miss_rates)})


# ----------------------------------------------------------------------------- the policies


def achieved_slowdown(records: list[RequestRecord], rows: tuple[LatencyRow, ...], window: tuple[int, int],
                      min_samples: int = 20) -> Slowdown:
    """How much the contention slowed the served model: per variant, the median of observed inference
    time / table p50 inside the window over the same median outside it, combined over the variants
    served often enough on both sides (geometric mean weighted by the requests inside). Per variant,
    because a policy that moves to other variants under contention changes the mix, and microsecond
    variants run further from their table than millisecond ones even at rest."""
    p50 = {r.variant: r.p50_ms for r in rows}
    a, z = window
    ins: dict[str, list[float]] = {}
    outs: dict[str, list[float]] = {}
    for r in records:
        if r.status != 200 or r.inference_ms is None or r.variant not in p50:
            continue
        (ins if a <= r.index < z else outs).setdefault(r.variant, []).append(r.inference_ms / p50[r.variant])
    per = {v: (float(np.median(ins[v])), float(np.median(outs[v])), len(ins[v]))
           for v in ins if v in outs and len(ins[v]) >= min_samples and len(outs[v]) >= min_samples}
    if not per:
        return Slowdown(None, None, None, {})
    w = np.asarray([n for _, _, n in per.values()], dtype=np.float64)
    logs = np.asarray([np.log(i / o) for i, o, _ in per.values()])
    mi = float(np.exp(np.average(np.log([i for i, _, _ in per.values()]), weights=w)))
    mo = float(np.exp(np.average(np.log([o for _, o, _ in per.values()]), weights=w)))
    return Slowdown(slowdown=round(float(np.exp(np.average(logs, weights=w))), 3), inside_ratio=round(mi, 3),
                    outside_ratio=round(mo, 3), variants={v: round(i / o, 3) for v, (i, o, _) in per.items()})


@dataclass(frozen=True)
class PolicyRun:
    """One daemon run of a comparison: its name in the results, the daemon's --policy and --quantile."""

    name: str
    served_as: str
    quantile: str | None


def daemon_runs(plan: Plan, best: BestStatic | None) -> list[PolicyRun]:
    """The asked policies in their order (best-static served as ``static:<it>``), then what the plane adds:
    with ``--statics all`` (or ``--plane``) each selected variant no run serves alone yet, and with ``--plane``
    adaptive at each of PLANE_QUANTILES it does not run at already."""
    o = plan.opts
    runs = []
    for pol in o.policies:
        if pol == "oracle":
            continue
        served = pol
        if pol == "best-static":
            assert best is not None  # picked from the oracle pass, which best-static runs
            served = f"static:{best.variant}"
        runs.append(PolicyRun(pol, served, o.quantile))
    variants = [r.variant for r in plan.rows]
    if o.serves_statics:
        alone = {r.served_as[len("static:"):] for r in runs if r.served_as.startswith("static:")}
        alone |= {variants[0] for r in runs if r.served_as == "fastest"}
        alone |= {variants[-1] for r in runs if r.served_as == "most-accurate"}
        runs += [PolicyRun(f"static:{v}", f"static:{v}", o.quantile) for v in variants if v not in alone]
    if o.plane:
        default_q = o.quantile or str(plan.selection.get("quantile") or "p95")
        have = {default_q} if any(r.served_as == "adaptive" for r in runs) else set()
        runs += [PolicyRun(adaptive_name(q), "adaptive", q) for q in PLANE_QUANTILES if q not in have]
    return runs


def run_policy(plan: Plan, policy: str, served_as: str, wl: Workload, warm: Workload | None,
               schedule: ContentionSchedule, quantile: str | None = None) -> PolicyResult:
    """One policy: a fresh daemon (or, in process, a fresh classifier), the warm-up, then the workload under the
    contention schedule."""
    log = plan.log(policy)
    served = TRANSPORTS[plan.opts.transport].serve(plan, policy, served_as, quantile, wl, warm, schedule, log)
    return policy_result(plan, PolicyRun(policy, served_as, quantile), served, wl, schedule)


TURNS_VERSION = 3  # 2: the daemon transport takes turns too; 3: in process under open-loop arrivals too


def run_in_turns(plan: Plan, runs: list[PolicyRun], wl: Workload, warm: Workload | None,
                 schedule: ContentionSchedule) -> dict[str, PolicyResult]:
    """Every run taking turns of ``--interleave`` requests (``benchmarks.evaluate.turns``): in process, or through
    one daemon per policy, all up at once."""
    o = plan.opts
    where = "in process" if o.transport == "inproc" else "each through its own daemon"
    plan.say(f"evaluate: {len(runs)} policies {where}, taking turns of {o.interleave} requests: "
             + ", ".join(r.name for r in runs))
    # The contention window spans every policy's turns inside it: its hog must not stop by itself before.
    schedule.max_s = min(MAX_DURATION_S, o.duration_s * len(runs) + 60)
    if o.transport == "inproc":
        served = run_inproc_turns(plan.inproc, [TurnPolicy(r.name, r.served_as, r.quantile, plan.log(r.name))
                                                for r in runs],
                                  plan.images, plan.labels, wl, warm, schedule, o.duration_s, o.interleave,
                                  progress=plan.progress("turns"))
        got = {name: (s.records, s.wall_s, s.truncated) for name, s in served.items()}
    else:
        got = _daemons_in_turns(plan, runs, wl, warm, schedule)
    return {r.name: policy_result(plan, r, got[r.name], wl, schedule) for r in runs}


def _daemons_in_turns(plan: Plan, runs: list[PolicyRun], wl: Workload, warm: Workload | None,
                      schedule: ContentionSchedule) -> dict[str, Served]:
    """One daemon per run, all started (on the serving cores) and warmed first, each with its own keep-alive
    connection; then the turns, closed loop, from this process on the client cores. An idle daemon waits in
    its event loop, so only the daemon whose turn it is runs."""
    o = plan.opts
    window = (schedule.start, schedule.stop) if schedule.spec.active else (0, 0)
    spans = turns(wl.count, o.interleave, window)
    with contextlib.ExitStack() as stack:
        clients = []
        for r in runs:
            d = Daemon(serve_argv(o.bundle, o.table, r.served_as, o.profile, o.miss, r.quantile, o.spin_us),
                       plan.log(r.name), o.start_timeout_s, cpus=plan.placement.server)
            stack.callback(d.stop)
            url = _start_warm(plan, r.name, d, warm)
            clients.append(stack.enter_context(ClosedLoopClient(url, plan.images, plan.labels, wl, token=plan.token,
                                                                binary=True)))
        schedule.reset()
        try:
            records, own, cut = take_turns(spans, len(runs), lambda m, i, t0: clients[m].send(i, t0),
                                           o.duration_s * len(runs), on_request=schedule,
                                           progress=plan.progress("turns"), count=wl.count)
        finally:
            schedule.halt()
    return {r.name: (recs, wall, cut) for r, recs, wall in zip(runs, records, own)}


def policy_result(plan: Plan, run: PolicyRun, served: Served, wl: Workload,
                  schedule: ContentionSchedule) -> PolicyResult:
    """One policy's served requests as its results: the summary, the achieved slowdown under contention."""
    o = plan.opts
    policy, served_as, quantile, log = run.name, run.served_as, run.quantile, plan.log(run.name)
    records, wall_s, truncated = served
    slowdown = achieved_slowdown(records, plan.rows, o.contention.window(wl.count)) \
        if o.contention.active else None
    if slowdown is not None and slowdown.slowdown is not None:
        plan.say(f"evaluate: policy {policy}: contention slowed served inferences {slowdown.slowdown:.2f}x "
                 f"(median observed/table {slowdown.inside_ratio:.2f} inside the window, "
                 f"{slowdown.outside_ratio:.2f} outside)")
    if truncated:
        plan.say(f"evaluate: policy {policy}: stopped by --duration {o.duration_s:g} s after {len(records)} "
                 f"requests")
    return PolicyResult(summary=summarize(records, wall_s), records=tuple(records), truncated=truncated,
                        contention_s=tuple((on, off) for on, off in schedule.record()),
                        daemon=DaemonRun(served_as=served_as, daemon_log=log.name, slowdown=slowdown,
                                         quantile=quantile))


Served = tuple[list[RequestRecord], float, bool]  # a policy's records, its wall time, whether --duration cut it


def _start_warm(plan: Plan, policy: str, d: Daemon, warm: Workload | None) -> str:
    """Start ``policy``'s daemon, wait until it is ready and send it the unmeasured warm-up; returns its URL."""
    plan.say(f"evaluate: policy {policy}: starting the daemon")
    url = d.start()
    wait_ready(url, timeout_s=30.0)
    if warm is not None:
        run_load(url, plan.images, plan.labels, warm, token=plan.token, duration_s=min(plan.opts.duration_s, 60.0),
                 binary=True)
    return url


def _serve_daemon(plan: Plan, policy: str, served_as: str, quantile: str | None, wl: Workload,
                  warm: Workload | None, schedule: ContentionSchedule, log: Path) -> Served:
    """A fresh daemon serving ``served_as``, the warm-up, then the workload under the schedule (on the daemon)."""
    o = plan.opts
    d = Daemon(serve_argv(o.bundle, o.table, served_as, o.profile, o.miss, quantile, o.spin_us), log, o.start_timeout_s,
               cpus=plan.placement.server)
    try:
        url = _start_warm(plan, policy, d, warm)
        schedule.reset()
        assert d.proc is not None
        schedule.target(d.proc.pid)
        res = run_load(url, plan.images, plan.labels, wl, token=plan.token, duration_s=o.duration_s,
                       on_request=schedule, progress=plan.progress(policy), binary=True)
    finally:
        schedule.halt()
        d.stop()
    return res.records, res.wall_s, res.truncated


def _serve_inproc(plan: Plan, policy: str, served_as: str, quantile: str | None, wl: Workload,
                  warm: Workload | None, schedule: ContentionSchedule, log: Path) -> Served:
    """A fresh classifier in this process, the warm-up, then the workload under the schedule (on this process)."""
    plan.say(f"evaluate: policy {policy}: opening the classifier in process")
    r = run_inproc(plan.inproc, served_as, quantile, plan.images, plan.labels, wl, warm, schedule, log,
                   plan.opts.duration_s, progress=plan.progress(policy))
    return r.records, r.wall_s, r.truncated


@dataclass(frozen=True)
class Transport:
    """How a comparison serves its policies: the serving-floor probe and one policy's run."""

    what: str
    probe: Callable[[Plan, str, Path, ContentionSpec | None], ServingProbe]
    serve: Callable[[Plan, str, str, str | None, Workload, Workload | None, ContentionSchedule, Path], Served]


# By an `edgekit serve` subprocess over HTTP, or in this process through AdaptiveClassifier as an application
# links it (benchmarks.evaluate.inproc). The oracle pass is in process for both; its serving floor is the
# transport's.
TRANSPORTS = {
    "daemon": Transport("an edgekit serve daemon, over HTTP (v2 binary tensors)", _probe_daemon, _serve_daemon),
    "inproc": Transport("in process: AdaptiveClassifier.classify, as an application calls it", _probe_inproc,
                        _serve_inproc),
}


# The runs whose floors the oracle may be charged, each request its own floor as that run measured it: adaptive's
# (the serving path after switches between variants) and the best static CNN's (one variant, no switches). The
# oracle is charged each in turn and keeps the better figure (``charge_oracle``), so that it stays a bound: charged
# adaptive's floors alone, its server serving the best static CNN alone missed 4.4-5.9 % of the deadlines in
# process where that CNN's own run missed 1.4-2.0 % (stop 44, 2026-12-08), and under overload it read below the
# best static CNN.
OWN_FLOORS_FROM = ("adaptive", "best-static")


def own_floors(run: PolicyResult, drawn: tuple[np.ndarray, np.ndarray],
               waited: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """Each request's own serving floor as ``run`` measured it (end to end and on the serving clock: the request's
    latency minus its inference), where it was answered; ``drawn`` (from the probe) for the rest. Returns the two
    arrays and how many requests had their own. In closed loop a request's time before its inference is its
    reading and admission, not a wait behind others that the oracle simulates itself. ``waited`` (open loop in
    process): the time a request waited before the application thread called ``classify`` for it (its send time
    minus its scheduled arrival, the wait behind the requests before it) is left out too, so that what remains is
    the call's own work besides the inference; the oracle's simulated server adds its own waits."""
    e2e, daemon = drawn[0].copy(), drawn[1].copy()
    n = 0
    for r in run.records:
        if r.status != 200 or r.inference_ms is None or r.total_ms is None or not 0 <= r.index < len(e2e):
            continue
        wait_ms = max(0.0, r.sent_s - r.arrival_s) * 1000.0 if waited else 0.0
        daemon[r.index] = max(0.0, r.total_ms - wait_ms - r.inference_ms)
        e2e[r.index] = max(0.0, r.e2e_ms - wait_ms - r.inference_ms)
        n += 1
    return e2e, daemon, n


def own_floors_behind_queue(wl: Workload, run: PolicyResult, drawn: tuple[np.ndarray, np.ndarray],
                            received: np.ndarray, busy_ms: float = 0.0) -> tuple[np.ndarray, np.ndarray, int]:
    """Open loop through the daemon: each request's own floor as ``run`` measured it, less its wait behind the
    requests before it, that wait computed by the oracle's own server model (``floors_behind_queue``: the requests
    reaching the server at ``received``, each holding it ``max(floor, busy_ms)`` besides its inference); on the end
    to end clock also less the time from its scheduled arrival to its send. So the oracle's simulated server, making
    ``run``'s choices, gives back ``run``'s times; it meets the daemon's floor as it was under this load, not the
    idle probe's. ``drawn`` (from the probe) for the requests ``run`` did not answer. Returns the two arrays (end to
    end, the daemon's clock) and how many requests had their own."""
    n = len(drawn[0])
    total, inference, e2e = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    for r in run.records:
        if r.status != 200 or r.inference_ms is None or r.total_ms is None or not 0 <= r.index < n:
            continue
        total[r.index], inference[r.index], e2e[r.index] = r.total_ms, r.inference_ms, r.e2e_ms
    floors, waits = floors_behind_queue(received, total, inference, busy_ms)
    own = np.isfinite(floors)
    assert wl.arrivals_s is not None
    late = np.maximum(0.0, np.asarray(received, dtype=np.float64) - np.asarray(wl.arrivals_s)) * 1000.0
    daemon = np.where(own, floors, drawn[1])
    e2e_floor = np.where(own, np.maximum(0.0, np.nan_to_num(e2e) - late - waits - np.nan_to_num(inference)), drawn[0])
    return e2e_floor, daemon, int(own.sum())


def received_times(wl: Workload, run: PolicyResult) -> tuple[np.ndarray, int]:
    """When each request of ``run`` reached the daemon (its client's send time, s on the workload's clock), the
    scheduled arrival for a request it did not send; and how many it sent."""
    assert wl.arrivals_s is not None
    at = np.asarray(wl.arrivals_s, dtype=np.float64).copy()
    n = 0
    for r in run.records:
        if 0 <= r.index < len(at) and r.sent_s >= r.arrival_s:
            at[r.index] = r.sent_s
            n += 1
    return at, n


def oracle_floors(wl: Workload, policies: Mapping[str, PolicyResult], drawn: tuple[np.ndarray, np.ndarray],
                  transport: str = "daemon", busy_ms: float | None = None, floors_from: str = OWN_FLOORS_FROM[0],
                  ) -> tuple[tuple[np.ndarray, np.ndarray], str, np.ndarray | None]:
    """The floors the oracle is charged, where they came from, and (open loop through the daemon) when its
    requests reach its server: each request's own floor from the run of ``floors_from`` (the same requests under
    the same noise of the serving path), else one drawn from the probe. In closed loop that is the request's time
    besides its inference; in process under open-loop arrivals, less the wait before the application thread called it
    (measured); open loop through the daemon, less its wait behind the requests before it in the daemon, which
    the daemon does not measure apart, so it is computed by the oracle's own server model
    (``own_floors_behind_queue``, each request holding the server ``max(floor, busy_ms)`` besides its inference),
    and the requests arrive as they reached adaptive's daemon (its client's send times: late and bunched where
    the client fell behind, as every policy's daemon sees them), since the daemon's clock starts then.

    Drawn floors are unbiased but, in open loop, fragile: one host stall among the probe's 300 requests is drawn
    about ten times into 3,000, and each holds the oracle's simulated server as long (on one in-process run of
    2026-12-07 the oracle read 285 goodput/s, adaptive 3,522/s); adaptive's run meets the stalls the host actually
    had. Through the daemon they were also too low: the idle probe's floor (0.127 ms at the median, on 2026-12-07)
    is not the floor under open-loop load (0.148 ms in adaptive's run, its waits taken out), so the oracle's server
    serving V0 alone, on V0's own send times, missed 14 % of the deadlines where the daemon serving V0 missed 27 %
    (docs/policy-comparison.md)."""
    run = policies.get(floors_from)
    if run is not None and (wl.closed or transport == "inproc"):
        e2e, daemon, n = own_floors(run, drawn, waited=not wl.closed)
        if n:
            return (e2e, daemon), (f"{floors_from} run: each request's own measured floor ({n} of {wl.count}; "
                                   "the rest drawn from the probe)"), None
    source = "probe: each request's floor drawn from the probe's measured requests"
    if not wl.closed and run is not None and transport == "daemon":
        received, n = received_times(wl, run)
        if n:
            e2e, daemon, own = own_floors_behind_queue(wl, run, drawn, received, busy_ms or 0.0)
            return (e2e, daemon), (f"{floors_from} run: each request's own measured floor less its wait behind "
                                   f"the requests before it in the oracle's server model ({own} of {wl.count}; the "
                                   f"rest drawn from the probe); the requests reach its server when they reached "
                                   f"{floors_from}'s daemon ({n} of {wl.count}; the rest at their scheduled "
                                   "arrival)"), received
    return drawn, source, None


def oracle_policy(plan: Plan, wl: Workload, op: OraclePass, floors: tuple[np.ndarray, np.ndarray],
                  source: str = "probe", busy_ms: float | None = None,
                  received_s: np.ndarray | None = None) -> tuple[PolicyResult, OracleResult]:
    """The oracle's choice per request from the timing pass, with the serving floors ``floors`` added (and, open
    loop, each request holding the simulated server for at least ``busy_ms`` besides its inference, reaching it
    at ``received_s`` where given)."""
    busy = busy_ms or 0.0
    recs, wall, how = oracle_records(op, plan.rows, wl, plan.labels, *floors, busy_ms=busy, received_s=received_s)
    run = PolicyResult(summary=summarize(recs, wall), records=tuple(recs), truncated=False,
                       contention_s=tuple((on, off) for on, off in op.intervals))
    greedy = None
    if not wl.closed:  # what choosing request by request reaches, beside the plan
        g_recs, g_wall, _ = oracle_records(op, plan.rows, wl, plan.labels, *floors, choice="greedy", busy_ms=busy,
                                           received_s=received_s)
        g = summarize(g_recs, g_wall)
        greedy = {"on_time_accuracy": g["on_time_accuracy"], "goodput_rps": g["goodput_rps"]}
    oracle = OracleResult(
        method=ORACLE_METHOD,
        overhead_ms=round(float(np.median(floors[0])), 4),
        daemon_overhead_ms=round(float(np.median(floors[1])), 4),
        overhead_source=source,
        pass_wall_s=round(op.wall_s, 3),
        variants=tuple(op.variants),
        latency_ms=op.latency_ms,
        preds=op.preds,
        variant_accuracy_on_workload={v: round(float(np.mean(op.preds[:, j] == plan.labels[wl.image_indices])), 4)
                                      for j, v in enumerate(op.variants)},
        choice=how,
        busy_ms=None if wl.closed or busy_ms is None else busy_ms,
        greedy=greedy,
    )
    return run, oracle


def server_check(plan: Plan, wl: Workload, op: OraclePass, floors: tuple[np.ndarray, np.ndarray],
                 busy_ms: float | None, received: np.ndarray | None, best: BestStatic | None,
                 policies: Mapping[str, PolicyResult]) -> ServerCheck | None:
    """The best static CNN served alone by the oracle's server model (the floors it is charged, its arrivals, its
    hold), beside that CNN's real run, both on the serving clock: how near the oracle's server is to the real one
    (None without a best-static run)."""
    run = policies.get("best-static")
    measured = None if run is None else run.summary.get("server_miss_rate")
    if best is None or measured is None:
        return None
    j = [r.variant for r in plan.rows].index(best.variant)
    simulated = static_miss_rates(op, wl, floors[1], busy_ms or 0.0, received)[j]
    return ServerCheck(best.label, round(float(simulated), 4), float(measured))


def oracle_figure(run: PolicyResult, closed: bool) -> float:
    """What the oracle's charges are judged by: on-time accuracy in closed loop, goodput under open-loop arrivals."""
    v = run.summary.get("on_time_accuracy" if closed else "goodput_rps")
    return -1.0 if v is None else float(v)


def charge_oracle(plan: Plan, wl: Workload, op: OraclePass, drawn: tuple[np.ndarray, np.ndarray],
                  policies: Mapping[str, PolicyResult], transport: str, busy_ms: float | None,
                  best: BestStatic | None) -> tuple[PolicyResult, OracleResult]:
    """The oracle charged the floors of each run of ``OWN_FLOORS_FROM`` that the comparison has (the probe's drawn
    floors where it has none), the better figure kept (``oracle_figure``; the first on a tie), with its server
    check and every charge's figures (``by_floors``). Both runs are real: the floors after switches between
    variants (adaptive's) and those of one variant served alone (the best static CNN's) are each what the serving
    path gave on these requests; keeping the better keeps the oracle a bound on what the choice of variant alone
    can reach, whether it switches often or seldom."""
    names = [n for n in OWN_FLOORS_FROM if n in policies] or [OWN_FLOORS_FROM[0]]
    tried = []
    for name in names:
        charged, source, received = oracle_floors(wl, policies, drawn, transport, busy_ms, name)
        run, oracle = oracle_policy(plan, wl, op, charged, source, busy_ms, received)
        tried.append((name if name in policies else "probe", run, oracle, charged, received))
    by_floors = {k: {"on_time_accuracy": r.summary.get("on_time_accuracy"), "goodput_rps": r.summary.get("goodput_rps")}
                 for k, r, *_ in tried}
    # The kept charge (the first on a tie), and its server check alone.
    _, (kept, run, oracle, charged, received) = max(enumerate(tried),
                                                    key=lambda it: (oracle_figure(it[1][1], wl.closed), -it[0]))
    return run, dataclasses.replace(oracle, floors_from=kept, by_floors=by_floors,
                                    server_check=server_check(plan, wl, op, charged, busy_ms, received, best, policies))


def median_slowdown(policies: Mapping[str, PolicyResult]) -> float | None:
    """The achieved slowdown of the comparison: the median over the policies where it was measured."""
    slow = [p.daemon.slowdown.slowdown for p in policies.values()
            if p.daemon is not None and p.daemon.slowdown is not None and p.daemon.slowdown.slowdown is not None]
    return round(float(np.median(slow)), 3) if slow else None


# ----------------------------------------------------------------------------- the comparison


def write_results(ev: Evaluation, out: Path, plots: bool) -> None:
    """The report and plots (unless ``plots`` is False), ``table.txt``, then ``results.json``."""
    if plots:
        write_report(ev, out)
    atomic_write_text(out / "table.txt", render_text(ev))
    # results.json last: its presence means the comparison finished.
    atomic_write_json(out / "results.json", ev.to_json())
    (out / "results.partial.json").unlink(missing_ok=True)


def evaluate(opts: EvaluateOptions) -> Evaluation:
    """Run the comparison and write ``results.json`` and the report into ``opts.out``; returns the results."""
    plan = make_plan(opts)
    schedule: ContentionSchedule | None = None
    with client_side(plan.placement):
        plan.say(f"evaluate: {plan.placement.describe()}")
        created, host = datetime.now(timezone.utc).isoformat(timespec="seconds"), Host.here()
        try:
            # --- the serving floor, measured with the same client and the fastest variant
            probes = probe_floors(plan)
            overload = overload_arrivals(plan, probes)
            wl, warm = draw_workload(plan, probes, overload)
            schedule = ContentionSchedule(opts.contention, wl.count, max_s=min(MAX_DURATION_S, opts.duration_s + 60),
                                          placement=plan.placement)
            ev = Evaluation(
                created=created, host=host, placement=plan.placement, bundle=str(opts.bundle), table=str(opts.table),
                profile=plan.profile, selection=plan.selection, deadline_spec=opts.deadline, warmup=opts.warmup,
                duration_limit_s=opts.duration_s, options=opts.record(), rows=plan.rows, workload=wl,
                contention=opts.contention, transport=opts.transport,
                probes=probes, overload=overload,
            )
            # --- the oracle pass (and from it the best static CNN), on the daemon's cores
            op, floors = None, None
            if opts.needs_oracle_pass:
                assert probes is not None
                op = time_oracle(plan, wl, schedule)
                floors = _floors(probes.fastest, probes.fastest_under_contention, wl.count, opts.contention,
                                 opts.seed)
                ev = dataclasses.replace(ev, held_out=held_out(plan, wl, op),
                                         best_static=pick_best_static(plan, wl, op, floors[1],
                                                                      probes.fastest.busy_ms))
            # --- every daemon policy, the same requests (and the plane's runs after them)
            runs = daemon_runs(plan, ev.best_static)
            if opts.takes_turns(wl):
                ev = dataclasses.replace(ev, policies={**ev.policies, **run_in_turns(plan, runs, wl, warm, schedule)})
            else:
                for pr in runs:
                    run = run_policy(plan, pr.name, pr.served_as, wl, warm, schedule, pr.quantile)
                    ev = dataclasses.replace(ev, policies={**ev.policies, pr.name: run})
                    # A partial file beside the final one, so an interrupted run leaves its finished policies.
                    atomic_write_json(opts.out / "results.partial.json", ev.to_json())
            if "oracle" in opts.policies and op is not None and floors is not None and probes is not None:
                run, oracle = charge_oracle(plan, wl, op, floors, ev.policies, opts.transport,
                                            probes.fastest.busy_ms, ev.best_static)
                ev = dataclasses.replace(ev, policies={**ev.policies, "oracle": run}, oracle=oracle)
            # The asked policies in their order, the oracle among them, then the plane's runs.
            asked = [p for p in opts.policies if p in ev.policies]
            order = asked + [p for p in ev.policies if p not in asked]
            ev = dataclasses.replace(ev, policies={p: ev.policies[p] for p in order},
                                     achieved_slowdown=median_slowdown(ev.policies))
        finally:
            if schedule is not None:
                schedule.halt()
    ev = dataclasses.replace(ev, complete=True)
    write_results(ev, opts.out, opts.plots)
    return ev


# ----------------------------------------------------------------------------- repeats


def _same_run(d: Mapping[str, Any], opts: EvaluateOptions) -> bool:
    """Whether a finished run's results.json answers these options (then a repeat reuses it)."""
    w, c = d.get("workload") or {}, d.get("contention") or {}
    return bool(
        d.get("kind") == RESULTS_KIND and d.get("version") == RESULTS_VERSION and d.get("complete") is True
        and d.get("bundle") == str(opts.bundle) and d.get("table") == str(opts.table)
        and w.get("seed") == opts.seed and w.get("count") == opts.count and d.get("deadline_spec") == opts.deadline
        and c.get("spec") == opts.contention.describe() and d.get("warmup") == opts.warmup
        and all(p in (d.get("policies") or {}) for p in opts.policies) and d.get("options") == opts.record()
    )


def evaluate_repeats(opts: EvaluateOptions) -> Repeats:
    """The comparison ``opts.repeat`` times, workload seeds ``opts.seed`` + 0, 1, ..., each into ``OUT/seed-<seed>``
    (a finished run with the same options is reused, so an interrupted repeat resumes); then the median and the
    range of every figure into ``OUT/results.json``, ``OUT/table.txt`` and (with plots) ``OUT/report.md``."""
    import json

    runs: list[dict[str, Any]] = []
    names: list[str] = []
    for k in range(opts.repeat):
        seed = opts.seed + k
        one = dataclasses.replace(opts, seed=seed, repeat=1, out=opts.out / f"seed-{seed}")
        path = one.out / "results.json"
        prior = None
        if path.is_file():
            try:
                prior = json.loads(path.read_text())
            except (OSError, ValueError):
                prior = None
        if prior is not None and _same_run(prior, one):
            if not opts.quiet:
                print(f"evaluate: repeat {k + 1}/{opts.repeat} (seed {seed}): reusing {path}", flush=True)
            runs.append(prior)
        else:
            if not opts.quiet:
                print(f"evaluate: repeat {k + 1}/{opts.repeat} (seed {seed}) into {one.out}", flush=True)
            runs.append(json.loads(json.dumps(evaluate(one).to_json())))
        names.append(f"{one.out.name}/results.json")
    rep = aggregate(runs, names)
    write_repeats(rep, opts.out, opts.plots)
    return rep


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE",
                   help="bundle folder or .tar.gz (its eval set supplies images and labels)")
    p.add_argument("--table", required=True, help="selected table (from 'edgekit select')")
    p.add_argument("--profile", default=None,
                   help="device profile (default: the bundle's for the daemon, the table's for the oracle pass)")
    p.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                   help=f"comma-separated, run in this order (default {','.join(DEFAULT_POLICIES)}); "
                   "also fastest, static:<variant> and oracle-free (alias of quantile-table)")
    p.add_argument("--count", type=int, default=DEFAULT_COUNT, help=f"requests per policy (default {DEFAULT_COUNT})")
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S,
                   help=f"cap on each policy's run in seconds (default {DEFAULT_DURATION_S:g})")
    p.add_argument("--deadline", default="auto",
                   help="auto (probe the serving floor, then uniform between floor + fastest p95 and floor + 1.1 x "
                        "slowest p95) | fixed:MS | uniform:LO:HI | trace:FILE")
    p.add_argument("--arrival", default="closed",
                   help="closed | poisson:RATE (requests/s) | overload[:FACTOR] (Poisson at FACTOR, default 1.2, "
                        "x the measured capacity of the most accurate variant)")
    p.add_argument("--contention", default="none",
                   help="none | KIND[:SHARE] with KIND cpu (a busy process on each of the daemon's cores), quota "
                        "(the daemon throttled by the kernel's CPU quota), membw (memory-bandwidth load) or rt (a "
                        "periodic real-time task on each of the daemon's cores; needs root or CAP_SYS_NICE); SHARE "
                        "half (default), full or a number in (0,1]: the middle part of the requests under contention")
    p.add_argument("--quota", type=float, default=0.4,
                   help="with --contention quota: the share of one core the daemon gets (default 0.4)")
    p.add_argument("--seed", type=int, default=0, help="workload seed (same for every policy)")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured requests sent to each daemon first (default 20)")
    p.add_argument("--miss", default="best-effort", choices=("best-effort", "reject"), help="daemon's miss policy")
    p.add_argument("--quantile", default=None, choices=QUANTILES,
                   help="latency quantile the daemon predicts with (daemon default if unset)")
    p.add_argument("--statics", default="pass", choices=STATICS,
                   help="the accuracy-miss plane's points for each selected variant served alone: pass (default: "
                        "predicted from the oracle pass, no extra run) | all (each one served by the daemon as "
                        "static:<variant>: one more run of --count requests per variant no policy serves alone)")
    p.add_argument("--plane", action="store_true",
                   help="the whole accuracy-miss plane: --statics all, and adaptive once per latency quantile "
                        f"({', '.join(PLANE_QUANTILES)}) as its curve (policies adaptive@p50 ...): about "
                        f"len(variants) + {len(PLANE_QUANTILES) - 1} more daemon runs")
    p.add_argument("--repeat", type=int, default=1,
                   help=f"run the whole comparison N times (at most {MAX_REPEAT}) with workload seeds SEED, SEED+1, "
                        "...; each run in OUT/seed-<seed>/, and OUT/results.json with the median and range (min-max) "
                        "of every figure")
    p.add_argument("--transport", default="daemon", choices=tuple(TRANSPORTS),
                   help="how the policies are served: " + "; ".join(f"{k}: {t.what}" for k, t in TRANSPORTS.items())
                        + " (default daemon); the oracle is charged the transport's own serving floor")
    p.add_argument("--spin-us", type=int, default=0, metavar="US",
                   help="daemon transport: each daemon busy-polls US microseconds after every answer "
                        "(edgekit serve --spin-us), the probe's too (default 0: off)")
    p.add_argument("--interleave", type=int, default=INTERLEAVE,
                   help=f"the policies take turns of N requests each (default {INTERLEAVE}), so that all of them "
                        "meet the host's fast and slow phases alike: in process always (under open-loop arrivals "
                        "each policy's clock stops between its turns, so its backlog carries over), through the "
                        "daemon in closed loop (one daemon per policy, all up at once); 0: one policy after "
                        "another, as the daemon transport runs open-loop arrivals and --contention quota")
    p.add_argument("--out", default="evaluation", help="output folder for results.json, report.md and plots")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots and the report")


def _terminate(signum, frame) -> None:
    # Turn SIGTERM into an exception so the finally blocks stop the daemon and the CPU hog.
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    opts = EvaluateOptions.from_args(args)
    old = signal.signal(signal.SIGTERM, _terminate)
    try:
        if opts.repeat > 1:
            rep = evaluate_repeats(opts)
            print()
            print((opts.out / "table.txt").read_text(), end="")
            truncated = [f"{k}: {', '.join(t)}" for k, t in rep.truncated.items() if t]
            if truncated:
                print(f"\nnote: stopped by --duration before the last request: {'; '.join(truncated)}")
            print(f"\nresults: {opts.out / 'results.json'}"
                  + (f"\nreport:  {opts.out / 'report.md'}" if opts.plots else ""))
            return 0
        ev = evaluate(opts)
    finally:
        signal.signal(signal.SIGTERM, old)
    print()
    print((opts.out / "table.txt").read_text(), end="")
    if ev.truncated:
        print(f"\nnote: stopped by --duration before the last request: {', '.join(ev.truncated)}")
    print(f"\nresults: {opts.out / 'results.json'}" + (f"\nreport:  {opts.out / 'report.md'}" if opts.plots else ""))
    return 0
