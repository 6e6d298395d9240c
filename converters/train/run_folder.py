"""A training run folder: its file names, run.json (the run's identity), the one-sweep lock, and resume helpers.

``RUN/run.json`` records what every model of the run was trained under; ``RUN/models/<id>/`` holds
spec.json, model.keras and train.json, written in that order, so a folder without a finished
train.json is what a killed run left behind and is deleted on resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, TextIO

from converters.train.options import SplitOptions, TrainOptions
from edge.core.atomic import atomic_write_bytes, atomic_write_json
from edge.core.errors import StepFailed, UsageError

if TYPE_CHECKING:
    from converters.data.datasets import DataSource, Splits

RUN_FILE = "run.json"
TRAIN_FILE = "train.json"
SPEC_FILE = "spec.json"
MODEL_FILE = "model.keras"
LOCK_FILE = ".train.lock"
# Keras insists on the .keras suffix, so the temp name cannot end in .tmp like edge.core.atomic's.
MODEL_TMP_PREFIX = ".model."
MODEL_TMP_SUFFIX = ".tmp.keras"
MODEL_FILES = (SPEC_FILE, MODEL_FILE, TRAIN_FILE)  # the order a model folder is written in: train.json last


# ---------------------------------------------------------------------------------------------- run.json

def family_key(family: str) -> str:
    p = Path(family).expanduser()
    if family.endswith(".toml") or p.is_file():
        return str(p.resolve())
    return family


def data_record(source: DataSource, seed: int, splits: SplitOptions, input_shape: tuple[int, ...],
                class_names: tuple[str, ...], images: dict[str, Any] | None = None) -> dict[str, Any]:
    """run.json of a run with no trained models yet (family and schedule None): its data and splits."""
    if images is not None:
        assert source.images is not None
        data_dir: str | None = str(Path(source.images.root).expanduser().resolve())
    else:
        data_dir = str(Path(source.data_dir).expanduser().resolve()) if source.data_dir else None
    rec = {
        "dataset": source.dataset,
        "data_dir": data_dir,
        "family": None,
        "seed": seed,
        "splits": dataclasses.asdict(splits),
        "input_shape": [int(v) for v in input_shape],
        "class_names": list(class_names),
        "schedule": None,
    }
    if images is not None:
        rec["images"] = images
    return rec


def run_record(opts: TrainOptions, data: dict[str, Any]) -> dict[str, Any]:
    """run.json of a training run: the run's data record (``data``, as open_run_data wrote it) plus the family,
    seed, splits and schedule the models are trained under."""
    return {**data, "family": family_key(opts.family), "seed": opts.seed, "splits": dataclasses.asdict(opts.splits),
            "schedule": dataclasses.asdict(opts.schedule)}


_IDENTITY_KEYS = ("dataset", "family", "seed", "splits", "schedule")
# None in run.json: a run made by `edgekit import`, with no trained models yet; a later `edgekit train` fills them in.
_FILLABLE_KEYS = ("family", "schedule")


def check_run_compatible(existing: dict[str, Any], wanted: dict[str, Any], run_dir: Path) -> None:
    """Refuse to mix models trained under different settings in one run folder."""
    diffs = [f"{k}: run has {existing.get(k)!r}, this command asks {wanted.get(k)!r}"
             for k in _IDENTITY_KEYS if existing.get(k) != wanted.get(k)
             and not (k in _FILLABLE_KEYS and existing.get(k) is None)]
    if diffs:
        raise UsageError(
            f"{run_dir} was trained with other settings:\n  " + "\n  ".join(diffs)
            + "\nUse a new RUN folder, rerun with the same options to resume, "
            "or pass --force to delete its models and start over.")


def read_run_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # atomic writes make this near impossible; treat it as absent and rewrite it


# ---------------------------------------------------------------------------------------------- model dirs

def is_imported(rec: dict[str, Any]) -> bool:
    """Whether a model's train.json is an imported model's (written by `edgekit import`): it has a "source"."""
    return isinstance(rec.get("source"), dict)


def model_file(rec: dict[str, Any]) -> str:
    """The model file in its folder: model.keras, or an imported model's own file (its train.json's source.file)."""
    if is_imported(rec):
        return str(rec["source"].get("file", ""))
    return MODEL_FILE


def read_finished(model_dir: Path, model_id: str | None = None) -> dict[str, Any] | None:
    """The model's train.json if it marks a complete, consistent model; else None.

    A trained model needs spec.json, model.keras and its training numbers; an imported one (train.json with
    "source": {"format", "file", ...}, no spec.json) needs its model file and its test accuracy.
    """
    try:
        rec = json.loads((model_dir / TRAIN_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, NotADirectoryError):
        return None
    if not isinstance(rec, dict) or rec.get("finished") is not True:
        return None
    if model_id is not None and rec.get("model_id") != model_id:
        return None
    if is_imported(rec):
        name = model_file(rec)
        # a plain name inside the folder (a file or a SavedModel folder), never a path out of it
        if not name or Path(name).name != name or name in (".", "..") or not (model_dir / name).exists():
            return None
        needed: tuple[str, ...] = ("test_accuracy",)
    else:
        if not (model_dir / MODEL_FILE).is_file() or not (model_dir / SPEC_FILE).is_file():
            return None
        needed = ("epochs", "wall_s", "test_accuracy", "val_accuracy", "params", "macs")
    if any(not isinstance(rec.get(k), (int, float)) for k in needed):
        return None
    return rec


def clean_unfinished(models_dir: Path) -> list[str]:
    """Delete model folders a killed run (train or import) left without a finished train.json; returns their names.

    Call it holding run_lock: a folder being written by another command looks unfinished too.
    """
    removed: list[str] = []
    if not models_dir.is_dir():
        return removed
    for d in sorted(models_dir.iterdir()):
        if d.is_dir() and read_finished(d) is None:
            shutil.rmtree(d)
            removed.append(d.name)
        elif d.is_dir():
            for tmp in d.glob(f"{MODEL_TMP_PREFIX}*{MODEL_TMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One sweep per run folder at a time; the kernel drops the lock if the process is killed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StepFailed(
                f"another `edgekit train` or `edgekit import` is using {run_dir}; wait for it to finish or use "
                "a new RUN folder"
            ) from None
        yield
    finally:
        fh.close()


def write_model_files(model_dir: Path, files: dict[str, bytes]) -> None:
    """Write a model folder's files returned by a task: each atomically, train.json last, as train_one does."""
    if model_dir.exists():  # not finished when the sweep started (or it would not be trained): start clean
        shutil.rmtree(model_dir)
    for name in MODEL_FILES:
        atomic_write_bytes(model_dir / name, files[name])



# ---------------------------------------------------------------------------------------------- the run's data

def _describe(dataset: str | None, data_dir: str | None) -> str:
    if dataset == "images":
        return f"the image folder {data_dir}"
    return f"dataset {dataset!r}" + (f" from {data_dir}" if data_dir else "")


def check_source(existing: dict[str, Any], source: DataSource | None, run_dir: Path) -> None:
    """An existing run keeps its own data: a ``source`` other than the recorded one is an error naming both."""
    if source is None:
        return
    had = _describe(existing.get("dataset"), existing.get("data_dir"))
    fix = (f"\nAn existing run keeps its own data: leave out --images/--dataset to use it, use a new RUN folder "
           f"for other data, or (edgekit train) pass --force to delete {run_dir}'s models and start over.")
    if source.dataset != existing.get("dataset"):
        wanted = _describe(source.dataset, str(source.images.root) if source.images else source.data_dir)
        raise UsageError(f"{run_dir} was made from {had}; this command names {wanted}.{fix}")
    if source.images is None:
        return
    opts = source.images
    root = str(Path(opts.root).expanduser().resolve())
    rec = existing.get("images") or {}
    diffs = []
    if root != existing.get("data_dir"):
        diffs.append(f"folder: run has {existing.get('data_dir')}, this command names {root}")
    if opts.size is not None and list(opts.size) != list(rec.get("size") or []):
        diffs.append(f"--image-size: run has {rec.get('size')}, this command asks {list(opts.size)}")
    if opts.channels is not None and opts.channels != rec.get("channels"):
        diffs.append(f"channels: run has {rec.get('channels')}, this command asks {opts.channels}")
    for key, flag in (("resize", "--resize"), ("test_fraction", "--test-fraction"), ("skip_bad", "--skip-bad")):
        if getattr(opts, key) != rec.get(key):
            diffs.append(f"{flag}: run has {rec.get(key)!r}, this command asks {getattr(opts, key)!r}")
    if diffs:
        raise UsageError(f"{run_dir} was made from {had} with other image options:\n  " + "\n  ".join(diffs) + fix)


def open_run_data(run_dir: Path, source: DataSource | None, *, splits: SplitOptions = SplitOptions(),
                  seed: int = 0, want_shape: tuple[int, int, int] | None = None,
                  progress: bool = True, out: TextIO | None = None) -> Splits:
    """The run's data. A new run (no run.json): `source` is required; images are decoded once (into a
    cache in the run folder, written atomically) at `want_shape` (H, W, C) when given (import passes the
    model's input shape), else at ImageOptions' size/channels; run.json is written with family=None and
    schedule=None (a run with no trained models yet). An existing run keeps its own data: a `source`
    that differs from the recorded one is a UsageError naming both.

    Call it holding the run's lock (run_lock). For an existing run, `splits`, `seed` and `want_shape`
    are not used: compare the returned Splits' input_shape with the model's yourself.
    """
    from converters.data.datasets import load_source, make_splits, splits_for_run
    from converters.data.images import CACHE_FILE

    run_dir = Path(run_dir)
    out = out or sys.stdout
    existing = read_run_json(run_dir / RUN_FILE)
    if existing is not None:
        check_source(existing, source, run_dir)
        return splits_for_run(run_dir, progress=progress, out=out)
    if source is None:
        raise UsageError(f"{run_dir} is not a run yet (no {RUN_FILE}); name its data: --images DIR (one subfolder "
                         "per class) or --dataset NAME")
    ds, val_idx, images = load_source(source, seed=seed, want_shape=want_shape, cache=run_dir / CACHE_FILE,
                                      progress=progress, out=out)
    result = make_splits(ds, **dataclasses.asdict(splits), seed=seed, val_idx=val_idx)
    record = data_record(source, seed, splits, ds.input_shape, ds.class_names,
                         images=images.record if images is not None else None)
    atomic_write_json(run_dir / RUN_FILE, record)
    return result
