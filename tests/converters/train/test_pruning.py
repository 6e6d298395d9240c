"""Structured filter pruning (converters/train/pruning.py): which filters are kept, that the narrower model computes
what its parent computes with the cut filters silenced, ThiNet's choice, and pruned children in a sweep."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest

from converters.family.specs import FamilyError, ModelSpec
from converters.train.pruning import fine_tune_schedule, l1_keep, thinet_keep

keras = pytest.importorskip("keras")

from converters.family.keras_build import build_model  # noqa: E402
from converters.train.pruning import copy_kept_weights  # noqa: E402


def test_l1_keeps_the_filters_of_largest_norm_in_channel_order():
    k = np.zeros((3, 3, 2, 5), np.float32)
    for o, v in enumerate([0.1, 3.0, -2.0, 0.5, 1.0]):
        k[..., o] = v
    assert l1_keep(k, 3).tolist() == [1, 2, 4]


def test_thinet_removes_the_channels_the_next_layer_barely_uses():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 6, 6, 6))
    kernel = rng.normal(0, 1, (3, 3, 6, 4))
    kernel[:, :, [1, 4], :] *= 1e-3  # channels 1 and 4 contribute almost nothing to the next layer
    assert thinet_keep(x, kernel, 4, rng).tolist() == [0, 2, 3, 5]


def _randomize(model, seed: int = 0):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape).astype(np.float32))
    return model


def _silence(parent, spec: ModelSpec, kept: dict[str, list[int]]):
    """A copy of ``parent`` whose cut filters output exactly 0 after their ReLU (weights and bias, or BN, zeroed)."""
    clone = keras.models.clone_model(parent)
    clone.set_weights(parent.get_weights())
    for tag, keep in kept.items():
        conv = clone.get_layer(f"{tag}_conv")
        cut = np.setdiff1d(np.arange(conv.kernel.shape[-1]), keep)
        if spec.batch_norm:
            bn = clone.get_layer(f"{tag}_bn")
            g, b, m, v = bn.get_weights()
            g[cut] = 0.0
            b[cut] = 0.0
            bn.set_weights([g, b, m, v])
        else:
            w, bias = conv.get_weights()
            w[..., cut] = 0.0
            bias[cut] = 0.0
            conv.set_weights([w, bias])
    return clone


@pytest.mark.parametrize("spec", [
    ModelSpec(filters=(8, 16), batch_norm=True, prune=0.5),
    ModelSpec(filters=(8, 12), convs=2, pool="stride", head="flatten", dense=10, prune=0.25),
    ModelSpec(filters=(8, 16), vip="last", batch_norm=True, head="flatten", prune=0.5),  # a pruned ViP member
], ids=lambda s: s.model_id)
def test_the_pruned_child_is_its_parent_with_the_cut_filters_silenced(spec):
    shape = (16, 16, 1)
    parent = _randomize(build_model(spec.parent, shape))
    child = build_model(spec, shape)
    kept = copy_kept_weights(parent, child, spec, shape, "l1")
    assert [len(k) for k in kept.values()] == [p["filters"] for p in spec.conv_plan(shape)]
    x = np.random.default_rng(1).uniform(0, 255, (4, *shape)).astype(np.float32)
    want = np.asarray(_silence(parent, spec, kept)(x, training=False))
    np.testing.assert_allclose(np.asarray(child(x, training=False)), want, rtol=1e-4, atol=1e-4)
    assert child.count_params() < parent.count_params()


def test_thinet_copies_the_channels_it_chose():
    spec = ModelSpec(filters=(8, 16), batch_norm=True, prune=0.5, prune_method="thinet")
    shape = (16, 16, 1)
    parent = _randomize(build_model(spec.parent, shape))
    child = build_model(spec, shape)
    images = np.random.default_rng(2).integers(0, 256, (32, *shape), dtype=np.uint8)
    kept = copy_kept_weights(parent, child, spec, shape, "thinet", images)
    x = images[:4].astype(np.float32)
    np.testing.assert_allclose(np.asarray(child(x, training=False)),
                               np.asarray(_silence(parent, spec, kept)(x, training=False)), rtol=1e-4, atol=1e-4)


def test_prune_ids_widths_parent_and_refusals():
    s = ModelSpec(filters=(36, 72), batch_norm=True, prune=0.5)
    assert s.model_id == "c2-f36.72-k3-max-d0-vip00-ps0-bn-p0.5" and s.channels == (18, 36)
    assert s.parent == ModelSpec(filters=(36, 72), batch_norm=True) and s.parent.parent == s.parent
    assert ModelSpec(filters=(8,), prune=0.5, prune_method="thinet").model_id.endswith("-p0.5thinet")
    assert s.estimate_macs() < s.parent.estimate_macs() / 3  # both a conv's inputs and outputs are cut
    with pytest.raises(FamilyError, match="^prune: block 'residual' cannot be pruned safely"):
        ModelSpec(filters=(8, 16), block="residual", prune=0.5)
    with pytest.raises(FamilyError, match="^prune: block 'dwsep'"):
        ModelSpec(filters=(8, 16), block="dwsep", prune=0.5)
    with pytest.raises(FamilyError, match="^prune: pSConv layers cannot be pruned"):
        ModelSpec(filters=(8, 16), psconv=True, prune=0.5)
    with pytest.raises(FamilyError, match="^prune: the fraction"):
        ModelSpec(filters=(8,), prune=0.95)
    with pytest.raises(FamilyError, match="^prune_method: only used with prune > 0"):
        ModelSpec(filters=(8,), prune_method="thinet")


def test_fine_tuning_is_short_and_slower():
    from converters.train.options import LONG

    ft = fine_tune_schedule(LONG)
    assert ft.epochs == 2 and ft.learning_rate == pytest.approx(LONG.learning_rate / 10)
    assert dataclasses.replace(ft, epochs=LONG.epochs, patience=LONG.patience, learning_rate=LONG.learning_rate) == LONG


def test_a_sweep_trains_the_parent_then_its_pruned_children(tmp_path):
    from converters.data.files import DatasetNotFound
    from converters.train.options import Schedule, SplitOptions, TrainOptions
    from converters.train.sweep import train_sweep

    fam = tmp_path / "p.toml"
    fam.write_text('name = "p"\n[[space]]\nfilters = [8, 16]\nbatch_norm = true\nprune = [0.5]\n')
    opts = TrainOptions(run_dir=tmp_path / "run", family=str(fam), progress=False,
                        schedule=Schedule(mode="quick", epochs=1, patience=1, batch_size=32, learning_rate=3e-3),
                        splits=SplitOptions(calib_size=16, limit_train=400, limit_test=100))
    out = io.StringIO()
    try:
        results = train_sweep(opts, out=out)
    except DatasetNotFound as exc:
        pytest.skip(f"the real Fashion-MNIST is not installed: {exc}")
    parent, child = "c2-f8.16-k3-max-d0-vip00-ps0-bn", "c2-f8.16-k3-max-d0-vip00-ps0-bn-p0.5"
    assert [r.model_id for r in results] == [parent, child]  # the parent is trained though the family lists it not
    assert all(r.status == "trained" for r in results)
    rec = json.loads((tmp_path / "run" / "models" / child / "train.json").read_text())
    assert rec["pruned_from"] == parent and rec["prune"] == 0.5 and rec["prune_method"] == "l1"
    assert rec["macs"] < rec["parent_macs"] and len(rec["kept_channels"]["b1c1"]) == 4
    assert rec["schedule"]["learning_rate"] == pytest.approx(3e-4)
    assert f"from {parent}, 50% of the filters cut (l1)" in out.getvalue()
    # Resumed, nothing trained again.
    again = train_sweep(opts, out=io.StringIO())
    assert [r.status for r in again] == ["resumed", "resumed"]


def test_a_vip_child_of_a_pruned_member():
    s = ModelSpec(filters=(8, 16), batch_norm=True, vip="last", prune=0.5, vip_from="pruned")
    assert s.model_id.endswith("-bn-p0.5-vipft")
    assert s.parent == ModelSpec(filters=(8, 16), batch_norm=True, prune=0.5)  # the pruned twin without ViP
    assert s.parent.parent == ModelSpec(filters=(8, 16), batch_norm=True)
    with pytest.raises(FamilyError, match="^vip_from: 'pruned' makes a ViP child of the pruned member; this spec "
                                          "has no ViP"):
        ModelSpec(filters=(8, 16), prune=0.5, vip_from="pruned")
    with pytest.raises(FamilyError, match="^vip_from: only used with prune > 0"):
        ModelSpec(filters=(8, 16), vip="last", vip_from="pruned")
    shape = (16, 16, 1)
    parent = _randomize(build_model(s.parent, shape))
    child = build_model(s, shape)
    child.set_weights(parent.get_weights())  # what start_from_parent does: ViP adds no weights
    assert [w.shape for w in child.get_weights()] == [w.shape for w in parent.get_weights()]


def test_a_sweep_trains_the_chain_of_a_vip_child_of_a_pruned_member(tmp_path):
    from converters.data.files import DatasetNotFound
    from converters.train.options import Schedule, SplitOptions, TrainOptions
    from converters.train.sweep import train_sweep

    fam = tmp_path / "v.toml"
    fam.write_text('name = "v"\n[[space]]\nfilters = [8, 16]\nbatch_norm = true\nvip = "last"\nprune = 0.5\n'
                   'vip_from = "pruned"\n')
    opts = TrainOptions(run_dir=tmp_path / "run", family=str(fam), progress=False,
                        schedule=Schedule(mode="quick", epochs=1, patience=1, batch_size=32, learning_rate=3e-3),
                        splits=SplitOptions(calib_size=16, limit_train=400, limit_test=100))
    try:
        results = train_sweep(opts, out=io.StringIO())
    except DatasetNotFound as exc:
        pytest.skip(f"the real Fashion-MNIST is not installed: {exc}")
    base = "c2-f8.16-k3-max-d0-vip00-ps0-bn"
    assert [r.model_id for r in results] == [base, base + "-p0.5", "c2-f8.16-k3-max-d0-vip01-ps0-bn-p0.5-vipft"]
    rec = json.loads((tmp_path / "run" / "models" / results[2].model_id / "train.json").read_text())
    assert rec["vip_from"] == base + "-p0.5" and "pruned_from" not in rec
    assert rec["macs"] < rec["parent_macs"]  # ViP runs the last block's conv at twice its stride
