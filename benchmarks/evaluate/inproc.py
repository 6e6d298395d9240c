"""The in-process transport of a policy comparison: the workload through ``AdaptiveClassifier.classify``.

This is the paper's own setting, a camera application that links the runtime and calls it, with no
HTTP in between (``edgekit evaluate --transport inproc``). Each run opens a fresh classifier (its own
slowdown filter, as a fresh daemon has), warms it with the same unmeasured requests a daemon gets,
then serves the workload:

- closed loop: one application thread, each request issued when the last one returned;
- open loop (Poisson): the same thread takes each request at its scheduled arrival time, polling for it
  as a latency-critical camera loop polls for its next frame, and passes the *scheduled* arrival as the
  deadline's start (``classify(arrival=)``); a request that arrives while an inference runs waits for it,
  in arrival order (the oracle's simulated server is FIFO too), so an overrun counts against the requests
  behind it. It polls because on this project's VM a sleeping core wakes 55 us late at p50 and a hand-off
  to a thread on another core costs 115 us at p50, more than most of the front's inferences: a harness of
  threads would measure the host's wake-up latency, not the runtime (the daemon pays it, in its floor).

The policies take **turns** (``run_inproc_turns``, by ``benchmarks.evaluate.turns``): all opened and warmed
first, then one application thread serves requests [0, 100) with each policy in turn, then [100, 200) starting
with the next policy, and so on (``--interleave``; a turn never straddles the contention window's edge).
This project's VM runs in phases: the same 2 us of numpy work took 2.6 us in some seconds and 4.2-5.0 us in
others, alternating about once a second (``python -m benchmarks.perf.host_phases``), while one policy's 3,000
requests take 0.05-0.5 s; served one after another, a policy's figure said which phase it fell in. Taking turns
gives every policy the same mix of phases. The first request of a turn meets its classifier's models cold in
cache; that is one request in a hundred, for every policy alike. Under open-loop arrivals each policy's clock
stops between its turns and resumes where it stopped, so a backlog carries over: a policy that ended its turn
behind its arrivals starts the next one as far behind (its next requests arrived while the other policies ran,
on its clock), and one that ended ahead waits for its next arrival. Its queue is what it would have been served
without a break; only the caches are not.

The classifier and the application thread run on the daemon's cores (``Placement.server``: the thread
pins itself, and the runtime's own threads are made by a pinned thread). In process the
application's clock is the only clock: a request's ``total_ms`` and its end-to-end latency are both
measured from its arrival, and the serving floor is what ``classify`` adds to the model's invoke
(checking the image, the EDF queue, preparing the input, reading the scores).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from benchmarks.evaluate.contention import Contention, ContentionSchedule, ContentionSpec
from benchmarks.evaluate.loadgen import RequestRecord, fine_timer_slack
from benchmarks.evaluate.probe import probe_result
from benchmarks.evaluate.results import ServingProbe
from benchmarks.evaluate.turns import INTERLEAVE, take_turns, turns
from benchmarks.evaluate.workload import Workload, make_workload
from edge.core.errors import UsageError
from edge.runtime.scheduler import QueueFull, ShuttingDown
from edge.serve.errors import RULES, DeadlineRejected, InferenceFailed, InvalidInput, refusal

POLL_S = 0.002  # the application thread sleeps until this long before a scheduled arrival, then polls
PROBE_SEED = 104729  # the same probe requests as the daemon's probe (benchmarks.evaluate.probe)

# What a classify outcome reads as in the records: the daemon's status for it (edge.serve.errors, the one table).
STATUS = {"ok": 200, "rejected": RULES[DeadlineRejected].status, "error": RULES[InferenceFailed].status}


@dataclass(frozen=True)
class InProcess:
    """What every in-process run opens: the bundle, the selected table, the runtime settings, the cores."""

    bundle: str
    table: str
    profile: str | None
    miss: str
    cpus: frozenset[int] | None  # the daemon's cores (None: not placed)
    other_cpus: frozenset[int] | None = None  # the load generator's, for contention that runs beside

    def pin(self) -> None:
        """Pin the calling thread to the serving cores (Linux: affinity is per thread)."""
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    @contextlib.contextmanager
    def opened(self, policy: str, quantile: str | None, log: Path) -> Iterator[Any]:
        """A fresh classifier serving ``policy``, its log lines in ``log``, opened by a thread pinned to the serving
        cores (the runtime's own threads inherit them); closed when the block ends."""
        from edge.runtime.classifier import AdaptiveClassifier

        box: dict[str, Any] = {}
        with log.open("a", encoding="utf-8") as fh:
            def write(line: str) -> None:
                fh.write(f"{line}\n")
                fh.flush()

            def opener() -> None:
                self.pin()
                try:
                    box["clf"] = AdaptiveClassifier.open(self.bundle, self.table, self.profile, policy=policy,
                                                         miss=self.miss, quantile=quantile, log=write)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    box["error"] = exc

            t = threading.Thread(target=opener, name="inproc-open")
            t.start()
            t.join()
            if "error" in box:
                raise box["error"]
            clf = box["clf"]
            write(f"in process: {policy}, {len(clf.serving_variants)} variants, opened in {clf.load_s:.2f} s")
            try:
                yield clf
            finally:
                clf.close(drain=False)


def _record(i: int, wl: Workload, labels: np.ndarray, arrival_s: float, sent_s: float, e2e_ms: float,
            res: Any, status: int, error: str = "") -> RequestRecord:
    """One request as the application saw it; ``res`` is the InferenceResult (None when refused)."""
    img = int(wl.image_indices[i])
    deadline = float(wl.deadlines_ms[i])
    rec = RequestRecord(index=i, image_index=img, label=int(labels[img]), deadline_ms=deadline,
                        arrival_s=arrival_s, sent_s=sent_s, e2e_ms=e2e_ms, status=status, error=error)
    if res is not None:
        rec.pred = int(res.label)
        rec.correct = status == 200 and rec.pred == rec.label
        rec.deadline_met = status == 200 and e2e_ms <= deadline
        # One clock in process: the runtime's own verdict, from the same arrival.
        rec.server_deadline_met = bool(res.deadline_met) if status == 200 else False
        rec.variant = str(res.variant or "")
        rec.policy = str(res.policy or "")
        rec.error = error or str(res.message or "")
        rec.predicted_ms, rec.queue_ms = float(res.predicted_ms), float(res.queue_ms)
        rec.inference_ms, rec.total_ms, rec.slowdown = float(res.inference_ms), float(res.total_ms), float(res.slowdown)
        if status != 200:
            rec.inference_ms = None
    return rec


def _call(clf, images: np.ndarray, labels: np.ndarray, wl: Workload, i: int, arrival: float,
          t0: float) -> RequestRecord:
    """``classify`` request ``i`` whose deadline started at ``arrival`` (perf_counter seconds)."""
    sent = time.perf_counter()
    res, status, err = None, 0, ""
    try:
        res = clf.classify(images[int(wl.image_indices[i])], float(wl.deadlines_ms[i]), arrival=arrival)
        status = STATUS.get(res.outcome, 500)
    except (QueueFull, ShuttingDown) as exc:
        status, err = refusal(exc).error.status, str(exc)
    except UsageError as exc:  # the image does not fit: what the daemon's codec answers as InvalidInput
        status, err = RULES[InvalidInput].status, str(exc)
    done = time.perf_counter()
    return _record(i, wl, labels, arrival - t0, sent - t0, (done - arrival) * 1000.0, res, status, err)


@dataclass
class InProcessRun:
    """One in-process run's requests, as ``benchmarks.evaluate.loadgen.LoadResult`` has them."""

    records: list[RequestRecord]
    wall_s: float
    truncated: bool


def _wait_until(at: float) -> None:
    """Return at perf_counter time ``at``: sleep until ``POLL_S`` before it, then poll. An idle core here wakes
    from a sleep 55 us late at p50 and 115 us at p90, and a hand-off to a thread on another core costs 115 us at
    p50 (measured on this project's 2-core VM), more than most of the front's inferences; a latency-critical
    camera loop polls for its next frame instead."""
    left = at - time.perf_counter()
    if left > POLL_S:
        time.sleep(left - POLL_S)
    while time.perf_counter() < at:
        pass


def serve_workload(clf, images: np.ndarray, labels: np.ndarray, wl: Workload, *, duration_s: float,
                   pin: Callable[[], None], on_request: Callable[[int], None] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> InProcessRun:
    """Serve ``wl`` through ``clf`` from one application thread that runs ``pin`` first; stop issuing after
    ``duration_s``. Closed loop: each request when the last returned. Open loop: each at its scheduled arrival
    (polled for), or at once when the thread was still busy with earlier ones, its deadline counted from the
    scheduled arrival either way: requests that arrive during an inference wait for it in arrival order, as in
    the oracle's simulated server."""
    n = wl.count
    records: list[RequestRecord] = []
    arrivals = wl.arrivals_s
    box: dict[str, Any] = {}

    def app() -> None:
        t0 = time.perf_counter()
        end = t0 + duration_s
        for i in range(n):
            if arrivals is None:
                if time.perf_counter() >= end:
                    box["truncated"] = True
                    break
                if on_request is not None:  # before the request's clock starts: starting contention takes ms
                    on_request(i)
                at = time.perf_counter()
            else:
                at = t0 + float(arrivals[i])
                if at >= end:
                    box["truncated"] = True
                    break
                _wait_until(at)
                if on_request is not None:
                    on_request(i)
            records.append(_call(clf, images, labels, wl, i, at, t0))
            if progress is not None:
                progress(i + 1, n)
        box["wall"] = time.perf_counter() - t0

    _in_app_thread(pin, app)
    return InProcessRun(records, float(box["wall"]), bool(box.get("truncated")))


def _in_app_thread(pin: Callable[[], None], body: Callable[[], None]) -> None:
    """Run ``body`` in a new application thread that runs ``pin`` first, with fine timer slack; re-raise what it
    raised in the caller's thread."""
    box: dict[str, BaseException] = {}

    def app() -> None:
        pin()
        try:
            with fine_timer_slack():
                body()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=app, name="inproc-app")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]


@dataclass(frozen=True)
class TurnPolicy:
    """One policy of a run in turns: its name in the results, what it is served as, its quantile, its log."""

    name: str
    served_as: str
    quantile: str | None
    log: Path


def run_inproc_turns(app: InProcess, policies: list[TurnPolicy], images: np.ndarray, labels: np.ndarray,
                     wl: Workload, warm: Workload | None, schedule: ContentionSchedule | None, duration_s: float,
                     block: int = INTERLEAVE,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, InProcessRun]:
    """Every policy in process taking turns of ``block`` requests (module docstring): all classifiers opened and
    warmed, then from one application thread requests [0, block) with each policy, [block, 2 block) starting with
    the next one, and so on. Each policy's records keep its own clock (its arrival offsets and wall time count only
    its own turns); under open-loop arrivals each request is taken at its scheduled arrival on that clock, as
    ``serve_workload`` takes it, so a backlog at a turn's end carries over to the policy's next turn. The turns
    stop when ``duration_s`` x the number of policies has passed, every policy then cut at the same request."""
    if not policies:
        return {}
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise UsageError(f"policies taking turns need distinct names, got {names}")
    window = (schedule.start, schedule.stop) if schedule is not None and schedule.spec.active else (0, 0)
    spans = turns(wl.count, block, window)
    with contextlib.ExitStack() as stack:
        clfs = [stack.enter_context(app.opened(p.served_as, p.quantile, p.log)) for p in policies]
        if warm is not None:
            for clf in clfs:
                serve_workload(clf, images, labels, warm, duration_s=min(duration_s, 60.0), pin=app.pin)
        box: dict[str, Any] = {}

        arrivals = wl.arrivals_s

        def send(m: int, i: int, t0: float) -> RequestRecord:
            if arrivals is None:  # closed loop: now
                return _call(clfs[m], images, labels, wl, i, time.perf_counter(), t0)
            at = t0 + float(arrivals[i])  # open loop: the scheduled arrival on the policy's own clock
            _wait_until(at)
            return _call(clfs[m], images, labels, wl, i, at, t0)

        def body() -> None:
            box["out"] = take_turns(spans, len(policies), send, duration_s * len(policies), on_request=schedule,
                                    progress=progress, count=wl.count)

        if schedule is not None:
            schedule.reset()
            schedule.target(os.getpid())
        try:
            _in_app_thread(app.pin, body)
        finally:
            if schedule is not None:
                schedule.halt()
    records, own, cut = box["out"]
    return {p.name: InProcessRun(recs, wall, cut) for p, recs, wall in zip(policies, records, own)}


def run_inproc(app: InProcess, policy: str, quantile: str | None, images: np.ndarray, labels: np.ndarray,
               wl: Workload, warm: Workload | None, schedule: ContentionSchedule | None, log: Path,
               duration_s: float, progress: Callable[[int, int], None] | None = None) -> InProcessRun:
    """One policy in process: open a fresh classifier on the serving cores, warm it, serve ``wl`` under
    ``schedule`` (which acts on this process), close it."""
    with app.opened(policy, quantile, log) as clf:
        if warm is not None:
            serve_workload(clf, images, labels, warm, duration_s=min(duration_s, 60.0), pin=app.pin)
        if schedule is not None:
            schedule.reset()
            schedule.target(os.getpid())
        try:
            return serve_workload(clf, images, labels, wl, duration_s=duration_s, pin=app.pin, on_request=schedule,
                                  progress=progress)
        finally:
            if schedule is not None:
                schedule.halt()


def probe_inproc(app: InProcess, variant: str, images: np.ndarray, labels: np.ndarray, log: Path,
                 count: int, contention: ContentionSpec | None = None) -> ServingProbe:
    """The in-process serving floor: ``count`` closed-loop calls with ``static:variant`` and no deadline pressure
    (under ``contention`` for all of them when given); the floor is the p50 of classify's total minus the invoke,
    and the closed-loop throughput is the variant's capacity in process."""
    wl = make_workload(images.shape[0], count, "fixed:60000", "closed", PROBE_SEED)
    warm = wl.head(min(50, count))
    c = None

    class _Whole:  # contention over the whole probe, started before its first request
        def __call__(self, i: int) -> None:
            nonlocal c
            if i == 0 and contention is not None and c is None:
                c = Contention(contention, os.getpid(), app.cpus and set(app.cpus),
                               app.other_cpus and set(app.other_cpus), 120.0).start()

    try:
        with app.opened(f"static:{variant}", None, log) as clf:
            serve_workload(clf, images, labels, warm, duration_s=60.0, pin=app.pin)
            res = serve_workload(clf, images, labels, wl, duration_s=120.0, pin=app.pin, on_request=_Whole())
    finally:
        if c is not None:
            c.stop()
    return probe_result(res.records, res.wall_s, count, f"the in-process serving probe with {variant}", log)
