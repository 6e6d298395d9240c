"""`edgekit convert`: build, validate and record the artifacts device profiles need from a run's trained models.

This module drives a convert (here, or one Ray task per model) and prints its tables; one model's
conversion is ``converters.convert.model``, and what the driver writes is ``converters.convert.record``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from converters.cluster import ray_sweep
from converters.cluster.ray_sweep import RayOptions
from converters.convert.calibration import CalibrationOptions, CalibrationSet, for_run
from converters.convert.model import Failed, ModelDir, Note, artifact_path, convert_one, convert_task
from converters.convert.record import Outcome, Recorder, convert_lock, open_manifest
from converters.convert.sources import Unavailable, model_payload, model_sha256, plan_targets, uses_calibration
from device_profiles import BuildTarget, load_profile
from edge.artifacts.formats import FORMATS, PRECISIONS
from edge.artifacts.manifest import Manifest
from edge.core.atomic import clean_stale_temps, read_json, sha256_bytes
from edge.core.errors import MissingError, UsageError
from edge.core.progress import progress_bar
from edge.core.textable import format_table as format_text_table
from edge.core.units import kb

DEFAULT_MAX_DROP = 2.0


@dataclass(frozen=True)
class ConvertResult:
    manifest: Manifest
    outcomes: tuple[Outcome, ...]
    unavailable: tuple[Unavailable, ...] = ()  # targets a model's source cannot produce (not failures)
    calibration: dict[str, Any] | None = None  # the int8 calibration set (CalibrationSet.record()), when one was used

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.action == "failed")


# ------------------------------------------------------------------------------------- run dir


SOURCE_FORMATS = ("keras", "onnx", "tflite", "savedmodel")


def finished_models(run_dir: Path) -> list[ModelDir]:
    """Models whose train.json exists (written last by training or import); unfinished ones are ignored.

    A trained model is its model.keras; an imported one is the file its train.json's ``source`` names
    (model.keras, model.onnx or model.tflite).
    """
    models_dir = run_dir / "models"
    if not models_dir.is_dir():
        raise MissingError(f"{models_dir} does not exist; train models first with 'edgekit train {run_dir} ...' "
                           f"or import your own with 'edgekit import {run_dir} MODEL ...'")
    out = []
    for d in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        tj = d / "train.json"
        if not tj.is_file():
            continue
        train = read_json(tj, what="train record")
        source = train.get("source")
        fmt, name, redo = "keras", "model.keras", "retrain it"
        if source is not None:
            if not isinstance(source, dict) or source.get("format") not in SOURCE_FORMATS or \
                    Path(str(source.get("file", ""))).name != source.get("file") or not source.get("file"):
                raise UsageError(f"{tj}: its source is not an import record edgekit wrote ({source!r}); import the "
                                 "model again with 'edgekit import --force'")
            fmt, name, redo = str(source["format"]), str(source["file"]), "import it again with 'edgekit import'"
        model_path = d / name
        if not (model_path.is_dir() if fmt == "savedmodel" else model_path.is_file()):
            raise MissingError(f"{model_path} is missing although {tj} says the model finished; {redo}")
        out.append(ModelDir(model_id=str(train.get("model_id", d.name)), path=d, model_path=model_path, train=train,
                            source=fmt))
    return out


def targets_for(profile_names: list[str]) -> list[BuildTarget]:
    """Union of the profiles' build targets, in a fixed format/precision order."""
    wanted: set[BuildTarget] = set()
    for name in profile_names:
        wanted.update(load_profile(name).targets)
    order = {(f, p): (list(FORMATS).index(f), PRECISIONS.index(p)) for f in FORMATS for p in PRECISIONS}
    return sorted(wanted, key=lambda t: order[(t.format, t.precision)])


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
    calibration: CalibrationOptions | None = None,
) -> ConvertResult:
    """Build every artifact the profiles need for every finished model, validate it, record it.

    The manifest is saved after every artifact, so an interrupted convert resumes where it
    stopped; an artifact whose file and source model file are unchanged (an int8 one: and its
    calibration images) is skipped (its status is re-judged against ``max_drop`` from the recorded
    numbers). int8 artifacts are calibrated on the run's calibration split, or on ``calibration``'s
    folder (converters.convert.calibration). With ``ray``, each model to convert is a Ray task
    (converters.cluster.ray_sweep) and this process writes what it returns.
    """
    from converters.convert.exporters import check_target

    out = out or sys.stdout
    run_dir = Path(run_dir)
    if not profiles:
        raise UsageError("name at least one device profile with --profile (see 'edgekit profiles')")
    if limit_test is not None and limit_test <= 0:
        raise UsageError(f"--limit-test must be > 0, got {limit_test}")
    if ray is not None:
        ray_sweep.preflight(ray)
    meta = read_json(run_dir / "run.json", what="run file (written by 'edgekit train')")
    targets = targets_for(profiles)
    for t in targets:
        check_target(t.format, t.precision)
    models = finished_models(run_dir)
    if not models:
        raise UsageError(f"no finished models in {run_dir / 'models'} (no train.json yet); run 'edgekit train' or "
                         "'edgekit import' first")

    with convert_lock(run_dir):
        return _convert_locked(run_dir, models, targets, meta, max_drop, limit_test, force, batch_size, out, progress,
                               ray, calibration or CalibrationOptions())


class _RunData:
    """The run's images a convert needs, each loaded on first use: its splits, test set and calibration set."""

    def __init__(self, run_dir: Path, meta: dict[str, Any], limit_test: int | None, calib: CalibrationOptions,
                 calibrated: bool, progress: bool, out: TextIO):
        self.run_dir, self.meta, self.limit_test, self.calib = run_dir, meta, limit_test, calib
        self.calibrated = calibrated  # whether any artifact to make is calibrated (int8)
        self.progress, self.out = progress, out
        self.say = lambda msg: print(msg, file=out, flush=True)
        self._splits: Any = None
        self.calibration_set: CalibrationSet | None = None

    def splits(self):
        if self._splits is None:
            from converters.data.datasets import splits_for_run

            self._splits = splits_for_run(self.run_dir)
        return self._splits

    def calibration(self) -> CalibrationSet:
        if self.calibration_set is None:
            x_calib = self.splits().x_calib if self.calib.images is None else None
            self.calibration_set = for_run(self.calib, self.meta, x_calib, progress=self.progress, out=self.out)
            self.say(f"int8 calibration: {self.calibration_set.describe()}")
        return self.calibration_set

    def evalset(self, rec: Recorder):
        """The run's test images and labels (first ``limit_test``) and the calibration images."""
        splits = self.splits()
        x_eval, y_eval = splits.x_test, splits.y_test
        if self.limit_test is not None:
            x_eval, y_eval = x_eval[: self.limit_test], y_eval[: self.limit_test]
        if not rec.manifest.labels:
            rec.manifest = dataclasses.replace(rec.manifest, labels=tuple(splits.class_names))
        return x_eval, y_eval, (self.calibration().images if self.calibrated else splits.x_calib)


def _convert_locked(run_dir, models, targets, meta, max_drop, limit_test, force, batch_size, out, progress,
                    ray=None, calib: CalibrationOptions = CalibrationOptions()) -> ConvertResult:
    art_dir = run_dir / "artifacts"
    art_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(art_dir)
    manifest = open_manifest(run_dir, str(meta.get("dataset", "")), tuple(str(c) for c in meta.get("class_names", ())))

    # What each model's source can make (an imported ONNX or TFLite model, fewer than the profiles ask).
    buildable: dict[str, list[BuildTarget]] = {}
    unavailable: list[Unavailable] = []
    for md in models:
        buildable[md.model_id], cannot = plan_targets(md, targets)
        unavailable += cannot
    calibrated = any(uses_calibration(md, t) for md in models for t in buildable[md.model_id])
    data = _RunData(run_dir, meta, limit_test, calib, calibrated, progress, out)
    if calib.images is not None and not calibrated:
        print(f"note: --calib-images {calib.images} is not used: no artifact of these profiles is calibrated "
              "(int8)", file=out, flush=True)
    elif calib.images is not None:
        data.calibration()  # a bad or empty folder stops the convert before anything is built
    bar = progress_bar(sum(len(v) for v in buildable.values()), enabled=progress)
    rec = Recorder(run_dir, manifest, bar, out, calibration=data.calibration)
    data.say = rec.say
    try:
        if ray is not None:
            _convert_on_ray(rec, data, models, buildable, max_drop, limit_test, force, batch_size, ray)
        else:
            evalset = None
            for md in models:
                source_sha = model_sha256(md.model_path)
                todo = rec.plan(md, source_sha, buildable[md.model_id], force, max_drop)
                if not todo:
                    continue
                if evalset is None:
                    evalset = data.evalset(rec)
                for ev in convert_one(md, md.model_path, todo, run_dir, *evalset, limit_test, max_drop, batch_size):
                    rec.apply(ev, md, source_sha)
    finally:
        bar.close()
    # Skips are reported as they are found; the table reads better in model, then target order.
    rank = {(m.model_id, t.format, t.precision): (i, j) for i, m in enumerate(models) for j, t in enumerate(targets)}
    outcomes = sorted(rec.outcomes, key=lambda o: rank[(o.model_id, o.format, o.precision)])
    cal = data.calibration_set
    return ConvertResult(manifest=rec.manifest, outcomes=tuple(outcomes), unavailable=tuple(unavailable),
                         calibration=cal.record() if cal is not None else None)


def _convert_on_ray(rec: Recorder, run_data: _RunData, models, buildable: dict[str, list[BuildTarget]], max_drop,
                    limit_test, force, batch_size, opts: RayOptions) -> None:
    """One Ray task per model with artifacts to build; this process applies what each returns as it finishes."""
    import ray

    plans = {}
    for md in models:
        data = model_payload(md.model_path)  # sent to the task: the sha256 recorded is that of what is converted
        source_sha = sha256_bytes(data) if not md.model_path.is_dir() else model_sha256(md.model_path)
        todo = rec.plan(md, source_sha, buildable[md.model_id], force, max_drop)
        if todo:
            plans[md.model_id] = (md, source_sha, data, todo)
    if not plans:
        return
    evalset = run_data.evalset(rec)
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
            rec.apply(Note(f"FAIL  {md.model_id}: {res.error} (a rerun retries it)"), md, source_sha)
            for t in todo:
                rec.apply(Failed(t, artifact_path(md.model_id, t)[1], 0.0, res.error or ""), md, source_sha)


# ------------------------------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def format_table(result: ConvertResult) -> str:
    """model | format-precision | size (KB) | accuracy | Δ vs Keras | agreement | max diff | status."""
    recs = result.manifest.by_id()
    header = ("model", "format-precision", "size (KB)", "accuracy", "Δ vs Keras (pts)", "agreement", "max diff",
              "status")
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
            (r.model_id, f"{r.format}-{r.precision}", kb(r.size_bytes), _pct(r.host_accuracy), delta,
             _pct(r.agreement), diff, status)
        )
    return format_text_table(header, rows, align="llrrrrrl", rule=True)


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
    if result.calibration is not None:
        cal = result.calibration
        lines.append(f"int8 calibration: {cal['description']} (sha256 {str(cal['sha256'])[:12]}, recorded per "
                     "artifact in manifest.json extra \"calibration\")")
    if result.unavailable:
        lines.append(f"{len(result.unavailable)} target(s) not built because the model's source cannot produce "
                     "them (not failures):")
        lines += [f"  {u.model_id} {u.format}-{u.precision}: {u.reason}" for u in result.unavailable]
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
    cal = parser.add_argument_group("int8 calibration")
    cal.add_argument("--calib-images", type=Path, metavar="DIR",
                     help="calibrate int8 artifacts on the images in DIR (any depth, no labels; JPEG, PNG, BMP, GIF), "
                          "decoded at the run's input size with its resize method, instead of the run's calibration "
                          "split; more than --calib-size of them: a sample seeded by the run's seed")
    cal.add_argument("--calib-size", type=_positive_int, metavar="N",
                     help="at most N calibration images, a seeded sample when there are more (default: all of the "
                          "run's calibration split; with --calib-images, the run's calib_size: edgekit train "
                          "--calib-size, 500 unless set)")
    cal.add_argument("--skip-bad", action="store_true",
                     help="leave out files of --calib-images that cannot be decoded (each reported) instead of "
                          "stopping at the first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray_sweep.add_arguments(parser, what="model (all of its artifacts)")


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return n


def run(args) -> int:
    calibration = CalibrationOptions(images=args.calib_images, size=args.calib_size, skip_bad=args.skip_bad)
    ray = ray_sweep.options_from_args(args)
    if ray is None:  # on Ray, TensorFlow runs in the tasks only
        try:  # TensorFlow's start-up notices would bury the progress lines
            from converters.cluster.tensorflow_import import import_tensorflow_quietly

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
        calibration=calibration,
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
    for name in args.profile:
        stem = Path(name).stem
        print(f"next: edgekit bundle {args.run} --profile {name} --out {stem}-bundle.tar.gz")
    return 0
