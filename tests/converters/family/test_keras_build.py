"""Tests for converters/family/keras_build.py: Keras models from specs, MAC and parameter counts, safe-mode loading,
ensembles and their test-time views."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from converters.family.specs import EnsembleSpec, FamilyError, ModelSpec
from converters.family.toml_file import parse_family
from tests.converters._ensembles import PLAIN, WIDE, family_data

keras = pytest.importorskip("keras")

from converters.family.keras_build import (  # noqa: E402
    build_ensemble,
    build_model,
    count_params_macs,
    custom_objects,
    load_keras_model,
)
from converters.family.layers import Flip, PSConv2D, Resample  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside keras.saving

MODEL_SPECS = [
    ModelSpec(filters=(4,), pool="stride", head="flatten"),
    ModelSpec(filters=(4, 8), kernel=5, pool="avg", dense=16, dropout=0.2),
    ModelSpec(filters=(4, 8, 8), pool="max", vip=(0, 1, 1), psconv=True, dense=8),
    ModelSpec(filters=(4, 6), convs=2, pool="stride", vip="all", psconv=True),
    ModelSpec(filters=(3, 5), pool="none", vip="first", psconv=True, head="flatten"),
]


@pytest.mark.parametrize("spec", MODEL_SPECS, ids=lambda s: s.model_id)
def test_build_model_io_and_macs(spec):
    model = build_model(spec, (12, 12, 1), num_classes=7)
    assert model.inputs[0].dtype == "float32"
    assert tuple(model.inputs[0].shape) == (None, 12, 12, 1)
    assert tuple(model.outputs[0].shape) == (None, 7)
    params, macs = count_params_macs(model)
    assert macs == spec.estimate_macs((12, 12, 1), 7)
    assert params == model.count_params()  # shifted PSConv2D stores only its free weights
    assert any(isinstance(layer, PSConv2D) for layer in model.layers) == (spec.psconv and spec.blocks * spec.convs > 1)
    x = np.random.default_rng(0).uniform(0, 255, (2, 12, 12, 1)).astype(np.float32)
    y = model(x, training=False)
    assert y.shape == (2, 7) and np.isfinite(np.asarray(y)).all()


def test_count_params_macs_by_hand():
    spec = ModelSpec(filters=(4, 8), pool="max", dense=16)
    model = build_model(spec, (8, 8, 1), num_classes=10)
    conv1 = 8 * 8 * 9 * 1 * 4  # 8x8 output, 3x3x1 -> 4
    conv2 = 4 * 4 * 9 * 4 * 8  # after 2x2 max pool
    dense = 8 * 16 + 16 * 10
    assert count_params_macs(model) == (
        (9 * 1 * 4 + 4) + (9 * 4 * 8 + 8) + (8 * 16 + 16) + (16 * 10 + 10),
        conv1 + conv2 + dense,
    )
    # ViP runs the conv at stride 2: a quarter of its MACs.
    vip = build_model(dataclasses.replace(spec, vip=(0, 1)), (8, 8, 1), 10)
    assert count_params_macs(vip)[1] == conv1 + conv2 // 4 + dense


def test_count_params_macs_depthwise_and_separable_by_hand():
    x = keras.Input((8, 8, 3))
    y = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)  # 8x8x6
    y = keras.layers.SeparableConv2D(5, 3, depth_multiplier=2)(y)  # valid: 6x6x5, via 12 depthwise channels
    y = keras.layers.GlobalAveragePooling2D()(y)
    model = keras.Model(x, keras.layers.Dense(4)(y))
    depthwise = 8 * 8 * (3 * 3 * 3 * 2)  # each of the 6 outputs per pixel takes 3x3 MACs
    separable = 6 * 6 * (3 * 3 * 6 * 2 + 12 * 5)  # depthwise stage, then 1x1 pointwise 12 -> 5
    dense = 5 * 4
    params = (3 * 3 * 3 * 2 + 6) + (3 * 3 * 6 * 2 + 12 * 5 + 5) + (5 * 4 + 4)
    assert count_params_macs(model) == (params, depthwise + separable + dense)
    assert params == model.count_params()


def test_count_params_macs_of_keras_mobilenet_v2():
    """keras.applications.MobileNetV2 (what `edgekit import` is given): nested depthwise/pointwise blocks."""
    def mnv2(size: int, classes: int):
        return keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=0.35, weights=None, classes=classes)

    params, macs = count_params_macs(mnv2(224, 1000))
    # MobileNetV2 paper / Keras' table, alpha 0.35 at 224x224: 59 M multiply-adds, 1.7 M parameters
    assert abs(macs - 59e6) < 0.01 * 59e6 and params == 1691208
    small = mnv2(32, 10)
    p32, m32 = count_params_macs(small)
    assert p32 == small.count_params()
    # 32x32 gives every feature map exactly 1/7 of the 224x224 side (16, 8, 4, 2, 1 against 112 ... 7): the
    # conv MACs are 1/49 of those at 224; the head is Dense 1280 -> classes
    assert m32 - 1280 * 10 == (macs - 1280 * 1000) // 49 and (macs - 1280 * 1000) % 49 == 0


def test_build_model_rejects_too_small_input():
    with pytest.raises(FamilyError, match="^blocks:"):
        build_model(ModelSpec(filters=(4, 4, 4, 4)), (8, 8, 1))
    with pytest.raises(FamilyError, match="num_classes"):
        build_model(ModelSpec(filters=(4,)), (8, 8, 1), num_classes=1)


def test_preprocessing_in_graph():
    x = np.random.default_rng(0).uniform(0, 255, (2, 6, 6, 3)).astype(np.float32)
    m = build_model(ModelSpec(filters=(2,)), (6, 6, 3), 2)
    pre = keras.Model(m.input, m.get_layer("rescale").output)
    np.testing.assert_allclose(np.asarray(pre(x)), x / 255.0, rtol=1e-6)
    spec = ModelSpec(filters=(2,), preprocess="standardize", mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0))
    m = build_model(spec, (6, 6, 3), 2)
    pre = keras.Model(m.input, m.get_layer("standardize").output)
    expect = (x - np.array([10, 20, 30], np.float32)) / np.array([2, 4, 8], np.float32)
    np.testing.assert_allclose(np.asarray(pre(x)), expect, rtol=1e-4, atol=1e-4)


def test_save_and_load_in_safe_mode(tmp_path):
    spec = ModelSpec(filters=(4, 8), vip=(0, 1), psconv=True, dense=8, dropout=0.1)
    model = build_model(spec, (10, 10, 1), 3)
    path = tmp_path / "model.keras"
    model.save(path)
    x = np.random.default_rng(1).uniform(0, 255, (2, 10, 10, 1)).astype(np.float32)
    loaded = load_keras_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
    again = keras.saving.load_model(path, custom_objects=custom_objects(), safe_mode=True)
    assert count_params_macs(again) == count_params_macs(model)
    with pytest.raises(FileNotFoundError):
        load_keras_model(tmp_path / "missing.keras")


# --- batch norm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("psconv", [False, True])
def test_batch_norm_is_conv_without_bias_then_bn_then_relu(psconv):
    spec = ModelSpec(filters=(4, 8), convs=2, pool="max", psconv=psconv, batch_norm=True, dense=8)
    model = build_model(spec, (12, 12, 1), 5)
    names = [layer.name for layer in model.layers]
    for tag in ("b1c1", "b1c2", "b2c1", "b2c2"):
        conv = next(layer for layer in model.layers if layer.name.startswith(f"{tag}_") and
                    isinstance(layer, (keras.layers.Conv2D, PSConv2D)))
        bn, relu = model.get_layer(f"{tag}_bn"), model.get_layer(f"{tag}_relu")
        assert isinstance(bn, keras.layers.BatchNormalization) and isinstance(relu, keras.layers.ReLU)
        assert names.index(conv.name) + 1 == names.index(bn.name) and names.index(bn.name) + 1 == names.index(relu.name)
        assert bn.input is conv.output and relu.input is bn.output  # wired in that order
        assert conv.use_bias is False and keras.activations.serialize(conv.activation) == "linear"
        assert len(conv.weights) == 1  # the kernel (or pSConv's free weights) only: BN's beta is the bias
    assert any(isinstance(layer, PSConv2D) for layer in model.layers) == psconv
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 4
    params, macs = count_params_macs(model)
    assert macs == spec.estimate_macs((12, 12, 1), 5)
    assert params == model.count_params()
    # Without batch norm: biased ReLU convs and no BN or ReLU layers.
    plain = build_model(dataclasses.replace(spec, batch_norm=False), (12, 12, 1), 5)
    assert not any(isinstance(layer, (keras.layers.BatchNormalization, keras.layers.ReLU)) for layer in plain.layers)
    conv = plain.get_layer("b1c2_psconv" if psconv else "b1c2_conv")
    assert conv.use_bias is True and keras.activations.serialize(conv.activation) == "relu"
    assert count_params_macs(plain)[1] == macs


def test_batch_norm_model_uses_moving_statistics_at_inference(tmp_path):
    spec = ModelSpec(filters=(4,), pool="max", batch_norm=True)
    model = build_model(spec, (8, 8, 1), 3)
    bn = model.get_layer("b1c1_bn")
    rng = np.random.default_rng(2)
    bn.moving_mean.assign(rng.uniform(-1, 1, 4).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2, 4).astype(np.float32))
    x = rng.uniform(0, 255, (5, 8, 8, 1)).astype(np.float32)
    infer = np.asarray(model(x, training=False))
    np.testing.assert_allclose(np.asarray(model(x[:1], training=False)), infer[:1], rtol=1e-5, atol=1e-5)
    model.save(tmp_path / "bn.keras")
    np.testing.assert_allclose(np.asarray(load_keras_model(tmp_path / "bn.keras")(x)), infer, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(model(x, training=True)), infer, atol=1e-3)  # batch statistics differ


# --- ensembles: the Keras model ---------------------------------------------------------------------


def test_build_ensemble_averages_softmax_and_reloads_with_custom_layers(tmp_path):
    import keras

    from converters.family.keras_build import build_ensemble, build_model, count_params_macs, load_keras_model

    keras.utils.set_random_seed(0)
    fam = parse_family(family_data())
    members = [build_model(s, name=n) for s, n in zip(fam.expand(), ("m0", "m1", "m2"))]
    ens = build_ensemble(members, name="ens")
    x = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1)).astype(np.float32)
    want = np.mean([keras.ops.convert_to_numpy(keras.ops.softmax(m(x))) for m in members], axis=0)
    got = keras.ops.convert_to_numpy(ens(x))
    assert got.shape == (6, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert count_params_macs(ens) == tuple(np.sum([count_params_macs(m) for m in members], axis=0))
    ens.save(tmp_path / "ens.keras")
    back = load_keras_model(tmp_path / "ens.keras")  # safe mode; PSConv2D nested inside a member
    np.testing.assert_allclose(keras.ops.convert_to_numpy(back(x)), got, rtol=0, atol=1e-7)
    with pytest.raises(FamilyError, match="at least 2 members"):
        build_ensemble(members[:1])
    with pytest.raises(FamilyError, match="distinct Keras model names"):
        build_ensemble([members[0], members[0]])


def test_an_ensemble_of_members_at_other_sizes_resizes_inside_as_resize_pixels_does(tmp_path):
    from edge.artifacts.images import resize_pixels

    keras.utils.set_random_seed(1)
    at = {(20, 20): build_model(ModelSpec(filters=(4,), resolution=(20, 20)), name="m20"),
          (36, 36): build_model(ModelSpec(filters=(6,), resolution=(36, 36)), name="m36"),
          (28, 28): build_model(ModelSpec(filters=(4,)), name="m28")}
    assert {hw: tuple(m.inputs[0].shape[1:3]) for hw, m in at.items()} == {hw: hw for hw in at}
    ens = build_ensemble(list(at.values()), name="mixed", views=("id", "flip"), input_shape=(28, 28, 1))
    assert tuple(ens.inputs[0].shape[1:]) == (28, 28, 1)
    assert sorted(layer.name for layer in ens.layers if isinstance(layer, Resample)) == [
        "resize_20x20", "resize_20x20_flip", "resize_36x36", "resize_36x36_flip"]  # none for the 28x28 member
    x = np.random.default_rng(2).integers(0, 256, (6, 28, 28, 1)).astype(np.uint8)
    views = (x, x[:, :, ::-1].copy())
    want = np.mean([_softmax(m, resize_pixels(v, hw)) for v in views for hw, m in at.items()], axis=0)
    got = _np(ens(x.astype(np.float32)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)  # resize_pixels rounds to uint8, Resample does not
    # A resize's constants: neither parameters nor MACs of the ensemble (each member counted once, as always).
    assert count_params_macs(ens) == tuple(np.sum([count_params_macs(m) for m in at.values()], axis=0))
    ens.save(tmp_path / "mixed.keras")
    back = load_keras_model(tmp_path / "mixed.keras")  # safe mode: Resample is a registered layer
    np.testing.assert_allclose(_np(back(x.astype(np.float32))), got, rtol=0, atol=1e-6)
    # Without the ensemble's input shape the members must agree; the channels always must.
    with pytest.raises(FamilyError, match="share one input shape"):
        build_ensemble(list(at.values()))
    rgb = build_model(ModelSpec(filters=(4,)), input_shape=(28, 28, 3), name="rgb")
    with pytest.raises(FamilyError, match="member rgb takes .*the channels must match"):
        build_ensemble([at[(20, 20)], rgb], input_shape=(28, 28, 1))


def _shift(x: np.ndarray, view: str) -> np.ndarray:
    """The image moved one pixel (zero filled) or mirrored: what the ensemble's view shows its members."""
    y = np.zeros_like(x)
    if view == "left":
        y[:, :, :-1] = x[:, :, 1:]
    elif view == "right":
        y[:, :, 1:] = x[:, :, :-1]
    elif view == "up":
        y[:, :-1] = x[:, 1:]
    elif view == "down":
        y[:, 1:] = x[:, :-1]
    elif view == "flip":
        y = x[:, :, ::-1]
    else:
        y = x
    return y


def test_views_average_every_member_on_every_shifted_image(tmp_path):
    import keras

    from converters.family.keras_build import build_ensemble, build_model, load_keras_model
    from converters.family.specs import ENSEMBLE_VIEWS

    keras.utils.set_random_seed(1)
    fam = parse_family(family_data())
    members = [build_model(s, name=n) for s, n in zip(fam.expand()[:2], ("m0", "m1"))]
    ens = build_ensemble(members, name="ensv", views=ENSEMBLE_VIEWS)
    x = np.random.default_rng(1).integers(0, 256, (4, 28, 28, 1)).astype(np.float32)
    want = np.mean([keras.ops.convert_to_numpy(keras.ops.softmax(m(_shift(x, v))))
                    for v in ENSEMBLE_VIEWS for m in members], axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ens(x)), want, rtol=0, atol=1e-6)
    ens.save(tmp_path / "v.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(load_keras_model(tmp_path / "v.keras")(x)), want, atol=1e-6)
    a = EnsembleSpec((PLAIN, WIDE))
    b = EnsembleSpec((PLAIN, WIDE), views=("id", "left"))
    assert a.model_id != b.model_id and b.model_id.startswith("ens2x2-")
    assert EnsembleSpec.from_dict(b.to_dict()) == b
    with pytest.raises(FamilyError, match="unknown view 'rotate'"):
        EnsembleSpec((PLAIN, WIDE), views=("id", "rotate"))


# --- ensembles with the "flip" view and with batch-norm members ------------------------------------
# Ensembles with the "flip" test-time view and with batch-norm members: the Keras model averages the
# right probabilities, runs its members in inference mode, reloads in safe mode, and its ONNX export
# computes the same function (it once ran nested batch norm on batch statistics).

SHAPE = (12, 12, 1)
PLAIN_SPEC = ModelSpec(filters=(4, 8), pool="max", head="flatten")
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
    members = [build_model(PLAIN_SPEC, SHAPE, 5, name="m0"), build_model(BN_PS, SHAPE, 5, name="m1")]
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


# ----------------------------------------------------------------------------------------- mobile blocks

MOBILE_SPECS = [
    ModelSpec(filters=(8, 16, 24), block="dwsep", stride=(1, 2, 2), vip="last", alpha=0.75),
    ModelSpec(filters=(8, 16), block="mbconv", expand=3, se=True, convs=2, stride=(1, 2), kernel=5),
    ModelSpec(filters=(8, 16), block="mbconv", expand=1, stride=(2, 2), head="flatten", dense=12),
    ModelSpec(filters=(8, 16), block="residual", stride=(1, 2), psconv=True, vip="first"),
    ModelSpec(filters=(8, 16), block="residual", convs=2, stride=(2, 1)),
]


def profiler_macs(model, shape) -> int:
    """An independent MAC count: TensorFlow's profiler FLOPs of the frozen graph's Conv2D, DepthwiseConv2dNative
    and MatMul ops, halved (it counts a multiply and an add per MAC)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec([1, *shape], tf.float32))
    graph = convert_variables_to_constants_v2(fn).graph
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    opts = builder(builder.float_operation()).with_empty_output().build()
    root = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=opts)
    flops, stack = {}, list(root.children)
    while stack:  # cmd="op" nests each op type under the previous one
        node = stack.pop()
        flops[node.name] = node.float_ops
        stack.extend(node.children)
    counted = sum(flops.get(k, 0) for k in ("Conv2D", "DepthwiseConv2dNative", "MatMul"))
    assert counted % 2 == 0
    return counted // 2


@pytest.mark.parametrize("spec", MOBILE_SPECS + MODEL_SPECS[1:3], ids=lambda s: s.model_id)
def test_every_block_kind_counts_params_as_keras_and_macs_as_the_tf_profiler(spec):
    model = build_model(spec, (16, 16, 1), num_classes=10)
    params, macs = count_params_macs(model)
    assert params == model.count_params()
    assert macs == spec.estimate_macs((16, 16, 1), 10) == profiler_macs(model, (16, 16, 1))
    y = model(np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 1)).astype(np.float32), training=False)
    assert y.shape == (2, 10) and np.isfinite(np.asarray(y)).all()


def test_mobile_layers_are_what_the_plan_says():
    names = lambda m: [type(layer).__name__ for layer in m.layers]  # noqa: E731
    dw = build_model(MOBILE_SPECS[0], (16, 16, 1))
    assert names(dw).count("DepthwiseConv2D") == 3 and "Resizing" in names(dw)  # ViP on the last stage
    assert all(not layer.use_bias for layer in dw.layers if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D"))
    mb = build_model(MOBILE_SPECS[1], (16, 16, 1))
    assert names(mb).count("Add") == 3 and names(mb).count("Multiply") == 4  # stage 2's first unit adds nothing
    res = build_model(MOBILE_SPECS[3], (16, 16, 1))
    assert names(res).count("PSConv2D") == 4 and names(res).count("Add") == 2


def test_alpha_rounds_as_keras_applications_does():
    from keras.src.applications.mobilenet_v2 import _make_divisible

    from converters.family.blocks import make_divisible

    for v in (4, 8 * 0.35, 12, 16 * 0.75, 17.9, 24 * 1.3, 36, 92, 100, 320 * 1.4):
        assert make_divisible(v) == _make_divisible(v, 8)


def test_mobile_model_saves_and_loads_in_safe_mode(tmp_path):
    model = build_model(MOBILE_SPECS[1], (16, 16, 1))
    path = tmp_path / "m.keras"
    model.save(path)
    x = np.random.default_rng(1).uniform(0, 255, (3, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(load_keras_model(path)(x)), np.asarray(model(x)), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def trained_blocks():
    """One small net of each mobile block kind trained for a moment on 2,000 Fashion-MNIST images."""
    from tests import _bundle_builder as bb
    from tests.converters._fixtures import fashion_subset

    xtr, ytr, xte, yte = fashion_subset()
    out = {}
    for spec in (MOBILE_SPECS[0], MOBILE_SPECS[1], MOBILE_SPECS[3]):
        model = build_model(spec, (28, 28, 1))
        for layer in model.layers:  # 375 steps are too few for batch norm's default 0.99 to settle
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
        out[spec.block] = bb.train_keras(model, xtr, ytr, epochs=3, batch_size=16)
    return out, xtr, xte, yte


@pytest.mark.parametrize("block", ["dwsep", "mbconv", "residual"])
def test_every_block_converts_to_all_seven_targets_and_validates(trained_blocks, tmp_path, block):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    from converters.convert.exporters import export_model, precisions_for
    from converters.convert.validate import keras_outputs, validate_artifact

    models, xtr, xte, yte = trained_blocks
    model = models[block]
    ref = keras_outputs(model, xte)
    assert float((ref.argmax(1) == yte).mean()) > 0.5  # a model that learnt something, so agreement means something
    targets = [(fmt, p) for fmt in ("tflite", "onnx") for p in precisions_for(fmt)]
    assert len(targets) == 7
    for fmt, precision in targets:
        res = export_model(model, tmp_path / f"{block}-{precision}.{fmt}", fmt, precision, calib_images=xtr[:100])
        v = validate_artifact(res.path, fmt, xte, yte, ref)  # the convert stage's judge: within 2 points, 90 % agreement
        assert v.status == "ok", (fmt, precision, v.reason)
        if precision == "fp32":
            assert v.max_abs_diff is not None and v.max_abs_diff < 1e-3
