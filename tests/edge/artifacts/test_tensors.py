"""Tests for edge.artifacts.tensors: uint8 pixels into an artifact's input tensor, its output back to float scores."""

import numpy as np
import pytest

from edge.artifacts.manifest import TensorSpec
from edge.artifacts.tensors import dequantize_output, prepare_input


def test_prepare_input_quantizes_pixels_exactly():
    img = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
    spec = TensorSpec("x", (-1, 28, 28, 1), "int8", 1.0, -128)
    q = prepare_input(img, spec)
    assert q.shape == (1, 28, 28, 1) and q.dtype == np.int8
    assert np.array_equal(q.astype(np.int16) + 128, img[None].astype(np.int16))
    f = prepare_input(img[None], TensorSpec("x", (-1, 28, 28, 1), "float32"))
    assert f.dtype == np.float32 and f.max() == img.max()
    with pytest.raises(ValueError, match="does not match"):
        prepare_input(np.zeros((1, 32, 32, 3), np.uint8), spec)
    out = dequantize_output(np.array([[3, 13]], np.int8), TensorSpec("y", (-1, 2), "int8", 0.1, 3))
    assert np.allclose(out, [[0.0, 1.0]])
