"""The embeddable adaptive runtime: ``AdaptiveClassifier.open(bundle, table).classify(image, deadline_ms)``.

It is what a camera application on a board imports when it wants no HTTP (the paper's
own setting), and what ``edgekit serve`` is a thin transport over.  It opens a bundle, a
selected table and a device profile; loads every selected variant once per slot, checks
its sha256 against the manifest and its canary, warms it; and answers each image with the
most accurate variant predicted to fit the time left to its deadline, correcting the
prediction online when the board runs slower than its table.  Threads that call
``classify`` at once share one earliest-deadline-first order.

An event loop (``edgekit serve``'s data plane, ``edge.serve.dataplane``) shares the same order
without blocking: ``submit``, ``take``, ``run``, ``release``; it asks the classifier, never its parts,
how deep the queue is and what it serves.

At start it says how many variants it adapts over (a warning below three: there is little or
nothing to choose between) and, when the profile does not describe this host, that the table's
times are not this host's (``device_profiles.host_mismatch``): through ``log``, or without one
through the ``edgekit.runtime`` logger (the warnings show on stderr with no logging set up).
Each answer carries the label's class name from the bundle (``InferenceResult.class_name``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edge.bundle.predictive import DRIFT_MARGIN, ON_DRIFT, check_margin
from edge.core.errors import UsageError
from edge.runtime.scheduler import DONE, InferenceRequest, InferenceResult, Scheduler
from edge.runtime.selector import MISS_POLICIES, Policy, Selector
from edge.runtime.slowdown import FILTERS, make_filter
from edge.runtime.variants import VariantInfo, VariantPool
from edge.tables.selection import FEW_VARIANTS
from edge.tables.table import QUANTILES

__all__ = ["AdaptiveClassifier", "RuntimeOptions", "InferenceResult", "VariantInfo", "ReloadResult"]


@dataclass(frozen=True)
class RuntimeOptions:
    """How the runtime chooses and serves; the defaults are what ``edgekit serve`` uses."""

    policy: Policy = Policy("adaptive")
    miss: str = "best-effort"  # best-effort | reject: what to do when no variant fits
    quantile: str | None = None  # table latency to predict with (None: the one the table was selected on)
    slowdown_filter: str = "kalman"
    queue_size: int = 64  # waiting requests beyond the running ones; more raise QueueFull
    workers: int | None = None  # slots (loaded copies of every variant); None: the profile's
    inject_delay_ms: float = 0.0  # testing: every inference takes this much longer, as on a slower board
    warmup: int = 5
    on_drift: str = "drop"  # drop | serve: a variant whose predicted accuracy drifted below its table's
    drift_margin: float = DRIFT_MARGIN  # how far below (accuracy 0..1) is a drift

    def __post_init__(self) -> None:
        if isinstance(self.policy, str):
            object.__setattr__(self, "policy", Policy.from_string(self.policy))
        if self.miss not in MISS_POLICIES:
            raise UsageError(f"unknown miss policy '{self.miss}'; available: {list(MISS_POLICIES)}")
        if self.quantile is not None and self.quantile not in QUANTILES:
            raise UsageError(f"unknown latency quantile '{self.quantile}'; available: {list(QUANTILES)}")
        if self.slowdown_filter not in FILTERS:
            raise UsageError(f"unknown slowdown filter '{self.slowdown_filter}'; available: {sorted(FILTERS)}")
        if self.queue_size < 1:
            raise UsageError(f"queue size must be at least 1, got {self.queue_size}")
        if self.workers is not None and not 1 <= self.workers <= 64:
            raise UsageError(f"workers must be 1..64, got {self.workers}")
        if not (self.inject_delay_ms >= 0 and self.inject_delay_ms < 1e7):
            raise UsageError("inject_delay_ms must be >= 0")
        if self.on_drift not in ON_DRIFT:
            raise UsageError(f"unknown --on-drift '{self.on_drift}'; available: {list(ON_DRIFT)}")
        check_margin(self.drift_margin)


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    message: str
    variants: tuple[str, ...] = ()


class AdaptiveClassifier:
    """Deadline-aware classification over a bundle's selected variants, in process.

    >>> clf = AdaptiveClassifier.open("rpi4-bundle.tar.gz", "rpi4-selected.json")
    >>> r = clf.classify(image_uint8_hwc, deadline_ms=30.0)
    >>> r.label, r.variant, r.deadline_met
    """

    def __init__(self, bundle, table, profile, table_path: str = "", options: RuntimeOptions | None = None,
                 log: Callable[[str], Any] | None = None, bundle_verified: bool = False, t0: float | None = None):
        """``bundle_verified``: every file's sha256 was checked when the bundle was opened, so the
        first load need not hash the served artifacts again (a reload always does)."""
        self.options = opts = options or RuntimeOptions()
        logger = logging.getLogger("edgekit.runtime")
        self.log = log or logger.info
        self._warn = log or logger.warning  # what a user must hear even without a log callback
        t0 = time.perf_counter() if t0 is None else t0
        self.bundle = bundle
        self.profile = profile
        self.table = table
        self.table_path = str(table_path)
        self.workers = int(opts.workers or profile.workers)
        self._pool = VariantPool(bundle, profile, self.workers, warmup=opts.warmup, log=self.log,
                                 on_drift=opts.on_drift, drift_margin=opts.drift_margin, warn=self._warn)
        self._slowdown = make_filter(opts.slowdown_filter)
        self.policy = opts.policy
        self._selector_args = dict(policy=opts.policy, miss=opts.miss)
        self._check_static(table)
        state = self._pool.state_for(table, self._selector_args_for(table), self._slowdown, self.table_path, 0,
                                     verify=not bundle_verified)
        self.input_hwc = tuple(self._pool.input_hwc or ())
        self.classes = int(self._pool.classes or 0)
        self.labels = tuple(bundle.class_names)
        self._scheduler = Scheduler(state, queue_size=opts.queue_size, workers=self.workers,
                                    inject_delay_ms=opts.inject_delay_ms)
        self._reload_lock = threading.Lock()
        self.load_s = time.perf_counter() - t0
        self.host_mismatch = self._host_note()
        if self.host_mismatch:
            self._warn(self.host_mismatch)
        few, note = self.adapt_note()
        (self._warn if few else self.log)(note)

    def _host_note(self) -> str:
        """'' when the profile describes this host and the table was measured on one it describes, else the
        one line that says which is not so."""
        from device_profiles import host_label

        label = host_label(self.profile)
        if label:
            return label
        p, why = self.profile.name, self.table.header.host_mismatch
        if why:
            return (f"the selected table was measured on a host that is not a {p} ({why}): its latencies are not "
                    f"this {p}'s; benchmark here ('edgekit bench') and select again")
        return ""

    def adapt_note(self) -> tuple[bool, str]:
        """(fewer than FEW_VARIANTS?, the line that says how many variants the runtime adapts over)."""
        sel = self._selector
        n = len(sel)
        q = sel.quantile
        span = ", ".join(f"{v} ({b:.4g} ms {q}, {a:.2%})" for v, b, a in
                         ((sel.variants[i], sel.base[i], sel.accuracy[i]) for i in sorted({0, n - 1})))
        if n >= FEW_VARIANTS:
            return False, f"adapting over {n} variants, from {span}"
        rows = self.table.params.candidates or len(self.table.rows)
        what = "every request gets it: there is nothing to choose between" if n == 1 else \
            "it can only choose between these two"
        return True, (f"adapting over {n} variant{'s' if n != 1 else ''} ({span}) of the {rows} rows "
                      f"the table was selected from: {what}; see 'edgekit select' for what to try")

    def _named(self, res: InferenceResult) -> InferenceResult:
        if 0 <= res.label < len(self.labels):
            res.class_name = str(self.labels[res.label])
        return res

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(cls, bundle: str, table: str, profile: str | None = None, options: RuntimeOptions | None = None,
             log: Callable[[str], Any] | None = None, **kw) -> "AdaptiveClassifier":
        """Open a bundle (folder or .tar.gz, checksums verified) and a selected table.

        ``profile`` is a device profile name or TOML path (default: the bundle's). Keyword
        arguments are ``RuntimeOptions`` fields (``policy="mean-table"``, ``miss="reject"``...)."""
        from device_profiles import load_profile
        from edge.bundle.reader import open_bundle
        from edge.tables.table import SelectedTable

        if options is None:
            options = RuntimeOptions(**kw)
        elif kw:
            raise TypeError("pass either options or keyword options, not both")
        t0 = time.perf_counter()
        b = open_bundle(bundle, verify=True)
        name = profile or b.profile
        if not name:
            raise UsageError("the bundle names no device profile; pass profile=")
        prof = load_profile(name)
        t = SelectedTable.load(table, profile=prof.name)
        return cls(b, t, prof, table_path=str(table), options=options, log=log, bundle_verified=True, t0=t0)

    def _selector_args_for(self, table) -> dict:
        return dict(self._selector_args, quantile=self.options.quantile or table.params.quantile)

    def _check_static(self, table) -> None:
        if self.policy.kind == "static" and self.policy.variant not in table.variants:
            raise UsageError(f"the static policy's variant '{self.policy.variant}' is not in the table; "
                             f"available: {list(table.variants)}")

    # ---------------------------------------------------------------- serving

    def check_image(self, image: np.ndarray) -> np.ndarray:
        """``image`` as one (1, H, W, C) batch of uint8 (or float 0..255) pixels; ValueError if it cannot be."""
        x = np.asarray(image)
        if x.ndim == len(self.input_hwc):
            x = x[None]
        if x.shape[1:] != self.input_hwc or x.shape[0] != 1:
            raise UsageError(f"expected one image of shape {self.input_hwc} (or (1, *that)), got {np.shape(image)}")
        if x.dtype != np.uint8:
            if x.dtype.kind not in "iuf":
                raise UsageError(f"expected uint8 pixels (or numbers 0..255), got dtype {x.dtype}")
            x = x.astype(np.float32)
            if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 255:
                raise UsageError("pixel values must be finite and within 0..255")
        return x

    def load_image(self, source: str | os.PathLike | bytes) -> np.ndarray:
        """An image file (JPEG, PNG, BMP, GIF; a path or its bytes) as this bundle's input pixels, for ``classify``.

        Decoded and resized exactly as training decoded the run's image folder (the bundle records the
        size, colour and resize method: ``Bundle.image_prep``); a bundle of a named dataset is resized
        bilinearly to its input. Raises ImageDecodeError naming the file when it cannot be decoded.
        """
        from edge.artifacts.images import ImagePrep, load_image

        prep = self.bundle.image_prep
        if prep is None:
            h, w, c = self.input_hwc
            prep = ImagePrep(size=(int(h), int(w)), channels=int(c), resize="bilinear")
        return load_image(source, prep.size, prep.channels, prep.resize)

    def classify(self, image: np.ndarray, deadline_ms: float, arrival: float | None = None,
                 timeout: float | None = None) -> InferenceResult:
        """The most accurate variant's answer that is predicted to fit ``deadline_ms``.

        ``arrival`` (``time.perf_counter()`` seconds) is when the deadline started, if
        earlier than the call (for example when the camera delivered the frame). Raises
        ``QueueFull`` when more than ``queue_size`` calls wait, ``ShuttingDown`` after ``close``.
        The result's ``outcome`` is ``ok``, ``rejected`` (``miss="reject"`` and nothing fits)
        or ``error`` (the runtime failed; ``message`` says why). After an answer by a longer variant, adaptive
        runs the fastest one once before returning when the deadline leaves room for it, so that a tight
        request next does not find it cold (``Scheduler.rewarm``); the result's ``total_ms`` counts it."""
        if not (deadline_ms > 0 and deadline_ms < float("inf")):
            raise UsageError(f"deadline_ms must be a finite number > 0, got {deadline_ms}")
        req = InferenceRequest(self.check_image(image), float(deadline_ms),
                               time.perf_counter() if arrival is None else float(arrival))
        s = self._scheduler
        if s.acquire(req, timeout) == DONE:
            assert req.result is not None
            return req.result
        try:
            res = self._named(s.run(req))
            if res.hold_ms > 0:
                time.sleep(res.hold_ms / 1000.0)
            if res.outcome == "ok":
                ran = res.total_ms
                warm = s.rewarm(req)  # after a longer variant, the fastest once (counted: the answer waits for it)
                res.total_ms = (time.perf_counter() - req.arrival) * 1000.0
                res.deadline_met = res.total_ms <= req.deadline_ms
                if res.hold_ms <= 0:  # what classify adds after the run: the selector leaves room for it
                    s.record_overhead(res.total_ms - ran - warm)
        finally:
            s.release(req)
        return res

    # ---------------------------------------------------------------- serving from an event loop

    def submit(self, req: InferenceRequest) -> str:
        """Admit ``req`` without blocking: ``QUEUED`` (even when a slot is free, so that a loop that
        reads several requests in one pass ``take``s them in deadline order) or ``DONE`` (answered
        at once: ``miss="reject"`` and nothing fits). Raises ``QueueFull`` and ``ShuttingDown`` as
        ``classify`` does."""
        return self._scheduler.submit(req, defer=True)

    def take(self) -> InferenceRequest | None:
        """The earliest-deadline waiting request, now holding a free slot; None if none waits or no slot is free."""
        return self._scheduler.take()

    def run(self, req: InferenceRequest) -> InferenceResult:
        """Serve ``req`` on the slot it holds (select, infer, correct the slowdown); ``release`` it after."""
        return self._named(self._scheduler.run(req))

    def rewarm(self, req: InferenceRequest) -> float:
        """Once ``req``'s answer is out and before its slot is released: after a longer variant, run the fastest one
        once so that it is not cold for a tight request next (``Scheduler.rewarm``); returns the ms it took."""
        return self._scheduler.rewarm(req, answered=True)

    def release(self, req: InferenceRequest) -> None:
        """Give ``req``'s slot back; ``on_slot_free``'s callback hears of it when requests wait."""
        self._scheduler.release(req)

    def on_slot_free(self, callback: Callable[[], Any] | None) -> None:
        """Call ``callback`` (in the releasing thread) when a slot frees while requests wait for one."""
        self._scheduler.on_free = callback

    def record_overhead(self, ms: float) -> None:
        """The caller's serving time after the inference (encode, write): the selector leaves room for it."""
        self._scheduler.record_overhead(ms)

    def kept_awake(self, until: float) -> None:
        """The caller kept the core that runs inference busy until ``until`` (perf_counter), polling for work
        instead of sleeping: the next run is predicted as one after that little idle (one slot only)."""
        self._scheduler.kept_awake(until)

    def begin_drain(self) -> None:
        """Refuse new requests (``ShuttingDown``) without waiting: queued and running ones still finish."""
        self._scheduler.close(drain=True, timeout=0)

    # ---------------------------------------------------------------- reload

    def reload(self, table_path: str | None = None) -> ReloadResult:
        """Re-read the selected table (``table_path`` or the current one) and serve it.

        A table that cannot be read, is malformed, names variants that do not load or fail
        their sha256 or canary check keeps the current table serving; the result says why.
        Never raises for a bad table."""
        from edge.tables.table import SelectedTable

        with self._reload_lock:
            target = str(table_path or self.table_path)
            sched = self._scheduler
            try:
                table = SelectedTable.load(target, profile=self.profile.name)
                self._check_static(table)
                state = self._pool.state_for(table, self._selector_args_for(table), self._slowdown, target,
                                             sched.state.generation + 1)
            except Exception as exc:  # noqa: BLE001 - whatever the file holds, the old table keeps serving
                if not isinstance(exc, (ValueError, OSError)):
                    self.log("reload: unexpected error (please report):\n" + traceback.format_exc())
                self._pool.retain(set(sched.state.selector.variants))
                return ReloadResult(False, f"reload failed, still serving {self.table_path} "
                                           f"({len(sched.state.selector)} variants): {exc}",
                                    tuple(sched.state.selector.variants))
            sched.swap(state)
            self._pool.retain(set(state.selector.variants))
            self.table = table
            self.table_path = target
            return ReloadResult(True, f"reloaded {target}: serving {len(state.selector)} variants "
                                      f"{list(state.selector.variants)}", tuple(state.selector.variants))

    # ---------------------------------------------------------------- descriptions

    @property
    def _selector(self) -> Selector:
        return self._scheduler.state.selector

    @property
    def generation(self) -> int:
        return self._scheduler.state.generation

    @property
    def profile_name(self) -> str:
        return str(self.profile.name)

    @property
    def serving_variants(self) -> tuple[str, ...]:
        """The variants served now, fastest first (those of the table that loaded and passed their checks)."""
        return tuple(self._selector.variants)

    @property
    def table_variants(self) -> tuple[str, ...]:
        """Every variant the current table names, served or not."""
        return tuple(self.table.variants)

    @property
    def slowdown_factor(self) -> float:
        """The online filter's estimate of observed/table latency (what a policy that corrects applies)."""
        return float(self._slowdown.factor)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a slot now."""
        return self._scheduler.depth

    @property
    def queue_size(self) -> int:
        return self._scheduler.queue_size

    @property
    def busy_slots(self) -> int:
        return self._scheduler.busy

    @property
    def overhead_ms(self) -> float:
        """The measured serving time after inference that the selector leaves room for."""
        return float(self._scheduler.overhead_ms)

    @property
    def idle(self) -> bool:
        """Nothing waits and nothing runs."""
        return self._scheduler.depth == 0 and self._scheduler.busy == 0

    def describe_selector(self) -> dict:
        """The policy, miss policy, quantile, slowdown filter, the arrival load and each served variant's prediction."""
        return {**self._selector.describe(), "load": self._scheduler.load.describe()}

    def variant_report(self) -> tuple[VariantInfo, ...]:
        """What happened to each variant the runtime tried to load: ready or not, why, on which provider."""
        return tuple(self._pool.info.values())

    def variants_status(self) -> list[dict]:
        sel = self._selector
        serving = set(sel.variants)
        out = []
        for row in self.table.rows:
            info = self._pool.info.get(row.variant)
            out.append({
                "variant": row.variant,
                "ready": row.variant in serving,
                "reason": "" if info is None else info.reason,
                "provider": "" if info is None else info.provider,
                f"{sel.quantile}_ms": row.latency(sel.quantile),
                "accuracy": row.accuracy,
                **({} if info is None or info.predicted_accuracy is None else
                   {"predicted_accuracy": round(info.predicted_accuracy, 4), "drift": info.drift}),
            })
        return out

    def close(self, drain: bool = True, timeout: float | None = None) -> int:
        """Stop accepting; with ``drain`` wait for running and queued calls to finish."""
        return self._scheduler.close(drain=drain, timeout=timeout)

    def __enter__(self) -> "AdaptiveClassifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close(drain=False)
