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
from pathlib import Path
from typing import Any, Iterator

from converters.train.options import TrainOptions
from edge.core.atomic import atomic_write_bytes
from edge.core.errors import StepFailed, UsageError

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

def _family_key(family: str) -> str:
    p = Path(family).expanduser()
    if family.endswith(".toml") or p.is_file():
        return str(p.resolve())
    return family


def run_record(opts: TrainOptions, input_shape: tuple[int, ...], class_names: tuple[str, ...]) -> dict[str, Any]:
    return {
        "dataset": opts.dataset,
        "data_dir": str(Path(opts.data_dir).expanduser().resolve()) if opts.data_dir else None,
        "family": _family_key(opts.family),
        "seed": opts.seed,
        "splits": dataclasses.asdict(opts.splits),
        "input_shape": list(input_shape),
        "class_names": list(class_names),
        "schedule": dataclasses.asdict(opts.schedule),
    }


_IDENTITY_KEYS = ("dataset", "family", "seed", "splits", "schedule")


def check_run_compatible(existing: dict[str, Any], wanted: dict[str, Any], run_dir: Path) -> None:
    """Refuse to mix models trained under different settings in one run folder."""
    diffs = [f"{k}: run has {existing.get(k)!r}, this command asks {wanted.get(k)!r}"
             for k in _IDENTITY_KEYS if existing.get(k) != wanted.get(k)]
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

def read_finished(model_dir: Path, model_id: str | None = None) -> dict[str, Any] | None:
    """The model's train.json if it marks a complete, consistent model; else None."""
    try:
        rec = json.loads((model_dir / TRAIN_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, NotADirectoryError):
        return None
    if not isinstance(rec, dict) or rec.get("finished") is not True:
        return None
    if model_id is not None and rec.get("model_id") != model_id:
        return None
    if not (model_dir / MODEL_FILE).is_file() or not (model_dir / SPEC_FILE).is_file():
        return None
    needed = ("epochs", "wall_s", "test_accuracy", "val_accuracy", "params", "macs")
    if any(not isinstance(rec.get(k), (int, float)) for k in needed):
        return None
    return rec


def clean_unfinished(models_dir: Path) -> list[str]:
    """Delete model folders a killed run left without train.json; returns their names."""
    removed = []
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
                f"another `edgekit train` is using {run_dir}; wait for it to finish or use a new RUN folder"
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

