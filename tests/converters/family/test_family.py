"""Tests for converters/family/family.py: grid union without duplicates, limit/sample, random mode, top-K ensembles."""

from __future__ import annotations

import pytest

from converters.family.family import EnsembleDecl, EnsembleNotReady
from converters.family.specs import FamilyError
from converters.family.toml_file import load_family
from tests.converters._ensembles import CUSTOM, PLAIN, WIDE
from tests.converters.family.test_toml_file import write_family


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


# --- EnsembleDecl: top-K resolution --------------------------------------------------------------


def test_top_k_picks_by_validation_accuracy():
    acc = {PLAIN: 0.5, WIDE: 0.7, CUSTOM: 0.7}
    top2 = EnsembleDecl(index=0, top=2)
    assert top2.resolve(acc, [PLAIN, WIDE, CUSTOM]).members == tuple(sorted((WIDE, CUSTOM)))
    assert top2.resolve(acc, [PLAIN, WIDE]).members == tuple(sorted((PLAIN, WIDE)))  # only the selected
    among = EnsembleDecl(index=0, members=(PLAIN, CUSTOM, WIDE), top=2, name="b")
    assert among.resolve(acc).members == tuple(sorted((WIDE, CUSTOM))) and among.resolve(acc).name == "b"
    with pytest.raises(EnsembleNotReady, match=r"only 1 trained member\(s\) to choose 2 from"):
        top2.resolve({PLAIN: 0.5}, [PLAIN, WIDE])
    with pytest.raises(EnsembleNotReady, match=rf"not trained in this run yet: \['{CUSTOM}'\]"):
        EnsembleDecl(index=0, members=(PLAIN, CUSTOM)).resolve({PLAIN: 0.5})
