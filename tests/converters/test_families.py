"""Tests for converters/families.py: family TOML parsing and validation, ModelSpec ids, Keras models."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap

import numpy as np
import pytest

from converters.families import (
    FamilyError,
    FamilySpec,
    ModelSpec,
    list_families,
    load_family,
    parse_family,
)

ID_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def write_family(tmp_path, body: str, name: str = "fam.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


# --- built-in families ------------------------------------------------------------------------


def test_builtin_families_listed():
    assert {"default", "demo"} <= set(list_families())


def test_default_family_size_and_range():
    fam = load_family("default")
    assert isinstance(fam, FamilySpec) and fam.name == "default"
    specs = fam.expand()
    ids = [s.model_id for s in specs]
    assert len(specs) >= 200
    assert len(set(ids)) == len(ids) == len(set(specs))
    assert all(ID_RE.match(i) for i in ids)
    macs = [s.estimate_macs((28, 28, 1), 10) for s in specs]
    assert min(macs) < 10_000  # a few thousand MACs
    assert max(macs) > 20_000_000  # tens of MMACs
    assert any(s.uses_vip for s in specs) and any(s.psconv for s in specs)
    # The first dozen already span sizes and include ViP and pSConv (for --limit 12).
    first = specs[:12]
    assert any(s.uses_vip for s in first) and any(s.psconv for s in first)
    assert len({s.blocks for s in first}) >= 3


def test_demo_family():
    specs = load_family("demo").expand()
    assert 12 <= len(specs) <= 20
    macs = sorted(s.estimate_macs() for s in specs)
    assert macs[0] < 50_000 and 1_000_000 < macs[-1] <= 25_000_000
    assert sum(s.uses_vip for s in specs) >= 3 and sum(s.psconv for s in specs) >= 3
    assert any(s.uses_vip and s.psconv for s in specs)
    assert len({s.model_id for s in specs}) == len(specs)


# --- ModelSpec --------------------------------------------------------------------------------


def test_model_id_is_readable_and_stable():
    s = ModelSpec(filters=(16, 32, 64), kernel=3, pool="max", dense=64, vip=(0, 1, 0), psconv=True)
    assert s.model_id == "c3-f16.32.64-k3-max-d64-vip010-ps1"
    s2 = ModelSpec(filters=(8, 16), convs=2, pool="stride", dropout=0.25, head="flatten")
    assert s2.model_id == "c2x2-f8.16-k3-stride-d0-vip00-ps0-dr0.25-flatten"
    s3 = ModelSpec(filters=(8,), preprocess="standardize", mean=(72.9,), std=(90.0,))
    assert s3.model_id == "c1-f8-k3-max-d0-vip0-ps0-std72.9_90"


def test_model_spec_is_frozen_hashable_and_round_trips():
    s = ModelSpec(filters=(8, 16), vip="last", psconv=True, dense=32, dropout=0.1)
    assert s.vip == (0, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.kernel = 5  # type: ignore[misc]
    d = json.loads(json.dumps(s.to_dict()))
    assert d["model_id"] == s.model_id
    back = ModelSpec.from_dict(d)
    assert back == s and hash(back) == hash(s)


def test_model_spec_from_dict_rejects_bad_input(tmp_path):
    d = ModelSpec(filters=(8,)).to_dict()
    with pytest.raises(FamilyError, match="colour: unknown model spec key"):
        ModelSpec.from_dict({**d, "colour": 1})
    with pytest.raises(FamilyError, match="model_id"):
        ModelSpec.from_dict({**d, "model_id": "c9-something"})
    with pytest.raises(FamilyError, match="filters"):
        ModelSpec.from_dict({"kernel": 3})
    p = tmp_path / "spec.json"
    p.write_text(json.dumps(d))
    assert ModelSpec.load(p) == ModelSpec(filters=(8,))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(filters=(8, -4)), "filters"),
        (dict(filters=(0,)), "filters"),
        (dict(filters=()), "filters"),
        (dict(filters=(8,), kernel=0), "kernel"),
        (dict(filters=(8,), pool="mean"), "pool"),
        (dict(filters=(8,), dropout=1.0), "dropout"),
        (dict(filters=(8,), vip=(1, 1)), "vip"),
        (dict(filters=(8,), vip="middle"), "vip"),
        (dict(filters=(8, 8), kernel=5, psconv=True), "psconv"),
        (dict(filters=(8,), preprocess="standardize"), "mean/std"),
        (dict(filters=(8,), preprocess="standardize", mean=(1.0,), std=(0.0,)), "std"),
        (dict(filters=(8,), head="attention"), "head"),
    ],
)
def test_model_spec_validation(kwargs, key):
    with pytest.raises(FamilyError, match=f"^{re.escape(key)}:"):
        ModelSpec(**kwargs)


def test_check_input_shapes():
    ModelSpec(filters=(8, 8, 8, 8), pool="max").check_input((28, 28))
    with pytest.raises(FamilyError, match="^blocks: 5 blocks with max downsampling"):
        ModelSpec(filters=(8,) * 5, pool="max").check_input((28, 28))
    with pytest.raises(FamilyError, match="^kernel: kernel 5 is larger than the 4x4 input"):
        ModelSpec(filters=(8,), kernel=5).check_input((4, 4))
    with pytest.raises(FamilyError, match="^mean: has 2 values; the input has 3 channels"):
        ModelSpec(filters=(8,), preprocess="standardize", mean=(1, 2), std=(1,)).check_input((28, 28, 3))


# --- family files -----------------------------------------------------------------------------


def test_grid_union_dedup_and_ranges(tmp_path):
    p = write_family(
        tmp_path,
        """
        name = "t"
        mode = "grid"
        [[space]]
        blocks = [1, 2]
        width = {min = 4, max = 8, step = 4}
        psconv = [false, true]
        [[space]]
        filters = [[4], [8, 16]]
        """,
    )
    fam = load_family(p)
    ids = [s.model_id for s in fam.expand()]
    # c1 + psconv has no eligible conv (the first conv stays dense): folded into ps0.
    assert ids == [
        "c1-f4-k3-max-d0-vip0-ps0",
        "c1-f8-k3-max-d0-vip0-ps0",
        "c2-f4.8-k3-max-d0-vip00-ps0",
        "c2-f4.8-k3-max-d0-vip00-ps1",
        "c2-f8.16-k3-max-d0-vip00-ps0",
        "c2-f8.16-k3-max-d0-vip00-ps1",
    ]
    assert len(fam) == 6


def test_expand_limit_and_sample_are_deterministic():
    fam = load_family("default")
    all_ids = [s.model_id for s in fam.expand()]
    assert [s.model_id for s in fam.expand(limit=5)] == all_ids[:5]
    a = fam.expand(sample=20, seed=1)
    assert [s.model_id for s in a] == [s.model_id for s in fam.expand(sample=20, seed=1)]
    assert len(a) == 20 and set(s.model_id for s in a) <= set(all_ids)
    assert [s.model_id for s in a] != [s.model_id for s in fam.expand(sample=20, seed=2)]
    # sample keeps family order; limit applies after it
    pos = [all_ids.index(s.model_id) for s in a]
    assert pos == sorted(pos)
    assert fam.expand(sample=20, seed=1, limit=3) == a[:3]
    with pytest.raises(FamilyError, match="limit"):
        fam.expand(limit=0)


def test_random_mode(tmp_path):
    body = """
        mode = "random"
        count = 15
        seed = {seed}
        [[space]]
        blocks = [1, 2, 3]
        width = {{min = 4, max = 64, step = 4}}
        kernel = [3, 5]
        pool = ["max", "avg", "stride"]
        dense = [0, 32, 64]
        """
    f0 = load_family(write_family(tmp_path, body.format(seed=0)))
    s0 = f0.expand()
    assert len(s0) == 15 and len({s.model_id for s in s0}) == 15
    assert s0 == load_family(write_family(tmp_path, body.format(seed=0), "b.toml")).expand()
    s1 = load_family(write_family(tmp_path, body.format(seed=1), "c.toml")).expand()
    assert s0 != s1


@pytest.mark.parametrize(
    "body, key, reason",
    [
        ("colour = 1\n[[space]]\nblocks = 1\nwidth = 8\n", "colour", "unknown key"),
        ("[[space]]\nblocks = 1\nwidth = 8\nkernal = 3\n", "space[0].kernal", "unknown key"),
        ("[[space]]\nblocks = [4, 5]\nwidth = 8\npool = 'max'\n", "space[0].blocks", "5 blocks with max downsampling"),
        ("[[space]]\nblocks = 4\nwidth = 8\nkernel = [3, 5]\n", "space[0].blocks", "smaller than the 5x5 kernel"),
        ("input_size = [4, 4]\n[[space]]\nblocks = 1\nwidth = 8\nkernel = 5\n", "space[0].kernel", "larger than the 4x4 input"),
        ("[[space]]\nblocks = 2\nwidth = [8, -8]\n", "space[0].width", "not a positive integer"),
        ("[[space]]\nfilters = [[8, 0]]\n", "space[0].filters", "filters must be > 0"),
        ("[[space]]\nblocks = 2\nwidth = '8'\n", "space[0].width", "not an integer"),
        ("[[space]]\nblocks = 2\nwidth = 8\ndropout = 1.5\n", "space[0].dropout", "[0, 1)"),
        ("[[space]]\nblocks = 2\nwidth = 8\npool = 'mean'\n", "space[0].pool", "one of"),
        ("[[space]]\nblocks = 2\nwidth = 8\nkernel = [3, 5]\npsconv = [false, true]\n", "space[0].psconv", "kernel 3"),
        ("[[space]]\nblocks = 2\nwidth = 8\nvip = [0, 1, 1]\n", "space[0].vip", "3 entries but the spec has 2 blocks"),
        ("[[space]]\nblocks = 2\nwidth = 8\nvip = 'middle'\n", "space[0].vip", "one of"),
        ("[[space]]\nblocks = [2, 2]\nwidth = 8\n", "space[0].blocks", "repeated"),
        ("[[space]]\nfilters = [[8]]\nblocks = 1\n", "space[0].blocks", "either filters or blocks"),
        ("[[space]]\nwidth = 8\n", "space[0].blocks", "missing"),
        ("name = 'x'\n", "space", "missing"),
        ("mode = 'sweep'\n[[space]]\nblocks = 1\nwidth = 8\n", "mode", "one of"),
        ("mode = 'random'\n[[space]]\nblocks = 1\nwidth = 8\n", "count", "positive integer"),
        ("mode = 'random'\ncount = 3\n[[space]]\nblocks = 1\nwidth = 8\n", "count", "holds only 1"),
        ("seed = 3\n[[space]]\nblocks = 1\nwidth = 8\n", "seed", "only used with mode"),
        ("preprocess = 'standardize'\n[[space]]\nblocks = 1\nwidth = 8\n", "mean/std", "needs mean and std"),
        ("[[space]]\nblocks = 2\nwidth = 8\npsconv = 'yes'\n", "space[0].psconv", "true or false"),
        ("[[space]]\nblocks = 1\nwidth = {min = 8, max = 4}\n", "space[0].width", "bad range"),
    ],
)
def test_bad_family_files_name_the_key(tmp_path, body, key, reason):
    p = write_family(tmp_path, body)
    with pytest.raises(FamilyError) as ei:
        load_family(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: {key}:"), msg
    assert reason in msg, msg


def test_bad_toml_and_unknown_family(tmp_path):
    p = write_family(tmp_path, "[[space]\nblocks = 1\n")
    with pytest.raises(FamilyError, match="not valid TOML"):
        load_family(p)
    with pytest.raises(FamilyError, match="unknown family 'nope'; built-in: .*default"):
        load_family("nope")
    with pytest.raises(FamilyError, match="no such family file"):
        load_family(tmp_path / "missing.toml")


def test_parse_family_top_level_defaults_apply_to_spaces():
    fam = parse_family(
        {"kernel": 5, "dense": 16, "space": [{"blocks": 1, "width": 4}, {"filters": [8, 16], "kernel": 3}]}
    )
    a, b = fam.expand()
    assert (a.kernel, a.dense) == (5, 16) and (b.kernel, b.dense, b.filters) == (3, 16, (8, 16))


# --- Keras models -----------------------------------------------------------------------------

keras = pytest.importorskip("keras")

from converters.families import build_model, count_params_macs, custom_objects, load_keras_model  # noqa: E402
from converters.layers import PSConv2D  # noqa: E402

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


def test_builtin_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    # `edgekit demo` writes to ./demo; `--family demo` must still mean the built-in family.
    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_family("demo").name == "demo"
