"""Ensemble variants in `edgekit train`: built after their members, the mean of their softmax, resumed and rebuilt."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from converters.family.specs import EnsembleSpec, load_spec
from converters.train import sweep as tr
from tests.converters._ensembles import CUSTOM, PLAIN, WIDE, run_sweep, train_options, train_record

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside keras.saving

# --- edgekit train on a real tiny run (the ensemble_run fixture of tests/converters/conftest.py) -------


def test_sweep_builds_ensembles_after_members(ensemble_run):
    family, _, run_dir, results, out = ensemble_run
    by_id = {r.model_id: r for r in results}
    explicit = EnsembleSpec(members=(PLAIN, CUSTOM))
    val = {m: train_record(run_dir, m)["val_accuracy"] for m in (PLAIN, WIDE, CUSTOM)}
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
        rec = train_record(run_dir, eid)
        assert rec["finished"] is True and rec["kind"] == "ensemble" and rec["members"] == list(spec.members)
        assert rec["epochs"] == 0 and rec["wall_s"] > 0 and by_id[eid].epochs == 0
        assert rec["params"] == sum(train_record(run_dir, m)["params"] for m in spec.members)
        assert rec["macs"] == sum(train_record(run_dir, m)["macs"] for m in spec.members) * len(spec.views)
        assert 0.0 <= rec["test_accuracy"] <= 1.0 and rec["test_accuracy"] == by_id[eid].test_accuracy
        assert f"done {eid} (ensemble of 2): test acc" in out
    table = tr.format_table(results, 1.0)
    assert explicit.model_id in table and " built" in table
    assert f"({3} trained now, {len(ens_ids)} ensemble(s) built now, 0 resumed)" in table


def test_ensemble_output_is_the_mean_of_member_softmax_and_its_accuracy_is_recorded(ensemble_run):
    import keras

    from converters.data.datasets import splits_for_run
    from converters.family.keras_build import load_keras_model

    _, _, run_dir, _, _ = ensemble_run
    ens = EnsembleSpec(members=(PLAIN, CUSTOM))
    model = load_keras_model(run_dir / "models" / ens.model_id / "model.keras")
    members = [load_keras_model(run_dir / "models" / m / "model.keras") for m in ens.members]
    s = splits_for_run(run_dir)
    x = s.x_test.astype(np.float32)
    got = keras.ops.convert_to_numpy(model.predict(x, batch_size=256, verbose=0))
    probs = [keras.ops.convert_to_numpy(keras.ops.softmax(m.predict(x, batch_size=256, verbose=0))) for m in members]
    np.testing.assert_allclose(got, np.mean(probs, axis=0), rtol=0, atol=1e-6)
    rec = train_record(run_dir, ens.model_id)
    assert rec["test_images"] == len(s.y_test)
    assert rec["test_accuracy"] == pytest.approx(float((got.argmax(1) == s.y_test).mean()), abs=1e-6)
    assert rec["member_test_accuracy"] == {m: train_record(run_dir, m)["test_accuracy"] for m in ens.members}


def test_resume_skips_ensembles_and_rebuilds_when_a_member_changes(ensemble_run, tmp_path):
    family, data_dir, src, first, _ = ensemble_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    ens_ids = [r.model_id for r in first if r.model_id.startswith("ens")]
    mtimes = {p: p.stat().st_mtime_ns for p in run_dir.rglob("model.keras")}
    again, _ = run_sweep(train_options(run_dir, family, data_dir))
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
    third, out = run_sweep(train_options(run_dir, family, data_dir))
    status = {r.model_id: r.status for r in third}
    assert "removed 1 unfinished model folder(s) ['" + explicit + "']" in out
    assert [status[m] for m in (PLAIN, WIDE, CUSTOM)] == ["resumed"] * 3
    assert status[explicit] == "built"
    for eid in ens_ids:
        members = train_record(run_dir, eid)["members"]
        assert status[eid] == ("built" if WIDE in members or eid == explicit else "resumed")
        assert len(train_record(run_dir, eid)["member_sha256"]) == 2


def test_limited_sweep_skips_ensembles_with_untrained_members(ensemble_run, tmp_path):
    family, data_dir, src, _, _ = ensemble_run
    run_dir = tmp_path / "run"
    results, out = run_sweep(train_options(run_dir, family, data_dir, limit=1))
    assert [(r.model_id, r.status) for r in results] == [(PLAIN, "trained")]
    assert f"note: ensemble[0] (2 members) skipped: member(s) not trained in this run yet: ['{CUSTOM}']" in out
    assert "note: ensemble[1] (top 2 of the trained specs) skipped: only 1 trained member(s)" in out
    assert sorted(p.name for p in (run_dir / "models").iterdir()) == [PLAIN]
