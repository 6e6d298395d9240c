"""Tests for converters/family/specs.py: ModelSpec and EnsembleSpec ids, validation, JSON round trip, shape checks."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from converters.family.specs import EnsembleSpec, FamilyError, ModelSpec, load_spec
from tests.converters._ensembles import CUSTOM, PLAIN, WIDE

ENSEMBLE_ID_RE = re.compile(r"^ens\d+(x\d+)?-([A-Za-z0-9_-]+-)?[0-9a-f]{8}$")


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


# --- batch norm and training recipes ----------------------------------------------------------


def test_batch_norm_and_recipe_suffix_the_id_and_round_trip():
    from converters.family.specs import RECIPES

    base = ModelSpec(filters=(8, 16), convs=2, pool="max", head="flatten")
    assert (base.batch_norm, base.recipe) == (False, "")
    assert base.model_id == "c2x2-f8.16-k3-max-d0-vip00-ps0-flatten"  # defaults leave ids unchanged
    bn = dataclasses.replace(base, batch_norm=True)
    assert bn.model_id == base.model_id + "-bn"
    assert RECIPES == ("long",)
    both = dataclasses.replace(base, batch_norm=True, recipe="long", dropout=0.2)
    assert both.model_id == "c2x2-f8.16-k3-max-d0-vip00-ps0-dr0.2-flatten-bn-long"
    assert dataclasses.replace(base, recipe="long").model_id == base.model_id + "-long"
    assert len({base.model_id, bn.model_id, both.model_id}) == 3
    assert ModelSpec(filters=(8,), batch_norm=1).batch_norm is True  # normalised like psconv
    for s in (base, bn, both):
        d = json.loads(json.dumps(s.to_dict()))
        assert d["batch_norm"] is s.batch_norm and d["recipe"] == s.recipe
        back = ModelSpec.from_dict(d)
        assert back == s and back.model_id == s.model_id
    # A spec.json written before these fields existed still loads, as the defaults.
    old = {k: v for k, v in base.to_dict().items() if k not in ("batch_norm", "recipe")}
    assert ModelSpec.from_dict(old) == base
    with pytest.raises(FamilyError, match="model_id"):
        ModelSpec.from_dict({**bn.to_dict(), "batch_norm": False})


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(recipe="slow"), r"^recipe: must be one of \['long'\], or left out for the run's schedule; got 'slow'"),
    (dict(recipe="Long"), r"^recipe: .*got 'Long'"),
    (dict(batch_norm="yes"), r"^batch_norm: must be true or false, got 'yes'"),
    (dict(batch_norm=2), r"^batch_norm: must be true or false, got 2"),
    (dict(batch_norm=None), r"^batch_norm: must be true or false"),
])
def test_bad_batch_norm_and_recipe(kwargs, pattern):
    with pytest.raises(FamilyError, match=pattern):
        ModelSpec(filters=(8,), **kwargs)


def test_flip_is_an_ensemble_view():
    from converters.family.specs import ENSEMBLE_VIEWS, EnsembleSpec, check_views

    assert "flip" in ENSEMBLE_VIEWS
    assert check_views(["id", "flip"], "views") == ("id", "flip")
    a, b = "c1-f4-k3-max-d0-vip0-ps0", "c1-f8-k3-max-d0-vip0-ps0"
    e = EnsembleSpec((a, b), views=("id", "flip"))
    assert e.model_id.startswith("ens2x2-") and e.model_id != EnsembleSpec((a, b), views=("id", "left")).model_id
    assert EnsembleSpec.from_dict(json.loads(json.dumps(e.to_dict()))) == e
    with pytest.raises(FamilyError, match="mirror"):
        check_views(["id", "mirror"], "views")


# --- EnsembleSpec: ids, spec.json ------------------------------------------------------------------


def test_ensemble_id_is_stable_readable_and_order_free():
    a = EnsembleSpec(members=(PLAIN, CUSTOM))
    b = EnsembleSpec(members=[CUSTOM, PLAIN])
    assert a == b and a.members == (PLAIN, CUSTOM) and a.model_id == b.model_id  # sorted
    assert ENSEMBLE_ID_RE.match(a.model_id) and a.model_id.startswith("ens2-") and len(a.model_id) <= 100
    named = EnsembleSpec(members=(PLAIN, CUSTOM), name="x" * 40)
    assert named.model_id == f"ens2-{'x' * 40}-{a.model_id[-8:]}" and ENSEMBLE_ID_RE.match(named.model_id)
    assert EnsembleSpec(members=(PLAIN, WIDE)).model_id != a.model_id
    assert a.model_id == "ens2-" + __import__("hashlib").sha1(f"{PLAIN}\n{CUSTOM}".encode()).hexdigest()[:8]
    for bad, msg in [((PLAIN,), "at least 2"), ((PLAIN, PLAIN), "listed twice"), ((PLAIN, a.model_id), "ensembles of")]:
        with pytest.raises(FamilyError, match=msg):
            EnsembleSpec(members=bad)


def test_ensemble_spec_json_round_trip(tmp_path):
    e = EnsembleSpec(members=(PLAIN, CUSTOM), name="pair")
    d = json.loads(json.dumps(e.to_dict()))
    assert d["kind"] == "ensemble" and d["members"] == [PLAIN, CUSTOM] and d["model_id"] == e.model_id
    assert EnsembleSpec.from_dict(d) == e
    (tmp_path / "e.json").write_text(json.dumps(d))
    (tmp_path / "m.json").write_text(json.dumps(ModelSpec(filters=(4,)).to_dict()))
    assert load_spec(tmp_path / "e.json") == e
    assert load_spec(tmp_path / "m.json") == ModelSpec(filters=(4,))
    with pytest.raises(FamilyError, match="this is an ensemble spec.*load_spec"):
        ModelSpec.from_dict(d)
    with pytest.raises(FamilyError, match="does not match the ensemble's members"):
        EnsembleSpec.from_dict({**d, "members": [PLAIN, WIDE]})
