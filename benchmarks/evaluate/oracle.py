"""The oracle of a policy comparison: every selected variant timed on every request, and its choice per request.

It is computed from a separate in-process pass, not from a daemon (see ``ORACLE_METHOD``);
the same pass gives each variant's miss rate had it served alone, hence the best static CNN.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from benchmarks.evaluate.contention import ContentionSchedule
from benchmarks.evaluate.loadgen import RequestRecord
from benchmarks.evaluate.workload import Workload
from edge.core.errors import UsageError
from edge.tables.table import LatencyRow

BEST_STATIC_MAX_MISS = 0.02  # the paper's non-adaptive baseline: the most accurate CNN that misses at most this
ORACLE_CHOICES = ("planned", "greedy")  # open loop: the whole queue planned (a bound), or request by request
# States the planned choice keeps per request (past it the set is thinned and the plan no longer exact); the demo's
# runs kept at most 49, and 194 at 4x their arrival rate. Its back-pointers take 6 bytes a state a request.
MAX_FRONTIER = 4096

ORACLE_METHOD = (
    "In-process pass on the daemon's cores: for each request, in workload order and under the same contention "
    "window, every selected variant runs on that request's image back to back (order rotated per request), "
    "each twice and the second run timed (so a microsecond variant is not charged the cache misses of following a "
    "large one, which made the oracle miss more than the policies it bounds), timing the runtime's predict call, "
    "the same span the daemon reports as inference_ms. The oracle's latency is that time plus a serving floor "
    "(below). Chosen over replaying the workload through the daemon once per variant (static:<variant>) "
    "because that measures each variant at a different moment of the run, so on a given request the variants "
    "would see different contention phases; back to back, they all see the same one. With Poisson arrivals the "
    "oracle also waits for its own earlier requests (a single-server FIFO queue simulated from the measured "
    "times, each request keeping the server busy for its inference and its serving floor, which is work on the "
    "same core). In closed loop it picks, request by request, the most accurate variant by table accuracy whose "
    "latency on the daemon's clock (the primary one, as for the daemon's policies) meets the deadline, else the "
    "fastest on that request (a miss); one request's choice does not change another's time there, so this is the "
    "best choice. With Poisson arrivals a long variant delays the requests queued behind it, and the request-by-"
    "request choice is no bound (it ran below the live policies under overload), so the oracle plans the whole "
    "queue: of every sequence of variants, the one with the largest sum of table accuracy over the requests that "
    "meet their deadline, found exactly by dynamic programming over the server's free time (the Pareto set of "
    "free time against accuracy so far, after each request). "
    "In closed loop each request is charged its own serving floor, as adaptive's run measured it for that "
    "same request (its total and its end-to-end latency, minus its inference), so the oracle meets the same "
    "noise of the serving path on the same requests as the policy it bounds; in process under open-loop arrivals "
    "too, less the time the request waited before its call (its send time minus its scheduled arrival, a wait "
    "the oracle simulates itself); open loop through the daemon too, less its wait behind the requests before it, "
    "which the daemon does not measure apart: computed by this same server model from adaptive's own requests, so "
    "that the oracle's server, making adaptive's choices, gives back adaptive's times. The same is done with the "
    "best static CNN's run (one variant, no switches between variants, which leave the serving path's caches cold), "
    "and the oracle keeps the better of the two figures (on-time accuracy in closed loop, goodput in open loop): "
    "charged adaptive's floors alone, its server serving the best static CNN alone missed two to four times that "
    "CNN's own misses in process, and under overload the oracle read below that CNN. For requests the run did "
    "not answer, a floor drawn at random from the probe's measured requests (the "
    "serving-clock floor and the end-to-end overhead of one request, kept together; inside a contention window, "
    "of a second probe's, measured under that contention). Charging the probe's median "
    "(as at first) made it miss less than any replay could; charging only floors drawn from the probe, a "
    "different run, let the live policies beat it when the floor moved between the probe and their runs. Its "
    "miss rate then bounds what the choice of variant alone can reach."
)


@dataclass(frozen=True)
class OraclePass:
    """Every selected variant's measured inference time and predicted class on every request."""

    variants: list[str]
    latency_ms: np.ndarray  # (count, K) measured inference time of every variant on every request
    preds: np.ndarray  # (count, K) class predicted
    intervals: list[list[float]]
    wall_s: float


def _resolve_setting(profile_name: str, setting_name: str):
    """The runtime setting a table row was measured (and is served) with, from the device profile."""
    from device_profiles import ProfileError, load_profile

    try:
        prof = load_profile(profile_name)
    except (ProfileError, FileNotFoundError) as exc:
        raise UsageError(f"cannot load device profile '{profile_name}' for the oracle pass ({exc}); "
                         "pass --profile") from None
    for s in prof.settings:
        if s.name == setting_name:
            return s
    raise UsageError(
        f"profile '{prof.name}' has no runtime setting '{setting_name}' (the selected table uses it); "
        f"available: {[s.name for s in prof.settings]}; pass the profile the table was measured with (--profile)"
    )


def oracle_pass(
    bundle: Any,
    rows: tuple[LatencyRow, ...],
    images: np.ndarray,
    workload: Workload,
    profile: str,
    schedule: ContentionSchedule,
    warmup: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> OraclePass:
    """Run every selected variant on every request's image, in request order; record time and class."""
    from edge.artifacts.tensors import dequantize_output, prepare_input, with_recorded_input
    from edge.backends import get_backend

    models = []
    try:
        for r in rows:
            setting = _resolve_setting(profile, r.setting)
            backend = get_backend(setting.backend)
            m = with_recorded_input(backend.load(bundle.artifact_path(r.artifact_id), setting),
                                    bundle.artifact(r.artifact_id).input)
            models.append(m)
        x0 = images[int(workload.image_indices[0])]
        for m in models:
            for _ in range(max(1, warmup)):
                m.predict(prepare_input(x0, m.input_spec))
        n, k = workload.count, len(models)
        resizes = [tuple(x0.shape[-3:-1]) != tuple(int(d) for d in m.input_spec.shape[1:3]) for m in models]
        lat = np.zeros((n, k), dtype=np.float64)
        preds = np.full((n, k), -1, dtype=np.int64)
        schedule.reset()
        t0 = time.perf_counter()
        try:
            for i in range(n):
                schedule(i)
                img = images[int(workload.image_indices[i])]
                for j in range(k):
                    v = (i + j) % k  # rotate so no variant always runs first (cold caches) or last
                    m = models[v]
                    x = prepare_input(img, m.input_spec)
                    m.predict(x)  # untimed: the timed run finds its own weights in cache, as a served variant does
                    s = time.perf_counter()
                    # A variant at another input size is charged its resize too, as the daemon times it.
                    y = m.predict(prepare_input(img, m.input_spec) if resizes[v] else x)
                    lat[i, v] = (time.perf_counter() - s) * 1000.0  # the span the daemon reports as inference_ms
                    preds[i, v] = int(np.argmax(dequantize_output(y, m.output_spec).reshape(-1)))
                if progress is not None:
                    progress(i + 1, n)
        finally:
            schedule.halt()
        wall = time.perf_counter() - t0
        return OraclePass([r.variant for r in rows], lat, preds, schedule.record(), wall)
    finally:
        for m in models:
            try:
                m.close()
            except Exception:
                pass


def serving_overhead_ms(records: list[RequestRecord], clock: str = "e2e") -> float | None:
    """Median over answered requests of what serving adds to running the model: end-to-end
    (``e2e``) or the daemon's total (``daemon``) time, minus its queue wait and inference time.

    The queue wait is left out because the oracle simulates its own (Poisson arrivals).
    """
    d = []
    for r in records:
        if r.status != 200 or r.inference_ms is None:
            continue
        base = r.e2e_ms if clock == "e2e" else r.total_ms
        if base is None:
            continue
        d.append(base - r.inference_ms - (r.queue_ms or 0.0))
    return float(np.median(d)) if d else None


def per_request(overhead_ms: float | np.ndarray, count: int) -> np.ndarray:
    """A serving overhead per request: one value for all, or one each (the contended floor inside a
    contention window, the quiet one outside)."""
    out = np.broadcast_to(np.asarray(overhead_ms, dtype=np.float64), (count,))
    if not np.all(np.isfinite(out)) or np.any(out < 0):
        raise UsageError("serving overheads must be finite and >= 0")
    return out


@dataclass(frozen=True)
class PlannedChoice:
    """The planned oracle's variant per request, and whether the plan is exact."""

    picks: np.ndarray  # (count,) index of the variant chosen for each request
    value: float  # the plan's sum of table accuracy over the requests that meet their deadline
    thinned: int  # requests after which the state set was thinned to MAX_FRONTIER (0: the plan is optimal)
    largest_frontier: int


def planned_choice(latency_ms: np.ndarray, arrivals_s: np.ndarray, deadlines_ms: np.ndarray, floor_ms: np.ndarray,
                   accuracy: np.ndarray, max_frontier: int = MAX_FRONTIER, busy_ms: float = 0.0) -> PlannedChoice:
    """The sequence of variants, one per request of a single FIFO server, with the largest sum of ``accuracy`` over
    the requests that meet their deadline (``wait + floor + latency <= deadline``), every request served. Each
    request keeps the server busy for ``max(floor, busy_ms) + latency`` (``busy_ms``: the server's own work per
    request, which can outlast the floor: what follows the answer).

    Dynamic programming over the requests in arrival order: after each one, every reachable (time the server is
    next free, accuracy so far) pair that no other beats on both (a later free time is worth no more), with a
    back-pointer. A request the server reaches idle collapses the set to one pair. Exact unless the set passes
    ``max_frontier`` pairs, when it is thinned to that many, evenly over free time (``thinned`` counts when)."""
    n, k = latency_ms.shape
    arr = np.asarray(arrivals_s, dtype=np.float64) * 1000.0
    free = np.zeros(1)
    value = np.zeros(1)
    parents: list[np.ndarray] = []
    choices: list[np.ndarray] = []
    thinned = largest = 0
    acc = np.asarray(accuracy, dtype=np.float64)
    for i in range(n):
        start = np.maximum(free, arr[i])
        done = start[:, None] + (float(floor_ms[i]) + latency_ms[i])[None, :]
        fin = (done + max(0.0, busy_ms - float(floor_ms[i]))).ravel()  # when the server is next free
        met = done - arr[i] <= float(deadlines_ms[i])
        val = (value[:, None] + np.where(met, acc[None, :], 0.0)).ravel()
        order = np.lexsort((-val, fin))  # by free time, the most accurate first among equal times
        v = val[order]
        keep = np.empty(len(order), dtype=bool)
        keep[0] = True
        keep[1:] = v[1:] > np.maximum.accumulate(v)[:-1]  # strictly more accurate than every earlier-free pair
        sel = order[keep]
        if len(sel) > max_frontier:
            sel = sel[np.unique(np.linspace(0, len(sel) - 1, max_frontier).round().astype(np.int64))]
            thinned += 1
        largest = max(largest, len(sel))
        free, value = fin[sel], val[sel]
        parents.append((sel // k).astype(np.int32))
        choices.append((sel % k).astype(np.int16))
    s = int(np.argmax(value))
    best = float(value[s])
    picks = np.empty(n, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        picks[i] = choices[i][s]
        s = int(parents[i][s])
    return PlannedChoice(picks, best, thinned, largest)


def oracle_records(
    op: OraclePass,
    rows: tuple[LatencyRow, ...],
    workload: Workload,
    labels: np.ndarray,
    overhead_ms: float | np.ndarray,
    daemon_overhead_ms: float | np.ndarray | None = None,
    choice: str = "planned",
    busy_ms: float = 0.0,
    received_s: np.ndarray | None = None,
) -> tuple[list[RequestRecord], float, str]:
    """The oracle's choice per request, its records, its wall time, and how it chose.

    In closed loop, and with ``choice="greedy"``, request by request: the most accurate by table accuracy
    that meets the deadline. With open-loop arrivals and ``choice="planned"``: the whole queue planned
    (``planned_choice``). It chooses on the daemon's clock, the primary one (``daemon_overhead_ms``, the
    daemon's own total minus inference, added), as the daemon's policies do; ``overhead_ms`` (end to end)
    gives the same choice's end-to-end latency, reported beside it. With open-loop arrivals a request keeps the
    simulated server busy for ``max(floor, busy_ms)`` besides its inference (``busy_ms``: the server's measured
    time on a core per request, ``ServingProbe.busy_ms``), so the oracle's server is no faster than the real one.
    ``received_s`` (open loop): when each request reached the server, seconds on the workload's clock, where that
    is not its scheduled arrival (a daemon's clock starts when the client's bytes arrive, and a client sends late
    and in bursts); the simulated server sees the requests then, and the end-to-end clock still counts from the
    scheduled arrival.
    """
    if choice not in ORACLE_CHOICES:
        raise UsageError(f"unknown oracle choice {choice!r}; one of {list(ORACLE_CHOICES)}")
    e2e_over = per_request(overhead_ms, workload.count)
    daemon_over = e2e_over if daemon_overhead_ms is None else per_request(daemon_overhead_ms, workload.count)
    acc = np.asarray([r.accuracy for r in rows])
    # Most accurate first; among equals, the faster by table.
    order = sorted(range(len(rows)), key=lambda j: (-acc[j], rows[j].p95_ms))
    arrivals = workload.arrivals_s
    at_server = arrivals if received_s is None or arrivals is None else np.asarray(received_s, dtype=np.float64)
    planned: np.ndarray | None = None
    how = "request by request (closed loop: each request's best choice)"
    if arrivals is not None and choice == "planned":
        plan = planned_choice(op.latency_ms, at_server, workload.deadlines_ms, daemon_over, acc, busy_ms=busy_ms)
        planned = plan.picks
        how = ("the whole queue planned (exact)" if not plan.thinned else
               f"the whole queue planned (thinned to {MAX_FRONTIER} states after {plan.thinned} requests: "
               "a lower bound on the optimum)")
    elif arrivals is not None:
        how = "request by request (open loop: no bound)"
    recs: list[RequestRecord] = []
    free_at = 0.0  # seconds: when the simulated single server is next idle (Poisson only)
    clock = 0.0  # closed loop: requests follow each other
    for i in range(workload.count):
        lat = op.latency_ms[i]
        late_ms = 0.0  # from the scheduled arrival to the server's
        if arrivals is None:
            arrive = reached = clock
            wait_ms = 0.0
        else:
            arrive, reached = float(arrivals[i]), float(at_server[i])
            late_ms = max(0.0, reached - arrive) * 1000.0
            wait_ms = max(0.0, free_at - reached) * 1000.0
        deadline = float(workload.deadlines_ms[i])
        pick = None if planned is None else int(planned[i])
        over_d, over_e = float(daemon_over[i]), float(e2e_over[i])
        if pick is None:
            for j in order:
                if wait_ms + over_d + lat[j] <= deadline:
                    pick = j
                    break
        if pick is None:
            pick = int(np.argmin(lat))
        e2e = late_ms + wait_ms + over_e + float(lat[pick])
        total = wait_ms + over_d + float(lat[pick])
        met = e2e <= deadline
        img = int(workload.image_indices[i])
        label = int(labels[img])
        pred = int(op.preds[i, pick])
        recs.append(RequestRecord(
            index=i, image_index=img, label=label, deadline_ms=deadline,
            arrival_s=arrive, sent_s=reached, e2e_ms=e2e, status=200, pred=pred,
            correct=pred == label, deadline_met=met, server_deadline_met=total <= deadline,
            variant=rows[pick].variant, inference_ms=float(lat[pick]), queue_ms=wait_ms,
            total_ms=total, policy="oracle",
        ))
        if arrivals is None:
            clock = arrive + e2e / 1000.0
        else:
            # The serving floor is work on the server's core (reading, checking, answering), so it keeps the
            # simulated server busy as long as the inference does, and longer where the server's measured
            # work per request (busy_ms) is longer.
            free_at = reached + (wait_ms + max(over_d, busy_ms) + float(lat[pick])) / 1000.0
    wall = clock if arrivals is None else max((r.arrival_s + r.e2e_ms / 1000.0) for r in recs)
    return recs, wall, how


def floors_behind_queue(received_s: np.ndarray, total_ms: np.ndarray, inference_ms: np.ndarray,
                        busy_ms: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Each request's own serving floor in a real open-loop run, with its wait behind the requests before it
    taken out: the floor the oracle's simulated server (``oracle_records``) must charge so that, making the run's
    own choices, it gives back the run's own times. Returns the floors and the waits (ms).

    The requests in index order, each reaching the server at ``received_s`` (seconds), waiting until it is free,
    then taking ``floor + inference`` on the server's clock and holding it ``max(floor, busy_ms) + inference``, as
    the simulated server does; so a request's floor is its measured ``total_ms`` less its inference and its wait.
    A request with a NaN total (not answered in the run) neither holds the server nor gets a floor (NaN)."""
    n = len(total_ms)
    floors = np.full(n, np.nan)
    waits = np.zeros(n)
    free_at = -np.inf
    for i in range(n):
        total, inf = float(total_ms[i]), float(inference_ms[i])
        if not (np.isfinite(total) and np.isfinite(inf)):
            continue
        reached = float(received_s[i])
        wait = max(0.0, free_at - reached) * 1000.0
        floor = max(0.0, total - inf - wait)
        floors[i], waits[i] = floor, wait
        free_at = reached + (wait + max(floor, busy_ms) + inf) / 1000.0
    return floors, waits


def static_miss_rates(op: OraclePass, workload: Workload, overhead_ms: float | np.ndarray,
                      busy_ms: float = 0.0, received_s: np.ndarray | None = None) -> np.ndarray:
    """Each variant's miss rate had it served every request alone (the oracle pass's measured times,
    the serving overhead added, a single-server queue simulated for Poisson arrivals, each request keeping
    the server busy for ``max(overhead, busy_ms)`` besides its inference, and reaching it at ``received_s``
    where given, as in ``oracle_records``)."""
    n, k = op.latency_ms.shape
    over = per_request(overhead_ms, n)
    miss = np.zeros(k)
    arrivals = workload.arrivals_s
    if arrivals is not None and received_s is not None:
        arrivals = np.asarray(received_s, dtype=np.float64)
    for j in range(k):
        lat = op.latency_ms[:, j]
        if arrivals is None:
            miss[j] = float(np.mean(over + lat > workload.deadlines_ms))
            continue
        free_at, missed = 0.0, 0
        for i in range(n):
            a = float(arrivals[i])
            wait = max(0.0, free_at - a) * 1000.0
            missed += wait + over[i] + lat[i] > workload.deadlines_ms[i]
            free_at = a + (wait + max(over[i], busy_ms) + lat[i]) / 1000.0  # the floor keeps the server busy too
        miss[j] = missed / n
    return miss


def best_static(rows: tuple[LatencyRow, ...], miss: np.ndarray, max_miss: float = BEST_STATIC_MAX_MISS) -> int:
    """The most accurate variant (table accuracy) whose miss rate is at most ``max_miss``; else the fastest."""
    ok = [j for j in range(len(rows)) if miss[j] <= max_miss]
    return max(ok, key=lambda j: rows[j].accuracy) if ok else 0
