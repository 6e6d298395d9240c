"""`edgekit train`: a resumable, deterministic training sweep over the specs of a CNN family.

The sweep selects specs, trains those not finished in the run folder (here in turn, or as Ray tasks),
then builds the family's ensembles, and prints one table. The run folder is ``converters.train.run_folder``;
one model's training ``converters.train.model``; ensembles ``converters.train.ensembles``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from converters.cluster import ray_sweep
from converters.cluster.tensorflow_import import import_tensorflow_quietly
from converters.family.toml_file import load_family
from converters.train.ensembles import build_ensemble_one, ensemble_finished, resolve_ensembles
from converters.train.model import train_one, train_task
from converters.train.options import FULL, FULL_SPLITS, QUICK, QUICK_SPLITS, Schedule, SplitOptions, TrainOptions
from converters.train.run_folder import (
    RUN_FILE,
    check_run_compatible,
    clean_unfinished,
    read_finished,
    read_run_json,
    run_lock,
    run_record,
    write_model_files,
)
from edge.core.atomic import atomic_write_json, clean_stale_temps
from edge.core.errors import UsageError
from edge.core.textable import format_table as format_text_table


@dataclass(frozen=True)
class ModelResult:
    """One row of the sweep's final table."""

    model_id: str
    status: str  # "trained", "built" (an ensemble, built now), "resumed" (finished by an earlier run) or "failed"
    test_accuracy: float
    val_accuracy: float
    params: int
    macs: int
    epochs: int
    wall_s: float
    error: str = ""  # why it failed (a Ray task only); nothing of it is in the run folder, a rerun retries it


def training_cost(spec, input_shape, num_classes: int) -> float:
    """Relative training time of a spec, for the ETA (fit on the demo family: ~6 s + ~7 s per MMAC on 2 cores)."""
    try:
        mmacs = spec.estimate_macs(input_shape, num_classes) / 1e6
    except Exception:  # an estimate only; a spec that cannot say counts as average
        return 2.0
    # pSConv's shifted 2x2 convolutions train at about twice the time per MAC of a dense conv.
    return 1.0 + 1.2 * mmacs * (2.0 if getattr(spec, "psconv", False) else 1.0)


def _result(rec: dict[str, Any], status: str) -> ModelResult:
    return ModelResult(model_id=rec["model_id"], status=status, test_accuracy=float(rec["test_accuracy"]),
                       val_accuracy=float(rec["val_accuracy"]), params=int(rec["params"]),
                       macs=int(rec["macs"]), epochs=int(rec["epochs"]), wall_s=float(rec["wall_s"]))


def _failed(model_id: str, error: str) -> ModelResult:
    nan = float("nan")
    return ModelResult(model_id=model_id, status="failed", test_accuracy=nan, val_accuracy=nan, params=0, macs=0,
                       epochs=0, wall_s=0.0, error=error)


def _train_here(todo, splits, models_dir: Path, opts: TrainOptions, results: dict, out: TextIO) -> None:
    """Train ``todo`` one after the other in this process."""
    from edge.core.progress import progress_bar

    # The bar advances by estimated cost, not model count: the ETA then holds when big models come last.
    costs = [training_cost(spec, splits.input_shape, splits.num_classes) for spec in todo]
    bar = progress_bar(sum(costs), enabled=opts.progress and bool(todo), unit="", desc="",
                       bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
    try:
        for i, (spec, cost) in enumerate(zip(todo, costs)):
            bar.set_description_str(f"{i}/{len(todo)} models", refresh=False)
            bar.set_postfix_str(spec.model_id, refresh=True)
            rec = train_one(spec, splits, models_dir / spec.model_id, opts.schedule, opts.seed,
                            write=lambda s: bar.write(s, file=out))
            results[spec.model_id] = _result(rec, "trained")
            bar.write(f"done {spec.model_id}: test acc {rec['test_accuracy']:.4f}, {rec['epochs']} epochs, "
                      f"{rec['wall_s']:.1f}s", file=out)
            bar.set_description_str(f"{i + 1}/{len(todo)} models", refresh=False)
            bar.update(cost)
    finally:
        bar.close()


def _train_on_ray(todo, splits, models_dir: Path, opts: TrainOptions, results: dict, out: TextIO) -> None:
    """Train ``todo`` as Ray tasks; the driver (this process) writes each finished model into the run folder."""
    import ray

    from edge.core.progress import progress_bar

    say = lambda msg: print(msg, file=out, flush=True)  # noqa: E731
    assert opts.ray is not None
    with ray_sweep.ray_session(opts.ray, say=say) as session:
        say(f"ray: {session.where}; {opts.ray.describe()}; results come back to this process, "
            f"which writes them into {opts.run_dir}")
        splits_ref = ray.put(splits)  # once into the object store; workers map it without a copy per task
        calls = [(spec.model_id, (spec, splits_ref, opts.schedule, opts.seed, opts.ray)) for spec in todo]
        bar = progress_bar(len(todo), enabled=opts.progress, unit="model", desc="train")
        try:
            for res in ray_sweep.run_tasks(train_task, calls, opts.ray):
                bar.set_postfix_str(res.key, refresh=False)
                if not res.ok:
                    results[res.key] = _failed(res.key, res.error or "")
                    bar.write(f"FAIL {res.key}: {res.error} (nothing written; a rerun retries it)", file=out)
                    bar.update(1)
                    continue
                rec = res.value["record"]
                write_model_files(models_dir / res.key, res.value["files"])
                results[res.key] = _result(rec, "trained")
                for line in res.value["lines"]:
                    bar.write(line, file=out)
                bar.write(f"done {res.key}: test acc {rec['test_accuracy']:.4f}, {rec['epochs']} epochs, "
                          f"{rec['wall_s']:.1f}s", file=out)
                bar.update(1)
        finally:
            bar.close()


def train_sweep(opts: TrainOptions, out: TextIO | None = None) -> list[ModelResult]:
    """Train every selected spec not yet finished in ``opts.run_dir``; returns one result per selected spec.

    Then builds the family's [[ensemble]]s whose members are finished (skipping those already built from
    the members' current model.keras) and appends one result per ensemble.
    """
    from converters.data.datasets import load_dataset, make_splits

    out = out or sys.stdout
    run_dir = Path(opts.run_dir)
    if not 0.0 < opts.splits.val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be between 0 and 1 (early stopping needs a validation split), "
                         f"got {opts.splits.val_fraction}")
    if opts.ray is not None:
        ray_sweep.preflight(opts.ray)  # Ray installed, the cluster answers: before any work starts
    family = load_family(opts.family)
    specs = family.expand(limit=opts.limit, sample=opts.sample, seed=opts.seed)
    if not specs:
        raise UsageError(f"family {opts.family!r} selected no specs (limit={opts.limit}, sample={opts.sample})")

    ds = load_dataset(opts.dataset, opts.data_dir)
    wanted = run_record(opts, ds.input_shape, ds.class_names)

    with run_lock(run_dir):
        existing = read_run_json(run_dir / RUN_FILE)
        if existing is not None and not opts.force:
            check_run_compatible(existing, wanted, run_dir)
        if existing is not None and opts.force:
            for sub in ("models", "artifacts"):
                shutil.rmtree(run_dir / sub, ignore_errors=True)
            (run_dir / "manifest.json").unlink(missing_ok=True)
        if existing != wanted:
            atomic_write_json(run_dir / RUN_FILE, wanted)

        models_dir = run_dir / "models"
        n_tmp = clean_stale_temps(run_dir)
        removed = clean_unfinished(models_dir)
        if removed or n_tmp:
            print(f"resume: removed {len(removed)} unfinished model folder(s) {removed} and "
                  f"{n_tmp} stale temp file(s)", file=out, flush=True)

        splits = make_splits(ds, **dataclasses.asdict(opts.splits), seed=opts.seed)
        results: dict[str, ModelResult] = {}
        todo = []
        for spec in specs:
            rec = read_finished(models_dir / spec.model_id, spec.model_id)
            if rec is not None:
                results[spec.model_id] = _result(rec, "resumed")
            else:
                todo.append(spec)
        print(f"edgekit train: {len(specs)} spec(s) of family {opts.family!r} on {opts.dataset} "
              f"({len(splits.x_train)} train / {len(splits.x_val)} val / {len(splits.x_test)} test images, "
              f"{opts.schedule.mode}: <= {opts.schedule.epochs} epochs, batch {opts.schedule.batch_size}"
              + (f", {opts.schedule.train_images} of the training images each" if opts.schedule.train_images else "")
              + "".join(f"; {n} with recipe {r!r}" for r, n in _recipe_counts(specs).items()) + "); "
              f"{len(specs) - len(todo)} already finished, {len(todo)} to train"
              + (f"; then {len(family.ensembles)} [[ensemble]] declaration(s)" if family.ensembles else ""),
              file=out, flush=True)

        if todo and opts.ray is not None:
            _train_on_ray(todo, splits, models_dir, opts, results, out)
        else:
            if todo:
                import_tensorflow_quietly()
            _train_here(todo, splits, models_dir, opts, results, out)

        # Ensembles last: they need their members' model.keras (and, for top = K, their accuracy).
        say = lambda msg: print(msg, file=out, flush=True)  # noqa: E731
        failed = [m for m, r in results.items() if r.status == "failed"]
        if failed and family.ensembles:
            # top = K would pick among the members that happen to be finished: wait for all of them.
            say(f"note: {len(failed)} spec(s) failed; the [[ensemble]]s are built once every spec is finished "
                "(rerun the same command)")
            ensembles = []
        else:
            ensembles = resolve_ensembles(family, models_dir, [s.model_id for s in specs], say)
        for ens in ensembles:
            rec = ensemble_finished(models_dir / ens.model_id, ens, models_dir)
            if rec is not None:
                results[ens.model_id] = _result(rec, "resumed")
                continue
            import_tensorflow_quietly()
            rec = build_ensemble_one(ens, splits, models_dir, opts.schedule, opts.seed, write=say)
            results[ens.model_id] = _result(rec, "built")
            best = max(rec["member_test_accuracy"].values())
            say(f"done {ens.model_id} (ensemble of {len(ens.members)}): test acc {rec['test_accuracy']:.4f} "
                f"(best member {best:.4f}), {rec['wall_s']:.1f}s")
    return [results[s.model_id] for s in specs] + [results[e.model_id] for e in ensembles]


# ---------------------------------------------------------------------------------------------- output

def _si(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def format_table(results: list[ModelResult], wall_s: float) -> str:
    head = ("model id", "test acc", "params", "MACs", "epochs", "train s", "status")
    rows = [(r.model_id, "-", "-", "-", "-", "-", r.status) if r.status == "failed" else
            (r.model_id, f"{r.test_accuracy:.4f}", _si(r.params), _si(r.macs), str(r.epochs),
             f"{r.wall_s:.1f}", r.status) for r in results]
    lines = format_text_table(head, rows, align="lrrrrrl", rule=True).split("\n")
    trained = [r for r in results if r.status in ("trained", "built")]
    built = sum(1 for r in results if r.status == "built")
    failed = sum(1 for r in results if r.status == "failed")
    done = [r for r in results if r.status != "failed"]
    if results:
        top = max(done, key=lambda r: r.test_accuracy, default=None)
        best = f"; best {top.model_id} {top.test_accuracy:.4f}" if top else ""
        lines.append(
            f"total: {len(results)} models ({len(trained) - built} trained now, "
            + (f"{built} ensemble(s) built now, " if built else "")
            + f"{len(done) - len(trained)} resumed"
            + (f", {failed} failed" if failed else "") + "), "
            f"train time {sum(r.wall_s for r in trained):.1f}s now / {sum(r.wall_s for r in done):.1f}s all, "
            f"wall {wall_s:.1f}s; params {_si(sum(r.params for r in done))}, "
            f"MACs {_si(sum(r.macs for r in done))}{best}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI

def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", type=Path, help="run folder (created; rerun to resume)")
    parser.add_argument("--family", default="demo",
                        help="built-in family name (demo, default) or a family .toml file (default: demo)")
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist", "cifar10"])
    parser.add_argument("--data-dir", default=None,
                        help="folder with the dataset files (default: $EDGEKIT_<DATASET>, the Debian package, "
                             "then Keras' downloader)")
    sel = parser.add_mutually_exclusive_group()
    sel.add_argument("--limit", type=_positive_int, help="train only the first N specs of the family")
    sel.add_argument("--sample", type=_positive_int, help="train N specs drawn at random (seeded by --seed)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help=f"(default) {QUICK.train_images} training images per spec, <= {QUICK.epochs} epochs")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help=f"all training images, <= {FULL.epochs} epochs, early stopping patience {FULL.patience}")
    parser.set_defaults(mode="quick")
    parser.add_argument("--epochs", type=_positive_int, help="maximum epochs per model (overrides the mode)")
    parser.add_argument("--patience", type=_positive_int, help="early-stopping patience in epochs")
    parser.add_argument("--batch-size", type=_positive_int, help="training batch size")
    parser.add_argument("--learning-rate", type=float, help="Adam learning rate")
    parser.add_argument("--limit-train", type=_positive_int,
                        help="use N training images (a seeded subset, before the validation split)")
    parser.add_argument("--limit-test", type=_positive_int, help="evaluate on N test images (a seeded subset)")
    parser.add_argument("--all-train", action="store_true",
                        help="train every spec on every training image (quick mode too)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation share of the training images")
    parser.add_argument("--calib-size", type=int, default=500, help="int8 calibration images (from the train part)")
    parser.add_argument("--seed", type=int, default=0, help="seed for splits, sampling and weights (default 0)")
    parser.add_argument("--force", action="store_true",
                        help="if RUN was trained with other settings, delete its models and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray_sweep.add_arguments(parser, what="spec")


def _recipe_counts(specs) -> dict[str, int]:
    return dict(Counter(spec.recipe for spec in specs if spec.recipe))


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    base, base_splits = (FULL, FULL_SPLITS) if args.mode == "full" else (QUICK, QUICK_SPLITS)
    schedule = Schedule(
        mode=args.mode,
        epochs=args.epochs or base.epochs,
        patience=args.patience or base.patience,
        batch_size=args.batch_size or base.batch_size,
        learning_rate=args.learning_rate or base.learning_rate,
        train_images=None if args.all_train else base.train_images,
    )
    limit_train = None if args.all_train else (args.limit_train or base_splits.limit_train)
    splits = SplitOptions(val_fraction=args.val_fraction, calib_size=args.calib_size,
                          limit_train=limit_train, limit_test=args.limit_test or base_splits.limit_test)
    return TrainOptions(run_dir=Path(args.run_dir), family=args.family, dataset=args.dataset,
                        data_dir=args.data_dir, seed=args.seed, schedule=schedule, splits=splits,
                        limit=args.limit, sample=args.sample, force=args.force,
                        progress=not args.no_progress, ray=ray_sweep.options_from_args(args))


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    t0 = time.perf_counter()
    results = train_sweep(opts)
    print(format_table(results, time.perf_counter() - t0), flush=True)
    print(f"run folder: {opts.run_dir} (next: edgekit convert {opts.run_dir})", flush=True)
    failed = [r.model_id for r in results if r.status == "failed"]
    if failed:
        print(f"{len(failed)} spec(s) failed (see the FAIL lines above); the others are in {opts.run_dir}. "
              "Rerun the same command to retry them", file=sys.stderr, flush=True)
        return 1
    return 0
