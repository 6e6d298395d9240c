"""Helpers for the converter tests: a tiny Keras CNN trained for a moment on real Fashion-MNIST."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tests import _bundle_builder as bb


@functools.lru_cache(maxsize=None)
def fashion_subset(n_train: int = 2000, n_test: int = 300):
    """(x_train, y_train, x_test, y_test): uint8 NHWC images and int64 labels, the first n of each file."""
    if not (bb.FASHION / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST IDX files not found in {bb.FASHION}")
    return bb.fashion_subset(n_train, n_test)


@functools.lru_cache(maxsize=None)
def tiny_model():
    """Rescaling + Conv2D(8) + max pooling + Dense(10) trained 2 epochs on 2000 images (~70% test accuracy).

    Float32 0..255 in (input "pixels"), logits out. Shared: do not modify it.
    """
    xtr, ytr, _, _ = fashion_subset()
    return bb.train_keras(bb.keras_cnn(("c8", "p2"), name="tiny", input_name="pixels"), xtr, ytr, epochs=2)


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
