"""Tiny user models for the import tests: ONNX graphs written with onnx.helper, Keras models, small IDX datasets."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from tests.converters.data.test_datasets import idx_bytes


def onnx_linear(hwc=(8, 8, 1), classes: int = 10, *, seed: int = 0, batch="N", nchw: bool = False,
                softmax: bool = False, weights: np.ndarray | None = None, bias: np.ndarray | None = None):
    """Flatten -> MatMul -> Add (-> Softmax): an (N, H, W, C) (or (N, C, H, W)) float input, (N, classes) out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, w, c = hwc
    shape = [batch, c, h, w] if nchw else [batch, h, w, c]
    rng = np.random.default_rng(seed)
    wt = weights if weights is not None else rng.standard_normal((h * w * c, classes)).astype(np.float32)
    b = np.zeros(classes, np.float32) if weights is not None else rng.standard_normal(classes).astype(np.float32)
    if bias is not None:
        b = np.asarray(bias, np.float32)
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["probs" if softmax else "scores"])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["probs"], ["scores"], axis=1))
    graph = helper.make_graph(
        nodes, "user_model",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, classes])],
        initializer=[numpy_helper.from_array(wt, "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def onnx_channel_means(hwc=(4, 5, 3)):
    """GlobalAveragePool over an NHWC input: its 'class scores' are the mean of each input channel, so the
    input convention the runtime was fed can be read back from them exactly."""
    import onnx
    from onnx import TensorProto, helper

    h, w, c = hwc
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("GlobalAveragePool", ["nchw"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["scores"], axis=1)]
    graph = helper.make_graph(nodes, "channel_means",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", h, w, c])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", c])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save_onnx(model, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def keras_cnn(hwc=(8, 8, 1), classes: int = 10, *, softmax: bool = False, rescale: bool = True, seed: int = 0):
    """Rescaling(1/255) (unless ``rescale`` is False) -> Conv2D(4) -> Flatten -> Dense(classes)."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input(hwc)
    x = keras.layers.Rescaling(1 / 255.0)(inp) if rescale else inp
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(classes, activation="softmax" if softmax else None)(x)
    return keras.Model(inp, out)


def write_idx(folder: Path, x_train, y_train, x_test, y_test) -> Path:
    """A Fashion-MNIST-format dataset (gzipped IDX files) of the given uint8 (N, H, W[, 1]) images."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in {"train-images-idx3-ubyte": np.asarray(x_train).reshape(len(x_train), *x_train.shape[1:3]),
                      "train-labels-idx1-ubyte": y_train, "t10k-images-idx3-ubyte":
                      np.asarray(x_test).reshape(len(x_test), *x_test.shape[1:3]), "t10k-labels-idx1-ubyte": y_test
                      }.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(np.asarray(arr, np.uint8))))
    return folder


def bright_pixel_set(folder: Path, n_train: int = 200, n_test: int = 60, hw=(8, 8), seed: int = 0) -> Path:
    """Class k = a dark noisy image whose pixel k is bright: a linear model with W[k, k] = 1 classifies it."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = np.arange(n) % 10
        x = rng.integers(0, 40, (n, *hw), dtype=np.uint8)
        x.reshape(n, -1)[np.arange(n), y] = 250
        return x, y.astype(np.uint8)

    return write_idx(folder, *make(n_train), *make(n_test))


def bright_pixel_weights(hwc=(8, 8, 1), classes: int = 10) -> np.ndarray:
    w = np.zeros((int(np.prod(hwc)), classes), np.float32)
    w[np.arange(classes), np.arange(classes)] = 1.0
    return w
