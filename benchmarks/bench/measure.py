"""Benchmarking one artifact with one runtime setting: the timed loop, the accuracy pass and their options.

A row's samples are ``time.perf_counter_ns()`` around the runtime's invoke call only (the
input is set outside the timed region, the garbage collector paused); load time, the first
inference and the peak resident memory the artifact added (``edge.core.memory.PeakRss``) are
measured apart. ``benchmarks.bench.command`` runs this for every row of a bundle.

The timed loop invokes back to back: caches hot, the runtime's worker threads still spinning. A
request that finds the runtime idle pays more (the caches were evicted meanwhile, the worker threads
went to sleep and must be woken): on this project's 2-core VM 2x to 4x for a 0.03 to 0.1 ms model
after 10 ms of rest, and over 10x for a microsecond one. So a row also records its median *at rest*
(``rest_p50_ms``: ``--rest-runs`` single runs, each after ``REST_GAP_MS`` idle), which the runtime
predicts with and compares to when a request finds its slot idle that long.

Between those, a daemon's requests find the runtime idle for their client's round trip, a few tenths of a
millisecond over loopback: on the same VM a 20 us model took 52 us served by the daemon at rest, and as long
in bench's loop sleeping as long before each run (``benchmarks.perf.resize_cost``). So a row also records
its median *at a request's cadence* (``gap_p50_ms``: ``GAP_RUNS_PER_REST`` x ``--rest-runs`` single runs, each
after ``GAP_MS`` idle), which the runtime predicts with when a slot has been idle from ``IDLE_FROM_MS`` to
``REST_GAP_MS``.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks.bench.stats import summarize_ns
from device_profiles import RuntimeSetting
from edge.artifacts.manifest import ArtifactRecord, variant_id
from edge.artifacts.tensors import prepare_input, scores
from edge.backends import LoadedModel, get_backend
from edge.core.errors import UsageError
from edge.core.memory import PeakRss
from edge.tables.table import GAP_MS, REST_GAP_MS, LatencyRow, encode_correct

DEFAULT_MIN_RUNS = 100
DEFAULT_MIN_SECONDS = 2.0
DEFAULT_WARMUP = 10
DEFAULT_INPUTS = 64
DEFAULT_BATCH = 256
DEFAULT_REST_RUNS = 20  # single runs after REST_GAP_MS idle each: 0.2 s a row
GAP_RUNS_PER_REST = 5  # single runs after GAP_MS idle each, per run at rest: 100 runs, 0.05 s a row by default


def timed_loop(
    model: LoadedModel,
    inputs: Sequence[np.ndarray],
    min_runs: int,
    min_seconds: float,
    max_seconds: float = 0.0,
    start: int = 0,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Invoke ``model`` on ``inputs`` in turn until ``min_runs`` runs *and* ``min_seconds`` passed.

    Returns per-run invoke times in nanoseconds. Setting the next input is outside the
    timed region; the garbage collector is paused so it cannot land inside a sample.
    ``max_seconds`` > 0 stops early (fewer than ``min_runs`` samples) for very slow models.
    With ``prepare`` the inputs are images and each sample also covers ``prepare`` and setting
    the input (a variant that resizes: serving times the same span).
    """
    if not inputs:
        raise UsageError("timed_loop needs at least one prepared input")
    pc = time.perf_counter_ns
    set_input = model.set_input  # type: ignore[attr-defined]
    invoke = model.invoke_prepared
    k = len(inputs)
    samples: list[int] = []
    append = samples.append
    t_start = pc()
    min_end = t_start + int(min_seconds * 1e9)
    hard_end = t_start + int(max_seconds * 1e9) if max_seconds > 0 else None
    i = start
    gc_was = gc.isenabled()
    gc.disable()
    try:
        while True:
            if prepare is None:
                set_input(inputs[i % k])
                t0 = pc()
            else:
                t0 = pc()
                set_input(prepare(inputs[i % k]))
            invoke()
            t1 = pc()
            append(t1 - t0)
            i += 1
            if len(samples) >= min_runs and t1 >= min_end:
                break
            if hard_end is not None and t1 >= hard_end:
                break
    finally:
        if gc_was:
            gc.enable()
    return np.asarray(samples, dtype=np.int64)


def rest_loop(model: LoadedModel, inputs: Sequence[np.ndarray], runs: int, gap_ms: float = REST_GAP_MS,
              start: int = 0, prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """``runs`` invoke times (ns), each after ``gap_ms`` of idle sleep, as a request that finds the runtime at rest.

    The input is set after the rest and outside the timed region, as the runtime sets it when a
    request arrives; the garbage collector is paused. ``prepare``: as in ``timed_loop``."""
    if not inputs:
        raise UsageError("rest_loop needs at least one prepared input")
    pc = time.perf_counter_ns
    out = np.empty(runs, dtype=np.int64)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in range(runs):
            time.sleep(gap_ms / 1000.0)
            if prepare is None:
                model.set_input(inputs[(start + i) % len(inputs)])  # type: ignore[attr-defined]
                t0 = pc()
            else:
                t0 = pc()
                model.set_input(prepare(inputs[(start + i) % len(inputs)]))  # type: ignore[attr-defined]
            model.invoke_prepared()
            out[i] = pc() - t0
    finally:
        if gc_was:
            gc.enable()
    return out


def resize_time_ms(images: Sequence[np.ndarray], size: tuple[int, int], rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean time (ms) the kit's resize takes per image (H, W, C) or (1, H, W, C), as
    serving's ``InputPreparer`` resizes one: ``edge.artifacts.images.resizer`` prepared for the images' shape."""
    from edge.artifacts.images import resizer

    if not len(images):
        return 0.0
    one = [img[0] if img.ndim == 4 else img for img in images]
    resize = resizer(one[0].shape, size)
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for img in one:
            resize(img)
        per.append((time.perf_counter_ns() - t0) / len(images))
    return float(np.median(per)) / 1e6


def accuracy_of(
    load: Callable[[], LoadedModel],
    model: LoadedModel,
    x: np.ndarray,
    y: np.ndarray,
    rec: ArtifactRecord,
    batch_size: int,
) -> tuple[float, int, str]:
    """(top-1 accuracy, images, per-image correctness as ``edge.tables.table.encode_correct`` writes it),
    batched; a model that cannot take a larger batch is reloaded and run one by one."""
    if len(x) == 0:
        return float("nan"), 0, ""
    try:
        out = scores(model, x, batch_size=batch_size, prepared=True)
    except Exception:
        # Some graphs have a fixed batch; the interpreter may be left unusable by the failed resize.
        model.close()
        model = load()
        try:
            out = scores(model, x, batch_size=1, prepared=True)
        finally:
            model.close()
    if out.ndim != 2 or out.shape[0] != len(y):
        raise UsageError(f"{rec.artifact_id}: output shape {out.shape} is not (N, classes)")
    right = np.argmax(out, axis=1) == y
    return float(np.mean(right)), int(len(y)), encode_correct(right)


# --------------------------------------------------------------------------- one row


@dataclass(frozen=True)
class BenchOptions:
    min_runs: int = DEFAULT_MIN_RUNS
    min_seconds: float = DEFAULT_MIN_SECONDS
    max_seconds: float = 0.0
    warmup: int = DEFAULT_WARMUP
    inputs: int = DEFAULT_INPUTS
    eval_limit: int | None = None
    batch_size: int = DEFAULT_BATCH
    rest_runs: int = DEFAULT_REST_RUNS

    def validate(self) -> None:
        if self.min_runs < 1:
            raise UsageError(f"--min-runs must be >= 1, got {self.min_runs}")
        if self.min_seconds < 0:
            raise UsageError(f"--min-seconds must be >= 0, got {self.min_seconds}")
        if self.max_seconds < 0:
            raise UsageError(f"--max-seconds must be >= 0 (0 = no cap), got {self.max_seconds}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {self.warmup}")
        if self.inputs < 1:
            raise UsageError(f"--inputs must be >= 1, got {self.inputs}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise UsageError(f"--eval-limit must be >= 1, got {self.eval_limit}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.rest_runs < 0:
            raise UsageError(f"--rest-runs must be >= 0 (0 = do not measure at rest), got {self.rest_runs}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def measure(
    rec: ArtifactRecord,
    path: Path,
    setting: RuntimeSetting,
    images: np.ndarray,
    labels: np.ndarray,
    opts: BenchOptions,
    rss: PeakRss | None = None,
) -> tuple[LatencyRow, np.ndarray]:
    """Benchmark one artifact with one runtime setting; returns the row and the raw times (ms)."""
    backend = get_backend(setting.backend)
    if backend.format != rec.format:
        raise UsageError(f"setting '{setting.name}' runs {backend.format}, not {rec.format} artifacts")
    rss = rss or PeakRss()

    # Inputs are prepared before anything is timed or the memory baseline is taken.
    bench_imgs = images[: opts.inputs]
    pre_ns = []
    inputs = []
    for img in bench_imgs:
        t0 = time.perf_counter_ns()
        x1 = prepare_input(img[None], rec.input)
        pre_ns.append(time.perf_counter_ns() - t0)
        inputs.append(np.ascontiguousarray(x1))
    preprocess_ms = float(np.mean(pre_ns)) / 1e6
    x_eval = prepare_input(images, rec.input)
    # A variant at another input size than the bundle's images resizes each one as serving does: its samples
    # cover the resize, the input preparation and the invoke (serving's InputPreparer), resize_ms the resize alone.
    prepare, timed_inputs, resize_ms = None, inputs, 0.0
    want_hw = tuple(int(v) for v in rec.input.shape[1:3])
    if bench_imgs.ndim == 4 and tuple(bench_imgs.shape[1:3]) != want_hw:
        from edge.runtime.scheduler import InputPreparer

        prepare = InputPreparer(rec.input)
        timed_inputs = [np.ascontiguousarray(img[None]) for img in bench_imgs]
        resize_ms = resize_time_ms(timed_inputs, want_hw)

    def load() -> LoadedModel:
        return backend.load(path, setting)

    rss.start()
    t0 = time.perf_counter_ns()
    model = load()
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    try:
        if np.dtype(model.input_spec.dtype) != inputs[0].dtype:
            raise UsageError(
                f"{rec.artifact_id}: the runtime expects {model.input_spec.dtype} input but the manifest says "
                f"{rec.input.dtype}; the bundle's manifest does not match its artifact"
            )
        rss.checkpoint()
        model.set_input(inputs[0])  # type: ignore[attr-defined]
        t0 = time.perf_counter_ns()
        model.invoke_prepared()
        first_ms = (time.perf_counter_ns() - t0) / 1e6
        rss.checkpoint()
        for i in range(opts.warmup):
            model.set_input(inputs[(i + 1) % len(inputs)])  # type: ignore[attr-defined]
            model.invoke_prepared()
        rss.checkpoint()
        samples_ns = timed_loop(model, timed_inputs, opts.min_runs, opts.min_seconds, opts.max_seconds,
                                start=opts.warmup + 1, prepare=prepare)
        rest_ns = (rest_loop(model, timed_inputs, opts.rest_runs, prepare=prepare) if opts.rest_runs
                   else np.zeros(0, np.int64))
        gap_ns = (rest_loop(model, timed_inputs, opts.rest_runs * GAP_RUNS_PER_REST, gap_ms=GAP_MS, prepare=prepare)
                  if opts.rest_runs else np.zeros(0, np.int64))
        peak_mb = rss.added_mb()
        provider = model.provider
        acc, n_eval, correct = accuracy_of(load, model, x_eval, labels, rec, opts.batch_size)
    finally:
        model.close()
        del model
    st = summarize_ns(samples_ns)
    row = LatencyRow(
        variant=variant_id(rec.artifact_id, setting.name),
        artifact_id=rec.artifact_id,
        model_id=rec.model_id,
        format=rec.format,
        precision=rec.precision,
        setting=setting.name,
        backend=setting.backend,
        provider=provider,
        threads=int(setting.threads),
        accuracy=acc,
        eval_count=n_eval,
        samples=st.count,
        **st.timings(),
        load_ms=load_ms,
        first_inference_ms=first_ms,
        preprocess_ms=preprocess_ms,
        peak_rss_mb=peak_mb,
        size_bytes=int(rec.size_bytes or path.stat().st_size),
        params=int(rec.params),
        macs=int(rec.macs),
        rest_p50_ms=float(np.median(rest_ns)) / 1e6 if len(rest_ns) else 0.0,
        gap_p50_ms=float(np.median(gap_ns)) / 1e6 if len(gap_ns) else 0.0,
        correct=correct,
        resize_ms=resize_ms,
    )
    return row, samples_ns.astype(np.float64) / 1e6
