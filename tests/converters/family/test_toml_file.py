"""Tests for converters/family/toml_file.py: built-in families, family TOML parsing and validation errors."""

from __future__ import annotations

import re
import textwrap

import pytest

from converters.family.family import EnsembleDecl, FamilySpec
from converters.family.specs import FamilyError
from converters.family.toml_file import family_descriptions, list_families, load_family, parse_family
from tests.converters._ensembles import CUSTOM, FAMILY, PLAIN, WIDE, family_data

ID_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def write_family(tmp_path, body: str, name: str = "fam.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


# --- built-in families ------------------------------------------------------------------------


def test_builtin_families_listed():
    assert {"default", "demo"} <= set(list_families())


def test_every_builtin_family_describes_itself():
    texts = family_descriptions()
    assert set(texts) == set(list_families()) and all(texts.values()), texts
    assert texts["mobile"] == load_family("mobile").description


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
    fam = load_family("demo")
    specs = fam.expand()
    assert len(specs) == 12 and len({s.model_id for s in specs}) == 12
    quick = [s for s in specs if not s.recipe]
    long = [s for s in specs if s.recipe]
    assert len(quick) == 10 and len(long) == 2
    # The two long-recipe specs are the batch-norm ones, and they close the list.
    assert specs[-2:] == long and all(s.model_id.endswith("-bn-long") for s in long)
    assert all(s.batch_norm and s.recipe == "long" for s in long) and not any(s.batch_norm for s in quick)
    assert {s.head for s in long} == {"gap", "flatten"} and {s.dense for s in long} == {0, 128}
    macs = sorted(s.estimate_macs() for s in quick)
    assert macs[0] < 50_000 and 1_000_000 < macs[-1] <= 5_000_000
    assert all(15_000_000 < s.estimate_macs() < 20_000_000 for s in long)
    assert sum(s.uses_vip for s in specs) >= 3 and sum(s.psconv for s in specs) >= 2
    assert any(s.uses_vip and s.psconv for s in specs)
    assert [(e.top, e.views) for e in fam.ensembles] == [(3, ("id",)), (2, ("id", "flip"))]


# --- family files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, key, reason",
    [
        ("colour = 1\n[[space]]\nblocks = 1\nwidth = 8\n", "colour", "unknown key"),
        ("[[space]]\nblocks = 1\nwidth = 8\nkernal = 3\n", "space[0].kernal", "unknown key"),
        ("[[space]]\nblocks = [4, 5]\nwidth = 8\npool = 'max'\n", "space[0].blocks", "5 blocks with max downsampling"),
        ("[[space]]\nblocks = 4\nwidth = 8\nkernel = [3, 5]\n", "space[0].blocks", "smaller than the 5x5 kernel"),
        ("input_size = [4, 4]\n[[space]]\nblocks = 1\nwidth = 8\nkernel = 5\n", "space[0].kernel",
         "larger than the 4x4 input"),
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
        ("[[space]]\nblocks = 1\nwidth = 8\nrecipe = 'slow'\n", "space[0].recipe", "'slow' is not one of ['', 'long']"),
        ("recipe = ['long', 'fast']\n[[space]]\nblocks = 1\nwidth = 8\n", "space[0].recipe", "'fast' is not one of"),
        ("[[space]]\nblocks = 1\nwidth = 8\nbatch_norm = 'yes'\n", "space[0].batch_norm", "true or false"),
        ("[[space]]\nblocks = 1\nwidth = 8\nbatch_norm = [true, true]\n", "space[0].batch_norm", "repeated"),
        # the mobile blocks: a knob that does not combine with the block names both
        ("[[space]]\nblocks = 2\nwidth = 8\nblock = 'ghost'\n", "space[0].block", "'ghost' is not one of"),
        ("[[space]]\nblocks = 2\nwidth = 8\nblock = 'dwsep'\nexpand = 6\n", "space[0].expand", "block 'dwsep'"),
        ("[[space]]\nblocks = 2\nwidth = 8\nblock = 'residual'\nse = [false, true]\n", "space[0].se",
         "block 'residual'"),
        ("[[space]]\nblocks = 2\nwidth = 8\nblock = 'mbconv'\npsconv = true\n", "space[0].psconv", "block 'mbconv'"),
        ("[[space]]\nblocks = 2\nwidth = 8\nblock = 'dwsep'\npool = 'max'\n", "space[0].pool", "block 'dwsep'"),
        ("[[space]]\nblocks = 2\nwidth = 8\nstride = [1, 2]\n", "space[0].stride", "block 'conv'"),
        ("[[space]]\nblocks = 2\nwidth = 8\nblock = 'dwsep'\nstride = [1, 2, 2]\n", "space[0].stride",
         "3 entries"),
        ("[[space]]\nblocks = 2\nwidth = 8\nblock = 'dwsep'\nstride = [1, 4]\n", "space[0].stride", "1 or 2"),
        ("[[space]]\nblocks = 2\nwidth = 8\nblock = 'mbconv'\nbatch_norm = false\n", "space[0].batch_norm",
         "block 'mbconv' always uses batch norm"),
        ("[[space]]\nblocks = 6\nwidth = 8\nblock = 'dwsep'\n", "space[0].stride", "strides over a 1x1"),
        ("[[space]]\nblocks = 1\nwidth = 8\nalpha = 0\n", "space[0].alpha", "a positive number"),
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


def test_builtin_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    # `edgekit demo` writes to ./demo; `--family demo` must still mean the built-in family.
    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_family("demo").name == "demo"


def test_batch_norm_and_recipe_axes(tmp_path):
    p = write_family(tmp_path, """
        batch_norm = true
        [[space]]
        blocks = 1
        width = 4
        batch_norm = [false, true]
        recipe = "long"
        [[space]]
        blocks = 1
        width = 8
        """)
    specs = load_family(p).expand()
    assert [(s.batch_norm, s.recipe) for s in specs] == [(False, "long"), (True, "long"), (True, "")]
    assert [s.model_id for s in specs] == ["c1-f4-k3-max-d0-vip0-ps0-long", "c1-f4-k3-max-d0-vip0-ps0-bn-long",
                                           "c1-f8-k3-max-d0-vip0-ps0-bn"]


def test_mobile_blocks_in_a_family(tmp_path):
    p = write_family(tmp_path, """
        alpha = [0.5, 1.0]
        [[space]]
        block = ["dwsep", "residual"]
        filters = [16, 32]
        stride = [1, 2]
        [[space]]
        block = "mbconv"
        filters = [16, 24]
        expand = 6
        se = true
        convs = 2
        [[space]]
        blocks = 1
        width = 8
        """)
    specs = load_family(p).expand()
    assert [(s.block, s.alpha, s.channels, s.stride, s.pool) for s in specs] == [
        ("dwsep", 0.5, (8, 16), (1, 2), "none"), ("dwsep", 1.0, (16, 32), (1, 2), "none"),
        ("residual", 0.5, (8, 16), (1, 2), "none"), ("residual", 1.0, (16, 32), (1, 2), "none"),
        ("mbconv", 0.5, (8, 16), (2, 2), "none"), ("mbconv", 1.0, (16, 24), (2, 2), "none"),
        ("conv", 0.5, (8,), (), "max"), ("conv", 1.0, (8,), (), "max")]
    assert all(s.batch_norm for s in specs[:6]) and not specs[6].batch_norm
    assert specs[4].model_id == "c2x2-f16.24-k3-none-d0-vip00-ps0-bn-mbconve6se-s22-a0.5"


def test_builtin_mobile_family():
    fam = load_family("mobile")
    specs = fam.expand()
    assert len(specs) == 15 and {s.block for s in specs} == {"dwsep", "mbconv", "residual"}
    assert all(s.recipe == "long" and s.batch_norm for s in specs)
    dwsep = [s for s in specs if s.block == "dwsep"]
    assert {(s.alpha, s.resolution) for s in dwsep} == {(a, (r, r)) for a in (0.5, 1.0, 1.5) for r in (20, 28, 36)}
    macs = [s.estimate_macs((28, 28, 1)) for s in specs]
    assert 0.1e6 < min(macs) and max(macs) < 10e6


def test_prune_axis_and_the_builtin_pruning_family(tmp_path):
    p = write_family(tmp_path, """
        [[space]]
        filters = [8, 16]
        batch_norm = true
        prune = [0, 0.25, 0.5]
        """)
    assert [s.model_id.rsplit("-", 1)[1] for s in load_family(p).expand()] == ["bn", "p0.25", "p0.5"]
    bad = write_family(tmp_path, "[[space]]\nfilters = [8, 16]\nblock = 'residual'\nprune = 0.5\n", name="b.toml")
    with pytest.raises(FamilyError, match=re.escape("space[0].prune: block 'residual' cannot be pruned safely")):
        load_family(bad)
    bad = write_family(tmp_path, "[[space]]\nfilters = [8]\nprune = 1.5\n", name="c.toml")
    with pytest.raises(FamilyError, match=re.escape("space[0].prune: 1.5 is not a fraction of filters")):
        load_family(bad)
    specs = load_family("pruning").expand()
    assert len(specs) == 6 and sum(bool(s.prune) for s in specs) == 4 and sum(bool(s.vip_from) for s in specs) == 1
    assert {s.parent.model_id for s in specs if s.prune} <= {s.model_id for s in specs}
    assert {s.prune_method for s in specs if s.prune} == {"l1", "thinet"}


def test_resolution_axis_and_its_errors(tmp_path):
    p = write_family(tmp_path, """
        [[space]]
        blocks = 2
        width = 8
        resolution = [20, 36, [24, 32]]
        """)
    specs = load_family(p).expand()
    assert [s.resolution for s in specs] == [(20, 20), (36, 36), (24, 32)]
    assert [s.model_id.rsplit("-", 1)[1] for s in specs] == ["r20", "r36", "r24x32"]
    assert specs[1].estimate_macs((28, 28, 1)) > specs[0].estimate_macs((28, 28, 1))
    for body, msg in (("resolution = 0", "space[0].resolution: 0 is not an input size"),
                      ("resolution = [[20, 20, 1]]", "is not an input size"),
                      ("resolution = 4", "space[0].blocks: 2 blocks with max downsampling shrink the 4x4 input")):
        bad = write_family(tmp_path, f"[[space]]\nblocks = 2\nwidth = 8\n{body}\n", name="bad.toml")
        with pytest.raises(FamilyError, match=re.escape(msg)):
            load_family(bad)


# --- [[ensemble]] in family files: syntax and errors ------------------------------------------


def test_family_ensembles_parse():
    fam = parse_family(family_data())
    assert [s.model_id for s in fam.expand()] == [PLAIN, WIDE, CUSTOM]
    explicit, top = fam.ensembles
    assert explicit == EnsembleDecl(index=0, members=(CUSTOM, PLAIN), top=None, name="")
    assert top == EnsembleDecl(index=1, members=(), top=2, name="best2", views=("id", "left"))
    assert [(e.top, len(e.views)) for e in load_family("demo").ensembles] == [(3, 1), (2, 2)]


@pytest.mark.parametrize("body, message", [
    ('[[ensemble]]\nmembers = ["c1-f4-k3-max-d0-vip0-ps0"]\n',  # a near miss (no -flatten)
     r"ensemble\[2\]\.members: 'c1-f4-k3-max-d0-vip0-ps0' is not a model id of family 'tinyens'; did you mean "
     r"\['c1-f4-k3-max-d0-vip0-ps0-flatten'.*list the family's ids with: python -m converters.family.listing"),
    (f'[[ensemble]]\nmembers = ["{PLAIN}"]\n', r"ensemble\[2\]\.members: an ensemble needs at least 2 members"),
    (f'[[ensemble]]\nmembers = ["{PLAIN}", "{WIDE}", "{PLAIN}"]\n', r"members: '.*' is listed twice"),
    ('[[ensemble]]\nmembers = []\n', r"ensemble\[2\]\.members: empty"),
    ("[[ensemble]]\nname = 'x'\n", r"ensemble\[2\]: give members = \[.*top = K"),
    (f'[[ensemble]]\nmembers = ["{PLAIN}", "{WIDE}"]\nweights = [1, 2]\n',
     r"ensemble\[2\]\.weights: unknown key; known ensemble keys: \['members', 'top', 'name', 'views'\]"),
    (f'[[ensemble]]\nmembers = "{PLAIN}"\n', r"members: must be a list of model id strings"),
    ("[[ensemble]]\ntop = 1\n", r"ensemble\[2\]\.top: must be an integer >= 2"),
    ("[[ensemble]]\ntop = 4\n", r"top: 4 is more than the family's 3 specs"),
    (f'[[ensemble]]\nmembers = ["{PLAIN}", "{WIDE}"]\ntop = 3\n', r"top: 3 is more than the 2 listed members"),
    (f'[[ensemble]]\nmembers = ["{PLAIN}", "{CUSTOM}"]\n', r"ensemble\[2\]: same members as ensemble\[0\]"),
    (f'[[ensemble]]\nmembers = ["{PLAIN}", "{WIDE}"]\nname = "a b"\n', r"ensemble\[2\]\.name: must be 1-40 letters"),
])
def test_bad_ensemble_declarations_say_what_to_do(body, message):
    with pytest.raises(FamilyError, match=message):
        parse_family(family_data(body))


def test_ensemble_must_be_tables(tmp_path):
    head = FAMILY.split("[[ensemble]]")[0]
    with pytest.raises(FamilyError, match=r"ensemble: must be one or more \[\[ensemble\]\] tables"):
        parse_family(family_data(head="ensemble = 3\n" + head))
    p = tmp_path / "fam.toml"  # a file: the error names it, and the listing hint uses its path
    p.write_text(head + '[[ensemble]]\nmembers = ["nope", "c1"]\n')
    listing = rf"{re.escape(str(p))}: ensemble\[0\].*converters.family.listing {re.escape(str(p))}"
    with pytest.raises(FamilyError, match=listing):
        load_family(p)
