"""Training one spec into a model folder (spec.json, model.keras, then train.json), here or as a Ray task."""

from __future__ import annotations

import dataclasses
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from converters.cluster import ray_sweep
from converters.cluster.ray_sweep import RayOptions
from converters.family.keras_build import build_model, count_params_macs, load_keras_model
from converters.train.options import RECIPES, Schedule
from converters.train.run_folder import (
    MODEL_FILE,
    MODEL_FILES,
    MODEL_TMP_PREFIX,
    MODEL_TMP_SUFFIX,
    SPEC_FILE,
    TRAIN_FILE,
)
from edge.core.atomic import atomic_write_json
from edge.core.errors import StepFailed


def model_seed(seed: int, model_id: str) -> int:
    """A per-model seed that does not depend on which other models are trained or in what order."""
    return (seed * 1_000_003 + zlib.crc32(model_id.encode())) % (2**31 - 1)


def tf_dataset(x: np.ndarray, y: np.ndarray, batch: int, shuffle_seed: int | None, augment: str = "none"):
    """(x, y) as a batched float32 tf.data pipeline, reshuffled each epoch with ``shuffle_seed`` (None: in order).

    ``augment="flip"`` mirrors each image left-right with probability 1/2 (seeded by ``shuffle_seed``).
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    # Images stay uint8 in memory; models take float32 0..255 and normalise inside the graph.
    ds = ds.batch(batch).map(lambda a, b: (tf.cast(a, tf.float32), b), num_parallel_calls=tf.data.AUTOTUNE)
    if augment == "flip":
        ds = ds.map(lambda a, b: (_flip_half(a, shuffle_seed), b), num_parallel_calls=tf.data.AUTOTUNE)
    elif augment != "none":
        raise ValueError(f"unknown augmentation {augment!r}")
    return ds.prefetch(tf.data.AUTOTUNE)


def _flip_half(images, seed: int | None):
    """Each image of an (N, H, W, C) batch mirrored left-right with probability 1/2."""
    import tensorflow as tf

    coin = tf.random.uniform((tf.shape(images)[0], 1, 1, 1), seed=seed) < 0.5
    return tf.where(coin, tf.reverse(images, axis=[2]), images)


def train_subset(splits, schedule: Schedule, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training images ``schedule`` uses: all of the run's, or a subset seeded by the run's seed alone
    (so every spec of the schedule sees the same images)."""
    n = len(splits.x_train)
    if schedule.train_images is None or schedule.train_images >= n:
        return splits.x_train, splits.y_train
    idx = np.sort(np.random.default_rng([int(seed), 0x5EB5E7]).choice(n, size=schedule.train_images, replace=False))
    return splits.x_train[idx], splits.y_train[idx]


def at_resolution(splits, spec):
    """The run's splits at ``spec``'s input size, resized by ``edge.artifacts.images.resize_pixels`` (the resize the
    board serves with); the splits themselves when the spec takes the run's size."""
    from edge.artifacts.images import resize_pixels

    hw = spec.input_hw(splits.input_shape)
    if hw == tuple(splits.input_shape[:2]):
        return splits

    def fit(x: np.ndarray) -> np.ndarray:
        return resize_pixels(x, hw) if len(x) else np.zeros((0, *hw, x.shape[-1]), np.uint8)

    return dataclasses.replace(splits, x_train=fit(splits.x_train), x_val=fit(splits.x_val),
                               x_calib=fit(splits.x_calib), x_test=fit(splits.x_test))


def spec_schedule(spec, schedule: Schedule) -> Schedule:
    """The schedule ``spec`` trains with: its named recipe if it has one, else the run's."""
    return RECIPES[spec.recipe] if spec.recipe else schedule


def _optimizer(schedule: Schedule, steps_per_epoch: int):
    import keras

    lr: Any = schedule.learning_rate
    if schedule.decay == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(schedule.learning_rate, max(1, schedule.epochs * steps_per_epoch))
    if schedule.weight_decay > 0:
        return keras.optimizers.AdamW(lr, weight_decay=schedule.weight_decay)
    return keras.optimizers.Adam(lr)


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


def run_fields(seed: int, splits, schedule: Schedule, train_images: int | None = None) -> dict[str, Any]:
    """What every train.json records about the run it came from; ``finished`` is written last."""
    n = len(splits.x_train) if train_images is None else train_images
    return {"seed": seed, "train_images": int(n), "test_images": int(len(splits.x_test)),
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

    schedule = spec_schedule(spec, schedule)
    splits = at_resolution(splits, spec)
    x_train, y_train = train_subset(splits, schedule, seed)
    model = build_model(spec, input_shape=splits.input_shape, num_classes=splits.num_classes)
    pruning_record: dict[str, Any] = {}
    if spec.derived:  # a pruned (or ViP) child: its parent's weights, then fine-tuning (converters.train.pruning)
        from converters.train.pruning import start_from_parent

        schedule, pruning_record = start_from_parent(model, spec, model_dir.parent, splits, schedule, write)
    params, macs = count_params_macs(model)
    model.compile(optimizer=_optimizer(schedule, -(-len(x_train) // schedule.batch_size)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    train_ds = tf_dataset(x_train, y_train, schedule.batch_size, shuffle_seed=mseed, augment=schedule.augment)
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
        **pruning_record,
        **run_fields(seed, splits, schedule, train_images=len(x_train)),
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

