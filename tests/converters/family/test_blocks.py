"""Tests for converters/family/blocks.py: the mobile blocks' layer plan (stem, stages, skips, ViP) and its MACs,
and the knobs' combinations as ModelSpec checks them (each error names the key and the block)."""

from __future__ import annotations

import pytest

from converters.family.blocks import make_divisible, plan_units, psconv_macs, se_channels
from converters.family.specs import FamilyError, ModelSpec


def test_make_divisible_rounds_as_mobilenet_does():
    # keras.applications.mobilenet_v2._make_divisible: nearest multiple of 8, at least 8, never 10 % below
    assert [make_divisible(v) for v in (4, 12, 16 * 0.35, 32 * 0.75, 24 * 1.3, 100, 92)] == [8, 16, 8, 24, 32, 104, 96]
    assert make_divisible(36) == 40 and make_divisible(17) == 16 and make_divisible(17.9) == 24  # 16 would be 10.6 % below
    assert se_channels(72) == 24 and se_channels(16) == 8


def test_spec_channels_apply_alpha_only_when_it_is_not_one():
    assert ModelSpec(filters=(12, 36), block="dwsep").channels == (12, 36)  # as written at alpha 1
    assert ModelSpec(filters=(12, 32), block="dwsep", alpha=0.5).channels == (8, 16)
    assert ModelSpec(filters=(16, 32), alpha=1.5).channels == (24, 48)  # plain conv blocks take alpha too


def test_dwsep_plan_shapes_and_macs_by_hand():
    units = plan_units("dwsep", (8, 16), (1, 2), (0, 0), 1, 3, 1, False, False, (8, 8), 1)
    assert [u.name for u in units] == ["stem", "b1u1", "b2u1"]
    stem, b1, b2 = units
    assert [op.kind for op in b1.ops] == ["dwconv", "pw"] and not b1.skip
    assert stem.macs == 8 * 8 * 9 * 1 * 8
    assert b1.macs == 8 * 8 * 9 * 8 + 8 * 8 * 8 * 8
    assert b2.ops[0].stride == 2 and b2.out_hw == (4, 4)
    assert b2.macs == 4 * 4 * 9 * 8 + 4 * 4 * 8 * 16


def test_mbconv_expands_adds_back_only_where_shapes_allow_and_weighs_with_se():
    units = plan_units("mbconv", (8, 16), (1, 2), (0, 0), 2, 3, 4, True, False, (8, 8), 1)
    first, repeat = units[1], units[2]  # stage 1: stride 1, 8 -> 8 channels: both add their input back
    assert [op.kind for op in first.ops] == ["pw", "dwconv", "se", "pw"]
    assert first.skip == repeat.skip == "identity"
    assert first.ops[0].cout == 32 and first.ops[2].cout == se_channels(32) == 8 and first.ops[-1].act == ""
    stage2 = units[3]
    assert stage2.skip == "" and stage2.ops[1].stride == 2  # strided and wider: nothing to add back
    assert units[4].skip == "identity"
    assert first.ops[2].macs == 2 * 32 * 8
    # expand 1: no expansion conv (MobileNetV2's first bottleneck)
    assert [op.kind for op in plan_units("mbconv", (8,), (1,), (0,), 1, 3, 1, False, False, (8, 8), 1)[1].ops] == [
        "dwconv", "pw"]


def test_residual_projects_its_shortcut_when_the_shape_changes_and_takes_psconv():
    units = plan_units("residual", (8, 16), (1, 2), (0, 0), 1, 3, 1, False, True, (8, 8), 1)
    b1, b2 = units[1], units[2]
    assert b1.skip == "identity" and b1.shortcut is None and b1.post_act == "relu"
    assert b2.skip == "project" and b2.shortcut is not None and b2.shortcut.stride == 2 and b2.shortcut.cout == 16
    assert [op.kind for op in b2.ops] == ["psconv", "psconv"] and units[0].ops[0].kind == "conv"  # the stem stays dense
    assert b2.macs == psconv_macs(8, 8, 8, 16, 2) + psconv_macs(4, 4, 16, 16, 1) + 4 * 4 * 8 * 16


def test_vip_runs_the_unit_at_twice_its_stride_and_restores_the_nominal_size():
    plain = plan_units("residual", (8, 8), (1, 1), (0, 0), 1, 3, 1, False, False, (8, 8), 1)
    vip = plan_units("residual", (8, 8), (1, 1), (0, 1), 1, 3, 1, False, False, (8, 8), 1)
    assert vip[2].ops[0].stride == 2 and vip[2].vip_hw == (8, 8) and vip[2].out_hw == (8, 8)
    assert vip[2].macs * 4 == plain[2].macs  # both convs at a quarter of the pixels
    assert vip[2].skip == "identity"  # the resize restores the shape the input is added to


@pytest.mark.parametrize("kw, key, words", [
    (dict(block="conv", expand=4), "expand", ["'mbconv'", "'conv'"]),
    (dict(block="dwsep", se=True), "se", ["'mbconv'", "'dwsep'"]),
    (dict(block="mbconv", psconv=True), "psconv", ["'mbconv'", "depthwise"]),
    (dict(block="dwsep", psconv=True), "psconv", ["'dwsep'"]),
    (dict(block="conv", stride=(1, 2)), "stride", ["'conv'", "pool"]),
    (dict(block="residual", pool="max"), "pool", ["'residual'", "'max'"]),
    (dict(block="mbconv", stride=(1, 2, 2)), "stride", ["3 entries", "2 stages"]),
    (dict(block="dwsep", stride=(1, 3)), "stride", ["1 or 2"]),
    (dict(block="ghost"), "block", ["'dwsep'", "'mbconv'", "'residual'"]),
    (dict(block="dwsep", alpha=0), "alpha", ["multiplier"]),
])
def test_a_knob_that_does_not_combine_with_the_block_names_both(kw, key, words):
    with pytest.raises(FamilyError, match=f"^{key}:") as err:
        ModelSpec(filters=(8, 16), **kw)
    for w in words:
        assert w in str(err.value)


def test_mobile_ids_defaults_and_round_trip():
    s = ModelSpec(filters=(16, 24), block="mbconv", expand=6, se=True, alpha=0.5, stride=(1, 2), convs=2)
    assert s.model_id == "c2x2-f16.24-k3-none-d0-vip00-ps0-bn-mbconve6se-s12-a0.5"
    assert s.pool == "none" and s.batch_norm  # the mobile blocks stride instead of pooling, always with batch norm
    assert ModelSpec.from_dict(s.to_dict()) == s
    d = ModelSpec(filters=(8, 16), block="dwsep")
    assert d.stride == (2, 2) and d.model_id == "c2-f8.16-k3-none-d0-vip00-ps0-bn-dwsep-s22"
    # conv specs keep the ids they had
    assert ModelSpec(filters=(8,)).model_id == "c1-f8-k3-max-d0-vip0-ps0"


def test_shape_checks_name_the_stage_and_the_knob():
    with pytest.raises(FamilyError, match=r"^stride: stage 4 \(b4u1\) strides over a 1x1 feature map"):
        ModelSpec(filters=(8, 8, 8, 8), block="dwsep").check_input((8, 8))
    with pytest.raises(FamilyError, match="^vip: virtual pooling at stage 2"):
        ModelSpec(filters=(8, 8), block="residual", stride=(2, 2), vip="last").check_input((4, 4))
    ModelSpec(filters=(8, 8, 8), block="dwsep").check_input((8, 8))  # 8 -> 4 -> 2 -> 1 is fine


def test_estimate_macs_sums_the_plan_and_the_head():
    s = ModelSpec(filters=(8, 16), block="dwsep", stride=(1, 2), dense=12)
    units = s.units((8, 8, 1))
    assert s.estimate_macs((8, 8, 1), 10) == sum(u.macs for u in units) + 16 * 12 + 12 * 10
    flat = ModelSpec(filters=(8, 16), block="dwsep", stride=(1, 2), head="flatten")
    assert flat.estimate_macs((8, 8, 1), 10) == sum(u.macs for u in units) + 4 * 4 * 16 * 10
