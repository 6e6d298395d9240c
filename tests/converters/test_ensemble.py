"""Ensemble variants: [[ensemble]] in family files, building them in `edgekit train`, converting them."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from converters.family.family import EnsembleDecl, EnsembleNotReady
from converters.family.specs import EnsembleSpec, FamilyError, ModelSpec, load_spec
from converters.family.toml_file import load_family, parse_family
from converters.train import sweep as tr
from converters.train.options import Schedule, SplitOptions, TrainOptions
from tests.converters.data.test_datasets import REAL_FASHION, write_idx_set

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside keras.saving

PLAIN = "c1-f4-k3-max-d0-vip0-ps0-flatten"
WIDE = "c1-f8-k3-max-d0-vip0-ps0-flatten"
CUSTOM = "c2-f4.4-k3-max-d0-vip01-ps1-flatten"  # pSConv (custom layer) and ViP in the second block

FAMILY = f"""
name = "tinyens"
mode = "grid"
input_size = [28, 28]
pool = "max"
head = "flatten"

[[space]]
filters = [[4], [8]]

[[space]]
filters = [4, 4]
vip = "last"
psconv = true

[[ensemble]]
members = ["{CUSTOM}", "{PLAIN}"]

[[ensemble]]
top = 2
name = "best2"
views = ["id", "left"]
"""

ID_RE = re.compile(r"^ens\d+(x\d+)?-([A-Za-z0-9_-]+-)?[0-9a-f]{8}$")


def _fam(body: str = "", head: str = FAMILY) -> dict:
    import tomllib

    return tomllib.loads(head + textwrap.dedent(body))


# --- family files: syntax and errors ----------------------------------------------------------


def test_family_ensembles_parse():
    fam = parse_family(_fam())
    assert [s.model_id for s in fam.expand()] == [PLAIN, WIDE, CUSTOM]
    explicit, top = fam.ensembles
    assert explicit == EnsembleDecl(index=0, members=(CUSTOM, PLAIN), top=None, name="")
    assert top == EnsembleDecl(index=1, members=(), top=2, name="best2", views=("id", "left"))
    assert [(e.top, len(e.views)) for e in load_family("demo").ensembles] == [(3, 1), (2, 2), (3, 2)]


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
        parse_family(_fam(body))


def test_ensemble_must_be_tables(tmp_path):
    head = FAMILY.split("[[ensemble]]")[0]
    with pytest.raises(FamilyError, match=r"ensemble: must be one or more \[\[ensemble\]\] tables"):
        parse_family(_fam(head="ensemble = 3\n" + head))
    p = tmp_path / "fam.toml"  # a file: the error names it, and the listing hint uses its path
    p.write_text(head + '[[ensemble]]\nmembers = ["nope", "c1"]\n')
    listing = rf"{re.escape(str(p))}: ensemble\[0\].*converters.family.listing {re.escape(str(p))}"
    with pytest.raises(FamilyError, match=listing):
        load_family(p)


# --- EnsembleSpec: ids, spec.json, top-K resolution ---------------------------------------------


def test_ensemble_id_is_stable_readable_and_order_free():
    a = EnsembleSpec(members=(PLAIN, CUSTOM))
    b = EnsembleSpec(members=[CUSTOM, PLAIN])
    assert a == b and a.members == (PLAIN, CUSTOM) and a.model_id == b.model_id  # sorted
    assert ID_RE.match(a.model_id) and a.model_id.startswith("ens2-") and len(a.model_id) <= 100
    named = EnsembleSpec(members=(PLAIN, CUSTOM), name="x" * 40)
    assert named.model_id == f"ens2-{'x' * 40}-{a.model_id[-8:]}" and ID_RE.match(named.model_id)
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


# --- the Keras model ------------------------------------------------------------------------------


def test_build_ensemble_averages_softmax_and_reloads_with_custom_layers(tmp_path):
    import keras

    from converters.family.keras_build import build_ensemble, build_model, count_params_macs, load_keras_model

    keras.utils.set_random_seed(0)
    fam = parse_family(_fam())
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
    fam = parse_family(_fam())
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


# --- edgekit train + convert on a real tiny run ---------------------------------------------------


def _opts(run_dir: Path, family: Path, data_dir: Path | None, **kw) -> TrainOptions:
    base = dict(run_dir=run_dir, family=str(family), data_dir=str(data_dir) if data_dir else None,
                schedule=Schedule(mode="quick", epochs=1, patience=1, batch_size=64, learning_rate=3e-3),
                splits=SplitOptions(val_fraction=0.1, calib_size=64, limit_train=1500, limit_test=300),
                progress=False)
    base.update(kw)
    return TrainOptions(**base)


def _sweep(o: TrainOptions) -> tuple[list[tr.ModelResult], str]:
    buf = io.StringIO()
    return tr.train_sweep(o, out=buf), buf.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(family path, data dir or None for the real Fashion-MNIST, trained run, sweep results, output)."""
    root = tmp_path_factory.mktemp("ens")
    family = root / "tinyens.toml"
    family.write_text(FAMILY)
    data_dir = None
    if not (REAL_FASHION / "train-images-idx3-ubyte.gz").exists():
        data_dir = root / "fm"
        write_idx_set(data_dir, n_train=1500, n_test=300, gz=True)
    run_dir = root / "run"
    results, out = _sweep(_opts(run_dir, family, data_dir))
    return family, data_dir, run_dir, results, out


def _rec(run_dir: Path, model_id: str) -> dict:
    return json.loads((run_dir / "models" / model_id / "train.json").read_text())


def test_sweep_builds_ensembles_after_members(setup):
    family, _, run_dir, results, out = setup
    by_id = {r.model_id: r for r in results}
    explicit = EnsembleSpec(members=(PLAIN, CUSTOM))
    val = {m: _rec(run_dir, m)["val_accuracy"] for m in (PLAIN, WIDE, CUSTOM)}
    best2 = EnsembleSpec(members=sorted(val, key=lambda m: (-val[m], m))[:2], name="best2", views=("id", "left"))
    same = False  # best2 sees two views, so it is never the explicit ensemble
    ens_ids = [explicit.model_id] + ([] if same else [best2.model_id])
    assert [r.model_id for r in results] == [PLAIN, WIDE, CUSTOM, *ens_ids]
    assert [r.status for r in results] == ["trained"] * 3 + ["built"] * len(ens_ids)
    assert ("has the same members and views as ensemble[0]" in out) == same
    for eid in ens_ids:
        d = run_dir / "models" / eid
        assert sorted(p.name for p in d.iterdir()) == ["model.keras", "spec.json", "train.json"]
        spec = load_spec(d / "spec.json")
        assert isinstance(spec, EnsembleSpec) and spec.model_id == eid
        rec = _rec(run_dir, eid)
        assert rec["finished"] is True and rec["kind"] == "ensemble" and rec["members"] == list(spec.members)
        assert rec["epochs"] == 0 and rec["wall_s"] > 0 and by_id[eid].epochs == 0
        assert rec["params"] == sum(_rec(run_dir, m)["params"] for m in spec.members)
        assert rec["macs"] == sum(_rec(run_dir, m)["macs"] for m in spec.members) * len(spec.views)
        assert 0.0 <= rec["test_accuracy"] <= 1.0 and rec["test_accuracy"] == by_id[eid].test_accuracy
        assert f"done {eid} (ensemble of 2): test acc" in out
    table = tr.format_table(results, 1.0)
    assert explicit.model_id in table and " built" in table
    assert f"({3} trained now, {len(ens_ids)} ensemble(s) built now, 0 resumed)" in table


def test_ensemble_output_is_the_mean_of_member_softmax_and_its_accuracy_is_recorded(setup):
    import keras

    from converters.data.datasets import splits_for_run
    from converters.family.keras_build import load_keras_model

    _, _, run_dir, _, _ = setup
    ens = EnsembleSpec(members=(PLAIN, CUSTOM))
    model = load_keras_model(run_dir / "models" / ens.model_id / "model.keras")
    members = [load_keras_model(run_dir / "models" / m / "model.keras") for m in ens.members]
    s = splits_for_run(run_dir)
    x = s.x_test.astype(np.float32)
    got = keras.ops.convert_to_numpy(model.predict(x, batch_size=256, verbose=0))
    probs = [keras.ops.convert_to_numpy(keras.ops.softmax(m.predict(x, batch_size=256, verbose=0))) for m in members]
    np.testing.assert_allclose(got, np.mean(probs, axis=0), rtol=0, atol=1e-6)
    rec = _rec(run_dir, ens.model_id)
    assert rec["test_images"] == len(s.y_test)
    assert rec["test_accuracy"] == pytest.approx(float((got.argmax(1) == s.y_test).mean()), abs=1e-6)
    assert rec["member_test_accuracy"] == {m: _rec(run_dir, m)["test_accuracy"] for m in ens.members}


def test_resume_skips_ensembles_and_rebuilds_when_a_member_changes(setup, tmp_path):
    family, data_dir, src, first, _ = setup
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    ens_ids = [r.model_id for r in first if r.model_id.startswith("ens")]
    mtimes = {p: p.stat().st_mtime_ns for p in run_dir.rglob("model.keras")}
    again, _ = _sweep(_opts(run_dir, family, data_dir))
    assert [r.status for r in again] == ["resumed"] * len(first)
    assert [r.test_accuracy for r in again] == [r.test_accuracy for r in first]
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("model.keras")} == mtimes

    # A member's model.keras changes (retrained elsewhere): the ensembles holding it are rebuilt from it.
    from converters.family.keras_build import load_keras_model

    wide = run_dir / "models" / WIDE / "model.keras"
    m = load_keras_model(wide)
    m.set_weights([w * 1.5 for w in m.get_weights()])
    m.save(wide)
    # And a half-written ensemble folder (killed before its train.json): removed, then rebuilt.
    explicit = EnsembleSpec(members=(PLAIN, CUSTOM)).model_id
    (run_dir / "models" / explicit / "train.json").unlink()
    third, out = _sweep(_opts(run_dir, family, data_dir))
    status = {r.model_id: r.status for r in third}
    assert "removed 1 unfinished model folder(s) ['" + explicit + "']" in out
    assert [status[m] for m in (PLAIN, WIDE, CUSTOM)] == ["resumed"] * 3
    assert status[explicit] == "built"
    for eid in ens_ids:
        members = _rec(run_dir, eid)["members"]
        assert status[eid] == ("built" if WIDE in members or eid == explicit else "resumed")
        assert len(_rec(run_dir, eid)["member_sha256"]) == 2


def test_limited_sweep_skips_ensembles_with_untrained_members(setup, tmp_path):
    family, data_dir, src, _, _ = setup
    run_dir = tmp_path / "run"
    results, out = _sweep(_opts(run_dir, family, data_dir, limit=1))
    assert [(r.model_id, r.status) for r in results] == [(PLAIN, "trained")]
    assert f"note: ensemble[0] (2 members) skipped: member(s) not trained in this run yet: ['{CUSTOM}']" in out
    assert "note: ensemble[1] (top 2 of the trained specs) skipped: only 1 trained member(s)" in out
    assert sorted(p.name for p in (run_dir / "models").iterdir()) == [PLAIN]


def test_convert_builds_and_validates_every_desktop_target_of_an_ensemble(setup, tmp_path):
    from edge.artifacts.manifest import Manifest
    from edgekit.cli import main

    _, _, src, first, _ = setup
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    # Convert the ensembles only (their model.keras is self-contained): drop the members' folders.
    ens_ids = [r.model_id for r in first if r.model_id.startswith("ens")]
    for m in (PLAIN, WIDE, CUSTOM):
        shutil.rmtree(run_dir / "models" / m)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["convert", str(run_dir), "--profile", "desktop-cpu", "--no-progress"])
    assert rc == 0, out.getvalue()[-3000:] + err.getvalue()[-3000:]
    assert "WARN" not in out.getvalue()  # reloads and scores what training recorded
    m = Manifest.load(run_dir / "manifest.json")
    got = {(a.model_id, a.format, a.precision) for a in m.artifacts}
    targets = ({("tflite", p) for p in ("fp32", "fp16", "dynamic", "int8")}
               | {("onnx", p) for p in ("fp32", "fp16", "int8")})
    assert got == {(e, f, p) for e in ens_ids for f, p in targets}
    for a in m.artifacts:
        rec = _rec(run_dir, a.model_id)
        assert a.params == rec["params"] and a.macs == rec["macs"]
        assert a.keras_accuracy == pytest.approx(rec["test_accuracy"], abs=1e-6)
        assert a.status == "ok", (a.artifact_id, a.reason)
        if a.precision in ("fp32", "fp16", "dynamic"):
            assert a.agreement >= 0.98 and a.max_abs_diff < 0.01, a.artifact_id
        else:
            assert a.agreement >= 0.9, a.artifact_id
        assert a.output.shape[-1] == 10
