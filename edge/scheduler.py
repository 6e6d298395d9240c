"""Earliest-deadline-first request queue and the inference workers that drain it.

A bounded heap ordered by absolute deadline feeds ``workers`` threads.  Each worker owns
its own loaded copy of every variant (an interpreter is not safe to share between
threads) and, per request, asks the selector for the most accurate variant that fits the
time still left: the time spent waiting in the queue counts against the deadline.  Under
the ``reject`` miss policy a request that no variant can meet is answered at once, both
on arrival and again when it reaches the head of the queue.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edge.backends.base import LoadedModel
from edge.manifest import dequantize_output, prepare_input
from edge.selector import Selector

OVERHEAD_ALPHA = 0.1  # EWMA weight of the measured serving overhead
OVERHEAD_INITIAL_MS = 0.2
OVERHEAD_MAX_MS = 20.0


class QueueFull(RuntimeError):
    """The EDF queue holds ``queue_size`` requests already."""


class ShuttingDown(RuntimeError):
    """The scheduler stopped accepting requests (graceful shutdown)."""


@dataclass(frozen=True)
class ServingState:
    """What the workers serve with; swapped as one reference on hot reload.

    ``models[w][variant]`` is worker w's own loaded copy of a variant.
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
    total_ms: float = 0.0  # arrival to result ready (the HTTP layer adds its encoding time)
    deadline_ms: float = 0.0
    deadline_met: bool = False
    slowdown: float = 1.0
    policy: str = ""
    scores: np.ndarray | None = None  # float32 (1, classes), dequantized
    label: int = -1
    message: str = ""
    dispatch_seq: int = -1  # order in which workers took requests off the queue


@dataclass(eq=False)
class InferenceRequest:
    """One image (batch 1, NHWC, uint8 or float32 pixel values) and its relative deadline."""

    image: np.ndarray
    deadline_ms: float
    arrival: float = field(default_factory=time.perf_counter)  # perf_counter seconds
    id: str = ""
    result: InferenceResult | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def abs_deadline(self) -> float:
        return self.arrival + self.deadline_ms / 1000.0

    def wait(self, timeout: float | None = None) -> InferenceResult | None:
        self.done.wait(timeout)
        return self.result


class Scheduler:
    def __init__(
        self,
        state: ServingState,
        queue_size: int = 64,
        workers: int | None = None,
        on_inference: Callable[[str, float], Any] | None = None,
        inject_delay_ms: float = 0.0,
    ):
        if queue_size < 1:
            raise ValueError(f"queue size must be at least 1, got {queue_size}")
        self.state = state
        self.queue_size = int(queue_size)
        self.workers = int(workers if workers is not None else len(state.models))
        if len(state.models) < self.workers:
            raise ValueError(f"{self.workers} workers need {self.workers} model sets, got {len(state.models)}")
        self._heap: list[tuple[float, int, InferenceRequest]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._dispatch = 0
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self.overhead_ms = OVERHEAD_INITIAL_MS
        self.on_inference = on_inference
        self.inject_delay_ms = float(inject_delay_ms)

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        for w in range(self.workers):
            t = threading.Thread(target=self._work, args=(w,), name=f"edgekit-worker-{w}", daemon=True)
            t.start()
            self._threads.append(t)

    def swap(self, state: ServingState) -> None:
        """Serve new requests with ``state``; requests already running finish with the old one."""
        if len(state.models) < self.workers:
            raise ValueError(f"the new state has {len(state.models)} model sets for {self.workers} workers")
        self.state = state

    def close(self, drain: bool = True, timeout: float | None = None) -> int:
        """Stop accepting; with ``drain`` finish queued requests first. Returns requests dropped."""
        with self._cond:
            self._closing = True
            dropped = []
            if not drain:
                dropped = [r for _, _, r in self._heap]
                self._heap.clear()
            self._cond.notify_all()
        for r in dropped:
            self._finish(r, InferenceResult("error", message="the daemon is shutting down", deadline_ms=r.deadline_ms))
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return len(dropped)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def depth(self) -> int:
        return len(self._heap)

    @property
    def busy(self) -> int:
        return self._busy

    def record_overhead(self, ms: float) -> None:
        """Serving time outside inference (parse, prepare, encode), subtracted from the time left."""
        if 0 <= ms < 1e4:
            self.overhead_ms = min(OVERHEAD_MAX_MS, self.overhead_ms + OVERHEAD_ALPHA * (ms - self.overhead_ms))

    # ------------------------------------------------------------------ requests

    def submit(self, req: InferenceRequest) -> InferenceRequest:
        """Queue ``req`` (or answer it at once when it cannot be met under ``reject``)."""
        sel = self.state.selector
        if sel.reject_on_miss:
            remaining = (req.abs_deadline - time.perf_counter()) * 1000.0 - self.overhead_ms
            d = sel.select(remaining)
            if d.reject:
                self._reject(req, sel, d.predicted_ms, time.perf_counter())
                return req
        with self._cond:
            if self._closing:
                raise ShuttingDown("the daemon is shutting down; retry against its replacement")
            if len(self._heap) >= self.queue_size:
                raise QueueFull(f"queue full ({len(self._heap)} waiting); retry later")
            heapq.heappush(self._heap, (req.abs_deadline, next(self._seq), req))
            self._cond.notify()
        return req

    def _reject(self, req: InferenceRequest, sel: Selector, predicted: float, now: float) -> None:
        left = (req.abs_deadline - now) * 1000.0
        self._finish(
            req,
            InferenceResult(
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
            ),
        )

    @staticmethod
    def _finish(req: InferenceRequest, res: InferenceResult) -> None:
        req.result = res
        req.done.set()

    def _work(self, wid: int) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._closing:
                    self._cond.wait()
                if not self._heap:
                    return
                _, _, req = heapq.heappop(self._heap)
                seq = self._dispatch
                self._dispatch += 1
                self._busy += 1
            try:
                self._run(wid, req, seq)
            except Exception as exc:  # never lose a worker; the request gets a 500 with the reason
                self._finish(req, InferenceResult("error", message=f"inference failed: {exc}", deadline_ms=req.deadline_ms))
            finally:
                with self._cond:
                    self._busy -= 1

    def _run(self, wid: int, req: InferenceRequest, seq: int) -> None:
        t_deq = time.perf_counter()
        state = self.state
        sel = state.selector
        remaining = (req.abs_deadline - t_deq) * 1000.0 - self.overhead_ms
        d = sel.select(remaining)
        if d.reject:
            self._reject(req, sel, d.predicted_ms, t_deq)
            req.result.dispatch_seq = seq  # type: ignore[union-attr]
            return
        model = state.models[wid][d.variant]
        model.set_input(prepare_input(req.image, model.input_spec))
        # Time the invoke alone, the span the latency table measured, so that the
        # observed/expected ratio is ~1 on a healthy board even for microsecond models.
        t0 = time.perf_counter()
        model.invoke_prepared()
        if self.inject_delay_ms > 0:
            time.sleep(self.inject_delay_ms / 1000.0)
        t1 = time.perf_counter()
        raw = model.output()
        inf_ms = (t1 - t0) * 1000.0
        factor = sel.observe(d.index, inf_ms)
        scores = dequantize_output(raw, model.output_spec)
        if self.on_inference is not None:
            self.on_inference(d.variant, inf_ms)
        t_end = time.perf_counter()
        total = (t_end - req.arrival) * 1000.0
        self._finish(
            req,
            InferenceResult(
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
                label=int(np.argmax(scores[0])),
                dispatch_seq=seq,
            ),
        )
