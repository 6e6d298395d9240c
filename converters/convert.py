"""`edgekit convert`: build, validate and record the artifacts device profiles need from a run's trained models."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import gc
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, TextIO

import numpy as np

from converters import ray_sweep
from converters.progress import progress_bar
from converters.ray_sweep import RayOptions
from device_profiles import FORMATS, PRECISIONS, BuildTarget, load_profile
from edge.atomic import atomic_write_bytes, clean_stale_temps, read_json, sha256_bytes, sha256_file
from edge.manifest import ArtifactRecord, Manifest, ManifestError, artifact_id

if TYPE_CHECKING:
    from converters.formats import ExportResult
    from converters.validate import Validation

DEFAULT_MAX_DROP = 2.0
LOCK_FILE = ".convert.lock"


@dataclass(frozen=True)
class ModelDir:
    """One finished model of a run (train.json present)."""

    model_id: str
    path: Path
    keras_path: Path
    train: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """What happened to one artifact in this convert: built, skip or failed."""

    artifact_id: str
    model_id: str
    format: str
    precision: str
    action: str  # built | skip | failed
    seconds: float = 0.0
    error: str = ""


@dataclass(frozen=True)
class ConvertResult:
    manifest: Manifest
    outcomes: tuple[Outcome, ...]

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.action == "failed")


# ------------------------------------------------------------------------------------- run dir


def finished_models(run_dir: Path) -> list[ModelDir]:
    """Models whose train.json exists (written last by training); unfinished ones are ignored."""
    models_dir = run_dir / "models"
    if not models_dir.is_dir():
        raise FileNotFoundError(f"{models_dir} does not exist; train models first with 'edgekit train {run_dir} ...'")
    out = []
    for d in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        tj = d / "train.json"
        if not tj.is_file():
            continue
        train = read_json(tj, what="train record")
        keras_path = d / "model.keras"
        if not keras_path.is_file():
            raise FileNotFoundError(f"{keras_path} is missing although {tj} says the model finished; retrain it")
        out.append(ModelDir(model_id=str(train.get("model_id", d.name)), path=d, keras_path=keras_path, train=train))
    return out


def targets_for(profile_names: list[str]) -> list[BuildTarget]:
    """Union of the profiles' build targets, in a fixed format/precision order."""
    wanted: set[BuildTarget] = set()
    for name in profile_names:
        wanted.update(load_profile(name).targets)
    order = {(f, p): (FORMATS.index(f), PRECISIONS.index(p)) for f in FORMATS for p in PRECISIONS}
    return sorted(wanted, key=lambda t: order[(t.format, t.precision)])


def is_unchanged(rec: ArtifactRecord | None, run_dir: Path, source_sha256: str) -> bool:
    """True when the recorded artifact exists with its recorded sha256 and was built from this model.keras."""
    if rec is None or rec.source_sha256 != source_sha256:
        return False
    path = run_dir / rec.path
    return path.is_file() and sha256_file(path) == rec.sha256


def _load_keras(path: Path):
    try:
        from converters.families import load_keras_model
    except ImportError:
        # Families (custom layers) not installed: plain Keras still loads built-in-layer models safely.
        import keras

        return keras.saving.load_model(str(path), safe_mode=True)
    return load_keras_model(path)


def _open_manifest(run_dir: Path, dataset: str, labels: tuple[str, ...]) -> Manifest:
    path = run_dir / "manifest.json"
    if not path.exists():
        return Manifest(dataset=dataset, labels=labels)
    m = Manifest.load(path)
    if m.dataset != dataset:
        raise ManifestError(
            f"{path} is for dataset '{m.dataset}' but this run trained on '{dataset}'; move it away and convert again"
        )
    return m


@contextlib.contextmanager
def _convert_lock(run_dir: Path) -> Iterator[None]:
    """One convert per run folder at a time (two would lose each other's manifest updates)."""
    fh = open(run_dir / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another 'edgekit convert' is using {run_dir}; wait for it to finish") from None
        yield
    finally:
        fh.close()


def _without(manifest: Manifest, aid: str) -> Manifest:
    return dataclasses.replace(manifest, artifacts=tuple(a for a in manifest.artifacts if a.artifact_id != aid))


# ------------------------------------------------------------------------------------- convert


def convert_run(
    run_dir: str | Path,
    profiles: list[str],
    max_drop: float = DEFAULT_MAX_DROP,
    limit_test: int | None = None,
    force: bool = False,
    batch_size: int = 256,
    out: TextIO | None = None,
    progress: bool = True,
    ray: RayOptions | None = None,
) -> ConvertResult:
    """Build every artifact the profiles need for every finished model, validate it, record it.

    The manifest is saved after every artifact, so an interrupted convert resumes where it
    stopped; an artifact whose file and source model.keras are unchanged is skipped (its
    status is re-judged against ``max_drop`` from the recorded numbers). With ``ray``, each
    model to convert is a Ray task (converters.ray_sweep) and this process writes what it returns.
    """
    from converters.formats import check_target

    out = out or sys.stdout
    run_dir = Path(run_dir)
    if not profiles:
        raise ValueError("name at least one device profile with --profile (see 'edgekit profiles')")
    if limit_test is not None and limit_test <= 0:
        raise ValueError(f"--limit-test must be > 0, got {limit_test}")
    if ray is not None:
        ray_sweep.preflight(ray)
    meta = read_json(run_dir / "run.json", what="run file (written by 'edgekit train')")
    targets = targets_for(profiles)
    for t in targets:
        check_target(t.format, t.precision)
    models = finished_models(run_dir)
    if not models:
        raise ValueError(f"no finished models in {run_dir / 'models'} (no train.json yet); run 'edgekit train' first")

    with _convert_lock(run_dir):
        return _convert_locked(run_dir, models, targets, meta, max_drop, limit_test, force, batch_size, out, progress,
                               ray)


# What converting one model's artifacts produces, in order: made in this process or in a Ray task, and
# applied to the run folder and manifest by this process (_Recorder.apply).


@dataclass(frozen=True)
class _Note:
    """A line to print: a WARN, or the FAIL of a model that does not load."""

    text: str


@dataclass(frozen=True)
class _Started:
    artifact_id: str


@dataclass(frozen=True)
class _Built:
    target: BuildTarget
    rel: str  # the artifact's path in the run folder
    result: ExportResult
    validation: Validation
    seconds: float
    data: bytes | None = None  # the artifact's bytes when a Ray task built it (in its own temporary folder)


@dataclass(frozen=True)
class _Failed:
    target: BuildTarget
    rel: str
    seconds: float
    error: str
    line: str = ""  # the FAIL line to print; "" when a _Note said it for the whole model


def _rel(model_id: str, t: BuildTarget) -> tuple[str, str]:
    from converters.formats import extension

    aid = artifact_id(model_id, t.format, t.precision)
    return aid, f"artifacts/{aid}.{extension(t.format)}"


def _build_model(md: ModelDir, keras_path: Path, todo: list[BuildTarget], out_root: Path, x_eval, y_eval, x_calib,
                 limit_test: int | None, max_drop: float, batch_size: int) -> Iterator[Any]:
    """Convert and validate one model's ``todo`` artifacts under ``out_root``; yields what happens, in order."""
    from converters import validate
    from converters.formats import export_model

    try:
        model = _load_keras(keras_path)
        reference = validate.keras_outputs(model, x_eval, batch_size=batch_size)
    except Exception as exc:  # Keras raises many types for a bad file; one model must not stop the rest
        msg = " ".join(f"cannot load {md.keras_path}: {exc}".split())
        yield _Note(f"FAIL  {md.model_id}: {msg[:500]}")
        for t in todo:
            yield _Failed(t, _rel(md.model_id, t)[1], 0.0, msg)
        return
    warnings: list[str] = []
    _check_reload(md, reference, y_eval, limit_test, warnings.append)
    yield from (_Note(w) for w in warnings)

    for t in todo:
        aid, rel = _rel(md.model_id, t)
        yield _Started(aid)
        t0 = time.perf_counter()
        try:
            res = export_model(model, out_root / rel, t.format, t.precision, calib_images=x_calib)
            v = validate.validate_artifact(
                res.path, t.format, x_eval, y_eval, reference, max_drop=max_drop, batch_size=batch_size
            )
        except (RuntimeError, ValueError, OSError) as exc:
            msg = " ".join(str(exc).split())
            yield _Failed(t, rel, time.perf_counter() - t0, msg, line=f"FAIL  {aid}: {msg[:500]}")
            continue
        yield _Built(t, rel, res, v, time.perf_counter() - t0)
    del model
    _release_keras()


class _Recorder:
    """This process's side of a convert: the run folder's artifacts, manifest.json, outcomes, lines and bar."""

    def __init__(self, run_dir: Path, manifest: Manifest, bar, out: TextIO):
        self.run_dir, self.manifest, self.bar, self.out = run_dir, manifest, bar, out
        self.path = run_dir / "manifest.json"
        self.outcomes: list[Outcome] = []

    def say(self, msg: str) -> None:
        self.bar.write(msg, file=self.out)

    def save(self, manifest: Manifest) -> None:
        self.manifest = manifest
        manifest.save(self.path)

    def plan(self, md: ModelDir, source_sha: str, targets: list[BuildTarget], force: bool,
             max_drop: float) -> list[BuildTarget]:
        """Record the model's unchanged artifacts as skipped (re-judged); returns the targets to build."""
        from converters import validate

        todo: list[BuildTarget] = []
        for t in targets:
            aid = artifact_id(md.model_id, t.format, t.precision)
            rec = self.manifest.by_id().get(aid)
            if not force and is_unchanged(rec, self.run_dir, source_sha):
                assert rec is not None
                rejudged = validate.rejudge(rec, max_drop)
                if rejudged != rec:
                    self.save(self.manifest.with_artifact(rejudged))
                self.say(f"skip  {aid} (unchanged)")
                self.outcomes.append(Outcome(aid, md.model_id, t.format, t.precision, "skip"))
                self.bar.update(1)
            else:
                todo.append(t)
        return todo

    def apply(self, ev: Any, md: ModelDir, source_sha: str) -> None:
        from converters import validate

        if isinstance(ev, _Note):
            self.say(ev.text)
        elif isinstance(ev, _Started):
            self.bar.set_postfix_str(ev.artifact_id, refresh=True)
        elif isinstance(ev, _Built) and ev.data is not None and sha256_bytes(ev.data) != ev.result.sha256:
            msg = "the bytes its Ray task returned do not match the sha256 the task computed; rerun to rebuild it"
            aid = _rel(md.model_id, ev.target)[0]
            self.apply(_Failed(ev.target, ev.rel, ev.seconds, msg, line=f"FAIL  {aid}: {msg}"), md, source_sha)
        elif isinstance(ev, _Built):
            t, res, v = ev.target, ev.result, ev.validation
            aid = artifact_id(md.model_id, t.format, t.precision)
            if ev.data is not None:
                atomic_write_bytes(self.run_dir / ev.rel, ev.data)
            rec = ArtifactRecord(
                artifact_id=aid,
                model_id=md.model_id,
                format=t.format,
                precision=t.precision,
                path=ev.rel,
                sha256=res.sha256,
                size_bytes=res.size_bytes,
                input=res.input,
                output=res.output,
                source_sha256=source_sha,
                params=int(md.train.get("params", 0) or 0),
                macs=int(md.train.get("macs", 0) or 0),
            )
            rec = validate.apply_validation(rec, v)
            self.save(self.manifest.with_artifact(rec))
            note = f"  ({v.reason})" if v.status != "ok" else ""
            self.say(
                f"built {aid}: {res.size_bytes / 1024:.1f} KB, convert {res.seconds:.1f}s, total {ev.seconds:.1f}s, "
                f"accuracy {100 * v.accuracy:.2f}%, {v.status}{note}"
            )
            self.outcomes.append(Outcome(aid, md.model_id, t.format, t.precision, "built", ev.seconds))
            self.bar.update(1)
        elif isinstance(ev, _Failed):
            t = ev.target
            aid = artifact_id(md.model_id, t.format, t.precision)
            # A stale record must not survive a failed rebuild: it would ship an old artifact.
            if aid in self.manifest.by_id():
                self.save(_without(self.manifest, aid))
            (self.run_dir / ev.rel).unlink(missing_ok=True)
            if ev.line:
                self.say(ev.line)
            self.outcomes.append(Outcome(aid, md.model_id, t.format, t.precision, "failed", ev.seconds, ev.error))
            self.bar.update(1)
        else:  # pragma: no cover - a new event type without its case here
            raise TypeError(f"unknown convert event {ev!r}")


def _eval_set(run_dir: Path, limit_test: int | None, rec: _Recorder):
    """The run's test images and labels (first ``limit_test``) and its calibration images."""
    from converters.datasets import splits_for_run

    splits = splits_for_run(run_dir)
    x_eval, y_eval = splits.x_test, splits.y_test
    if limit_test is not None:
        x_eval, y_eval = x_eval[:limit_test], y_eval[:limit_test]
    if not rec.manifest.labels:
        rec.manifest = dataclasses.replace(rec.manifest, labels=tuple(splits.class_names))
    return x_eval, y_eval, splits.x_calib


def _convert_locked(run_dir, models, targets, meta, max_drop, limit_test, force, batch_size, out, progress,
                    ray=None) -> ConvertResult:
    art_dir = run_dir / "artifacts"
    art_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(art_dir)
    manifest = _open_manifest(run_dir, str(meta.get("dataset", "")), tuple(str(c) for c in meta.get("class_names", ())))

    bar = progress_bar(len(models) * len(targets), enabled=progress)
    rec = _Recorder(run_dir, manifest, bar, out)
    try:
        if ray is not None:
            _convert_on_ray(rec, models, targets, max_drop, limit_test, force, batch_size, ray)
        else:
            evalset = None
            for md in models:
                source_sha = sha256_file(md.keras_path)
                todo = rec.plan(md, source_sha, targets, force, max_drop)
                if not todo:
                    continue
                if evalset is None:
                    evalset = _eval_set(run_dir, limit_test, rec)
                for ev in _build_model(md, md.keras_path, todo, run_dir, *evalset, limit_test, max_drop, batch_size):
                    rec.apply(ev, md, source_sha)
    finally:
        bar.close()
    # Skips are reported as they are found; the table reads better in model, then target order.
    rank = {(m.model_id, t.format, t.precision): (i, j) for i, m in enumerate(models) for j, t in enumerate(targets)}
    outcomes = sorted(rec.outcomes, key=lambda o: rank[(o.model_id, o.format, o.precision)])
    return ConvertResult(manifest=rec.manifest, outcomes=tuple(outcomes))


def convert_task(md: ModelDir, keras_bytes: bytes, todo: list[BuildTarget], evalset, limit_test: int | None,
                 max_drop: float, batch_size: int, ray: RayOptions) -> list[Any]:
    """A Ray task: convert and validate one model's ``todo`` artifacts in a temporary folder of its worker.

    Gets the model as bytes and returns its events, each built artifact's bytes included, for the driver
    to apply (``_Recorder.apply``); the worker never opens the run folder.
    """
    ray_sweep.init_worker(ray)
    events: list[Any] = []
    with ray_sweep.task_folder() as root:
        keras_path = root / "model.keras"
        keras_path.write_bytes(keras_bytes)
        for ev in _build_model(md, keras_path, todo, root, *evalset, limit_test, max_drop, batch_size):
            if isinstance(ev, _Built):
                ev = dataclasses.replace(ev, data=(root / ev.rel).read_bytes(),
                                         result=dataclasses.replace(ev.result, path=Path(ev.rel)))
            events.append(ev)
        ray_sweep.crash_point(md.model_id)
    return events


def _convert_on_ray(rec: _Recorder, models, targets, max_drop, limit_test, force, batch_size,
                    opts: RayOptions) -> None:
    """One Ray task per model with artifacts to build; this process applies what each returns as it finishes."""
    import ray

    plans = {}
    for md in models:
        data = md.keras_path.read_bytes()  # sent to the task: the sha256 recorded is that of the bytes converted
        source_sha = sha256_bytes(data)
        todo = rec.plan(md, source_sha, targets, force, max_drop)
        if todo:
            plans[md.model_id] = (md, source_sha, data, todo)
    if not plans:
        return
    evalset = _eval_set(rec.run_dir, limit_test, rec)
    with ray_sweep.ray_session(opts, say=rec.say) as session:
        rec.say(f"ray: {session.where}; {opts.describe()}; results come back to this process, which writes them "
                f"into {rec.run_dir}")
        evalset_ref = ray.put(evalset)
        calls = [(mid, (md, data, todo, evalset_ref, limit_test, max_drop, batch_size, opts))
                 for mid, (md, _, data, todo) in plans.items()]
        for res in ray_sweep.run_tasks(convert_task, calls, opts):
            md, source_sha, _, todo = plans[res.key]
            if res.ok:
                for ev in res.value:
                    rec.apply(ev, md, source_sha)
                continue
            rec.apply(_Note(f"FAIL  {md.model_id}: {res.error} (a rerun retries it)"), md, source_sha)
            for t in todo:
                rec.apply(_Failed(t, _rel(md.model_id, t)[1], 0.0, res.error or ""), md, source_sha)


def _check_reload(md: ModelDir, reference: np.ndarray, labels: np.ndarray, limit_test: int | None, say) -> None:
    """Warn when the reloaded model.keras no longer scores what training recorded on the same test set.

    Artifacts are validated against the model as it loads now; if custom-layer code changed after
    training, that model (and every artifact) silently differs from the one that was trained.
    """
    recorded = md.train.get("test_accuracy")
    n = md.train.get("test_images")
    if recorded is None or limit_test is not None or (n is not None and int(n) != len(labels)):
        return
    now = float((reference.argmax(axis=1) == labels).mean())
    if abs(now - float(recorded)) > 0.005:
        say(
            f"WARN  {md.model_id}: model.keras now scores {100 * now:.2f}% but train.json recorded "
            f"{100 * float(recorded):.2f}% on the same test set; it does not load as trained "
            "(custom layer code changed since?): retrain it"
        )


def _release_keras() -> None:
    try:
        import keras

        keras.backend.clear_session()
    except Exception:  # pragma: no cover - only frees memory
        pass
    gc.collect()


# ------------------------------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def format_table(result: ConvertResult) -> str:
    """model | format-precision | size (KB) | accuracy | Δ vs Keras | agreement | max diff | status."""
    recs = result.manifest.by_id()
    header = ("model", "format-precision", "size (KB)", "accuracy", "Δ vs Keras (pts)", "agreement", "max diff", "status")
    rows = []
    for o in result.outcomes:
        r = recs.get(o.artifact_id)
        if o.action == "failed" or r is None:
            rows.append((o.model_id, f"{o.format}-{o.precision}", "-", "-", "-", "-", "-", "failed"))
            continue
        delta = "-"
        if r.host_accuracy is not None and r.keras_accuracy is not None:
            delta = f"{100 * (r.host_accuracy - r.keras_accuracy):+.2f}"
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.3g}"
        status = r.status + (" (skip)" if o.action == "skip" else "")
        rows.append(
            (r.model_id, f"{r.format}-{r.precision}", f"{r.size_bytes / 1024:.1f}", _pct(r.host_accuracy), delta,
             _pct(r.agreement), diff, status)
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    right = {2, 3, 4, 5, 6}

    def line(cells) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header).rstrip(), "  ".join("-" * w for w in widths)]
    out += [line(r).rstrip() for r in rows]
    return "\n".join(out)


def precision_deltas(result: ConvertResult) -> dict[tuple[str, str], tuple[float, int]]:
    """(format, precision) -> (mean accuracy change in points against the same model's fp32, models counted)."""
    recs = result.manifest.by_id()
    seen = {o.artifact_id for o in result.outcomes}
    acc: dict[tuple[str, str, str], float] = {}
    for aid in seen:
        r = recs.get(aid)
        if r is not None and r.host_accuracy is not None:
            acc[(r.model_id, r.format, r.precision)] = r.host_accuracy
    sums: dict[tuple[str, str], list[float]] = {}
    for (mid, fmt, prec), a in acc.items():
        base = acc.get((mid, fmt, "fp32"))
        if prec == "fp32" or base is None:
            continue
        sums.setdefault((fmt, prec), []).append(100 * (a - base))
    return {k: (float(np.mean(v)), len(v)) for k, v in sums.items()}


def format_summary(result: ConvertResult) -> str:
    deltas = precision_deltas(result)
    lines = []
    for prec in ("int8", "fp16", "dynamic"):
        parts = [
            f"{fmt} {deltas[(fmt, prec)][0]:+.2f} pts (n={deltas[(fmt, prec)][1]})"
            for fmt in FORMATS
            if (fmt, prec) in deltas
        ]
        if parts:
            lines.append(f"mean accuracy change {prec} vs fp32: " + ", ".join(parts))
    if not lines:
        lines.append("mean accuracy change vs fp32: n/a (build fp32 and a lower precision of the same format)")
    n = {a: sum(1 for o in result.outcomes if o.action == a) for a in ("built", "skip", "failed")}
    recs = result.manifest.by_id()
    rejected = sum(1 for o in result.outcomes if o.artifact_id in recs and recs[o.artifact_id].status == "rejected")
    lines.append(
        f"{n['built']} built, {n['skip']} skipped (unchanged), {n['failed']} failed, "
        f"{rejected} rejected (not bundled unless forced)"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run directory written by 'edgekit train'")
    parser.add_argument(
        "--profile", action="append", required=True, metavar="NAME",
        help="device profile (name or .toml path) whose formats/precisions to build; repeat for several",
    )
    parser.add_argument(
        "--max-drop", type=float, default=DEFAULT_MAX_DROP, metavar="POINTS",
        help="reject an artifact whose accuracy is more than this many points below its Keras model (default 2.0)",
    )
    parser.add_argument(
        "--limit-test", type=int, default=None, metavar="N", help="validate on the first N test images only"
    )
    parser.add_argument("--force", action="store_true", help="rebuild artifacts even when unchanged")
    parser.add_argument("--batch-size", type=int, default=256, help="validation batch size (default 256)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray_sweep.add_arguments(parser, what="model (all of its artifacts)")


def run(args) -> int:
    ray = ray_sweep.options_from_args(args)
    if ray is None:  # on Ray, TensorFlow runs in the tasks only
        try:  # TensorFlow's start-up notices would bury the progress lines
            from converters.train import import_tensorflow_quietly

            import_tensorflow_quietly()
        except ImportError:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = convert_run(
        Path(args.run),
        list(args.profile),
        max_drop=args.max_drop,
        limit_test=args.limit_test,
        force=args.force,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        ray=ray,
    )
    print()
    print(format_table(result))
    print()
    print(format_summary(result))
    if result.failed:
        print(
            f"{len(result.failed)} artifact(s) failed to convert (see FAIL lines above); "
            "the rest are recorded in manifest.json",
            file=sys.stderr,
        )
        return 1
    return 0
