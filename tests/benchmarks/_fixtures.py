"""Test helper: tiny real models (TFLite fp32/int8, ONNX fp32) and a hand-made bundle in the CONTRACTS layout.

Builds with TensorFlow/Keras (tests may import them); cached per test process so every test
module shares one training and conversion (a few seconds on two cores).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.bench.measure import BenchOptions
from tests._bundle_builder import (
    INPUT_SHAPE,
    BundleWriter,
    fashion_subset,
    keras_accuracy,
    keras_cnn,
    to_tflite,
    train_keras,
)

MODEL_IDS = ("tiny-a", "tiny-b")
KINDS = (("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32"))
# `edgekit bench` options short enough for a test: a handful of timed runs per variant.
FAST = BenchOptions(min_runs=5, min_seconds=0.05, warmup=1, inputs=8)


def _random_data(n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 256, (n_train, *INPUT_SHAPE), dtype=np.uint8),
        rng.integers(0, 10, n_train).astype(np.int64),
        rng.integers(0, 256, (n_test, *INPUT_SHAPE), dtype=np.uint8),
        rng.integers(0, 10, n_test).astype(np.int64),
    )


@functools.lru_cache(maxsize=None)
def data(n_train: int = 3000, n_test: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) uint8 NHWC / int64: real fashion-MNIST if present, else random."""
    return fashion_subset(n_train, n_test, fallback=_random_data)


@dataclass(frozen=True)
class TinyModel:
    model_id: str
    files: dict  # (format, precision) -> Path of the artifact
    params: int
    macs: int
    keras_accuracy: float


# model id -> (layers, MACs of the conv layers)
_LAYERS = {
    "tiny-a": (("c4", "p2"), 26 * 26 * 4 * 9),
    "tiny-b": (("c8", "p2", "c16", "p2"), 26 * 26 * 8 * 9 + 11 * 11 * 16 * 9 * 8),
}


@functools.lru_cache(maxsize=None)
def tiny_models() -> tuple[TinyModel, ...]:
    """Two tiny CNNs trained one epoch on 3000 images, each as TFLite fp32, TFLite int8 and ONNX fp32."""
    xtr, ytr, xte, yte = data()
    folder = Path(tempfile.mkdtemp(prefix="edgekit-tiny-models-"))
    atexit.register(shutil.rmtree, folder, True)
    out = []
    for mid in MODEL_IDS:
        layers, conv_macs = _LAYERS[mid]
        m = train_keras(keras_cnn(layers, name=mid.replace("-", "_")), xtr, ytr, epochs=1)
        macs = conv_macs + int(m.layers[-1].kernel.shape[0]) * 10  # + the dense layer
        keras_acc = keras_accuracy(m, xte, yte)
        files = {}
        for prec in ("fp32", "int8"):
            p = folder / f"{mid}.{prec}.tflite"
            p.write_bytes(to_tflite(m, prec, calib=xtr[0:64:8]))
            files[("tflite", prec)] = p
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
    from device_profiles import RuntimeSetting

    _, _, xte, yte = data()
    writer = BundleWriter(root, xte[:n_eval], yte[:n_eval], profile)
    backend_of = {"tflite": "litert", "onnx": "onnxruntime"}
    for tm in tiny_models():
        if tm.model_id not in models:
            continue
        for fmt, prec in kinds:
            setting = RuntimeSetting("host", backend_of[fmt])
            writer.add(tm.model_id, fmt, prec, tm.files[(fmt, prec)].read_bytes(), setting,
                       params=tm.params, macs=tm.macs, keras_accuracy=tm.keras_accuracy)
    writer.finish()
    return Path(root)
