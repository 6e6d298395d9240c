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
from converters.data.images import ImageOptions
from converters.family.toml_file import family_descriptions, load_family
from converters.train.ensembles import build_ensemble_one, ensemble_finished, resolve_ensembles
from converters.train.model import train_one, train_task
from converters.train.options import FULL, FULL_SPLITS, QUICK, QUICK_SPLITS, Schedule, SplitOptions, TrainOptions
from converters.train.run_folder import (
    RUN_FILE,
    check_run_compatible,
    check_source,
    clean_unfinished,
    family_key,
    is_imported,
    open_run_data,
    read_finished,
    read_run_json,
    run_lock,
    run_record,
    write_model_files,
)
from edge.artifacts.images import RESIZE_METHODS
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
    from edge.core.progress import WORK_FORMAT, done_text, progress_bar

    # The bar advances by estimated cost, not model count: the ETA then holds when big models come last.
    costs = [training_cost(spec, splits.input_shape, splits.num_classes) for spec in todo]
    bar = progress_bar(sum(costs), enabled=opts.progress and bool(todo), unit="", desc="",
                       bar_format=WORK_FORMAT)
    try:
        for i, (spec, cost) in enumerate(zip(todo, costs)):
            bar.set_description_str(done_text(i, len(todo), "models"), refresh=False)
            bar.set_postfix_str(spec.model_id, refresh=True)
            rec = train_one(spec, splits, models_dir / spec.model_id, opts.schedule, opts.seed,
                            write=lambda s: bar.write(s, file=out))
            results[spec.model_id] = _result(rec, "trained")
            bar.write(f"done {spec.model_id}: test acc {rec['test_accuracy']:.4f}, {rec['epochs']} epochs, "
                      f"{rec['wall_s']:.1f}s", file=out)
            bar.set_description_str(done_text(i + 1, len(todo), "models"), refresh=False)
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
    out = out or sys.stdout
    run_dir = Path(opts.run_dir)
    if not 0.0 < opts.splits.val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be between 0 and 1 (early stopping needs a validation split), "
                         f"got {opts.splits.val_fraction}")
    if opts.ray is not None:
        ray_sweep.preflight(opts.ray)  # Ray installed, the cluster answers: before any work starts
    family = load_family(opts.family)
    specs = with_parents(family.expand(limit=opts.limit, sample=opts.sample, seed=opts.seed))
    if not specs:
        raise UsageError(f"family {opts.family!r} selected no specs (limit={opts.limit}, sample={opts.sample})")

    with run_lock(run_dir):
        existing = read_run_json(run_dir / RUN_FILE)
        if existing is not None and opts.force:
            for sub in ("models", "artifacts"):
                shutil.rmtree(run_dir / sub, ignore_errors=True)
            (run_dir / "manifest.json").unlink(missing_ok=True)
            # Start over with this command's data; a decoded image cache that still matches is reused.
            (run_dir / RUN_FILE).unlink()
            existing = None
        source = opts.source(run_exists=existing is not None)
        if existing is not None:
            named = source.dataset if source is not None else existing.get("dataset")
            check_run_compatible(existing, {"dataset": named, "family": family_key(opts.family), "seed": opts.seed,
                                            "splits": dataclasses.asdict(opts.splits),
                                            "schedule": dataclasses.asdict(opts.schedule)}, run_dir)
            check_source(existing, source, run_dir)
            if source is not None and source.images is None and source.data_dir:
                # the same dataset found elsewhere now (moved, or first named): read it from there from now on;
                # a resumed run with nothing new rewrites nothing
                found = str(Path(source.data_dir).expanduser().resolve())
                if existing.get("data_dir") != found:
                    existing["data_dir"] = found
                    atomic_write_json(run_dir / RUN_FILE, existing)
        splits = open_run_data(run_dir, source, splits=opts.splits, seed=opts.seed, progress=opts.progress, out=out)
        data = read_run_json(run_dir / RUN_FILE) or {}
        wanted = run_record(opts, {**data, "input_shape": list(splits.input_shape),
                                   "class_names": list(splits.class_names)})
        if data != wanted:
            atomic_write_json(run_dir / RUN_FILE, wanted)

        models_dir = run_dir / "models"
        n_tmp = clean_stale_temps(run_dir)
        removed = clean_unfinished(models_dir)
        if removed or n_tmp:
            print(f"resume: removed {len(removed)} unfinished model folder(s) {removed} and "
                  f"{n_tmp} stale temp file(s)", file=out, flush=True)

        results: dict[str, ModelResult] = {}
        todo = []
        for spec in specs:
            rec = read_finished(models_dir / spec.model_id, spec.model_id)
            if rec is not None and is_imported(rec):
                raise UsageError(f"{models_dir / spec.model_id} is an imported model, and the family's spec "
                                 f"{spec.model_id} has the same id; import it under another name (nothing trained)")
            if rec is not None:
                results[spec.model_id] = _result(rec, "resumed")
            else:
                todo.append(spec)
        print(f"edgekit train: {len(specs)} spec(s) of family {opts.family!r} on {_data_label(wanted)} "
              f"({len(splits.x_train)} train / {len(splits.x_val)} val / {len(splits.x_test)} test images, "
              f"{opts.schedule.mode}: <= {opts.schedule.epochs} epochs, batch {opts.schedule.batch_size}"
              + (f", {opts.schedule.train_images} of the training images each"
                 if opts.schedule.train_images and opts.schedule.train_images < len(splits.x_train) else "")
              + "".join(f"; {n} with recipe {r!r}" for r, n in _recipe_counts(specs).items()) + "); "
              f"{len(specs) - len(todo)} already finished, {len(todo)} to train"
              + (f"; then {len(family.ensembles)} [[ensemble]] declaration(s)" if family.ensembles else ""),
              file=out, flush=True)

        # Pruned children after every parent, here: each starts from its parent's model.keras in the run folder.
        children = [s for s in todo if s.derived]
        todo = [s for s in todo if not s.derived]
        if todo and opts.ray is not None:
            _train_on_ray(todo, splits, models_dir, opts, results, out)
        else:
            if todo:
                import_tensorflow_quietly()
            _train_here(todo, splits, models_dir, opts, results, out)
        ready = [s for s in children if results.get(s.parent.model_id) is None
                 or results[s.parent.model_id].status != "failed"]
        for s in children:
            if s not in ready:
                results[s.model_id] = _failed(s.model_id, f"its parent {s.parent.model_id} failed to train")
        if ready:
            import_tensorflow_quietly()
            _train_here(ready, splits, models_dir, opts, results, out)

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


def with_parents(specs: list) -> list:
    """``specs`` with each derived spec's parent (and its parent's, for a ViP child of a pruned member) listed
    before it, once."""
    out, seen = [], set()

    def add(spec) -> None:
        if spec.model_id in seen:
            return
        if spec.derived:
            add(spec.parent)
        seen.add(spec.model_id)
        out.append(spec)

    for spec in specs:
        add(spec)
    return out


def _data_label(meta: dict[str, Any]) -> str:
    if meta.get("dataset") == "images":
        h, w, c = meta["input_shape"]
        return f"the images in {meta['data_dir']} ({h}x{w}x{c}, {meta['images']['resize']} resize)"
    return str(meta.get("dataset"))


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
    builtin = "; ".join(f"{name} ({text})" if text else name for name, text in family_descriptions().items())
    parser.add_argument("--family", default="demo",
                        help=f"a built-in family or a family .toml file (default: demo, what `make demo` trains; "
                             f"pick some specs of a large one with --sample or --limit). Built in: "
                             f"{builtin.replace('%', '%%')}")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--dataset", default=None, choices=["fashion_mnist", "mnist", "cifar10"],
                      help="a named dataset (default: the run's own when RUN exists, else fashion_mnist)")
    data.add_argument("--images", type=Path, metavar="DIR",
                      help="a folder of images with one subfolder per class (class names: the folder names, "
                           "sorted), optionally under train/, val/ and test/; JPEG, PNG, BMP or GIF")
    parser.add_argument("--data-dir", default=None,
                        help="folder with the dataset files (default: $EDGEKIT_<DATASET>, the Debian package, "
                             "then Keras' downloader)")
    img = parser.add_argument_group("image folders (--images)")
    img.add_argument("--image-size", type=_image_size, metavar="HxW|N",
                     help="resize every image to H x W (N: N x N) (default: the most common size in the folder)")
    img.add_argument("--color", choices=["gray", "rgb"],
                     help="gray (1 channel) or rgb (3) (default: gray if every image is grayscale, else rgb)")
    img.add_argument("--resize", choices=list(RESIZE_METHODS), default="bilinear",
                     help="resize method (Pillow's filter; area = box), recorded in the run and the bundles "
                          "(default: bilinear)")
    img.add_argument("--skip-bad", action="store_true",
                     help="skip files that cannot be decoded, and list each one, instead of stopping at the first")
    img.add_argument("--test-fraction", type=float, default=0.2,
                     help="test share of each class when the folder has no test/ subfolder (default 0.2)")
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
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="validation share of the training images (not used when an image folder has val/)")
    parser.add_argument("--calib-size", type=int, default=500, help="int8 calibration images (from the train part)")
    parser.add_argument("--seed", type=int, default=0, help="seed for splits, sampling and weights (default 0)")
    parser.add_argument("--force", action="store_true",
                        help="if RUN was trained with other settings, delete its models and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray_sweep.add_arguments(parser, what="spec")


def _image_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("×", "x").split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 32x32) or N, got {text!r}")
    return vals[0], vals[1]


def image_options_from_args(args: argparse.Namespace) -> ImageOptions | None:
    """--images and its options as ImageOptions (None without --images); the options without --images are refused."""
    if args.images is None:
        given = [f for f, v in (("--image-size", args.image_size), ("--color", args.color),
                                ("--skip-bad", args.skip_bad)) if v]
        if args.resize != "bilinear":
            given.append("--resize")
        if args.test_fraction != 0.2:
            given.append("--test-fraction")
        if given:
            raise UsageError(f"{', '.join(given)} only apply to an image folder: add --images DIR")
        return None
    if args.data_dir is not None:
        raise UsageError("--data-dir names a folder of dataset files; for an image folder pass only --images DIR")
    return ImageOptions(root=args.images, size=args.image_size, channels={"gray": 1, "rgb": 3}.get(args.color),
                        resize=args.resize, skip_bad=args.skip_bad, test_fraction=args.test_fraction)


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
    images = image_options_from_args(args)
    dataset = "images" if images is not None else (args.dataset or ("fashion_mnist" if args.data_dir else None))
    return TrainOptions(run_dir=Path(args.run_dir), family=args.family, dataset=dataset,
                        data_dir=args.data_dir, images=images, seed=args.seed, schedule=schedule, splits=splits,
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
