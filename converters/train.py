"""`edgekit train`: a resumable, deterministic training sweep over the specs of a CNN family."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TextIO

import numpy as np

from converters import ray_sweep
from converters.ray_sweep import RayOptions
from edge.atomic import atomic_write_bytes, atomic_write_json, clean_stale_temps

RUN_FILE = "run.json"
TRAIN_FILE = "train.json"
SPEC_FILE = "spec.json"
MODEL_FILE = "model.keras"
LOCK_FILE = ".train.lock"
# Keras insists on the .keras suffix, so the temp name cannot end in .tmp like edge.atomic's.
MODEL_TMP_PREFIX = ".model."
MODEL_TMP_SUFFIX = ".tmp.keras"


@dataclass(frozen=True)
class Schedule:
    """How each model is trained; part of a run's identity (run.json)."""

    mode: str  # "quick" or "full"
    epochs: int
    patience: int  # early stopping on validation accuracy; best weights are restored
    batch_size: int
    learning_rate: float

    def __post_init__(self) -> None:
        for name in ("epochs", "patience", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


@dataclass(frozen=True)
class SplitOptions:
    """Arguments of converters.datasets.make_splits, recorded in run.json as "splits"."""

    val_fraction: float = 0.1
    calib_size: int = 500
    limit_train: int | None = None
    limit_test: int | None = None


# Quick trains the 16 demo specs on 2 cores in about 8 minutes (budget: 15). Measured on three demo
# specs: 24000 images x 4 epochs at batch 64 gains 10-15 accuracy points over 12000 x 3 at batch 128
# for twice the time; all 54000 images x 3 epochs gains 1-2 more for twice that again.
QUICK = Schedule(mode="quick", epochs=4, patience=2, batch_size=64, learning_rate=3e-3)
QUICK_SPLITS = SplitOptions(limit_train=24000, limit_test=None)
FULL = Schedule(mode="full", epochs=30, patience=3, batch_size=64, learning_rate=1e-3)
FULL_SPLITS = SplitOptions(limit_train=None, limit_test=None)


@dataclass(frozen=True)
class TrainOptions:
    run_dir: Path
    family: str
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    seed: int = 0
    schedule: Schedule = QUICK
    splits: SplitOptions = QUICK_SPLITS
    limit: int | None = None
    sample: int | None = None
    force: bool = False
    progress: bool = True
    ray: RayOptions | None = None  # train each spec as a task on Ray (converters.ray_sweep); None: here, in turn


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
        raise ValueError(
            f"{run_dir} was trained with other settings:\n  " + "\n  ".join(diffs)
            + "\nUse a new RUN folder, rerun with the same options to resume, "
            "or pass --force to delete its models and start over.")


def _read_run_json(path: Path) -> dict[str, Any] | None:
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
            raise RuntimeError(
                f"another `edgekit train` is using {run_dir}; wait for it to finish or use a new RUN folder"
            ) from None
        yield
    finally:
        fh.close()


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and Keras with stderr muted: absl prints start-up notices no env var silences."""
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        # Restored before an ImportError propagates, so its traceback is still shown.
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def model_seed(seed: int, model_id: str) -> int:
    """A per-model seed that does not depend on which other models are trained or in what order."""
    return (seed * 1_000_003 + zlib.crc32(model_id.encode())) % (2**31 - 1)


# ---------------------------------------------------------------------------------------------- training

def _tf_dataset(x: np.ndarray, y: np.ndarray, batch: int, shuffle_seed: int | None):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    # Images stay uint8 in memory; models take float32 0..255 and normalise inside the graph.
    ds = ds.batch(batch).map(lambda a, b: (tf.cast(a, tf.float32), b), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _epoch_logger(model_id: str, epochs: int, write):
    import keras

    class EpochLine(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            write(f"  {model_id} epoch {epoch + 1}/{epochs}: loss {logs.get('loss', float('nan')):.4f} "
                  f"acc {logs.get('accuracy', float('nan')):.4f} "
                  f"val_acc {logs.get('val_accuracy', float('nan')):.4f} "
                  f"({time.perf_counter() - self.t0:.1f}s)")

    return EpochLine()


def _save_model_atomically(model, model_dir: Path) -> None:
    tmp = model_dir / f"{MODEL_TMP_PREFIX}{os.getpid()}{MODEL_TMP_SUFFIX}"
    try:
        model.save(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, model_dir / MODEL_FILE)
    finally:
        tmp.unlink(missing_ok=True)


def _run_fields(seed: int, splits, schedule: Schedule) -> dict[str, Any]:
    """What every train.json records about the run it came from; ``finished`` is written last."""
    return {"seed": seed, "train_images": int(len(splits.x_train)), "test_images": int(len(splits.x_test)),
            "schedule": dataclasses.asdict(schedule), "finished": True}


def _save_and_check(model, model_dir: Path, splits, tolerance: float) -> None:
    """Save ``model`` atomically; the saved file must load in safe mode and give the same outputs,
    or the run is not usable downstream."""
    import keras

    from converters import families

    _save_model_atomically(model, model_dir)
    probe = splits.x_test[:8].astype(np.float32)
    reloaded = families.load_keras_model(model_dir / MODEL_FILE)
    outs = [keras.ops.convert_to_numpy(m(probe, training=False)) for m in (model, reloaded)]
    diff = float(np.max(np.abs(outs[0] - outs[1])))
    if not np.isfinite(diff) or diff > tolerance:
        raise RuntimeError(f"{model_dir / MODEL_FILE} reloads with different outputs (max diff {diff:g})")


def train_one(spec, splits, model_dir: Path, schedule: Schedule, seed: int, write=print) -> dict[str, Any]:
    """Train one spec into ``model_dir`` (spec.json, model.keras, then train.json last); returns train.json."""
    import warnings

    import keras

    from converters import families

    # The tf.data pipeline is shuffled (seeded) already; Keras warns that its own shuffle is ignored.
    warnings.filterwarnings("ignore", message=".*shuffle=True.*tf.data.Dataset.*")
    model_id = spec.model_id
    mseed = model_seed(seed, model_id)
    keras.backend.clear_session()
    keras.utils.set_random_seed(mseed)
    t0 = time.perf_counter()
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(model_dir / SPEC_FILE, spec.to_dict())

    model = families.build_model(spec, input_shape=splits.input_shape, num_classes=splits.num_classes)
    params, macs = families.count_params_macs(model)
    model.compile(optimizer=keras.optimizers.Adam(schedule.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    train_ds = _tf_dataset(splits.x_train, splits.y_train, schedule.batch_size, shuffle_seed=mseed)
    val_ds = _tf_dataset(splits.x_val, splits.y_val, 512, shuffle_seed=None)
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=schedule.patience,
                                         restore_best_weights=True)
    history = model.fit(train_ds, validation_data=val_ds, epochs=schedule.epochs, verbose=0,
                        callbacks=[stop, _epoch_logger(model_id, schedule.epochs, write)])
    epochs_run = len(history.history.get("loss", []))
    best_epoch = int(np.argmax(history.history["val_accuracy"])) + 1 if epochs_run else 0
    val_acc = float(model.evaluate(val_ds, verbose=0, return_dict=True)["accuracy"])
    test_ds = _tf_dataset(splits.x_test, splits.y_test, 512, shuffle_seed=None)
    test_acc = float(model.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"])
    _save_and_check(model, model_dir, splits, tolerance=1e-3)

    record = {
        "model_id": model_id,
        "epochs": epochs_run,
        "best_epoch": best_epoch,
        "wall_s": round(time.perf_counter() - t0, 3),
        "test_accuracy": test_acc,
        "val_accuracy": val_acc,
        "params": int(params),
        "macs": int(macs),
        "model_seed": mseed,
        **_run_fields(seed, splits, schedule),
    }
    atomic_write_json(model_dir / TRAIN_FILE, record)
    keras.backend.clear_session()
    return record


def member_sha256(models_dir: Path, members) -> dict[str, str]:
    """sha256 of each member's model.keras: an ensemble is rebuilt when one of them changes."""
    from edge.atomic import sha256_file

    return {m: sha256_file(models_dir / m / MODEL_FILE) for m in members}


def ensemble_finished(model_dir: Path, ens, models_dir: Path) -> dict[str, Any] | None:
    """The ensemble's train.json if it is finished and was built from the members' current model.keras."""
    rec = read_finished(model_dir, ens.model_id)
    if rec is None or rec.get("members") != list(ens.members):
        return None
    try:
        if rec.get("member_sha256") != member_sha256(models_dir, ens.members):
            return None
    except FileNotFoundError:
        return None
    return rec


def build_ensemble_one(ens, splits, models_dir: Path, schedule: Schedule, seed: int, write=print) -> dict[str, Any]:
    """Build an ensemble of finished members into models/<id>/ (spec.json, model.keras, train.json last).

    No training: the members' model.keras are loaded, wrapped into one model averaging their softmax,
    and evaluated like a trained model (same validation and test splits, compiled accuracy metric).
    """
    import keras

    from converters import families

    model_dir = models_dir / ens.model_id
    t0 = time.perf_counter()
    # A rebuild (members changed) first marks the folder unfinished: never new files under an old train.json.
    (model_dir / TRAIN_FILE).unlink(missing_ok=True)
    members_rec = {}
    for m in ens.members:
        rec = read_finished(models_dir / m, m)
        if rec is None:
            raise RuntimeError(f"ensemble {ens.model_id}: member {m} is not finished in {models_dir}")
        members_rec[m] = rec
    shas = member_sha256(models_dir, ens.members)
    keras.backend.clear_session()
    members = [families.load_keras_model(models_dir / m / MODEL_FILE) for m in ens.members]
    model = families.build_ensemble(members, name=families._keras_name(ens.model_id), views=ens.views)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False), metrics=["accuracy"])
    val_ds = _tf_dataset(splits.x_val, splits.y_val, 512, shuffle_seed=None)
    val_acc = float(model.evaluate(val_ds, verbose=0, return_dict=True)["accuracy"])
    test_ds = _tf_dataset(splits.x_test, splits.y_test, 512, shuffle_seed=None)
    test_acc = float(model.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"])

    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(model_dir / SPEC_FILE, ens.to_dict())
    _save_and_check(model, model_dir, splits, tolerance=1e-5)

    record = {
        "model_id": ens.model_id,
        "kind": "ensemble",
        "members": list(ens.members),
        "member_sha256": shas,
        "member_test_accuracy": {m: float(r["test_accuracy"]) for m, r in members_rec.items()},
        "epochs": 0,
        "best_epoch": 0,
        "wall_s": round(time.perf_counter() - t0, 3),
        "test_accuracy": test_acc,
        "val_accuracy": val_acc,
        "params": int(sum(int(r["params"]) for r in members_rec.values())),
        "macs": int(sum(int(r["macs"]) for r in members_rec.values())) * len(ens.views),
        "views": list(ens.views),
        **_run_fields(seed, splits, schedule),
    }
    atomic_write_json(model_dir / TRAIN_FILE, record)
    keras.backend.clear_session()
    return record


def resolve_ensembles(family, models_dir: Path, selected: list[str], write) -> list:
    """The family's [[ensemble]] declarations whose members are finished, as EnsembleSpecs (no duplicates)."""
    from converters.families import EnsembleNotReady

    if not family.ensembles:
        return []
    wanted = set(selected)
    for decl in family.ensembles:
        wanted.update(decl.members)
    val_acc = {}
    for m in sorted(wanted):
        rec = read_finished(models_dir / m, m)
        if rec is not None:
            val_acc[m] = float(rec["val_accuracy"])
    out, seen = [], {}
    for decl in family.ensembles:
        try:
            ens = decl.resolve(val_acc, selected)
        except EnsembleNotReady as exc:
            write(f"note: {exc}")
            continue
        key = (ens.members, ens.views)
        if key in seen:
            first = seen[key]
            write(f"note: {decl.where} has the same members and views as ensemble[{first[0]}] ({first[1]}); "
                  "built once")
            continue
        seen[key] = (decl.index, ens.model_id)
        out.append(ens)
    return out


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
    from tqdm.auto import tqdm

    # The bar advances by estimated cost, not model count: the ETA then holds when big models come last.
    costs = [training_cost(spec, splits.input_shape, splits.num_classes) for spec in todo]
    bar = tqdm(total=sum(costs), disable=not opts.progress or not todo, file=sys.stderr, dynamic_ncols=True,
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


MODEL_FILES = (SPEC_FILE, MODEL_FILE, TRAIN_FILE)  # the order a model folder is written in: train.json last


def train_task(spec, splits, schedule: Schedule, seed: int, ray: RayOptions) -> dict[str, Any]:
    """A Ray task: train one spec in a temporary folder of its worker (never the run folder).

    Returns train.json's record, the epoch lines, and the model folder's files as bytes for the driver to
    write (``write_model_files``).
    """
    ray_sweep.init_worker(ray)
    lines: list[str] = []
    with ray_sweep.task_folder() as tmp:
        model_dir = tmp / spec.model_id
        rec = train_one(spec, splits, model_dir, schedule, seed, write=lines.append)
        ray_sweep.crash_point(spec.model_id)
        files = {name: (model_dir / name).read_bytes() for name in MODEL_FILES}
    return {"record": rec, "lines": lines, "files": files}


def write_model_files(model_dir: Path, files: dict[str, bytes]) -> None:
    """Write a model folder's files returned by a task: each atomically, train.json last, as train_one does."""
    if model_dir.exists():  # not finished when the sweep started (or it would not be trained): start clean
        shutil.rmtree(model_dir)
    for name in MODEL_FILES:
        atomic_write_bytes(model_dir / name, files[name])


def _train_on_ray(todo, splits, models_dir: Path, opts: TrainOptions, results: dict, out: TextIO) -> None:
    """Train ``todo`` as Ray tasks; the driver (this process) writes each finished model into the run folder."""
    import ray

    from converters.progress import progress_bar

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
    from converters import families
    from converters.datasets import load_dataset, make_splits

    out = out or sys.stdout
    run_dir = Path(opts.run_dir)
    if not 0.0 < opts.splits.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be between 0 and 1 (early stopping needs a validation split), "
                         f"got {opts.splits.val_fraction}")
    if opts.ray is not None:
        ray_sweep.preflight(opts.ray)  # Ray installed, the cluster answers: before any work starts
    family = families.load_family(opts.family)
    specs = family.expand(limit=opts.limit, sample=opts.sample, seed=opts.seed)
    if not specs:
        raise ValueError(f"family {opts.family!r} selected no specs (limit={opts.limit}, sample={opts.sample})")

    ds = load_dataset(opts.dataset, opts.data_dir)
    wanted = run_record(opts, ds.input_shape, ds.class_names)

    with run_lock(run_dir):
        existing = _read_run_json(run_dir / RUN_FILE)
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
              f"{opts.schedule.mode}: <= {opts.schedule.epochs} epochs, batch {opts.schedule.batch_size}); "
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
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    align = ["<", ">", ">", ">", ">", ">", "<"]

    def line(cells) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)).rstrip()

    lines = [line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)]
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
                      help=f"(default) {QUICK_SPLITS.limit_train} training images, <= {QUICK.epochs} epochs")
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
    parser.add_argument("--all-train", action="store_true", help="use every training image (quick mode too)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation share of the training images")
    parser.add_argument("--calib-size", type=int, default=500, help="int8 calibration images (from the train part)")
    parser.add_argument("--seed", type=int, default=0, help="seed for splits, sampling and weights (default 0)")
    parser.add_argument("--force", action="store_true",
                        help="if RUN was trained with other settings, delete its models and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray_sweep.add_arguments(parser, what="spec")


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    base, base_splits = (FULL, FULL_SPLITS) if args.mode == "full" else (QUICK, QUICK_SPLITS)
    schedule = Schedule(
        mode=args.mode,
        epochs=args.epochs or base.epochs,
        patience=args.patience or base.patience,
        batch_size=args.batch_size or base.batch_size,
        learning_rate=args.learning_rate or base.learning_rate,
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
