"""Ensembles with the "flip" test-time view and with batch-norm members: the Keras model averages the
right probabilities, runs its members in inference mode, reloads in safe mode, and its ONNX export
computes the same function (it once ran nested batch norm on batch statistics)."""

from __future__ import annotations

import numpy as np
import pytest

from converters.family.specs import ModelSpec

keras = pytest.importorskip("keras")

from converters.family.keras_build import build_ensemble, build_model, load_keras_model  # noqa: E402
from converters.family.layers import Flip  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside keras.saving

SHAPE = (12, 12, 1)
PLAIN = ModelSpec(filters=(4, 8), pool="max", head="flatten")
# ViP + batch norm in a member seen twice (two views) is what Keras' ONNX export once traced with batch
# statistics, before build_ensemble froze its members.
BN = ModelSpec(filters=(4, 8), pool="max", vip="last", batch_norm=True, dense=8)
BN_PS = ModelSpec(filters=(4, 8), pool="max", psconv=True, batch_norm=True, head="flatten")


def _np(t) -> np.ndarray:
    return keras.ops.convert_to_numpy(t)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def _softmax(m, x: np.ndarray) -> np.ndarray:
    return _np(keras.ops.softmax(m(x.astype(np.float32), training=False)))


def _bn_member(spec: ModelSpec, name: str, seed: int):
    """A member whose batch norms hold moving statistics far from any batch's (as after real training)."""
    keras.utils.set_random_seed(seed)
    m = build_model(spec, SHAPE, 5, name=name)
    rng = np.random.default_rng(seed)
    for layer in m.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.uniform(-0.5, 0.5, c).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.05, 0.3, c).astype(np.float32))
            layer.gamma.assign(rng.uniform(0.5, 2.0, c).astype(np.float32))
            layer.beta.assign(rng.uniform(-0.5, 0.5, c).astype(np.float32))
    return m


@pytest.fixture(scope="module")
def bn_ensemble():
    """(ensemble of two batch-norm members seen as ("id", "flip"), its members)."""
    members = [_bn_member(BN, "bn0", 1), _bn_member(BN_PS, "bn1", 2)]
    # The members' batch statistics really differ from their moving ones: a batch-mode member is off
    # (checked before build_ensemble freezes them).
    x = _images(8, seed=3).astype(np.float32)
    for m in members:
        assert not np.allclose(_np(m(x, training=True)), _np(m(x, training=False)), atol=1e-3)
    return build_ensemble(members, name="ensbn", views=("id", "flip")), members


def test_flip_view_averages_each_member_on_the_image_and_its_mirror(tmp_path):
    keras.utils.set_random_seed(0)
    members = [build_model(PLAIN, SHAPE, 5, name="m0"), build_model(BN_PS, SHAPE, 5, name="m1")]
    ens = build_ensemble(members, name="ensflip", views=("id", "flip"))
    flips = [layer for layer in ens.layers if isinstance(layer, Flip)]
    assert [layer.name for layer in flips] == ["view_flip_1"]
    x = _images(4)
    mirrored = x[:, :, ::-1]
    assert not np.array_equal(mirrored, x)
    want = np.mean([_softmax(m, v) for v in (x, mirrored) for m in members], axis=0)
    got = _np(ens(x.astype(np.float32)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # Not the id view alone, nor an up-down mirror.
    assert not np.allclose(got, np.mean([_softmax(m, x) for m in members], axis=0), atol=1e-4)
    assert not np.allclose(got, np.mean([_softmax(m, v) for v in (x, x[:, ::-1]) for m in members], axis=0),
                           atol=1e-4)
    ens.save(tmp_path / "flip.keras")
    back = load_keras_model(tmp_path / "flip.keras")  # safe mode: Flip is a registered layer, no Lambda
    assert any(isinstance(layer, Flip) for layer in back.layers)
    np.testing.assert_allclose(_np(back(x.astype(np.float32))), got, rtol=0, atol=1e-6)


def test_batch_norm_members_run_in_inference_mode(bn_ensemble):
    ens, members = bn_ensemble
    x = _images(8, seed=3).astype(np.float32)
    # Frozen by build_ensemble: even asked to train, the members use their moving statistics.
    np.testing.assert_allclose(_np(ens(x, training=True)), _np(ens(x)), rtol=0, atol=1e-6)
    want = np.mean([_softmax(m, v) for v in (x, x[:, :, ::-1]) for m in members], axis=0)
    whole = _np(ens(x))
    np.testing.assert_allclose(whole, want, rtol=0, atol=1e-6)
    # One image alone gives what it gives inside the batch: no batch statistics anywhere.
    for i in (0, 5):
        np.testing.assert_allclose(_np(ens(x[i : i + 1])), whole[i : i + 1], rtol=0, atol=1e-6)
    # Evaluating the compiled ensemble (what `edgekit train` records) is inference too.
    ens.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False), metrics=["accuracy"])
    labels = whole.argmax(axis=1)
    assert ens.evaluate(x, labels, batch_size=3, verbose=0, return_dict=True)["accuracy"] == 1.0


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_batch_norm_ensemble_converts_with_keras_outputs(bn_ensemble, tmp_path, fmt):
    pytest.importorskip("onnxruntime" if fmt == "onnx" else "ai_edge_litert")
    from converters.convert.exporters import export_model
    from converters.convert.validate import keras_outputs, run_artifact

    ens, _ = bn_ensemble
    res = export_model(ens, tmp_path / f"ensbn.{fmt}", fmt, "fp32")
    x = _images(16, seed=4)
    ref = keras_outputs(ens, x, batch_size=16)
    assert ref.shape == (16, 5)
    for batch in (16, 5, 1):  # whole, ragged batches and single images: all the same function
        got = run_artifact(res.path, fmt, x, batch_size=batch)
        assert got.shape == ref.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
