"""Earliest-deadline-first admission to the inference slots, and the one step that serves a request.

A *slot* is one set of loaded variants (an interpreter is not safe to share between
threads, so each slot has its own copies).  A request that finds a slot free and nobody
waiting takes it at once, in the caller's own thread: an idle runtime adds no hand-off.
Otherwise it waits in a bounded heap ordered by absolute deadline, and a slot that frees
goes to the head of the heap.  Time spent waiting counts against the deadline: the
selector sees only the time still left when the request runs.

Two kinds of caller share this:

- in-process threads (``edge.runtime.classifier.AdaptiveClassifier.classify``): ``acquire`` blocks
  until the request holds a slot; ``release`` hands the slot to the next waiter directly;
- the daemon's event loop (``edge.serve.dataplane``, through the classifier): ``submit`` never blocks, ``take`` pops the
  earliest deadline when a slot is free, and ``on_free`` tells the loop a slot freed so
  that it reads what arrived meanwhile before it picks the next request.

Under the ``reject`` miss policy a request that no variant can meet is answered at once,
on arrival and again when it reaches a slot.

A request that finds its slot idle for ``REST_GAP_MS`` or more runs *at rest*: the selector predicts
it with the table's latency at rest and the slowdown filter compares it to that; one idle from
``IDLE_FROM_MS`` runs at a request's cadence, with the table's latency after a short gap
(``edge.runtime.selector``).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, cast

import numpy as np

from edge.artifacts.images import resizer
from edge.artifacts.manifest import TensorSpec
from edge.artifacts.tensors import dequantize_output, fit_size, pixel_values, prepare_input
from edge.backends.base import LoadedModel
from edge.core.errors import UsageError
from edge.runtime.load import MIN_ARRIVALS, ArrivalLoad
from edge.runtime.selector import HOT, REST, Selector, idle_level, recent_quantile

OVERHEAD_ALPHA = 0.1  # EWMA weight of the measured serving overhead
OVERHEAD_INITIAL_MS = 0.05
OWN_INITIAL_MS = 0.005  # the runtime's own work around an invoke (select, prepare, read, dequantize), learnt
OVERHEAD_MAX_MS = 20.0
QUEUE_PLAN = 16  # waiting requests (earliest deadlines first) the adaptive policy leaves room for
OWN_N = 64  # recent runs whose own work (besides the invoke) sets the quantile adaptive leaves room for
OWN_EVERY = 16  # runs between recomputing it

# What ``submit`` says happened to a request.
RUN = "run"  # it holds a slot: run it now
QUEUED = "queued"  # it waits for a slot
DONE = "done"  # answered already (rejected: its deadline cannot be met)


def _ewma(old_ms: float, ms: float, ignore_above: float = 1e4) -> float:
    """One step of an overhead's EWMA (weight OVERHEAD_ALPHA, at most OVERHEAD_MAX_MS); a value that is negative
    or at least ``ignore_above`` is ignored."""
    if not 0 <= ms < ignore_above:
        return old_ms
    return min(OVERHEAD_MAX_MS, old_ms + OVERHEAD_ALPHA * (ms - old_ms))


class QueueFull(RuntimeError):
    """The EDF queue holds ``queue_size`` requests already."""


class ShuttingDown(RuntimeError):
    """The scheduler stopped accepting requests (graceful shutdown)."""


@dataclass(frozen=True)
class ServingState:
    """What the slots serve with; swapped as one reference on hot reload.

    ``models[s][variant]`` is slot s's own loaded copy of a variant.
    """

    selector: Selector
    models: tuple[dict[str, LoadedModel], ...]
    table_path: str = ""
    generation: int = 0


@dataclass
class InferenceResult:
    outcome: str  # ok | rejected | error
    variant: str | None = None
    predicted_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0  # arrival to result ready (a transport adds its encoding time)
    deadline_ms: float = 0.0
    deadline_met: bool = False
    slowdown: float = 1.0
    policy: str = ""
    scores: np.ndarray | None = None  # float32 (1, classes), dequantized
    label: int = -1
    class_name: str = ""  # the label's class name from the bundle ("" when the bundle names none)
    at_rest: bool = False  # its slot had been idle REST_GAP_MS or more (predicted and observed at rest)
    message: str = ""
    dispatch_seq: int = -1  # order in which requests got a slot
    hold_ms: float = 0.0  # testing (--inject-delay-ms): keep the slot this much longer


@dataclass(eq=False)
class InferenceRequest:
    """One image (batch 1, NHWC, uint8 or float32 pixel values) and its relative deadline."""

    image: np.ndarray
    deadline_ms: float
    arrival: float = field(default_factory=time.perf_counter)  # perf_counter (CLOCK_MONOTONIC) seconds
    id: str = ""
    result: InferenceResult | None = None
    slot: int = -1
    context: Any = None  # the transport's own (the daemon keeps its connection here)
    _granted: threading.Event | None = field(default=None, repr=False)

    @property
    def abs_deadline(self) -> float:
        return self.arrival + self.deadline_ms / 1000.0

    def wait(self, timeout: float | None = None) -> bool:
        """Block until this request holds a slot or has a result (``acquire``'s waiters only)."""
        if self._granted is None:
            return self.slot >= 0 or self.result is not None
        return self._granted.wait(timeout)


class InputPreparer:
    """uint8 pixels -> a model's input tensor, through a 256-entry table when the input is
    quantized or normalized (one gather instead of scale, round, clip and cast on every request)."""

    __slots__ = ("spec", "dtype", "lut", "chan", "hw", "_resized", "_resizers")

    def __init__(self, spec: TensorSpec):
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        # A variant at another input size than the served images: resized first (edge.artifacts.tensors.fit_size),
        # one request's image into this preparer's own buffer (one per model instance, so per slot: never shared
        # by two requests at once; what is made from it below is a new array).
        self.hw: tuple[int, int] | None = (int(spec.shape[1]), int(spec.shape[2])) if len(spec.shape) == 4 else None
        self._resized: np.ndarray | None = None
        self._resizers: dict[tuple, Callable[[np.ndarray], np.ndarray]] = {}  # by the served images' shape
        if self.hw is not None and int(spec.shape[3]) > 0:
            self._resized = np.empty((1, *self.hw, int(spec.shape[3])), np.uint8)
        self.lut, self.chan = None, None
        # The arithmetic of edge.artifacts.tensors.prepare_input, once per pixel value (and per channel
        # when an imported model's input convention normalizes each channel differently).
        if spec.normalized:
            c = len(cast(tuple, spec.mean))
            self.lut = pixel_values(np.repeat(np.arange(256, dtype=np.uint8)[:, None], c, axis=1), spec)
            self.chan = np.arange(c)
        elif spec.quantized:
            self.lut = pixel_values(np.arange(256, dtype=np.uint8), spec)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.dtype == np.uint8:
            if self.hw is not None and image.shape[-3:-1] != self.hw:
                # One request's image, into this preparer's buffer by resize_pixels prepared for its shape (resizer)
                buf = self._resized
                if buf is not None and image.ndim == 4 and len(image) == 1 and image.shape[3] == buf.shape[3]:
                    resize = self._resizers.get(image.shape)
                    if resize is None:  # the first request of this shape: the resize prepared for it
                        resize = self._resizers[image.shape] = resizer(image.shape[1:], self.hw, out=buf[0])
                    resize(image[0])
                    image = buf
                else:
                    image = fit_size(image, self.spec)
            if self.lut is not None:  # take() gathers a small image about a third faster than indexing does
                return self.lut.take(image) if self.chan is None else self.lut[image, self.chan]
            return image.astype(self.dtype)
        return prepare_input(image, self.spec)


class OutputReader:
    """A model's raw output -> float32 scores (``dequantize_output``'s arithmetic), through a 256-entry table
    when the output is 8-bit quantized (one gather instead of a cast, a subtraction and a multiplication on
    every request; the table holds that same arithmetic's result for each of the 256 codes)."""

    __slots__ = ("spec", "lut", "dtype")

    def __init__(self, spec: TensorSpec):
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        self.lut: np.ndarray | None = None
        if spec.quantized and self.dtype.itemsize == 1:
            self.lut = dequantize_output(np.arange(256, dtype=np.uint8).view(self.dtype), spec)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        if self.lut is not None and y.dtype == self.dtype:
            return self.lut[y.view(np.uint8)]
        return dequantize_output(y, self.spec)


class Scheduler:
    def __init__(
        self,
        state: ServingState,
        queue_size: int = 64,
        workers: int | None = None,
        inject_delay_ms: float = 0.0,
        on_free: Callable[[], Any] | None = None,
    ):
        if queue_size < 1:
            raise UsageError(f"queue size must be at least 1, got {queue_size}")
        self.state = state
        self.queue_size = int(queue_size)
        self.workers = int(workers if workers is not None else len(state.models))
        if self.workers < 1 or len(state.models) < self.workers:
            raise UsageError(f"{self.workers} slots need {self.workers} model sets, got {len(state.models)}")
        self._heap: list[tuple[float, int, InferenceRequest]] = []
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._idle_waiters = 0  # callers in wait_idle: release notifies only when there is one (under the lock)
        self._free = list(range(self.workers - 1, -1, -1))  # pop() gives slot 0 first
        self._seq = itertools.count()
        self._dispatch = 0
        self._closing = False
        self.overhead_ms = OVERHEAD_INITIAL_MS
        self.own_ms = OWN_INITIAL_MS  # EWMA of each run's time besides the invoke, from dequeue to result
        self._own: deque[float] = deque(maxlen=OWN_N)  # the last runs' own work (ms)
        self._own_n = 0
        self.own_q_ms = OWN_INITIAL_MS  # its quantile (the selector's), which adaptive leaves room for
        self.on_free = on_free
        self.inject_delay_ms = float(inject_delay_ms)
        # Per model instance: its input's preparer and its output's reader, made once (one lookup a request).
        self._io: dict[int, tuple[InputPreparer, OutputReader]] = {}
        self._last_end = [0.0] * self.workers  # perf_counter when each slot's last inference (or re-warm) ended
        self._infer_end = [0.0] * self.workers  # ... its last inference for a request, re-warms left out
        self._awake = 0.0  # perf_counter until which the caller kept the core awake after it (busy polling)
        self.load = ArrivalLoad()  # the arrivals while busy and the recent deadlines (adaptive prices them)
        self._last_variant = [-1] * self.workers  # per slot: the selector index it ran last (-1: none yet)

    # ------------------------------------------------------------------ control

    def swap(self, state: ServingState) -> None:
        """Serve new requests with ``state``; requests already running finish with the old one."""
        if len(state.models) < self.workers:
            raise UsageError(f"the new state has {len(state.models)} model sets for {self.workers} slots")
        self.state = state
        self._io = {}
        self._last_variant = [-1] * self.workers  # the new selector's indices

    def close(self, drain: bool = True, timeout: float | None = None) -> int:
        """Stop accepting; without ``drain`` answer queued requests with an error at once.
        With ``drain``, wait (up to ``timeout``) until every slot is free and nothing waits.
        Returns the number of requests dropped."""
        dropped: list[InferenceRequest] = []
        with self._lock:
            self._closing = True
            if not drain:
                dropped = [r for _, _, r in self._heap]
                self._heap.clear()
        for r in dropped:
            self._finish(r, InferenceResult("error", message="the daemon is shutting down", deadline_ms=r.deadline_ms))
        if drain:
            self.wait_idle(timeout)
        return len(dropped)

    def wait_idle(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            self._idle_waiters += 1
            try:
                while self._heap or len(self._free) < self.workers:
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._idle.wait(left if left is None else min(left, 0.1))
            finally:
                self._idle_waiters -= 1
        return True

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def depth(self) -> int:
        return len(self._heap)

    @property
    def busy(self) -> int:
        return self.workers - len(self._free)

    def record_overhead(self, ms: float) -> None:
        """Serving time after the inference (encode, write), subtracted from the time left."""
        self.overhead_ms = _ewma(self.overhead_ms, ms)

    def kept_awake(self, until: float) -> None:
        """The caller kept the serving core busy until ``until`` (perf_counter; busy polling): a run after it
        has idled only since then, and one that finds the core still awake runs as back to back (HOT)."""
        if until > self._awake:
            self._awake = until

    # ------------------------------------------------------------------ admission

    def submit(self, req: InferenceRequest, wait: bool = False, defer: bool = False) -> str:
        """Admit ``req``: RUN (it holds a free slot now), QUEUED, or DONE (rejected at once).

        Raises QueueFull when the heap is full and ShuttingDown after ``close``. With
        ``wait`` a queued request gets an event that ``release`` sets (see ``acquire``).
        With ``defer`` it is queued even when a slot is free: an event loop that reads
        several requests in one pass queues them all, then ``take``s in deadline order."""
        sel = self.state.selector
        # It arrived while busy: others wait or run, or it arrived before the last inference ended (a transport
        # that reads it only after an inline inference stamps it earlier: the daemon's kernel receive stamp).
        self.load.arrived(req.deadline_ms, bool(self._heap) or len(self._free) < self.workers
                          or req.arrival < max(self._infer_end))
        if sel.reject_on_miss:
            now = time.perf_counter()
            # It would run after the slots' idle time if it found every slot free (the least it can pay).
            idle = idle_level(now - max(*self._last_end, self._awake)) if not self._heap and self.busy == 0 else HOT
            d = sel.select((req.abs_deadline - now) * 1000.0 - self.overhead_ms, idle)
            if d.reject:
                self._reject(req, sel, d.predicted_ms, now)
                return DONE
        with self._lock:
            if self._closing:
                raise ShuttingDown("the daemon is shutting down; retry against its replacement")
            if self._free and not self._heap and not defer:
                req.slot = self._free.pop()
                req.result = None
                return RUN
            if len(self._heap) >= self.queue_size:
                raise QueueFull(f"queue full ({len(self._heap)} waiting); retry later")
            if wait:
                req._granted = threading.Event()
            heapq.heappush(self._heap, (req.abs_deadline, next(self._seq), req))
        return QUEUED

    def take(self) -> InferenceRequest | None:
        """The earliest-deadline waiting request, holding a free slot; None if none or no slot."""
        with self._lock:
            if not self._heap or not self._free:
                return None
            req = heapq.heappop(self._heap)[2]
            req.slot = self._free.pop()
            return req

    def acquire(self, req: InferenceRequest, timeout: float | None = None) -> str:
        """Admit ``req`` and block until it holds a slot (RUN) or was answered (DONE)."""
        how = self.submit(req, wait=True)
        if how == QUEUED:
            if not req.wait(timeout):
                with self._lock:  # gave up waiting: leave the heap unless granted meanwhile
                    for i, (_, _, r) in enumerate(self._heap):
                        if r is req:
                            self._heap.pop(i)
                            heapq.heapify(self._heap)
                            raise TimeoutError("no inference slot within the timeout")
            return RUN if req.result is None else DONE
        return how

    def release(self, req: InferenceRequest) -> None:
        """Give ``req``'s slot back: to the earliest waiter that blocks in ``acquire``, or to the pool."""
        slot, req.slot = req.slot, -1
        if slot < 0:
            return
        notify = False
        with self._lock:
            head = self._heap[0][2] if self._heap else None
            if head is not None and head._granted is not None:
                heapq.heappop(self._heap)
                head.slot = slot
                head._granted.set()
            else:
                self._free.append(slot)
                notify = head is not None
            if self._idle_waiters:
                self._idle.notify_all()
        if notify and self.on_free is not None:
            self.on_free()

    # ------------------------------------------------------------------ serving

    def _reject(self, req: InferenceRequest, sel: Selector, predicted: float, now: float) -> InferenceResult:
        left = (req.abs_deadline - now) * 1000.0
        res = InferenceResult(
            "rejected",
            predicted_ms=predicted,
            queue_ms=(now - req.arrival) * 1000.0,
            total_ms=(now - req.arrival) * 1000.0,
            deadline_ms=req.deadline_ms,
            deadline_met=False,
            slowdown=sel.factor,
            policy=str(sel.policy),
            message=(
                f"deadline cannot be met: {left:.2f} ms left, the fastest variant '{sel.variants[0]}' "
                f"is predicted to take {predicted:.2f} ms (+{self.overhead_ms:.2f} ms overhead)"
            ),
        )
        self._finish(req, res)
        return res

    @staticmethod
    def _finish(req: InferenceRequest, res: InferenceResult) -> None:
        req.result = res
        if req._granted is not None:
            req._granted.set()

    def run(self, req: InferenceRequest) -> InferenceResult:
        """Serve ``req`` on the slot it holds: select, infer, correct the slowdown estimate.

        Does not release the slot (the caller does, after ``hold_ms`` when testing). A failing
        model gives an ``error`` result, never an exception."""
        seq = self._dispatch
        self._dispatch += 1
        try:
            res = self._run(req)
        except Exception as exc:  # never lose the slot's caller; the request gets a 500 with the reason
            res = InferenceResult("error", message=f"inference failed: {exc}", deadline_ms=req.deadline_ms)
        res.dispatch_seq = seq
        req.result = res
        return res

    def _budget_ms(self, req: InferenceRequest, sel: Selector, now: float) -> float:
        """The time ``req`` may spend in inference: its own time left minus the serving overhead (the transport's,
        after the result, and the runtime's own around the invoke: its mean for the baselines, its quantile for
        adaptive, which read 0.45-1.4 points more on-time accuracy in process, docs/policy-comparison.md), and,
        for a policy that plans the queue (adaptive), no more than leaves each waiting request (in
        EDF order, the first QUEUE_PLAN of them) time for what it needs at the least (``need_ms``). A
        waiting request that would miss even so does not hold the head back: nothing saves it."""
        own = self.own_q_ms if sel.corrects else self.own_ms
        left = (req.abs_deadline - now) * 1000.0 - self.overhead_ms - own
        if not sel.plans_queue or not self._heap:
            return left
        with self._lock:
            waiting = heapq.nsmallest(QUEUE_PLAN, self._heap)
        floor = sel.predict(0)
        per = self.need_ms(sel, floor)  # what each waiting request needs at the least
        for k, (deadline, _, _) in enumerate(waiting, 1):
            room = (deadline - now) * 1000.0 - self.overhead_ms - own - math.ceil(k / self.workers) * per
            if floor <= room < left:
                left = room
        return left

    def need_ms(self, sel: Selector, fastest_ms: float) -> float:
        """What a request needs at the least once its turn comes: the serving overhead after its result, the
        runtime's own work around its invoke (adaptive: that work's quantile, which its own budget leaves room
        for) and the fastest variant's ``fastest_ms``. Until stop 44 the own work was left out here though each
        request's own budget counted it: in process, where it is most of a request's floor, the load price then
        saw a request behind a long variant as needing about half of what it did."""
        return self.overhead_ms + (self.own_q_ms if sel.corrects else self.own_ms) + fastest_ms

    def _note_own(self, ms: float, quantile: str) -> None:
        """One run's own work besides the invoke: into its EWMA (what the baselines leave room for) and, every
        OWN_EVERY runs, the quantile of the last OWN_N (adaptive: the tail of that work decides the tightest
        deadlines, as the table's quantile does the invoke's)."""
        self.own_ms = _ewma(self.own_ms, ms, ignore_above=OVERHEAD_MAX_MS)
        if not 0 <= ms < OVERHEAD_MAX_MS:
            return
        self._own.append(ms)
        n = self._own_n = self._own_n + 1
        if n % OWN_EVERY == 0:
            self.own_q_ms = recent_quantile(self._own, quantile)

    def _io_for(self, model: LoadedModel) -> tuple[InputPreparer, OutputReader]:
        """The model instance's input preparer and output reader, made once."""
        io = self._io.get(id(model))
        if io is None or io[0].spec is not model.input_spec or io[1].spec is not model.output_spec:
            io = self._io[id(model)] = (InputPreparer(model.input_spec), OutputReader(model.output_spec))
        return io

    def rewarm(self, req: InferenceRequest, answered: bool = False) -> float:
        """After ``req`` ran a longer variant on its slot, which it still holds, run the fastest variant once on the
        same image (prepare, invoke, read; the result is dropped), so that the next request, if only the fastest fits
        it, does not find it cold; returns the ms it took (0 when it did not run).

        Why: the table times each variant back to back. After a longer one has filled the caches, the fastest one's
        whole call runs cold, and it is the one the tightest deadlines get: on the demo's front in process, 14.9 % of
        the requests served by it right after another variant missed, against 6.9 % after itself (docs/policy-
        comparison.md, "Re-warming the fastest variant"). Run here, that cost falls on a request that had room.

        Only for a policy that re-warms (adaptive, adaptive-greedy), when ``req`` was served by another variant than
        the fastest, nobody waits and no request is likely to arrive meanwhile (``ArrivalLoad``: under open-loop load
        they would pay for it, and a daemon's next requests may be in its sockets already), and either ``answered``
        (the daemon: its answer is written already) or ``req`` has room left for it (in process: the caller gets its
        answer after it). Under a task that takes the core in bursts (``evaluate --contention rt``) it does not pay:
        the task evicts the caches between requests anyway (docs/policy-comparison.md)."""
        res, state = req.result, self.state
        sel = state.selector
        if (not sel.rewarms or res is None or res.outcome != "ok" or req.slot < 0 or self._heap
                or res.variant == sel.variants[0] or self._last_variant[req.slot] == 0):
            return 0.0
        cost = sel.predict(0) * sel.switch[0] + self.own_q_ms  # a cold run of the fastest and the own work around it
        if self.load.rate * cost >= MIN_ARRIVALS:  # open-loop load: requests likely to arrive meanwhile would wait
            return 0.0
        t = time.perf_counter()
        if not answered and (req.abs_deadline - t) * 1000.0 - self.overhead_ms < 2.0 * cost:  # room for twice that
            return 0.0
        model = state.models[req.slot].get(sel.variants[0])
        if model is None:
            return 0.0
        prep, read = self._io_for(model)
        try:
            model.set_input(prep(req.image))
            model.invoke_prepared()
            read(model.output())
        except Exception:  # a failing model fails its own requests, with their reason; this one has its answer
            return 0.0
        self._last_variant[req.slot] = 0
        # The slot's next run follows this one (its idle level), but a request that arrived meanwhile did not arrive
        # during an inference: a closed-loop client's next request, sent on the answer, is no open-loop load.
        self._last_end[req.slot] = end = time.perf_counter()
        return (end - t) * 1000.0

    def _run(self, req: InferenceRequest) -> InferenceResult:
        t_deq = time.perf_counter()
        state = self.state
        sel = state.selector
        idle = idle_level(t_deq - max(self._last_end[req.slot], self._awake))
        last = self._last_variant[req.slot]
        d = sel.select(self._budget_ms(req, sel, t_deq), idle, last)
        if d.reject:
            return self._reject(req, sel, d.predicted_ms, t_deq)
        load = self.load
        if d.index > 0 and d.fits and sel.prices_load and load.priced(d.predicted_ms):
            # Open-loop load: weigh what a longer variant costs the requests likely to arrive meanwhile.
            preds = sel.predictions(d.index, idle, last)
            j = load.choose(preds, sel.accuracy, d.index, self.need_ms(sel, preds[0]))
            if j != d.index:
                d = sel.decision(j, idle, last)
        assert d.variant is not None  # a decision that does not reject names its variant
        model = state.models[req.slot][d.variant]
        prep, read = self._io_for(model)
        image = req.image
        # Time the invoke alone, the span the latency table measured, so that the
        # observed/expected ratio is ~1 on a healthy board even for microsecond models; a variant
        # that resizes the image also from before its resize, as its table row was measured.
        resizes = prep.hw is not None and image.shape[-3:-1] != prep.hw
        t_set = time.perf_counter() if resizes else 0.0
        model.set_input(prep(image))
        t0 = time.perf_counter()
        model.invoke_prepared()
        t1 = time.perf_counter()
        if resizes:
            t0 = t_set
        # An injected delay holds the slot busy.
        self._last_end[req.slot] = self._infer_end[req.slot] = t1 + self.inject_delay_ms / 1000.0
        raw = model.output()
        inf_ms = (t1 - t0) * 1000.0 + self.inject_delay_ms
        factor = sel.observe(d.index, inf_ms, idle, switched=last != d.index)
        self._last_variant[req.slot] = d.index
        scores = read(raw)
        t_end = time.perf_counter()
        busy_ms = (t_end - t_deq) * 1000.0
        self._note_own(busy_ms - (t1 - t0) * 1000.0, sel.quantile)
        load.ran(busy_ms + self.inject_delay_ms)
        total = (t_end - req.arrival) * 1000.0 + self.inject_delay_ms
        return InferenceResult(
            "ok",
            variant=d.variant,
            predicted_ms=d.predicted_ms,
            queue_ms=(t_deq - req.arrival) * 1000.0,
            inference_ms=inf_ms,
            total_ms=total,
            deadline_ms=req.deadline_ms,
            deadline_met=total <= req.deadline_ms,
            slowdown=factor,
            policy=str(sel.policy),
            scores=scores,
            label=int(scores[0].argmax()),
            at_rest=idle == REST,
            hold_ms=self.inject_delay_ms,
        )
