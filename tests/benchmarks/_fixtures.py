"""Test helper: tiny real models (TFLite fp32/int8, ONNX fp32) and a hand-made bundle in the CONTRACTS layout.

Builds with TensorFlow/Keras (tests may import them); cached per test process so every test
module shares one training and conversion (a few seconds on two cores).
"""

from __future__ import annotations

import atexit
import functools
import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
INPUT_SHAPE = (28, 28, 1)
MODEL_IDS = ("tiny-a", "tiny-b")
KINDS = (("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32"))


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.lru_cache(maxsize=None)
def data(n_train: int = 3000, n_test: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) uint8 NHWC / int64: real fashion-MNIST if present, else random."""
    try:
        xtr = _idx(FASHION / "train-images-idx3-ubyte.gz")[:n_train, ..., None]
        ytr = _idx(FASHION / "train-labels-idx1-ubyte.gz")[:n_train].astype(np.int64)
        xte = _idx(FASHION / "t10k-images-idx3-ubyte.gz")[:n_test, ..., None]
        yte = _idx(FASHION / "t10k-labels-idx1-ubyte.gz")[:n_test].astype(np.int64)
        return np.ascontiguousarray(xtr), ytr, np.ascontiguousarray(xte), yte
    except OSError:
        rng = np.random.default_rng(0)
        return (
            rng.integers(0, 256, (n_train, *INPUT_SHAPE), dtype=np.uint8),
            rng.integers(0, 10, n_train).astype(np.int64),
            rng.integers(0, 256, (n_test, *INPUT_SHAPE), dtype=np.uint8),
            rng.integers(0, 10, n_test).astype(np.int64),
        )


@dataclass(frozen=True)
class TinyModel:
    model_id: str
    files: dict  # (format, precision) -> Path of the artifact
    params: int
    macs: int
    keras_accuracy: float


def _build(model_id: str):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input(INPUT_SHAPE, dtype="float32")
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    if model_id == "tiny-a":
        x = keras.layers.Conv2D(4, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
        macs = 26 * 26 * 4 * 9
    else:
        x = keras.layers.Conv2D(8, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Conv2D(16, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
        macs = 26 * 26 * 8 * 9 + 11 * 11 * 16 * 9 * 8
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(10)(x)
    m = keras.Model(inp, out, name=model_id.replace("-", "_"))
    macs += int(np.prod(x.shape[1:])) * 10
    return m, macs


@functools.lru_cache(maxsize=None)
def tiny_models() -> tuple[TinyModel, ...]:
    """Two tiny CNNs trained one epoch on 3000 images, each as TFLite fp32, TFLite int8 and ONNX fp32."""
    import keras
    import tensorflow as tf

    xtr, ytr, xte, yte = data()
    folder = Path(tempfile.mkdtemp(prefix="edgekit-tiny-models-"))
    atexit.register(shutil.rmtree, folder, True)
    out = []
    for mid in MODEL_IDS:
        m, macs = _build(mid)
        m.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
        m.fit(xtr.astype(np.float32), ytr, epochs=1, batch_size=64, verbose=0)
        keras_acc = float(np.mean(np.argmax(m.predict(xte.astype(np.float32), verbose=0), 1) == yte))
        files = {}
        p = folder / f"{mid}.fp32.tflite"
        p.write_bytes(tf.lite.TFLiteConverter.from_keras_model(m).convert())
        files[("tflite", "fp32")] = p

        def rep():
            for i in range(0, 64, 8):
                yield [xtr[i : i + 1].astype(np.float32)]

        conv = tf.lite.TFLiteConverter.from_keras_model(m)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
        p = folder / f"{mid}.int8.tflite"
        p.write_bytes(conv.convert())
        files[("tflite", "int8")] = p
        p = folder / f"{mid}.fp32.onnx"
        m.export(str(p), format="onnx", verbose=False)
        files[("onnx", "fp32")] = p
        out.append(TinyModel(mid, files, int(m.count_params()), int(macs), keras_acc))
    return tuple(out)


def artifact_file(model_id: str = "tiny-a", fmt: str = "tflite", precision: str = "fp32") -> Path:
    for tm in tiny_models():
        if tm.model_id == model_id:
            return tm.files[(fmt, precision)]
    raise KeyError(model_id)


def make_tiny_bundle(
    root: str | os.PathLike,
    profile: str = "desktop-cpu",
    n_eval: int = 64,
    models: tuple[str, ...] = MODEL_IDS,
    kinds: tuple[tuple[str, str], ...] = KINDS,
) -> Path:
    """Write a bundle folder by hand in the CONTRACTS.md layout (manifest, artifacts/, eval.npz, canary.npz)."""
    import io

    from device_profiles import RuntimeSetting
    from edge.atomic import atomic_write_bytes, sha256_file
    from edge.backends import get_backend
    from edge.bundle import run_scores
    from edge.manifest import ArtifactRecord, Manifest, artifact_id, dequantize_output, prepare_input

    root = Path(root)
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    _, _, xte, yte = data()
    images, labels = xte[:n_eval], yte[:n_eval]
    canary_images, canary_labels = images[:8], labels[:8]
    backend_of = {"tflite": "litert", "onnx": "onnxruntime"}
    manifest = Manifest(dataset="fashion_mnist", labels=CLASS_NAMES)
    scores = {}
    for tm in tiny_models():
        if tm.model_id not in models:
            continue
        for fmt, prec in kinds:
            aid = artifact_id(tm.model_id, fmt, prec)
            rel = f"artifacts/{aid}.{fmt}"
            shutil.copyfile(tm.files[(fmt, prec)], root / rel)
            setting = RuntimeSetting("host", backend_of[fmt])
            model = get_backend(backend_of[fmt]).load(root / rel, setting)
            try:
                x = prepare_input(images, model.input_spec)
                pred = np.argmax(dequantize_output(model.predict(x), model.output_spec), 1)
                scores[f"scores/{aid}"] = run_scores(model, canary_images)
                in_spec, out_spec = model.input_spec, model.output_spec
            finally:
                model.close()
            manifest = manifest.with_artifact(
                ArtifactRecord(
                    artifact_id=aid,
                    model_id=tm.model_id,
                    format=fmt,
                    precision=prec,
                    path=rel,
                    sha256=sha256_file(root / rel),
                    size_bytes=(root / rel).stat().st_size,
                    input=in_spec,
                    output=out_spec,
                    params=tm.params,
                    macs=tm.macs,
                    keras_accuracy=tm.keras_accuracy,
                    host_accuracy=float(np.mean(pred == labels)),
                    eval_count=int(len(labels)),
                    status="ok",
                )
            )

    def npz(path: Path, **arrays) -> str:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())
        return sha256_file(path)

    files = {
        "eval.npz": npz(root / "eval.npz", images=images, labels=labels),
        "canary.npz": npz(root / "canary.npz", images=canary_images, labels=canary_labels, **scores),
    }
    extra = {
        "bundle_version": 1,
        "profile": profile,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        "input_shape": list(INPUT_SHAPE),
        "class_names": list(CLASS_NAMES),
    }
    import dataclasses

    dataclasses.replace(manifest, extra=extra).save(root / "manifest.json")
    return root
