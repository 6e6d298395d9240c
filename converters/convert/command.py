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
from typing import TextIO

import numpy as np

from converters.cluster import ray_sweep
from converters.cluster.ray_sweep import RayOptions
from converters.convert.model import Failed, ModelDir, Note, artifact_path, convert_one, convert_task
from converters.convert.record import Outcome, Recorder, convert_lock, open_manifest
from device_profiles import BuildTarget, load_profile
from edge.artifacts.formats import FORMATS, PRECISIONS
from edge.artifacts.manifest import Manifest
from edge.core.atomic import clean_stale_temps, read_json, sha256_bytes, sha256_file
from edge.core.errors import MissingError, UsageError
from edge.core.progress import progress_bar
from edge.core.textable import format_table as format_text_table

DEFAULT_MAX_DROP = 2.0


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
        raise MissingError(f"{models_dir} does not exist; train models first with 'edgekit train {run_dir} ...'")
    out = []
    for d in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        tj = d / "train.json"
        if not tj.is_file():
            continue
        train = read_json(tj, what="train record")
        keras_path = d / "model.keras"
        if not keras_path.is_file():
            raise MissingError(f"{keras_path} is missing although {tj} says the model finished; retrain it")
        out.append(ModelDir(model_id=str(train.get("model_id", d.name)), path=d, keras_path=keras_path, train=train))
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
) -> ConvertResult:
    """Build every artifact the profiles need for every finished model, validate it, record it.

    The manifest is saved after every artifact, so an interrupted convert resumes where it
    stopped; an artifact whose file and source model.keras are unchanged is skipped (its
    status is re-judged against ``max_drop`` from the recorded numbers). With ``ray``, each
    model to convert is a Ray task (converters.cluster.ray_sweep) and this process writes what it returns.
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
        raise UsageError(f"no finished models in {run_dir / 'models'} (no train.json yet); run 'edgekit train' first")

    with convert_lock(run_dir):
        return _convert_locked(run_dir, models, targets, meta, max_drop, limit_test, force, batch_size, out, progress,
                               ray)


def _eval_set(run_dir: Path, limit_test: int | None, rec: Recorder):
    """The run's test images and labels (first ``limit_test``) and its calibration images."""
    from converters.data.datasets import splits_for_run

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
    manifest = open_manifest(run_dir, str(meta.get("dataset", "")), tuple(str(c) for c in meta.get("class_names", ())))

    bar = progress_bar(len(models) * len(targets), enabled=progress)
    rec = Recorder(run_dir, manifest, bar, out)
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
                for ev in convert_one(md, md.keras_path, todo, run_dir, *evalset, limit_test, max_drop, batch_size):
                    rec.apply(ev, md, source_sha)
    finally:
        bar.close()
    # Skips are reported as they are found; the table reads better in model, then target order.
    rank = {(m.model_id, t.format, t.precision): (i, j) for i, m in enumerate(models) for j, t in enumerate(targets)}
    outcomes = sorted(rec.outcomes, key=lambda o: rank[(o.model_id, o.format, o.precision)])
    return ConvertResult(manifest=rec.manifest, outcomes=tuple(outcomes))


def _convert_on_ray(rec: Recorder, models, targets, max_drop, limit_test, force, batch_size,
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
            (r.model_id, f"{r.format}-{r.precision}", f"{r.size_bytes / 1024:.1f}", _pct(r.host_accuracy), delta,
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
