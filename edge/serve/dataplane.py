"""What the v2 endpoints do, with no HTTP in sight: health, metadata, inference, reload and status over the runtime.

The app (``edge.serve.app``) matches a request to a route and calls one method here with the
request's bytes and times. A method answers with a JSON document, or raises a domain error
(``edge.serve.errors``: the app maps it to a status). Inference and reload answer later,
through the ``reply`` callback they are given: ``reply(answer, headers)`` with an encoded body
(bytes), a JSON document (dict) or the domain error that refused the request.

Each infer request runs inline on the event loop when the daemon is idle, else in
earliest-deadline-first order, on ``--workers N`` threads when N > 1 (``AdaptiveClassifier``'s
event-loop side: ``submit``, ``take``, ``run``, ``release``).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from edge.runtime.classifier import AdaptiveClassifier, ReloadResult
from edge.runtime.scheduler import DONE, InferenceRequest
from edge.serve.errors import (
    DeadlineRejected,
    Draining,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ReloadFailed,
    ReloadRunning,
    VersionNotFound,
)
from edge.serve.log import log
from edge.serve.metrics import ServerMetrics
from edge.v2.codec import (
    EXTENSIONS,
    INPUT_DTYPES,
    MODEL_VERSION,
    encode_infer_response,
    loads_json,
    parse_infer_request,
)

SERVER_NAME = "edgekit"
PLATFORM = "edgekit-adaptive"
MAX_TABLE_PATH = 4096

# reply(answer, headers): an encoded body, a JSON document, or the domain error that refused the request.
Reply = Callable[[Any, dict[str, str] | None], None]


class DataPlane:
    """The v2 operations of one logical model (``model_name``) served by an ``AdaptiveClassifier`` on ``loop``."""

    def __init__(self, clf: AdaptiveClassifier, loop, metrics: ServerMetrics, model_name: str,
                 default_deadline_ms: float | None, transport: Callable[[], dict] | None = None):
        """``transport``: what the transport says about itself in ``status()`` (its loop, its connections)."""
        self.clf = clf
        self.loop = loop
        self.metrics = metrics
        self.model_name = model_name
        self.default_deadline_ms = default_deadline_ms
        self.workers = clf.workers
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="edgekit-infer") if self.workers > 1 else None
        self._transport = transport or dict
        self.draining = False
        self._dispatch_pending = False
        self._reloading = False
        self._reload_again = False
        self.started = time.time()
        clf.on_slot_free(self._on_free)
        metrics.set_ready(clf.table_variants, set(clf.serving_variants))

    # ------------------------------------------------------------ state

    @property
    def inline(self) -> bool:
        """Inference runs on the event loop itself (one slot), not on worker threads."""
        return self._pool is None

    @property
    def ready(self) -> bool:
        return not self.draining and len(self.clf.serving_variants) > 0

    @property
    def idle(self) -> bool:
        """No request waits for a slot and none is being served."""
        return self.clf.idle

    def kept_awake(self, until: float) -> None:
        """The transport busy-polled the loop's core until ``until``: inline inference runs on that core, so its
        next run is predicted as after that little idle (worker threads sleep meanwhile: nothing changes)."""
        if self.inline:
            self.clf.kept_awake(until)

    def begin_drain(self) -> None:
        """Refuse new work (503); what is queued or running still finishes and is answered."""
        self.draining = True
        self.clf.begin_drain()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ health and metadata

    def live(self) -> dict:
        return {"live": True}

    def server_ready(self) -> dict:
        return {"ready": self.ready}

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": MODEL_VERSION, "extensions": EXTENSIONS}

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise ModelNotFound(name, self.model_name)

    def check_version(self, name: str, version: str) -> None:
        if version != MODEL_VERSION:
            raise VersionNotFound(version, name, MODEL_VERSION)

    def model_ready(self, name: str) -> dict:
        self.check_model(name)
        return {"name": self.model_name, "ready": self.ready}

    def model_metadata(self, name: str) -> dict:
        self.check_model(name)
        clf = self.clf
        return {
            "name": self.model_name,
            "versions": [MODEL_VERSION],
            "platform": PLATFORM,
            "inputs": [{"name": "input", "datatype": "UINT8", "shape": [-1, *clf.input_hwc]}],
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": [-1, clf.classes]},
                {"name": "class", "datatype": "INT64", "shape": [-1]},
            ],
            "parameters": {
                "accepts_datatypes": sorted(INPUT_DTYPES),
                "labels": list(clf.labels),
                "policy": str(clf.policy),
                "miss": clf.options.miss,
                "deadline_parameter": "deadline_ms",
            },
            "variants": clf.variants_status(),
        }

    def repository_index(self) -> list[dict]:
        return [{"name": self.model_name, "version": MODEL_VERSION,
                 "state": "READY" if self.ready else "UNAVAILABLE", "reason": ""}]

    def status(self) -> dict:
        clf = self.clf
        return {
            "ready": self.ready,
            "draining": self.draining,
            "table": clf.table_path,
            "generation": clf.generation,
            "profile": clf.profile_name,
            "workers": self.workers,
            "queue_depth": clf.queue_depth,
            "queue_size": clf.queue_size,
            "busy_workers": clf.busy_slots,
            "overhead_ms": clf.overhead_ms,
            "selector": clf.describe_selector(),
            "variants": clf.variants_status(),
            "transport": {
                **self._transport(),
                "inference": "inline on the event loop" if self.inline else f"{self.workers} threads",
            },
            "uptime_s": round(time.time() - self.started, 3),
        }

    # ------------------------------------------------------------ inference

    def infer(self, name: str, body: bytes, header_length: str | None, arrival: float, read_at: float,
              reply: Reply) -> None:
        """Check and admit one infer request whose first bytes arrived at ``arrival`` (perf_counter seconds)
        and were read at ``read_at``; ``reply`` gets its answer once served. Raises what refuses it now."""
        self.check_model(name)
        if self.draining:
            raise Draining()
        parsed = parse_infer_request(body, header_length, self.clf.input_hwc, self.default_deadline_ms)
        ireq = InferenceRequest(parsed.image, parsed.deadline_ms, arrival, parsed.request_id or "",
                                context=(reply, parsed, read_at))
        how = self.clf.submit(ireq)  # QueueFull, ShuttingDown: refused now
        if how == DONE:
            self._answer(ireq)
        else:
            # Queued even when a slot is free: the loop finishes reading this pass's requests
            # first (one hop, same thread), then ``_dispatch`` runs the earliest deadline.
            self._schedule_dispatch(1)

    def _serve(self, ireq: InferenceRequest) -> None:
        if self._pool is None:
            res = self.clf.run(ireq)
            if res.hold_ms > 0:
                self.loop.call_later(res.hold_ms / 1000.0, self._done, ireq)
            else:
                self._done(ireq)
        else:
            self._pool.submit(self._run_in_thread, ireq)

    def _run_in_thread(self, ireq: InferenceRequest) -> None:
        res = self.clf.run(ireq)
        if res.hold_ms > 0:
            time.sleep(res.hold_ms / 1000.0)
        self.loop.call_soon_threadsafe(self._done, ireq)

    def _done(self, ireq: InferenceRequest) -> None:
        try:
            self._answer(ireq)
            self.clf.rewarm(ireq)  # its answer written: after a longer variant, the fastest once, if nobody waits
        finally:
            self.clf.release(ireq)

    def _on_free(self) -> None:
        # A slot freed while requests wait. Pick the next one only after the loop has read
        # what arrived during the inference (two hops: one poll of the sockets in between,
        # on uvloop and on asyncio alike), so that EDF sees every request that is here.
        self._schedule_dispatch(2)

    def _schedule_dispatch(self, hops: int) -> None:
        if not self._dispatch_pending:
            self._dispatch_pending = True
            if hops == 1:
                self.loop.call_soon(self._dispatch)
            else:
                self.loop.call_soon(self.loop.call_soon, self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_pending = False
        ireq = self.clf.take()
        while ireq is not None:
            self._serve(ireq)
            if self._pool is None:
                return  # inline: _done -> release -> _on_free schedules the next one
            ireq = self.clf.take()

    def _answer(self, ireq: InferenceRequest) -> None:
        reply, parsed, read_at = ireq.context
        res = ireq.result
        assert res is not None
        params: dict[str, Any] = {
            "class_name": res.class_name,  # beside the 'class' output: a v2 client reads it from the parameters
            "variant": res.variant,
            "predicted_ms": round(res.predicted_ms, 4),
            "queue_ms": round(res.queue_ms, 4),
            "inference_ms": round(res.inference_ms, 4),
            "total_ms": 0.0,
            "deadline_ms": ireq.deadline_ms,
            "deadline_met": False,
            "slowdown": round(res.slowdown, 4),
            "at_rest": res.at_rest,
            "policy": res.policy,
            "read_delay_ms": round((read_at - ireq.arrival) * 1000.0, 4),
            "arrival_ns": int(ireq.arrival * 1e9),
        }
        seq = {"X-Edgekit-Dispatch-Seq": str(res.dispatch_seq)}
        if res.outcome == "rejected":
            params["total_ms"] = round((time.perf_counter() - ireq.arrival) * 1000.0, 4)
            return reply(DeadlineRejected(res.message, params), seq)
        if res.outcome != "ok":
            return reply(InferenceFailed(res.message), seq)
        total = (time.perf_counter() - ireq.arrival) * 1000.0
        met = total <= ireq.deadline_ms
        params["total_ms"] = round(total, 4)
        params["deadline_met"] = met
        data, headers = encode_infer_response(res.label, res.scores, parsed.outputs, self.model_name,
                                              parsed.request_id, params)
        headers.update(seq)
        reply(data, headers)
        written = time.perf_counter()
        m = self.metrics
        m.answered(res.variant or "", met, (written - ireq.arrival), res.queue_ms / 1000.0)
        m.observe_inference(res.variant or "", res.inference_ms)
        self.clf.record_overhead((written - ireq.arrival) * 1000.0 - res.total_ms)

    # ------------------------------------------------------------ reload

    @staticmethod
    def reload_path(body: bytes) -> str | None:
        """The table path a reload request's body names (None: reload the current one)."""
        if not body.strip():
            return None
        doc = loads_json(body, "the reload request")
        if not isinstance(doc, dict):
            raise InvalidInput("the reload request must be a JSON object like {\"table\": \"/path/selected.json\"}")
        path = doc.get("table")
        if path is not None and (not isinstance(path, str) or not path or len(path) > MAX_TABLE_PATH or "\0" in path):
            raise InvalidInput("'table' must be a path string")
        return path

    def reload(self, name: str | None, body: bytes, reply: Reply) -> None:
        """A reload asked for over the API (of model ``name`` when the route names one); ``reply`` gets the result."""
        if name is not None:
            self.check_model(name)
        path = self.reload_path(body)
        if self._reloading:
            raise ReloadRunning()
        self.start_reload(path, reply)

    def start_reload(self, path: str | None = None, reply: Reply | None = None) -> None:
        """Reload on a helper thread (loading models takes a while); serving goes on meanwhile.

        Asked while one runs (SIGHUP), it runs once more after it, on the current table path."""
        if self._reloading:
            self._reload_again = True
            return
        self._reloading = True

        def work() -> None:
            res = self.clf.reload(path)
            self.loop.call_soon_threadsafe(self._reloaded, res, reply)

        threading.Thread(target=work, name="edgekit-reload", daemon=True).start()

    def _reloaded(self, res: ReloadResult, reply: Reply | None) -> None:
        self._reloading = False
        self.metrics.reloaded(res.ok)
        self.metrics.set_ready(self.clf.table_variants, set(self.clf.serving_variants))
        log(res.message)
        if reply is not None:
            if res.ok:
                reply({"reloaded": True, "message": res.message, "variants": list(res.variants)}, None)
            else:
                reply(ReloadFailed(res.message), None)
        if self._reload_again and not self.draining:
            self._reload_again = False
            self.start_reload()
