"""Helpers for the converter tests: a tiny Keras CNN trained for a moment on real Fashion-MNIST."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")


def read_idx_gz(path: Path) -> np.ndarray:
    """A minimal IDX reader (uint8 data only), so these tests do not depend on converters.datasets."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.lru_cache(maxsize=None)
def fashion_subset(n_train: int = 2000, n_test: int = 300):
    """(x_train, y_train, x_test, y_test): uint8 NHWC images and int64 labels, the first n of each file."""
    if not (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST IDX files not found in {FASHION}")
    xtr = read_idx_gz(FASHION / "train-images-idx3-ubyte.gz")[:n_train, ..., None].copy()
    ytr = read_idx_gz(FASHION / "train-labels-idx1-ubyte.gz")[:n_train].astype(np.int64)
    xte = read_idx_gz(FASHION / "t10k-images-idx3-ubyte.gz")[:n_test, ..., None].copy()
    yte = read_idx_gz(FASHION / "t10k-labels-idx1-ubyte.gz")[:n_test].astype(np.int64)
    return xtr, ytr, xte, yte


def build_tiny_model(input_name: str = "pixels"):
    """Rescaling + Conv2D(8) + max pooling + Dense(10): float32 0..255 in, logits out."""
    import keras

    inp = keras.Input((28, 28, 1), name=input_name)
    x = keras.layers.Rescaling(1.0 / 255)(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(10)(x)
    return keras.Model(inp, out, name="tiny")


@functools.lru_cache(maxsize=None)
def tiny_model():
    """The tiny model trained 2 epochs on 2000 images (~70% test accuracy). Shared: do not modify it."""
    import keras

    keras.utils.set_random_seed(0)
    xtr, ytr, _, _ = fashion_subset()
    model = build_tiny_model()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(xtr.astype(np.float32), ytr, epochs=2, batch_size=64, verbose=0)
    return model


def perturbed_copy(model, scale: float = 1.0, seed: int = 0):
    """A copy of ``model`` with noise added to every weight (breaks it while keeping its graph)."""
    import keras

    rng = np.random.default_rng(seed)
    clone = keras.models.clone_model(model)
    clone.set_weights([w + scale * rng.standard_normal(w.shape).astype(w.dtype) * (np.std(w) + 1e-3) for w in model.get_weights()])
    return clone


def keras_logits(model, x: np.ndarray) -> np.ndarray:
    y = model(x.astype(np.float32), training=False)
    return y.numpy() if hasattr(y, "numpy") else np.asarray(y)
