"""`edgekit bench`: measure every artifact of a bundle with every runtime setting of a profile on this device.

For each artifact x runtime setting (one table row, keyed "<artifact_id>@<setting>"):

* inputs: real images from the bundle's evaluation set, converted with
  ``edge.tensors.prepare_input`` *before* anything is timed (that conversion is timed on
  its own, per image, and reported as ``preprocess_ms``);
* load (init) time and the first inference are timed apart from the steady state;
* ``--warmup`` untimed runs, then timed runs cycling through the prepared images until
  both ``--min-runs`` and ``--min-seconds`` are reached; each sample is
  ``time.perf_counter_ns()`` around the runtime's invoke call only (input copy excluded,
  garbage collector paused);
* peak resident memory the artifact added over load + first inference + runs (see
  :class:`PeakRss` for how it is measured);
* top-1 accuracy on the bundle's evaluation set with this runtime on this device.

After every row the table is written atomically (JSON + CSV) together with a
``TABLE.samples.npz`` sidecar of the raw per-run times, so ``--resume`` continues an
interrupted run. Imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import gc
import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks import sysinfo
from benchmarks.stats import summarize_ns
from device_profiles import DeviceProfile, RuntimeSetting, host_profile_name, load_profile
from edge.atomic import atomic_write_bytes, sha256_file
from edge.backends import LoadedModel, get_backend
from edge.manifest import ArtifactRecord
from edge.table import DeviceHeader, LatencyRow, LatencyTable, TableError, encode_correct
from edge.tensors import dequantize_output, prepare_input

DEFAULT_MIN_RUNS = 100
DEFAULT_MIN_SECONDS = 2.0
DEFAULT_WARMUP = 10
DEFAULT_INPUTS = 64
DEFAULT_BATCH = 256
# Raw samples kept per row in the sidecar; the table's statistics always use every sample.
MAX_STORED_SAMPLES = 5000


# --------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")


def _vm_hwm_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_hwm() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _vm_hwm_bytes() is not None
    except OSError:
        return False


def _malloc_trim() -> None:
    """Give freed heap back to the OS (glibc), so the next model's allocations show up as new RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRss:
    """Peak resident memory over a stretch of code, minus the RSS when it started.

    Where Linux lets a process reset its own high-water mark (``/proc/self/clear_refs``),
    the peak is exact: the kernel's VmHWM over the whole stretch ("vmhwm-reset"). Elsewhere
    the RSS is read at checkpoints (after load, first inference, warm-up and the timed
    runs) and the largest reading is kept ("rss-checkpoints"); transient peaks between
    checkpoints are then missed. No sampling thread runs, so nothing competes with the
    timed loop for the GIL or a core. Either way it is an RSS delta: memory the allocator
    reuses from an earlier model's freed blocks does not show up, which is why freed heap
    is handed back to the OS (glibc ``malloc_trim``) before each baseline; shared library
    pages mapped by a runtime's first use are counted once, by the warm-up before row one.
    """

    def __init__(self) -> None:
        self.method = "vmhwm-reset" if _reset_hwm() else "rss-checkpoints"
        self.base = 0
        self.peak = 0

    def start(self) -> None:
        gc.collect()
        _malloc_trim()
        if self.method == "vmhwm-reset":
            _reset_hwm()
        self.base = _rss_bytes()
        self.peak = self.base

    def checkpoint(self) -> None:
        self.peak = max(self.peak, _rss_bytes())

    def added_mb(self) -> float:
        self.checkpoint()
        if self.method == "vmhwm-reset":
            hwm = _vm_hwm_bytes()
            if hwm is not None:
                self.peak = max(self.peak, hwm)
        return max(0.0, (self.peak - self.base) / 2**20)


# --------------------------------------------------------------------------- timing


def timed_loop(
    model: LoadedModel,
    inputs: Sequence[np.ndarray],
    min_runs: int,
    min_seconds: float,
    max_seconds: float = 0.0,
    start: int = 0,
) -> np.ndarray:
    """Invoke ``model`` on ``inputs`` in turn until ``min_runs`` runs *and* ``min_seconds`` passed.

    Returns per-run invoke times in nanoseconds. Setting the next input is outside the
    timed region; the garbage collector is paused so it cannot land inside a sample.
    ``max_seconds`` > 0 stops early (fewer than ``min_runs`` samples) for very slow models.
    """
    if not inputs:
        raise ValueError("timed_loop needs at least one prepared input")
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
            set_input(inputs[i % k])
            t0 = pc()
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


def predict_scores(model: LoadedModel, x: np.ndarray, rec: ArtifactRecord, batch_size: int) -> np.ndarray:
    """Dequantized scores for a prepared batch, ``batch_size`` at a time."""
    outs = []
    for i in range(0, len(x), batch_size):
        raw = model.predict(x[i : i + batch_size])
        outs.append(dequantize_output(np.asarray(raw), rec.output))
    return np.concatenate(outs, axis=0) if outs else np.zeros((0, 0), np.float32)


def accuracy_of(
    load: Callable[[], LoadedModel], model: LoadedModel, x: np.ndarray, y: np.ndarray, rec: ArtifactRecord, batch_size: int
) -> tuple[float, int, str]:
    """(top-1 accuracy, images, per-image correctness as ``edge.table.encode_correct`` writes it),
    batched; a model that cannot take a larger batch is reloaded and run one by one."""
    if len(x) == 0:
        return float("nan"), 0, ""
    try:
        scores = predict_scores(model, x, rec, batch_size)
    except Exception:
        # Some graphs have a fixed batch; the interpreter may be left unusable by the failed resize.
        model.close()
        model = load()
        try:
            scores = predict_scores(model, x, rec, 1)
        finally:
            model.close()
    if scores.ndim != 2 or scores.shape[0] != len(y):
        raise ValueError(f"{rec.artifact_id}: output shape {scores.shape} is not (N, classes)")
    right = np.argmax(scores, axis=1) == y
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

    def validate(self) -> None:
        if self.min_runs < 1:
            raise ValueError(f"--min-runs must be >= 1, got {self.min_runs}")
        if self.min_seconds < 0:
            raise ValueError(f"--min-seconds must be >= 0, got {self.min_seconds}")
        if self.max_seconds < 0:
            raise ValueError(f"--max-seconds must be >= 0 (0 = no cap), got {self.max_seconds}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}")
        if self.inputs < 1:
            raise ValueError(f"--inputs must be >= 1, got {self.inputs}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(f"--eval-limit must be >= 1, got {self.eval_limit}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")

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
        raise ValueError(f"setting '{setting.name}' runs {backend.format}, not {rec.format} artifacts")
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

    def load() -> LoadedModel:
        return backend.load(path, setting)

    rss.start()
    t0 = time.perf_counter_ns()
    model = load()
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    try:
        if np.dtype(model.input_spec.dtype) != inputs[0].dtype:
            raise ValueError(
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
        samples_ns = timed_loop(model, inputs, opts.min_runs, opts.min_seconds, opts.max_seconds, start=opts.warmup + 1)
        peak_mb = rss.added_mb()
        provider = model.provider
        acc, n_eval, correct = accuracy_of(load, model, x_eval, labels, rec, opts.batch_size)
    finally:
        model.close()
        del model
    st = summarize_ns(samples_ns)
    row = LatencyRow(
        variant=f"{rec.artifact_id}@{setting.name}",
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
        correct=correct,
    )
    return row, samples_ns.astype(np.float64) / 1e6


# --------------------------------------------------------------------------- samples sidecar


def samples_path(table_path: str | Path) -> Path:
    """``TABLE.json`` -> ``TABLE.samples.npz`` (raw per-run times in ms, one array per variant)."""
    p = Path(table_path)
    return p.with_name(p.stem + ".samples.npz")


def thin_samples(ms: np.ndarray, limit: int = MAX_STORED_SAMPLES) -> np.ndarray:
    """At most ``limit`` of the samples, evenly spaced in run order (plenty for a CDF plot)."""
    ms = np.asarray(ms)
    if ms.size <= limit:
        return ms
    idx = np.linspace(0, ms.size - 1, limit).round().astype(np.int64)
    return ms[idx]


def save_samples(table_path: str | Path, samples: dict[str, np.ndarray]) -> Path:
    """Rewrite the sidecar atomically (uncompressed: timing noise does not compress, and it is rewritten per row)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, dtype=np.float32) for k, v in samples.items()})
    return atomic_write_bytes(samples_path(table_path), buf.getvalue())


def load_samples(table_path: str | Path) -> dict[str, np.ndarray]:
    """The sidecar's arrays; {} when it is missing or unreadable (the samples are optional)."""
    p = samples_path(table_path)
    if not p.exists():
        return {}
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: np.asarray(z[k], dtype=np.float64) for k in z.files}
    except Exception as exc:  # zipfile/ValueError/OSError from a truncated file
        print(f"warning: ignoring unreadable samples file {p} ({exc})", file=sys.stderr)
        return {}


# --------------------------------------------------------------------------- whole bundle


@dataclass
class BenchResult:
    table: LatencyTable
    path: Path
    measured: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)  # rows already there and kept
    skipped: dict[str, str] = field(default_factory=dict)  # variant -> why


def _matches(patterns: Sequence[str], *names: str) -> bool:
    for pat in patterns:
        glob = any(c in pat for c in "*?[")
        for n in names:
            if (fnmatch.fnmatchcase(n, pat) if glob else pat in n):
                return True
    return False


def plan_rows(
    artifacts: Sequence[ArtifactRecord], profile: DeviceProfile, only: Sequence[str] = ()
) -> list[tuple[ArtifactRecord, RuntimeSetting]]:
    """Every (artifact, setting) pair the profile can run, filtered by ``only`` patterns."""
    plan = []
    for rec in artifacts:
        for setting in profile.settings_for(rec.format):
            variant = f"{rec.artifact_id}@{setting.name}"
            if only and not _matches(only, rec.artifact_id, variant):
                continue
            plan.append((rec, setting))
    return plan


def _setting_dict(s: RuntimeSetting) -> dict[str, Any]:
    d: dict[str, Any] = {"backend": s.backend, "threads": s.threads}
    if s.backend == "litert":
        d["xnnpack"] = s.xnnpack
    else:
        d["providers"] = list(s.providers)
    return d


def make_header(
    profile: DeviceProfile, bundle_label: str, bundle_sha: str, opts: BenchOptions, rss_method: str, out: Path
) -> DeviceHeader:
    info = sysinfo.device_info()
    backends = sorted({s.backend for s in profile.settings})
    return DeviceHeader(
        profile=profile.name,
        cpu_model=info["cpu_model"],
        cores=int(info["cores"]),
        governor=info["governor"],
        os=info["os"],
        machine=info["machine"],
        python=info["python"],
        runtime_versions=sysinfo.runtime_versions(backends),
        date=sysinfo.now_iso(),
        bundle=bundle_label,
        bundle_sha256=bundle_sha,
        settings={
            **opts.to_dict(),
            "timer": "time.perf_counter_ns around the runtime invoke only; input copy outside; gc paused",
            "rss_method": rss_method,
            "runtimes": {s.name: _setting_dict(s) for s in profile.settings},
            "samples_file": samples_path(out).name,
            "samples_stored_max": MAX_STORED_SAMPLES,
            "device": info["extra"],
        },
    )


def _resume_table(out: Path, profile: DeviceProfile, bundle_sha: str) -> LatencyTable:
    try:
        t = LatencyTable.load(out)
    except TableError as exc:
        raise TableError(f"cannot resume: {exc} (or pass --overwrite to start it over)") from None
    if t.header.profile != profile.name:
        raise TableError(
            f"cannot resume {out}: it was measured with profile '{t.header.profile}', not '{profile.name}'; "
            f"write to a new --out, or pass --profile {t.header.profile} to continue it"
        )
    if t.header.bundle_sha256 and t.header.bundle_sha256 != bundle_sha:
        raise TableError(
            f"cannot resume {out}: it was measured on another bundle ({t.header.bundle or '?'}, manifest sha256 "
            f"{t.header.bundle_sha256[:12]}..., this one is {bundle_sha[:12]}...); "
            "write to a new --out, or pass --overwrite to start this table over"
        )
    return t


def warm_runtimes(todo, bundle, image: np.ndarray, say: Callable[[str], None]) -> None:
    """Load one artifact per runtime setting once, untimed, before the first row.

    A runtime's first session in a process pays one-off costs (ONNX Runtime's environment,
    thread pools and arenas: ~10 MB and several ms); without this the first row of each
    runtime would carry them in its load time and peak RSS.
    """
    seen = set()
    for rec, setting in todo:
        if setting.name in seen:
            continue
        seen.add(setting.name)
        try:
            m = get_backend(setting.backend).load(bundle.artifact_path(rec.artifact_id), setting)
            try:
                m.predict(prepare_input(image, rec.input))
            finally:
                m.close()
        except (RuntimeError, ValueError) as exc:
            say(f"note: warming {setting.name} with {rec.artifact_id} failed ({exc}); its row will tell more")


def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _tag(bar, done: int, total: int, elapsed: float, measured: int, todo: int) -> str:
    """'[done/total ETA ..] ' for log lines when no progress bar shows it."""
    if bar is not None:
        return ""
    left = todo - measured
    eta = f" ETA {_fmt_s(elapsed / measured * left)}" if left else ""
    return f"[{done}/{total}{eta}] "


def _progress(total: int, initial: int, enabled: bool):
    """A tqdm bar on an interactive stderr; logs and pipes get one line per row with an ETA instead."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="row", desc="bench", dynamic_ncols=True, file=sys.stderr)


def bench_bundle(
    bundle_path: str | Path,
    out: str | Path,
    profile: str | DeviceProfile | None = None,
    opts: BenchOptions | None = None,
    resume: bool = False,
    overwrite: bool = False,
    only: Sequence[str] = (),
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> BenchResult:
    """Benchmark a bundle into the latency table ``out``; see the module docstring."""
    from edge.bundle import open_bundle  # the verifier raises BundleError naming the bad file

    opts = opts or BenchOptions()
    opts.validate()
    out = Path(out)
    if out.suffix != ".json":
        raise ValueError(f"--out must name a .json file (the CSV and samples go beside it), got {out}")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name the table file, e.g. {out}/table.json")
    if out.exists() and not (resume or overwrite):
        raise ValueError(f"{out} already exists; pass --resume to continue it or --overwrite to start over")

    bundle = open_bundle(bundle_path, verify=True)
    if profile is None:
        profile = bundle.profile or host_profile_name()
    prof = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    say = log or (lambda msg: print(msg, file=sys.stderr))
    if bundle.profile and bundle.profile != prof.name:
        say(f"note: bundle was made for profile '{bundle.profile}', benchmarking with '{prof.name}'")

    plan = plan_rows(bundle.artifacts, prof, only)
    if not plan:
        avail = [f"{a.artifact_id} ({a.format})" for a in bundle.artifacts]
        why = f"matching {list(only)} " if only else ""
        raise ValueError(
            f"nothing to benchmark: no artifact {why}has a format that profile '{prof.name}' runs "
            f"({list(prof.formats())}); artifacts: {avail}"
        )

    bundle_sha = sha256_file(Path(bundle.root) / "manifest.json")
    rss = PeakRss()
    samples: dict[str, np.ndarray] = {}
    if resume and out.exists():
        table = _resume_table(out, prof, bundle_sha)
        samples = load_samples(out)
        mine = {k: v for k, v in opts.to_dict().items()}
        theirs = {k: table.header.settings.get(k) for k in mine}
        if theirs != mine:
            say(f"note: resuming {out} measured with {theirs}; new rows use {mine}")
    else:
        table = LatencyTable(header=make_header(prof, str(bundle_path), bundle_sha, opts, rss.method, out), rows=())

    result = BenchResult(table=table, path=out)
    done = {r.variant for r in table.rows}
    todo = []
    for rec, setting in plan:
        v = f"{rec.artifact_id}@{setting.name}"
        if v in done:
            result.resumed.append(v)
        else:
            todo.append((rec, setting))

    # Accuracy on the "select" half only: the "serve" half stays unseen by selection (edge.bundle.EVAL_PARTS).
    images, labels = bundle.eval_set(limit=opts.eval_limit, part="select")
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64)
    if len(images) == 0:
        raise ValueError(f"bundle {bundle_path} has an empty evaluation set; rebuild it with 'edgekit bundle'")

    skipped = dict(table.header.settings.get("skipped", {}) or {})
    bar = _progress(len(plan), len(result.resumed), progress)
    write = (lambda m: bar.write(m, file=sys.stderr)) if bar is not None else say
    if todo:
        warm_runtimes(todo, bundle, images[:1], write)
    t_start = time.monotonic()
    try:
        for k, (rec, setting) in enumerate(todo):
            variant = f"{rec.artifact_id}@{setting.name}"
            if bar is not None:
                bar.set_postfix_str(variant, refresh=True)
            try:
                row, ms = measure(rec, bundle.artifact_path(rec.artifact_id), setting, images, labels, opts, rss)
                tag = _tag(bar, len(result.resumed) + k + 1, len(plan), time.monotonic() - t_start, k + 1, len(todo))
            except (RuntimeError, ValueError) as exc:  # BackendUnavailable is a RuntimeError
                tag = _tag(bar, len(result.resumed) + k + 1, len(plan), time.monotonic() - t_start, k + 1, len(todo))
                # One broken artifact or missing runtime must not cost the rest of a long run.
                skipped[variant] = str(exc)
                write(f"{tag}skipped {variant}: {exc}")
            else:
                skipped.pop(variant, None)
                table = table.with_row(row)
                samples[variant] = thin_samples(ms)
                result.measured.append(variant)
                write(
                    f"{tag}{variant}: p50 {row.p50_ms:.4g} ms  p99 {row.p99_ms:.4g} ms  n={row.samples}  "
                    f"acc {row.accuracy:.4f}  load {row.load_ms:.1f} ms  +{row.peak_rss_mb:.1f} MB  [{row.provider}]"
                )
            header = dataclasses.replace(table.header, settings={**table.header.settings, "skipped": dict(skipped)})
            table = dataclasses.replace(table, header=header)
            # Samples first: a crash between the two writes leaves a row without samples, never the reverse.
            save_samples(out, samples)
            table.save(out)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if not todo:
        # Nothing left to do: still (re)write the table so --out exists after a no-op resume.
        table.save(out)
    result.table = table
    result.skipped = skipped
    return result


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder or .tar.gz (from 'edgekit bundle')")
    p.add_argument("--profile", default=None, help="device profile name or TOML path (default: the bundle's profile)")
    p.add_argument("--out", required=True, metavar="TABLE.json", help="latency table to write (CSV and .samples.npz beside it)")
    p.add_argument("--min-runs", type=int, default=DEFAULT_MIN_RUNS, help="minimum timed runs per row (default %(default)s)")
    p.add_argument("--min-seconds", type=float, default=DEFAULT_MIN_SECONDS, help="minimum timed seconds per row (default %(default)s)")
    p.add_argument("--max-seconds", type=float, default=0.0, help="stop a row's timed runs after this long even below --min-runs (0 = never)")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="untimed runs after the first inference (default %(default)s)")
    p.add_argument("--inputs", type=int, default=DEFAULT_INPUTS, help="distinct eval images cycled through while timing (default %(default)s)")
    p.add_argument("--eval-limit", type=int, default=None, metavar="N", help="use only the first N evaluation images (accuracy and inputs)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="batch size for the accuracy pass (default %(default)s)")
    p.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="benchmark only artifacts/variants matching PATTERN (glob, or substring); repeatable, comma-separated")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue an interrupted table: keep its rows, measure the rest")
    g.add_argument("--overwrite", action="store_true", help="replace an existing table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    only = [s.strip() for pat in args.only for s in pat.split(",") if s.strip()]
    opts = BenchOptions(
        min_runs=args.min_runs,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        warmup=args.warmup,
        inputs=args.inputs,
        eval_limit=args.eval_limit,
        batch_size=args.batch_size,
    )
    try:
        res = bench_bundle(
            args.bundle,
            args.out,
            profile=args.profile,
            opts=opts,
            resume=args.resume,
            overwrite=args.overwrite,
            only=only,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(f"interrupted; finished rows are saved in {args.out}: rerun with --resume to continue", file=sys.stderr)
        return 130
    n = len(res.table.rows)
    print(
        f"wrote {res.path} ({n} rows: {len(res.measured)} measured, {len(res.resumed)} kept from before"
        + (f", {len(res.skipped)} skipped" if res.skipped else "")
        + f"); CSV {res.path.with_suffix('.csv')}, samples {samples_path(res.path)}"
    )
    for v, why in res.skipped.items():
        print(f"  skipped {v}: {why}", file=sys.stderr)
    return 1 if res.skipped else 0
