"""`edgekit bench`: measure every artifact of a bundle with every runtime setting of a profile on this device.

For each artifact x runtime setting (one table row, keyed "<artifact_id>@<setting>"):

* inputs: real images from the bundle's evaluation set, converted with
  ``edge.artifacts.tensors.prepare_input`` *before* anything is timed (that conversion is timed on
  its own, per image, and reported as ``preprocess_ms``);
* load (init) time and the first inference are timed apart from the steady state;
* ``--warmup`` untimed runs, then timed runs cycling through the prepared images until
  both ``--min-runs`` and ``--min-seconds`` are reached; each sample is
  ``time.perf_counter_ns()`` around the runtime's invoke call only (input copy excluded,
  garbage collector paused);
* peak resident memory the artifact added over load + first inference + runs (see
  :class:`edge.core.memory.PeakRss` for how it is measured; one row is ``benchmarks.bench.measure``);
* the median of ``--rest-runs`` single runs, each after 10 ms idle (``rest_p50_ms``: what a request
  that finds the runtime at rest pays; see ``benchmarks.bench.measure``), and of 5x as many after 0.5 ms
  idle each (``gap_p50_ms``: what a daemon's requests pay between their client's round trips);
* top-1 accuracy on the selection half of the bundle's evaluation set with this runtime on this device
  (the serve half stays unseen; ``edge.bundle.reader.EVAL_PARTS``).

A profile that does not describe this host (another architecture, more threads than cores, a
missing accelerator: ``device_profiles.host_mismatch``) is said in one line at the start and
recorded in the header (``host_mismatch``), so that the table and its report never pass for the board's.

After every row the table is written atomically (JSON + CSV) together with a
``TABLE.samples.npz`` sidecar of the raw per-run times, so ``--resume`` continues an
interrupted run. Imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks.bench import sysinfo
from benchmarks.bench.measure import (
    DEFAULT_BATCH,
    DEFAULT_INPUTS,
    DEFAULT_MIN_RUNS,
    DEFAULT_MIN_SECONDS,
    DEFAULT_REST_RUNS,
    DEFAULT_WARMUP,
    BenchOptions,
    measure,
)
from benchmarks.bench.samples import MAX_STORED_SAMPLES, load_samples, samples_path, save_samples, thin_samples
from device_profiles import DeviceProfile, Host, RuntimeSetting, host_mismatch, host_profile_name, load_profile
from device_profiles.host import mismatch_label
from edge.artifacts.manifest import ArtifactRecord, variant_id
from edge.artifacts.tensors import prepare_input
from edge.backends import get_backend
from edge.core.atomic import sha256_file
from edge.core.errors import UsageError
from edge.core.memory import PeakRss
from edge.core.patterns import matches, split_patterns
from edge.core.progress import Bar, NoBar, progress_bar
from edge.core.textable import format_table
from edge.tables.table import DeviceHeader, LatencyTable, TableError

# --------------------------------------------------------------------------- whole bundle


@dataclass
class BenchResult:
    table: LatencyTable
    path: Path
    measured: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)  # rows already there and kept
    skipped: dict[str, str] = field(default_factory=dict)  # variant -> why


def plan_rows(
    artifacts: Sequence[ArtifactRecord], profile: DeviceProfile, only: Sequence[str] = ()
) -> list[tuple[ArtifactRecord, RuntimeSetting]]:
    """Every (artifact, setting) pair the profile can run, filtered by ``only`` patterns."""
    plan = []
    for rec in artifacts:
        for setting in profile.settings_for(rec.format):
            variant = variant_id(rec.artifact_id, setting.name)
            if only and not matches(only, rec.artifact_id, variant):
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


def host_facts() -> Host:
    """This machine as ``device_profiles.host_mismatch`` sees it (the emulation label included)."""
    return Host.detect()


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
        host_mismatch="; ".join(host_mismatch(profile, host_facts())),
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


def _tag(bar: Bar | NoBar, done: int, total: int, elapsed: float, measured: int, todo: int) -> str:
    """'[done/total ETA ..] ' for log lines when no progress bar shows it."""
    if bar.shown:
        return ""
    left = todo - measured
    eta = f" ETA {_fmt_s(elapsed / measured * left)}" if left else ""
    return f"[{done}/{total}{eta}] "


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
    from edge.bundle.reader import open_bundle  # the verifier raises BundleError naming the bad file

    opts = opts or BenchOptions()
    opts.validate()
    out = Path(out)
    if out.suffix != ".json":
        raise UsageError(f"--out must name a .json file (the CSV and samples go beside it), got {out}")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; name the table file, e.g. {out}/table.json")
    if out.exists() and not (resume or overwrite):
        raise UsageError(f"{out} already exists; pass --resume to continue it or --overwrite to start over")

    bundle = open_bundle(bundle_path, verify=True)
    if profile is None:
        profile = bundle.profile or host_profile_name()
    prof = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    say = log or (lambda msg: print(msg, file=sys.stderr))
    if bundle.profile and bundle.profile != prof.name:
        say(f"note: bundle was made for profile '{bundle.profile}', benchmarking with '{prof.name}'")
    mismatch = mismatch_label(prof.name, host_mismatch(prof, host_facts()))
    if mismatch:
        say(f"note: {mismatch}")

    plan = plan_rows(bundle.artifacts, prof, only)
    if not plan:
        avail = [f"{a.artifact_id} ({a.format})" for a in bundle.artifacts]
        why = f"matching {list(only)} " if only else ""
        raise UsageError(
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
        v = variant_id(rec.artifact_id, setting.name)
        if v in done:
            result.resumed.append(v)
        else:
            todo.append((rec, setting))

    # Accuracy on the "select" half only: the "serve" half stays unseen by selection (edge.bundle.reader.EVAL_PARTS).
    images, labels = bundle.eval_set(limit=opts.eval_limit, part="select")
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64)
    if len(images) == 0:
        raise UsageError(f"bundle {bundle_path} has an empty evaluation set; rebuild it with 'edgekit bundle'")
    say(f"accuracy: on the bundle's selection half ({len(images):,} images; the serve half stays unseen), "
        "so it differs a little from the accuracy 'edgekit convert' printed on the whole test set")

    skipped = dict(table.header.settings.get("skipped", {}) or {})
    # A bar on an interactive stderr; logs and pipes get one line per row with an ETA instead.
    bar = progress_bar(len(plan), progress and sys.stderr.isatty(), unit="row", desc="bench",
                       initial=len(result.resumed), leave=True)
    write = (lambda m: bar.write(m, file=sys.stderr)) if bar.shown else say
    if todo:
        warm_runtimes(todo, bundle, images[:1], write)
    t_start = time.monotonic()
    try:
        for k, (rec, setting) in enumerate(todo):
            variant = variant_id(rec.artifact_id, setting.name)
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
                    + (f"at rest {row.rest_p50_ms:.4g} ms  " if row.rest_p50_ms else "")
                    + (f"at 0.5 ms gaps {row.gap_p50_ms:.4g} ms  " if row.gap_p50_ms else "")
                    + f"acc {row.accuracy:.4f}  load {row.load_ms:.1f} ms  +{row.peak_rss_mb:.1f} MB  [{row.provider}]"
                )
            header = dataclasses.replace(table.header, settings={**table.header.settings, "skipped": dict(skipped)})
            table = dataclasses.replace(table, header=header)
            # Samples first: a crash between the two writes leaves a row without samples, never the reverse.
            save_samples(out, samples)
            table.save(out)
            bar.update(1)
    finally:
        bar.close()
    if not todo:
        # Nothing left to do: still (re)write the table so --out exists after a no-op resume.
        table.save(out)
    result.table = table
    result.skipped = skipped
    return result


# --------------------------------------------------------------------------- CLI


def resize_lines(rows) -> str:
    """The variants at another input size than the bundle's images: what their resize costs beside the rest."""
    rows = [r for r in rows if r.resize_ms > 0]
    if not rows:
        return ""
    body = [[r.variant, f"{r.resize_ms:.4f}", f"{r.p50_ms:.4f}", f"{r.resize_ms / r.p50_ms:.0%}" if r.p50_ms else "-"]
            for r in sorted(rows, key=lambda r: r.p50_ms)]
    return ("variants that resize each image (their times include the resize, the input preparation and the "
            "invoke):\n" + format_table(["variant", "resize ms", "p50 ms", "resize share of p50"], body, align="lrrr"))


def _beside(table: Path, what: str) -> Path:
    """rpi4-table.json -> rpi4-selected.json (what='selected.json'), table.json -> table-selected.json."""
    stem = table.stem[: -len("-table")] if table.stem.endswith("-table") else table.stem
    return table.with_name(f"{stem}-{what}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder or .tar.gz (from 'edgekit bundle')")
    p.add_argument("--profile", default=None, help="device profile name or TOML path (default: the bundle's profile)")
    p.add_argument("--out", required=True, metavar="TABLE.json",
                   help="latency table to write (CSV and .samples.npz beside it)")
    p.add_argument("--min-runs", type=int, default=DEFAULT_MIN_RUNS,
                   help="minimum timed runs per row (default %(default)s)")
    p.add_argument("--min-seconds", type=float, default=DEFAULT_MIN_SECONDS,
                   help="minimum timed seconds per row (default %(default)s)")
    p.add_argument("--max-seconds", type=float, default=0.0,
                   help="stop a row's timed runs after this long even below --min-runs (0 = never)")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                   help="untimed runs after the first inference (default %(default)s)")
    p.add_argument("--inputs", type=int, default=DEFAULT_INPUTS,
                   help="distinct eval images cycled through while timing (default %(default)s)")
    p.add_argument("--eval-limit", type=int, default=None, metavar="N",
                   help="use only the first N evaluation images (accuracy and inputs)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                   help="batch size for the accuracy pass (default %(default)s)")
    p.add_argument("--rest-runs", type=int, default=DEFAULT_REST_RUNS,
                   help="single runs after 10 ms idle each, for the latency at rest that serving predicts an "
                        "idle runtime with, and 5x as many after 0.5 ms idle each, for the latency at a "
                        "request's cadence (default %(default)s; 0: neither measured)")
    p.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="benchmark only artifacts/variants matching PATTERN (glob, or substring); "
                        "repeatable, comma-separated")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted table: keep its rows, measure the rest")
    g.add_argument("--overwrite", action="store_true", help="replace an existing table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    only = split_patterns(args.only)
    opts = BenchOptions(
        min_runs=args.min_runs,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        warmup=args.warmup,
        inputs=args.inputs,
        eval_limit=args.eval_limit,
        batch_size=args.batch_size,
        rest_runs=args.rest_runs,
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
    resized = resize_lines(res.table.rows)
    if resized:
        print(resized)
    if res.table.header.host_mismatch:
        print(f"note: {mismatch_label(res.table.header.profile, res.table.header.host_mismatch)}")
    name = args.profile or res.table.header.profile
    prof = f" --profile {name}" if name else ""
    print(f"next: edgekit select {res.path}{prof} --out {_beside(res.path, 'selected.json')}  "
          f"(and 'edgekit report {res.path} --out {_beside(res.path, 'report')}' for a report with plots)")
    return 1 if res.skipped else 0
