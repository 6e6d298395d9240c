"""Test helper shared by the fixture modules: Fashion-MNIST subsets, tiny Keras CNNs, bundles written by hand.

A bundle here follows the CONTRACTS layout (manifest.json, artifacts/, eval.npz, canary.npz
with the host's scores) without going through converters/, so the edge and benchmark tests
do not depend on the workstation pipeline.  Keras and TensorFlow are imported only by the
functions that need them.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
INPUT_SHAPE = (28, 28, 1)
CANARY_SIZE = 8


# ----------------------------------------------------------------------------- data


def read_idx(path: Path) -> np.ndarray:
    """A minimal gzipped IDX reader (uint8 data only), so the tests do not depend on converters.data.datasets."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_split(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images (uint8 NHWC) and labels (int64) of ``split`` ("train" or "t10k").

    Raises OSError when the Debian Fashion-MNIST files are not installed.
    """
    x = read_idx(FASHION / f"{split}-images-idx3-ubyte.gz")[:n, ..., None].copy()
    y = read_idx(FASHION / f"{split}-labels-idx1-ubyte.gz")[:n].astype(np.int64)
    return x, y


def fashion_subset(n_train: int, n_test: int, fallback: Callable[[int, int], tuple] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test), the first images of each file.

    When Fashion-MNIST is not installed: ``fallback(n_train, n_test)`` if given, else OSError.
    """
    try:
        return (*fashion_split("train", n_train), *fashion_split("t10k", n_test))
    except OSError:
        if fallback is None:
            raise
        return fallback(n_train, n_test)


# ----------------------------------------------------------------------------- tiny Keras models


def keras_cnn(layers: Sequence[str], name: str | None = None, input_name: str | None = None, seed: int | None = 0):
    """Rescaling, then ``layers`` ("c8": 3x3 relu Conv2D with 8 filters, "p2": 2x2 max pooling), Flatten, Dense(10).

    Float32 0..255 pixels in, logits out. ``seed`` (None: leave Keras' global seed alone)
    fixes the initial weights.
    """
    import keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
    inp = keras.Input(INPUT_SHAPE, dtype="float32", name=input_name)
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    for layer in layers:
        kind, size = layer[0], int(layer[1:])
        if kind == "c":
            x = keras.layers.Conv2D(size, 3, activation="relu")(x)
        elif kind == "p":
            x = keras.layers.MaxPooling2D(size)(x)
        else:
            raise ValueError(f"unknown layer '{layer}'; use cN (conv) or pK (pooling)")
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(10)(x)
    return keras.Model(inp, out, name=name)


def train_keras(model, x: np.ndarray, y: np.ndarray, epochs: int, learning_rate: float = 3e-3, batch_size: int = 64):
    """Fit ``model`` (logits out) in place with Adam on uint8 images; returns it."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x.astype(np.float32), y, epochs=epochs, batch_size=batch_size, verbose=0)
    return model


def keras_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.predict(x.astype(np.float32), verbose=0), 1) == y))


def to_tflite(model, precision: str, calib: np.ndarray | None = None) -> bytes:
    """TFLite bytes, "fp32" or full-integer "int8" (int8 input and output) calibrated on every image of ``calib``."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "int8":
        def rep():
            for i in range(len(calib)):
                yield [calib[i : i + 1].astype(np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    elif precision != "fp32":
        raise ValueError(f"unknown precision '{precision}'; available: ['fp32', 'int8']")
    return conv.convert()


# ----------------------------------------------------------------------------- timing


def time_predict(model, image: np.ndarray, runs: int) -> np.ndarray:
    """Milliseconds of ``runs`` predictions of one image by a loaded edge model, after 5 warm-up runs."""
    from edge.artifacts.tensors import prepare_input

    x = prepare_input(image, model.input_spec)
    for _ in range(5):
        model.predict(x)
    out = np.empty(runs)
    for i in range(runs):
        t = time.perf_counter()
        model.predict(x)
        out[i] = (time.perf_counter() - t) * 1000.0
    return out


def latency_row(rec, setting, provider: str, t: np.ndarray, accuracy: float, eval_count: int):
    """A LatencyRow for artifact ``rec`` under ``setting`` from the timings ``t`` (ms); the rest is placeholder."""
    from edge.tables.table import LatencyRow

    q = lambda p: float(np.percentile(t, p))  # noqa: E731
    return LatencyRow(
        variant=f"{rec.artifact_id}@{setting.name}", artifact_id=rec.artifact_id, model_id=rec.model_id,
        format=rec.format, precision=rec.precision, setting=setting.name, backend=setting.backend,
        provider=provider, threads=setting.threads, accuracy=accuracy, eval_count=eval_count, samples=len(t),
        mean_ms=float(t.mean()), std_ms=float(t.std()), min_ms=float(t.min()), p50_ms=q(50), p90_ms=q(90),
        p95_ms=q(95), p99_ms=q(99), max_ms=float(t.max()), load_ms=1.0, first_inference_ms=float(t[0]),
        preprocess_ms=0.01, peak_rss_mb=1.0, size_bytes=rec.size_bytes, params=rec.params,
    )


# ----------------------------------------------------------------------------- bundles


@dataclasses.dataclass(frozen=True)
class Added:
    record: Any  # edge.artifacts.manifest.ArtifactRecord
    timings_ms: np.ndarray | None  # with timing_runs > 0


class BundleWriter:
    """Writes ROOT/artifacts/* one by one (each run once on the host), then eval.npz, canary.npz, manifest.json."""

    def __init__(self, root: str | Path, images: np.ndarray, labels: np.ndarray, profile: str):
        self.root = Path(root)
        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        self.images, self.labels, self.profile = images, labels, profile
        self.records: list = []
        self.scores: dict[str, np.ndarray] = {}

    def add(self, model_id: str, fmt: str, precision: str, data: bytes, setting, *,
            host_accuracy: bool = True, timing_runs: int = 0, **fields: Any) -> Added:
        """Write one artifact, load it with ``setting``, record its canary scores (and accuracy on the eval set).

        ``fields`` go into the ArtifactRecord as they are (params, macs, keras_accuracy...).
        """
        from edge.artifacts.formats import get_format
        from edge.artifacts.manifest import ArtifactRecord, artifact_id
        from edge.artifacts.tensors import dequantize_output, prepare_input
        from edge.artifacts.tensors import scores as model_scores
        from edge.backends import get_backend
        from edge.core.atomic import atomic_write_bytes, sha256_bytes

        aid = artifact_id(model_id, fmt, precision)
        rel = f"artifacts/{aid}.{get_format(fmt).extension}"
        atomic_write_bytes(self.root / rel, data)
        timings = None
        with get_backend(setting.backend).load(self.root / rel, setting) as m:
            if host_accuracy:
                scores = dequantize_output(m.predict(prepare_input(self.images, m.input_spec)), m.output_spec)
                pred = np.argmax(scores, 1)
                fields.update(host_accuracy=float(np.mean(pred == self.labels)), eval_count=int(len(self.labels)))
            self.scores[aid] = model_scores(m, self.images[:CANARY_SIZE])
            if timing_runs:
                timings = time_predict(m, self.images[:1], timing_runs)
            rec = ArtifactRecord(
                artifact_id=aid, model_id=model_id, format=fmt, precision=precision, path=rel,
                sha256=sha256_bytes(data), size_bytes=len(data), input=m.input_spec, output=m.output_spec,
                status="ok", **fields,
            )
        self.records.append(rec)
        return Added(rec, timings)

    def finish(self, sort_by_id: bool = True):
        """Write eval.npz, canary.npz and manifest.json (artifacts by id, or as added); returns the Manifest."""
        from edge.artifacts.manifest import Manifest
        from edge.core.atomic import atomic_write_bytes, sha256_bytes

        def npz(name: str, **arrays: np.ndarray) -> str:
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic_write_bytes(self.root / name, buf.getvalue())
            return sha256_bytes(buf.getvalue())

        files = {
            "eval.npz": npz("eval.npz", images=self.images, labels=self.labels),
            "canary.npz": npz("canary.npz", images=self.images[:CANARY_SIZE], labels=self.labels[:CANARY_SIZE],
                              **{f"scores/{aid}": s for aid, s in self.scores.items()}),
        }
        records = sorted(self.records, key=lambda r: r.artifact_id) if sort_by_id else self.records
        manifest = Manifest(
            dataset="fashion_mnist", labels=CLASS_NAMES, artifacts=tuple(records),
            extra={
                "bundle_version": 1, "profile": self.profile,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "files": files, "input_shape": list(INPUT_SHAPE), "class_names": list(CLASS_NAMES),
            },
        )
        manifest.save(self.root / "manifest.json")
        return manifest
