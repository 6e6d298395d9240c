"""`edgekit import`: a user's own Keras, ONNX or TFLite models become models of a run, measured on its test split.

Every model file is opened and checked (untrusted input) before anything is written. Each becomes
``RUN/models/<id>/`` with its model file and, last and atomically, train.json (``"source"`` says what it
came from); a model already imported unchanged is skipped, and a killed import leaves an unfinished
folder that the next run of import or train deletes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from converters.importing.conventions import FLAG_HELP, NAMED, InputConvention, parse_input_range, resolve
from converters.importing.sources import ACCEPTED, Source, open_source
from edge.artifacts.images import RESIZE_METHODS
from edge.core.atomic import atomic_write_json
from edge.core.errors import UsageError
from edge.core.textable import format_table as format_text_table

CHANCE_FACTOR = 1.5  # a test accuracy below this many times chance (1 / classes) draws a warning
PROBE_IMAGES = 500  # test images each other named input convention is tried on
PROBE_MARGIN = 0.15  # another convention must score this much higher (0..1) to draw a warning
NEXT_PROFILE = "desktop-cpu"


@dataclass(frozen=True)
class ImportOptions:
    run_dir: Path
    models: tuple[Path, ...]
    dataset: str | None = None  # a named dataset for a new run
    data_dir: str | None = None
    images: Path | None = None  # an image folder for a new run
    resize: str = "bilinear"
    skip_bad: bool = False
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    calib_size: int = 500
    seed: int = 0
    input_range: str | None = None  # None: the sidecar TOML, else raw pixels 0..255
    name: str | None = None
    force: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.models:
            raise UsageError("name at least one model file to import")
        if self.images is not None and self.dataset is not None:
            raise UsageError("pass --images DIR or --dataset NAME, not both")
        if self.name is not None and len(self.models) > 1:
            raise UsageError(f"--name names one model, but {len(self.models)} are given; import them one at a time "
                             "to name each, or leave --name out (ids come from the file names)")


@dataclass(frozen=True)
class Imported:
    """One row of the import's table."""

    model_id: str
    format: str
    input: str
    convention: str
    test_accuracy: float
    classes: int
    status: str  # imported | re-imported | skip
    path: str
    notes: tuple[str, ...] = ()
    probe: dict[str, Any] | None = None  # a named input convention that fits clearly better (probe_conventions)


# ---------------------------------------------------------------------------------------------- ids


def safe_id(text: str) -> str:
    """A model id from a file name: letters, digits, '.', '_' and '-' only."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return s[:80] or "model"


def _model_name(path: Path) -> str:
    name = path.resolve().name if path.name in ("", ".", "..") else path.name
    for suffix in (".keras", ".h5", ".hdf5", ".onnx", ".tflite"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _train_json(model_dir: Path) -> dict[str, Any] | None:
    from converters.train.run_folder import TRAIN_FILE
    from edge.core.atomic import read_json

    if not (model_dir / TRAIN_FILE).is_file():
        return None
    try:
        rec = read_json(model_dir / TRAIN_FILE, what="train record")
    except (ValueError, OSError):
        return None
    return rec if isinstance(rec, dict) and rec.get("finished") is True else None


def _same_import(rec: dict[str, Any] | None, src: Source, conv: InputConvention) -> bool:
    s = (rec or {}).get("source")
    if not isinstance(s, dict) or s.get("sha256") != src.sha256 or s.get("format") != src.format:
        return False
    inp = s.get("input") or {}
    return [float(v) for v in inp.get("mean", ())] == list(conv.mean) and \
        [float(v) for v in inp.get("std", ())] == list(conv.std)


def choose_id(models_dir: Path, base: str, src: Source, conv: InputConvention, named: bool, taken: set[str]
              ) -> tuple[str, str]:
    """(model id, "new" | "same" | "changed"): the base id, or base-FORMAT, base-FORMAT-2... past trained models
    and ids this command already gave. An imported model of that id is this file's earlier import: the same, or
    changed."""
    # The same model exported to several formats shares a file stem: tiny, tiny-onnx, tiny-tflite, then numbers.
    for k in range(0, 1000):
        mid = base if k == 0 else f"{base}-{src.format}" if k == 1 else f"{base}-{src.format}-{k}"
        if mid in taken:
            continue
        rec = _train_json(models_dir / mid)
        if rec is None and not (models_dir / mid).exists():
            return mid, "new"
        if rec is not None and _same_import(rec, src, conv):
            return mid, "same"
        if rec is not None and isinstance(rec.get("source"), dict) and \
                Path(str(rec["source"].get("path", ""))) == src.path.resolve():
            return mid, "changed"
        if named:
            raise UsageError(f"{models_dir / mid} holds another model; choose another --name, or leave --name out "
                             "to number it")
    raise UsageError(f"no free model id for {src.path} under {models_dir}")  # pragma: no cover


# ---------------------------------------------------------------------------------------------- one model


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return float("nan")
    return float((np.asarray(scores).argmax(axis=1) == np.asarray(labels).reshape(-1)).mean())


def check_against_run(src: Source, splits, run_dir: Path) -> str | None:
    """The model's channels and class count must be the run's. Another height and width is accepted: the run's
    images are resized to the model's by the one resize, in the import's measurement as in conversion, the
    benchmark and serving. Returns a note saying so (None at the run's size)."""
    run_shape = tuple(int(v) for v in splits.input_shape)
    h, w, c = src.input_hwc
    rh, rw, rc = run_shape
    if c != rc:
        raise UsageError(
            f"{src.path} takes {h}x{w}x{c} images (H x W x C) but the run {run_dir} has {rh}x{rw}x{rc} images: the "
            f"channels differ ({c} against {rc}). Import it into a run of its colour (a new RUN with --images DIR "
            "decodes the images in the first model's colour), or export the model for this run's images")
    if src.classes != splits.num_classes:
        raise UsageError(
            f"{src.path} outputs {src.classes} class scores but the run {run_dir} has {splits.num_classes} classes "
            f"({', '.join(splits.class_names[:12])}{' ...' if splits.num_classes > 12 else ''}); import it into a run "
            "with its classes")
    if (h, w) == (rh, rw):
        return None
    how = "area averaging" if h * w < rh * rw else "bilinear"
    return (f"takes {h}x{w} images: the run's {rh}x{rw} images are resized to {h}x{w} ({how}, edgekit's one resize) "
            "to measure, convert, benchmark and serve it")


def import_one(src: Source, conv: InputConvention, model_dir: Path, model_id: str, splits) -> dict[str, Any]:
    """Write ``model_dir`` (model file, then train.json last and atomically); returns train.json."""
    from converters.train.run_folder import TRAIN_FILE

    t0 = time.perf_counter()
    if model_dir.exists():  # an earlier import of a changed file: unfinished first, so a kill leaves no stale model
        (model_dir / TRAIN_FILE).unlink(missing_ok=True)
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    test = src.scores(splits.x_test, conv)
    if test.shape != (len(splits.x_test), src.classes) or not np.all(np.isfinite(test)):
        raise UsageError(f"{src.path}: its outputs on the run's test images are not finite (N, {src.classes}) "
                         "scores; check the model and its input convention (--input-range)")
    test_acc = accuracy(test, splits.y_test)
    val_acc = accuracy(src.scores(splits.x_val, conv), splits.y_val) if len(splits.x_val) else test_acc
    probe = probe_conventions(src, conv, splits, test_acc)
    src.write(model_dir, conv)
    record = {
        "model_id": model_id,
        "epochs": 0,
        "wall_s": round(time.perf_counter() - t0, 3),
        "test_accuracy": test_acc,
        "val_accuracy": val_acc,
        "test_images": int(len(splits.x_test)),
        "val_images": int(len(splits.x_val)),
        "params": int(src.params),
        "macs": int(src.macs),
        "source": {
            "format": src.format,
            "file": src.file_name,
            "path": str(src.path.resolve()),
            "sha256": src.sha256,
            "precision": src.precision,
            "input": conv.to_dict(),
            "notes": list(src.notes),
            "probe": probe,
        },
        "finished": True,
    }
    atomic_write_json(model_dir / TRAIN_FILE, record)
    return record


def probe_conventions(src: Source, conv: InputConvention, splits, test_acc: float) -> dict[str, Any] | None:
    """The named input convention that scores clearly best on a sample of the test images, when it is not
    the declared one: {"range", "accuracy", "declared_accuracy", "images"}; else None.

    A wrong --input-range rarely gives chance accuracy (a -1..1 MobileNetV2 fed 0..255 pixels scored 27% on
    10 classes), so the import tries the others on up to PROBE_IMAGES test images and says which fits.
    """
    n = min(PROBE_IMAGES, len(splits.x_test))
    if n == 0:
        return None
    idx = np.unique(np.linspace(0, len(splits.x_test) - 1, n).round().astype(np.int64))  # spread over the classes
    x, y = splits.x_test[idx], splits.y_test[idx]
    n = len(idx)
    declared = accuracy(src.scores(x, conv), y) if n < len(splits.x_test) else test_acc
    best: tuple[float, str] | None = None
    for name in NAMED:
        try:
            alt = parse_input_range(name, "probe").for_channels(src.input_hwc[2], src.path)
        except UsageError:  # imagenet's three channel values for a gray model
            continue
        if alt.describe() == conv.describe():
            continue
        acc = accuracy(src.scores(x, alt), y)
        if best is None or acc > best[0]:
            best = (acc, name)
    if best is None or best[0] < declared + PROBE_MARGIN:
        return None
    return {"range": best[1], "accuracy": best[0], "declared_accuracy": declared, "images": n}


# ---------------------------------------------------------------------------------------------- the run


def _data_source(opts: ImportOptions):
    from converters.data.datasets import IMAGES, DataSource

    if opts.images is not None:
        from converters.data.images import ImageOptions

        return DataSource(dataset=IMAGES, images=ImageOptions(root=Path(opts.images).expanduser(), resize=opts.resize,
                                                              skip_bad=opts.skip_bad,
                                                              test_fraction=opts.test_fraction))
    if opts.dataset is not None:
        return DataSource(dataset=opts.dataset, data_dir=opts.data_dir)
    return None


def import_models(opts: ImportOptions, out: TextIO | None = None) -> list[Imported]:
    """Import every model of ``opts`` into its run; returns the table's rows."""
    from converters.train.options import SplitOptions
    from converters.train.run_folder import RUN_FILE, clean_unfinished, open_run_data, run_lock

    out = out or sys.stdout
    run_dir = Path(opts.run_dir).expanduser()
    source = _data_source(opts)
    if source is None and not (run_dir / RUN_FILE).is_file():
        raise UsageError(f"{run_dir} is a new run (no {RUN_FILE}): pass the data its models are measured on, "
                         "--images DIR (a folder with one subfolder per class) or --dataset NAME")

    # Open and check every file before anything is written.
    opened: list[tuple[Source, InputConvention]] = []
    try:
        for path in opts.models:
            src = open_source(path)
            conv = resolve(opts.input_range, src.path).for_channels(src.input_hwc[2], src.path)
            opened.append((src, conv))
        with run_lock(run_dir):
            models_dir = run_dir / "models"
            clean_unfinished(models_dir)
            new_run = not (run_dir / RUN_FILE).is_file()
            splits = open_run_data(
                run_dir, source,
                splits=SplitOptions(val_fraction=opts.val_fraction, calib_size=opts.calib_size),
                seed=opts.seed, want_shape=opened[0][0].input_hwc if new_run else None,
                progress=opts.progress, out=out)
            for src, _ in opened:  # every model checked before any is written
                note = check_against_run(src, splits, run_dir)
                if note is not None:
                    src.note(note)
            return _import_all(opened, opts, models_dir, splits, out)
    finally:
        for src, _ in opened:
            src.close()


def _import_all(opened, opts: ImportOptions, models_dir: Path, splits, out: TextIO) -> list[Imported]:
    rows: list[Imported] = []
    taken: set[str] = set()
    for src, conv in opened:
        base = safe_id(opts.name if opts.name is not None else _model_name(src.path))
        mid, state = choose_id(models_dir, base, src, conv, opts.name is not None, taken)
        taken.add(mid)
        if state == "same" and not opts.force:
            rec = _train_json(models_dir / mid) or {}
            print(f"skip  {mid}: {src.path} already imported, unchanged (--force re-imports it)", file=out, flush=True)
            status = "skip"
        else:
            rec = import_one(src, conv, models_dir / mid, mid, splits)
            status = "imported" if state == "new" else "re-imported"
            print(f"{status} {mid}: {src.path} ({src.format}), test accuracy {100 * rec['test_accuracy']:.2f}%",
                  file=out, flush=True)
        row = Imported(model_id=mid, format=src.format + ("" if src.format != "tflite" else f"-{src.precision}"),
                       input=src.describe_input(), convention=conv.describe(),
                       test_accuracy=float(rec.get("test_accuracy", float("nan"))), classes=src.classes,
                       status=status, path=str(src.path), notes=src.notes,
                       probe=(rec.get("source") or {}).get("probe"))
        rows.append(row)
        for note in src.notes:
            print(f"note  {mid}: {note}", file=out, flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- report


def format_table(rows: list[Imported]) -> str:
    header = ("model", "format", "input (HxWxC)", "input convention", "test accuracy", "status")
    body = [(r.model_id, r.format, r.input, r.convention,
             "-" if r.test_accuracy != r.test_accuracy else f"{100 * r.test_accuracy:.2f}%", r.status) for r in rows]
    return format_text_table(header, body, align="llllrl", rule=True)


def chance_warnings(rows: list[Imported]) -> list[str]:
    """A WARN for each model whose accuracy is near chance, or that another named input convention fits clearly
    better (``probe_conventions``): most often a wrong --input-range."""
    out = []
    for r in rows:
        if r.probe:
            p = r.probe
            out.append(f"WARN  {r.model_id}: with input convention {r.convention} it scores "
                       f"{100 * p['declared_accuracy']:.2f}% on {p['images']} test images, with "
                       f"--input-range={p['range']} {100 * p['accuracy']:.2f}%: re-import it with "
                       f"--input-range={p['range']} --force (or a sidecar TOML) if that is what it was trained on")
            continue
        chance = 1.0 / max(2, r.classes)
        if r.test_accuracy == r.test_accuracy and r.test_accuracy < CHANCE_FACTOR * chance:
            out.append(f"WARN  {r.model_id}: test accuracy {100 * r.test_accuracy:.2f}% is near chance "
                       f"({100 * chance:.1f}% for {r.classes} classes) with input convention {r.convention}: is that "
                       "what the model was trained on? Re-import with the right --input-range (0..255, 0..1, -1..1, "
                       "imagenet or mean=R,G,B std=R,G,B) and --force")
    return out


# ---------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # "--input-range -1..1": argparse takes a value starting with "-" for an option unless it looks like a
    # negative number; teach this parser that -1..1 (and -1,1) is one. (--input-range=-1..1 always works.)
    matcher = getattr(parser, "_negative_number_matcher", None)
    if matcher is not None:
        parser._negative_number_matcher = re.compile(rf"{matcher.pattern}|^-\d+(\.\.|,)\d+$")
    parser.add_argument("run_dir", metavar="RUN", type=Path, help="run folder (created for a new run)")
    parser.add_argument("models", metavar="MODEL", type=Path, nargs="+", help=f"model files: {ACCEPTED}")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--images", type=Path, metavar="DIR",
                      help="new run: a folder of images with one subfolder per class (decoded at the first "
                           "model's input size and colour)")
    data.add_argument("--dataset", default=None, choices=["fashion_mnist", "mnist", "cifar10"],
                      help="new run: a named dataset (an existing run keeps its own data)")
    parser.add_argument("--data-dir", default=None, help="folder with the --dataset files")
    parser.add_argument("--input-range", default=None, metavar="R",
                        help=f"what the models take: {FLAG_HELP}. Wins over a sidecar TOML beside the model "
                             "(<model file>.toml or edgekit.toml: input_range = \"-1..1\", or [input] mean = [...] "
                             "std = [...])")
    parser.add_argument("--name", default=None, help="model id for a single MODEL (default: from its file name)")
    parser.add_argument("--force", action="store_true", help="re-import models already imported unchanged")
    img = parser.add_argument_group("image folders (--images, new run)")
    img.add_argument("--resize", choices=list(RESIZE_METHODS), default="bilinear",
                     help="resize method (Pillow's filter; area = box), recorded in the run (default: bilinear)")
    img.add_argument("--skip-bad", action="store_true", help="skip images that cannot be decoded, listing each")
    img.add_argument("--test-fraction", type=float, default=0.2,
                     help="test share of each class when the folder has no test/ subfolder (default 0.2)")
    split = parser.add_argument_group("splits (new run)")
    split.add_argument("--val-fraction", type=float, default=0.1, help="validation share of training (default 0.1)")
    split.add_argument("--calib-size", type=int, default=500, help="int8 calibration images (default 500)")
    split.add_argument("--seed", type=int, default=0, help="seed of the splits (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def options_from_args(args) -> ImportOptions:
    return ImportOptions(
        run_dir=Path(args.run_dir), models=tuple(Path(m) for m in args.models), dataset=args.dataset,
        data_dir=args.data_dir, images=args.images, resize=args.resize, skip_bad=args.skip_bad,
        test_fraction=args.test_fraction, val_fraction=args.val_fraction, calib_size=args.calib_size,
        seed=args.seed, input_range=args.input_range, name=args.name, force=args.force,
        progress=not args.no_progress)


def run(args) -> int:
    try:  # TensorFlow's start-up notices would bury the table
        from converters.cluster.tensorflow_import import import_tensorflow_quietly

        import_tensorflow_quietly()
    except ImportError:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    opts = options_from_args(args)
    rows = import_models(opts)
    print()
    print(format_table(rows))
    for w in chance_warnings(rows):
        print(w)
    print()
    print(f"next: edgekit convert {opts.run_dir} --profile {NEXT_PROFILE}")
    return 0

