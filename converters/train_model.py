"""Training one spec into a model folder (spec.json, model.keras, then train.json), here or as a Ray task."""

from __future__ import annotations

import dataclasses
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from converters import ray_sweep
from converters.keras_build import build_model, count_params_macs, load_keras_model
from converters.ray_sweep import RayOptions
from converters.run_folder import MODEL_FILE, MODEL_FILES, MODEL_TMP_PREFIX, MODEL_TMP_SUFFIX, SPEC_FILE, TRAIN_FILE
from converters.train_options import Schedule
from edge.atomic import atomic_write_json
from edge.errors import StepFailed


def model_seed(seed: int, model_id: str) -> int:
    """A per-model seed that does not depend on which other models are trained or in what order."""
    return (seed * 1_000_003 + zlib.crc32(model_id.encode())) % (2**31 - 1)


def tf_dataset(x: np.ndarray, y: np.ndarray, batch: int, shuffle_seed: int | None):
    """(x, y) as a batched float32 tf.data pipeline, reshuffled each epoch with ``shuffle_seed`` (None: in order)."""
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


def run_fields(seed: int, splits, schedule: Schedule) -> dict[str, Any]:
    """What every train.json records about the run it came from; ``finished`` is written last."""
    return {"seed": seed, "train_images": int(len(splits.x_train)), "test_images": int(len(splits.x_test)),
            "schedule": dataclasses.asdict(schedule), "finished": True}


def save_and_check(model, model_dir: Path, splits, tolerance: float) -> None:
    """Save ``model`` atomically; the saved file must load in safe mode and give the same outputs,
    or the run is not usable downstream."""
    import keras

    _save_model_atomically(model, model_dir)
    probe = splits.x_test[:8].astype(np.float32)
    reloaded = load_keras_model(model_dir / MODEL_FILE)
    outs = [keras.ops.convert_to_numpy(m(probe, training=False)) for m in (model, reloaded)]
    diff = float(np.max(np.abs(outs[0] - outs[1])))
    if not np.isfinite(diff) or diff > tolerance:
        raise StepFailed(f"{model_dir / MODEL_FILE} reloads with different outputs (max diff {diff:g})")


def train_one(spec, splits, model_dir: Path, schedule: Schedule, seed: int, write=print) -> dict[str, Any]:
    """Train one spec into ``model_dir`` (spec.json, model.keras, then train.json last); returns train.json."""
    import warnings

    import keras

    # The tf.data pipeline is shuffled (seeded) already; Keras warns that its own shuffle is ignored.
    warnings.filterwarnings("ignore", message=".*shuffle=True.*tf.data.Dataset.*")
    model_id = spec.model_id
    mseed = model_seed(seed, model_id)
    keras.backend.clear_session()
    keras.utils.set_random_seed(mseed)
    t0 = time.perf_counter()
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(model_dir / SPEC_FILE, spec.to_dict())

    model = build_model(spec, input_shape=splits.input_shape, num_classes=splits.num_classes)
    params, macs = count_params_macs(model)
    model.compile(optimizer=keras.optimizers.Adam(schedule.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    train_ds = tf_dataset(splits.x_train, splits.y_train, schedule.batch_size, shuffle_seed=mseed)
    val_ds = tf_dataset(splits.x_val, splits.y_val, 512, shuffle_seed=None)
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=schedule.patience,
                                         restore_best_weights=True)
    history = model.fit(train_ds, validation_data=val_ds, epochs=schedule.epochs, verbose=0,
                        callbacks=[stop, _epoch_logger(model_id, schedule.epochs, write)])
    epochs_run = len(history.history.get("loss", []))
    best_epoch = int(np.argmax(history.history["val_accuracy"])) + 1 if epochs_run else 0
    val_acc = float(model.evaluate(val_ds, verbose=0, return_dict=True)["accuracy"])
    test_ds = tf_dataset(splits.x_test, splits.y_test, 512, shuffle_seed=None)
    test_acc = float(model.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"])
    save_and_check(model, model_dir, splits, tolerance=1e-3)

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
        **run_fields(seed, splits, schedule),
    }
    atomic_write_json(model_dir / TRAIN_FILE, record)
    keras.backend.clear_session()
    return record


def train_task(spec, splits, schedule: Schedule, seed: int, ray: RayOptions) -> dict[str, Any]:
    """A Ray task: train one spec in a temporary folder of its worker (never the run folder).

    Returns train.json's record, the epoch lines, and the model folder's files as bytes for the driver to
    write (``run_folder.write_model_files``).
    """
    ray_sweep.init_worker(ray)
    lines: list[str] = []
    with ray_sweep.task_folder() as tmp:
        model_dir = tmp / spec.model_id
        rec = train_one(spec, splits, model_dir, schedule, seed, write=lines.append)
        ray_sweep.crash_point(spec.model_id)
        files = {name: (model_dir / name).read_bytes() for name in MODEL_FILES}
    return {"record": rec, "lines": lines, "files": files}

