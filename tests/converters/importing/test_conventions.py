"""Tests for converters.importing.conventions: --input-range, the sidecar TOML, units, channels."""

from __future__ import annotations

import numpy as np
import pytest

from converters.importing.conventions import DEFAULT, parse_input_range, read_sidecar, resolve
from edge.artifacts.manifest import TensorSpec
from edge.artifacts.tensors import prepare_input
from edge.core.errors import UsageError


@pytest.mark.parametrize("text, mean, std", [
    ("0..255", (0.0,), (1.0,)),
    ("0..1", (0.0,), (255.0,)),
    ("-1..1", (127.5,), (127.5,)),
    ("tf", (127.5,), (127.5,)),
    (" ImageNet ", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    ("torch", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    ("mean=0.5,0.5,0.5 std=0.25,0.25,0.25", (127.5,) * 3, (63.75,) * 3),
    ("mean=0.1 std=0.3", (25.5,), (76.5,)),
])
def test_named_ranges_and_torchvision_mean_std_become_pixel_units(text, mean, std):
    c = parse_input_range(text)
    assert c.mean == pytest.approx(mean) and c.std == pytest.approx(std)
    assert c.raw == (text == "0..255")


def test_raw_pixels_is_the_default_and_records_nothing():
    assert DEFAULT.raw and parse_input_range("0..255").raw
    spec = TensorSpec("x", (-1, 2, 2, 1), "float32")
    assert DEFAULT.tensor_spec(spec) == spec and not DEFAULT.tensor_spec(spec).normalized


@pytest.mark.parametrize("text, match", [
    ("0..2", "unknown input range '0..2'; use 0..255, 0..1, -1..1, imagenet"),
    ("mean=123.7,116.3,103.5 std=58.4,57.1,57.4", "outside 0..1: mean and std are in 0..1 units"),
    ("mean=0.5 std=0", r"must be in \(0, 1\]"),
    ("mean=0.5,0.5 std=0.5,0.5", "one value or three"),
    ("mean=0.5 std=0.5,0.5,0.5", "mean has 1 values and std 3"),
    ("mean=a std=0.5", "not a comma-separated list of numbers"),
])
def test_bad_ranges_say_what_is_accepted(text, match):
    with pytest.raises(UsageError, match=match):
        parse_input_range(text)


def test_apply_is_prepare_inputs_arithmetic():
    img = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    c = parse_input_range("imagenet")
    want = prepare_input(img, TensorSpec("x", (-1, 3, 4, 3), "float32", mean=c.mean, std=c.std))
    assert np.array_equal(c.apply(img), want)
    assert np.array_equal(DEFAULT.apply(img), img.astype(np.float32))


def test_channels_one_value_spreads_three_for_gray_is_an_error():
    assert parse_input_range("-1..1").for_channels(3).mean == (127.5,) * 3
    with pytest.raises(UsageError, match="has 3 channel values but m.onnx takes 1 channel"):
        parse_input_range("imagenet").for_channels(1, "m.onnx")


def test_sidecar_beside_the_model_then_folder_file_and_the_flag_wins(tmp_path):
    model = tmp_path / "net.onnx"
    model.write_bytes(b"")
    assert resolve(None, model) == DEFAULT
    (tmp_path / "edgekit.toml").write_text('input_range = "0..1"\n')
    assert resolve(None, model).name == "0..1" and resolve(None, model).origin == str(tmp_path / "edgekit.toml")
    (tmp_path / "net.onnx.toml").write_text("[input]\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n")
    c = resolve(None, model)
    assert c.origin == str(tmp_path / "net.onnx.toml") and c.mean == pytest.approx((123.675, 116.28, 103.53))
    assert resolve("-1..1", model).mean == (127.5,) and resolve("-1..1", model).origin == "--input-range"


@pytest.mark.parametrize("text, match", [
    ("input_range = ", "cannot read the input convention in .*net.onnx.toml"),
    ('range = "0..1"', r"unknown keys \['range'\]"),
    ('input_range = "0..1"\n[input]\nmean = 0.5\nstd = 0.5\n', "exactly one of them"),
    ("input_range = 3", "must be a string"),
    ("[input]\nmean = [0.5]\n", "exactly mean"),
    ('[input]\nmean = "x"\nstd = 0.5\n', "must be a number or a list"),
    ('input_range = "0..9"', "net.onnx.toml: unknown input range"),
])
def test_bad_sidecar_names_the_file(tmp_path, text, match):
    p = tmp_path / "net.onnx.toml"
    p.write_text(text)
    with pytest.raises(UsageError, match=match):
        read_sidecar(p)


def test_record_round_trip():
    c = parse_input_range("mean=0.5,0.4,0.3 std=0.2,0.2,0.2")
    back = type(c).from_dict(c.to_dict())
    assert back == c and c.to_dict()["units"] == "pixels 0..255"
    assert c.describe() == "mean=0.5,0.4,0.3 std=0.2,0.2,0.2"
