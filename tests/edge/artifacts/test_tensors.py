"""Tests for edge.artifacts.tensors: uint8 pixels into an artifact's input tensor, its output back to float scores."""

import numpy as np
import pytest

from edge.artifacts.manifest import TensorSpec
from edge.artifacts.tensors import dequantize_output, prepare_input, with_recorded_input


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


# ------------------------------------------------------------------ an imported model's input convention

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # torchvision's 0.485, 0.456, 0.406 in pixel units
IMAGENET_STD = (58.395, 57.12, 57.375)


def _rgb():
    return np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)


def test_mean_std_is_applied_per_channel_exactly():
    img = _rgb()
    spec = TensorSpec("x", (-1, 4, 5, 3), "float32", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    x = prepare_input(img, spec)
    assert x.dtype == np.float32 and x.shape == img.shape
    want = (img.astype(np.float32) - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    assert np.array_equal(x, want)
    # -1..1 (mobilenet_v2.preprocess_input): 0 -> -1, 255 -> 1, one value for every channel
    m11 = TensorSpec("x", (-1, 1, 3, 1), "float32", mean=(127.5,), std=(127.5,))
    assert prepare_input(np.array([[[[0], [127], [255]]]], np.uint8), m11).ravel().tolist() == np.float32([-1.0, -0.5 / 127.5, 1.0]).tolist()


def test_convention_is_applied_before_quantization():
    # an int8 TFLite model that takes -1..1, quantized with scale 1/128 and zero point 0
    spec = TensorSpec("x", (-1, 1, 3, 1), "int8", scale=1 / 128, zero_point=0, mean=(127.5,), std=(127.5,))
    q = prepare_input(np.array([[[[0], [128], [255]]]], np.uint8), spec)
    # -1 -> -128; 0.0039 / (1/128) = 0.502 -> 1; 1.0 -> 128, clipped to 127
    assert q.dtype == np.int8 and q.ravel().tolist() == [-128, 1, 127]
    raw = TensorSpec("x", (-1, 1, 3, 1), "int8", scale=1 / 128, zero_point=0)
    assert prepare_input(np.array([[[[0], [1], [255]]]], np.uint8), raw).ravel().tolist() == [0, 127, 127]


def test_wrong_number_of_channel_values_is_an_error():
    spec = TensorSpec("x", (-1, 4, 5, 1), "float32", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with pytest.raises(ValueError, match="3 channel values but the images have 1"):
        prepare_input(np.zeros((1, 4, 5, 1), np.uint8), spec)


def test_with_recorded_input_gives_a_loaded_model_the_manifest_convention():
    class Loaded:
        input_spec = TensorSpec("in", (-1, 4, 5, 3), "int8", scale=0.5, zero_point=-3)

    m = Loaded()
    recorded = TensorSpec("in", (-1, 4, 5, 3), "int8", scale=0.5, zero_point=-3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert with_recorded_input(m, recorded) is m
    assert m.input_spec == recorded  # shape, dtype and quantization stay the runtime's; mean/std come in
    with_recorded_input(m, TensorSpec("in", (-1, 4, 5, 3), "int8", scale=0.5, zero_point=-3))
    assert m.input_spec.mean is None and m.input_spec.scale == 0.5  # a raw-pixel record takes it away again
    plain = Loaded()
    with_recorded_input(plain, TensorSpec("in", (-1, 4, 5, 3), "int8"))
    assert plain.input_spec is Loaded.input_spec  # nothing to do for raw-pixel models: the spec object is kept


@pytest.mark.parametrize("spec", [
    TensorSpec("x", (-1, 4, 5, 3), "float32", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    TensorSpec("x", (-1, 4, 5, 3), "int8", scale=0.02, zero_point=-1, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    TensorSpec("x", (-1, 4, 5, 3), "float32", mean=(127.5,), std=(127.5,)),
    TensorSpec("x", (-1, 4, 5, 3), "uint8", scale=1 / 255, zero_point=0, mean=(0.0,), std=(255.0,)),
    TensorSpec("x", (-1, 4, 5, 3), "int8", scale=1.0, zero_point=-128),
    TensorSpec("x", (-1, 4, 5, 3), "float32"),
])
def test_the_daemons_lookup_table_computes_what_prepare_input_does(spec):
    from edge.runtime.scheduler import InputPreparer

    img = _rgb()[0]
    got = InputPreparer(spec)(img)
    want = prepare_input(img, spec)[0]
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_prepare_input_resizes_to_a_variant_of_another_size_and_refuses_other_channels():
    from edge.artifacts.images import resize_pixels
    from edge.artifacts.tensors import fit_size

    spec = TensorSpec("x", (-1, 20, 20, 1), "int8", scale=1.0, zero_point=-128)
    x = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    np.testing.assert_array_equal(prepare_input(x, spec), prepare_input(resize_pixels(x, (20, 20)), spec))
    assert fit_size(x[0], spec).shape == (1, 20, 20, 1)  # one HWC image gets its batch axis
    assert fit_size(x, TensorSpec("x", (-1, 28, 28, 1), "float32")) is x
    with pytest.raises(ValueError, match=r"input shape \(28, 28, 3\) does not match the model's \(20, 20, 1\)"):
        prepare_input(np.zeros((1, 28, 28, 3), np.uint8), spec)
