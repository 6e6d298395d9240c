"""Tests for converters.importing.keras_source: safe mode (a Lambda is refused, its code never runs), damaged files
refused by name, the input convention folded in front of the graph."""

from __future__ import annotations

import os

import numpy as np
import pytest

from converters.importing.conventions import DEFAULT, parse_input_range
from converters.importing.keras_source import CONVENTION_LAYER, KerasSource, load_safely
from edge.core.errors import UsageError
from tests.converters.importing._models import keras_cnn


def _lambda_model(marker):
    import keras

    inp = keras.Input((8, 8, 1))
    # If this ever ran at load time it would leave the marker file behind.
    x = keras.layers.Lambda(lambda t, m=str(marker): (open(m, "w").close(), t)[1])(inp)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(3)(x))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_layer_is_refused_and_its_code_never_runs(tmp_path, suffix):
    marker = tmp_path / "ran"
    path = tmp_path / f"lam{suffix}"
    _lambda_model(marker).save(path)
    marker.unlink(missing_ok=True)  # building and saving may trace it once
    with pytest.raises(UsageError) as e:
        KerasSource(path)
    msg = str(e.value)
    assert str(path) in msg and "safe mode refused to run its code" in msg and "Lambda" in msg
    assert "Rebuild the model without Lambda layers" in msg
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_keras_files_are_refused_by_name(tmp_path, suffix, damage):
    good = tmp_path / f"good{suffix}"
    keras_cnn().save(good)
    data = good.read_bytes()
    bad = tmp_path / f"{damage}{suffix}"
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    with pytest.raises(UsageError) as e:
        KerasSource(bad)
    assert str(bad) in str(e.value) and "save it again" in str(e.value)


def test_weights_only_h5_says_to_save_the_whole_model(tmp_path):
    path = tmp_path / "w.weights.h5"
    keras_cnn().save_weights(path)
    with pytest.raises(UsageError, match="holds weights only"):
        load_safely(path)


def test_folded_convention_equals_feeding_the_normalized_input(tmp_path):
    model = keras_cnn((6, 6, 3), rescale=False)
    path = tmp_path / "m.keras"
    model.save(path)
    conv = parse_input_range("imagenet").for_channels(3)
    src = KerasSource(path)
    x = np.random.default_rng(0).integers(0, 256, (9, 6, 6, 3), dtype=np.uint8)
    want = model(conv.apply(x)).numpy()
    assert np.allclose(src.scores(x, conv), want, atol=1e-5)
    # the run keeps the folded model: it takes raw pixels, reloads in safe mode and computes the same
    (tmp_path / "run").mkdir()
    out = src.write(tmp_path / "run", conv)
    kept = load_safely(out)
    assert kept.get_layer(CONVENTION_LAYER) is not None
    assert np.allclose(kept(x.astype(np.float32)).numpy(), want, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model.keras"]  # no temp file left


@pytest.mark.parametrize("softmax", [False, True])
def test_logits_and_softmax_outputs_are_accepted(tmp_path, softmax):
    path = tmp_path / "m.h5"
    keras_cnn(softmax=softmax).save(path)
    src = KerasSource(path)
    assert (src.input_hwc, src.classes, src.params > 0) == ((8, 8, 1), 10, True)
    s = src.scores(np.zeros((3, 8, 8, 1), np.uint8), DEFAULT)
    assert s.shape == (3, 10) and np.allclose(s.sum(axis=1), 1.0, atol=1e-5) == softmax


def test_two_outputs_are_refused(tmp_path):
    import keras

    inp = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inp)
    path = tmp_path / "two.keras"
    keras.Model(inp, [keras.layers.Dense(3)(x), keras.layers.Dense(2)(x)]).save(path)
    with pytest.raises(UsageError, match="1 inputs and 2 outputs"):
        KerasSource(path)


def test_a_keras_application_records_its_macs(tmp_path):
    """MobileNetV2 (depthwise + pointwise blocks inside): the import records the same MACs as the family count."""
    import keras

    from converters.family.keras_build import count_params_macs

    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=4)
    path = tmp_path / "mnv2.keras"
    model.save(path)
    src = KerasSource(path)
    # conv MACs: 1/49 of those at 224x224 (tests/converters/family/test_keras_build.py), then Dense 1280 -> 4
    assert (src.params, src.macs) == count_params_macs(model) == (model.count_params(), 1183792 + 1280 * 4)
