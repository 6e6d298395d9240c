"""`edgekit convert` end to end on a real (tiny) training run: build, validate, manifest, skip, resume, an ensemble."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from converters.convert import command as convert
from converters.convert.record import LOCK_FILE, Outcome
from device_profiles import BuildTarget
from edge.artifacts.manifest import Manifest
from edge.core.atomic import atomic_write_json, sha256_file
from edgekit.cli import main
from tests.converters._ensembles import CUSTOM, PLAIN, WIDE, train_record

# Two 1-block specs: a plain CNN and one with ViP + pSConv (the family's custom layers).
TINY_FAMILY = """
name = "tiny"
mode = "grid"
input_size = [28, 28]

[[space]]
blocks = 1
width = 4
pool = "max"

[[space]]
blocks = 1
width = 4
pool = "max"
vip = "last"
psconv = true
"""

ONE_TARGET_PROFILE = """
name = "tiny-board"
arch = "aarch64"
memory_budget_mb = 64

[[build]]
format = "tflite"
precisions = ["int8"]

[[runtime]]
backend = "litert"
threads = 1
"""

LIMIT_TEST = 200
DESKTOP_TARGETS = 7  # tflite fp32/fp16/dynamic/int8 + onnx fp32/fp16/int8


def _train_tiny_run(run_dir: Path, family: Path) -> None:
    """The real pipeline (edgekit train's library API), one short epoch per model."""
    from converters.train.options import Schedule, SplitOptions, TrainOptions
    from converters.train.sweep import train_sweep

    opts = TrainOptions(
        run_dir=run_dir,
        family=str(family),
        schedule=Schedule(mode="quick", epochs=1, patience=1, batch_size=64, learning_rate=3e-3),
        splits=SplitOptions(val_fraction=0.1, calib_size=64, limit_train=1500, limit_test=400),
        progress=False,
    )
    train_sweep(opts, out=io.StringIO())


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run directory with two finished models and no artifacts yet (copy it before converting)."""
    root = tmp_path_factory.mktemp("convert")
    family = root / "tiny.toml"
    family.write_text(TINY_FAMILY)
    run_dir = root / "trained"
    _train_tiny_run(run_dir, family)
    # An unfinished model (no train.json) must be ignored.
    (run_dir / "models" / "unfinished-model").mkdir()
    return run_dir


@pytest.fixture(scope="module")
def converted(trained_run, tmp_path_factory):
    """The run after one `edgekit convert --profile desktop-cpu`, with its captured output."""
    run_dir = tmp_path_factory.mktemp("converted") / "run"
    shutil.copytree(trained_run, run_dir)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["convert", str(run_dir), "--profile", "desktop-cpu", "--limit-test", str(LIMIT_TEST),
                   "--no-progress"])
    return run_dir, rc, out.getvalue(), err.getvalue()


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def _models(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "models").iterdir() if (p / "train.json").exists())


def _state(run_dir: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, sha256_file(p)) for p in sorted((run_dir / "artifacts").iterdir())}


def test_convert_builds_validates_and_records_every_target(converted):
    run_dir, rc, out, err = converted
    assert rc == 0, err
    models = _models(run_dir)
    assert len(models) == 2
    m = Manifest.load(run_dir / "manifest.json")
    assert m.dataset == "fashion_mnist" and len(m.labels) == 10
    assert len(m.artifacts) == 2 * DESKTOP_TARGETS
    assert {a.model_id for a in m.artifacts} == set(models)
    for a in m.artifacts:
        path = run_dir / a.path
        assert a.path == f"artifacts/{a.artifact_id}.{a.format}" and path.is_file()
        assert sha256_file(path) == a.sha256 and path.stat().st_size == a.size_bytes
        assert a.source_sha256 == sha256_file(run_dir / "models" / a.model_id / "model.keras")
        assert a.eval_count == LIMIT_TEST
        assert a.params > 0 and a.macs > 0
        assert a.host_accuracy is not None and a.agreement is not None and a.max_abs_diff is not None
        # Status follows the numbers and the default 2-point threshold.
        drop = 100 * (a.keras_accuracy - a.host_accuracy)
        assert a.status == ("rejected" if drop > 2.0 else "ok"), (a.artifact_id, drop, a.reason)
        if a.precision in ("fp32", "fp16"):
            assert a.status == "ok" and a.agreement >= 0.98
        if a.format == "onnx":
            assert a.input.name == "input"
        if (a.format, a.precision) == ("tflite", "int8"):
            assert a.input.dtype == "int8" and a.input.scale is not None and a.input.zero_point == -128
    assert "unfinished-model" not in {a.model_id for a in m.artifacts}
    assert not [p for p in (run_dir / "artifacts").iterdir() if p.name.startswith(".")]  # no temp files


def test_convert_prints_table_and_precision_summary(converted):
    run_dir, rc, out, _ = converted
    for col in ("model", "format-precision", "size (KB)", "accuracy", "Δ vs Keras", "agreement", "max diff", "status"):
        assert col in out
    for model_id in _models(run_dir):
        assert f"built {model_id}.onnx-int8" in out
    assert "mean accuracy change int8 vs fp32: tflite" in out and "onnx" in out
    assert "mean accuracy change fp16 vs fp32" in out
    assert f"{2 * DESKTOP_TARGETS} built, 0 skipped" in out


def test_rerun_skips_unchanged_artifacts(converted, tmp_path):
    run_dir = _copy(converted[0], tmp_path)
    before = _state(run_dir)
    manifest_before = Manifest.load(run_dir / "manifest.json")
    buf = io.StringIO()
    result = convert.convert_run(run_dir, ["desktop-cpu"], limit_test=LIMIT_TEST, out=buf, progress=False)
    out = buf.getvalue()
    assert [o.action for o in result.outcomes] == ["skip"] * (2 * DESKTOP_TARGETS)
    for a in manifest_before.artifacts:
        assert f"skip  {a.artifact_id} (unchanged)" in out
    assert _state(run_dir) == before  # same mtime and sha256 for every file
    assert Manifest.load(run_dir / "manifest.json") == manifest_before
    assert "0 built, 14 skipped" in convert.format_summary(result)


def test_interrupted_convert_resumes_with_the_missing_artifact(converted, tmp_path):
    run_dir = _copy(converted[0], tmp_path)
    m = Manifest.load(run_dir / "manifest.json")
    victim = m.artifacts[3]
    # As if killed after writing the artifact but before the manifest recorded it, plus a stale temp file.
    dataclasses.replace(m, artifacts=tuple(a for a in m.artifacts if a != victim)).save(run_dir / "manifest.json")
    (run_dir / "artifacts" / ".half-written.tflite.abc.tmp").write_bytes(b"junk")
    before = _state(run_dir)
    result = convert.convert_run(run_dir, ["desktop-cpu"], limit_test=LIMIT_TEST, out=io.StringIO(), progress=False)
    built = [o.artifact_id for o in result.outcomes if o.action == "built"]
    assert built == [victim.artifact_id]
    after = _state(run_dir)
    assert ".half-written.tflite.abc.tmp" not in after
    for name, st in after.items():
        if name != Path(victim.path).name:
            assert st == before[name]
    assert len(Manifest.load(run_dir / "manifest.json").artifacts) == 2 * DESKTOP_TARGETS


def test_changed_model_or_artifact_is_rebuilt(converted, tmp_path):
    run_dir = _copy(converted[0], tmp_path)
    m = Manifest.load(run_dir / "manifest.json")
    first, second = _models(run_dir)
    keras_path = run_dir / "models" / first / "model.keras"
    keras_path.write_bytes(keras_path.read_bytes())  # same bytes: still unchanged
    # A different model.keras for the first model (retrained): new weights, same architecture.
    from converters.family.keras_build import load_keras_model

    model = load_keras_model(keras_path)
    model.set_weights([w * 1.01 for w in model.get_weights()])
    model.save(keras_path)
    # And a corrupted artifact of the second model.
    corrupt = next(a for a in m.artifacts if a.model_id == second and a.precision == "fp32" and a.format == "onnx")
    (run_dir / corrupt.path).write_bytes(b"corrupted")
    result = convert.convert_run(run_dir, ["desktop-cpu"], limit_test=LIMIT_TEST, out=io.StringIO(), progress=False)
    built = {o.artifact_id for o in result.outcomes if o.action == "built"}
    assert built == {a.artifact_id for a in m.artifacts if a.model_id == first} | {corrupt.artifact_id}
    new = Manifest.load(run_dir / "manifest.json")
    new_sha = sha256_file(keras_path)
    assert all(a.source_sha256 == new_sha for a in new.artifacts if a.model_id == first)
    assert sha256_file(run_dir / corrupt.path) == new.get(corrupt.artifact_id).sha256


def test_max_drop_is_reapplied_to_skipped_artifacts(converted, tmp_path, capsys):
    run_dir = _copy(converted[0], tmp_path)
    rc = main(["convert", str(run_dir), "--profile", "desktop-cpu", "--max-drop", "-100", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    m = Manifest.load(run_dir / "manifest.json")
    assert all(a.status == "rejected" and "max drop -100.00" in a.reason for a in m.artifacts)
    assert "rejected (skip)" in out and "14 rejected" in out
    main(["convert", str(run_dir), "--profile", "desktop-cpu", "--max-drop", "100", "--no-progress"])
    assert all(a.status == "ok" and a.reason == "" for a in Manifest.load(run_dir / "manifest.json").artifacts)


def test_profile_with_one_target_builds_only_that(trained_run, tmp_path):
    run_dir = _copy(trained_run, tmp_path)
    profile = tmp_path / "tiny-board.toml"
    profile.write_text(ONE_TARGET_PROFILE)
    result = convert.convert_run(run_dir, [str(profile)], limit_test=100, out=io.StringIO(), progress=False)
    assert {(o.format, o.precision, o.action) for o in result.outcomes} == {("tflite", "int8", "built")}
    assert sorted(p.suffix for p in (run_dir / "artifacts").iterdir()) == [".tflite", ".tflite"]
    assert len(Manifest.load(run_dir / "manifest.json").artifacts) == 2


def test_targets_are_the_union_of_profiles_in_fixed_order():
    t = convert.targets_for(["rpi4", "jetson-orin-nano"])
    assert [x.key for x in t] == ["tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8",
                                  "onnx-fp32", "onnx-fp16", "onnx-int8"]
    assert convert.targets_for(["rpi4", "rpi4"]) == convert.targets_for(["rpi4"])
    assert BuildTarget("onnx", "fp16") in convert.targets_for(["desktop-cuda"])


def test_unknown_profile_is_a_clear_cli_error(trained_run, capsys):
    rc = main(["convert", str(trained_run), "--profile", "no-such-board"])
    err = capsys.readouterr().err
    assert rc == 2 and "edgekit convert: error: unknown profile 'no-such-board'; available:" in err


def test_run_without_finished_models_is_a_clear_cli_error(tmp_path, capsys):
    run_dir = tmp_path / "empty"
    (run_dir / "models" / "half-trained").mkdir(parents=True)
    atomic_write_json(run_dir / "run.json", {"dataset": "fashion_mnist", "class_names": [str(i) for i in range(10)]})
    rc = main(["convert", str(run_dir), "--profile", "desktop-cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "no finished models" in err and "edgekit train" in err
    rc = main(["convert", str(tmp_path / "missing"), "--profile", "desktop-cpu"])
    assert rc == 2 and "run file" in capsys.readouterr().err


def test_manifest_of_another_dataset_is_refused(converted, tmp_path, capsys):
    run_dir = _copy(converted[0], tmp_path)
    m = Manifest.load(run_dir / "manifest.json")
    dataclasses.replace(m, dataset="cifar10").save(run_dir / "manifest.json")
    rc = main(["convert", str(run_dir), "--profile", "desktop-cpu", "--no-progress"])
    assert rc == 2 and "dataset 'cifar10'" in capsys.readouterr().err


def test_failed_conversion_is_reported_and_drops_stale_record(converted, tmp_path, monkeypatch):
    run_dir = _copy(converted[0], tmp_path)
    first = _models(run_dir)[0]
    keras_path = run_dir / "models" / first / "model.keras"
    keras_path.write_bytes(keras_path.read_bytes() + b"\0")  # different sha256, still a valid zip

    from converters.convert.exporters import onnx as onnx_fmt

    def boom(*a, **k):
        raise RuntimeError("ONNX export (Keras model.export) failed: unsupported op FancyOp")

    monkeypatch.setattr(onnx_fmt, "_export_fp32", boom)
    buf = io.StringIO()
    result = convert.convert_run(run_dir, ["desktop-cpu"], limit_test=100, out=buf, progress=False)
    failed = {o.artifact_id for o in result.failed}
    assert failed == {f"{first}.onnx-{p}" for p in ("fp32", "fp16", "int8")}
    assert "FAIL  " in buf.getvalue() and "FancyOp" in buf.getvalue()
    m = Manifest.load(run_dir / "manifest.json")
    for aid in failed:  # the stale artifact from the old model.keras must not survive
        assert aid not in m.by_id()
        assert not (run_dir / f"artifacts/{aid}.onnx").exists()
    table = convert.format_table(result)
    assert table.count("failed") == 3


def test_summary_means_are_against_the_same_models_fp32(converted):
    run_dir = converted[0]
    m = Manifest.load(run_dir / "manifest.json")
    outcomes = tuple(Outcome(a.artifact_id, a.model_id, a.format, a.precision, "skip") for a in m.artifacts)
    deltas = convert.precision_deltas(convert.ConvertResult(m, outcomes))
    lower = [("tflite", "int8"), ("onnx", "int8"), ("tflite", "fp16"), ("onnx", "fp16"), ("tflite", "dynamic")]
    for fmt, prec in lower:
        want = np.mean([
            100 * (m.get(f"{mid}.{fmt}-{prec}").host_accuracy - m.get(f"{mid}.{fmt}-fp32").host_accuracy)
            for mid in _models(run_dir)
        ])
        assert deltas[(fmt, prec)] == (pytest.approx(want), 2)


def test_unloadable_model_fails_alone_and_exits_nonzero(converted, tmp_path, capsys):
    run_dir = _copy(converted[0], tmp_path)
    first, second = _models(run_dir)
    (run_dir / "models" / first / "model.keras").write_bytes(b"not a zip")
    rc = main(["convert", str(run_dir), "--profile", "rpi4", "--limit-test", "100", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 1 and "failed to convert" in cap.err
    assert f"FAIL  {first}: cannot load" in cap.out
    assert f"skip  {second}.tflite-int8 (unchanged)" in cap.out
    m = Manifest.load(run_dir / "manifest.json")
    assert not [a for a in m.artifacts if a.model_id == first and a.format == "tflite"]
    assert not list((run_dir / "artifacts").glob(f"{first}.tflite-*"))
    assert len([a for a in m.artifacts if a.model_id == first and a.format == "onnx"]) == 3  # not asked for: kept


def test_concurrent_convert_on_the_same_run_is_refused(converted, tmp_path):
    import fcntl

    run_dir = _copy(converted[0], tmp_path)
    with open(run_dir / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another 'edgekit convert' is using"):
            convert.convert_run(run_dir, ["desktop-cpu"], out=io.StringIO(), progress=False)


# --- an ensemble (the ensemble_run fixture of tests/converters/conftest.py) --------------------------


def test_convert_builds_and_validates_every_desktop_target_of_an_ensemble(ensemble_run, tmp_path):
    from edge.artifacts.manifest import Manifest
    from edgekit.cli import main

    _, _, src, first, _ = ensemble_run
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
        rec = train_record(run_dir, a.model_id)
        assert a.params == rec["params"] and a.macs == rec["macs"]
        assert a.keras_accuracy == pytest.approx(rec["test_accuracy"], abs=1e-6)
        assert a.status == "ok", (a.artifact_id, a.reason)
        if a.precision in ("fp32", "fp16", "dynamic"):
            assert a.agreement >= 0.98 and a.max_abs_diff < 0.01, a.artifact_id
        else:
            assert a.agreement >= 0.9, a.artifact_id
        assert a.output.shape[-1] == 10


SIZES_FAMILY = """
name = "sizesens"
mode = "grid"
input_size = [28, 28]
pool = "max"
head = "flatten"

[[space]]
filters = [[4]]
resolution = [20, 36]

[[ensemble]]
top = 2
name = "sizes"
"""


@pytest.mark.slow
def test_an_ensemble_of_members_at_two_resolutions_takes_the_runs_images_and_converts_to_every_target(tmp_path):
    """Members trained at 20x20 and 36x36 (the family's resolution knob): their ensemble takes the run's 28x28
    images, resizes them inside (Resample) as training resized them, and builds and validates all 7 targets."""
    from converters.data.datasets import splits_for_run
    from converters.family.keras_build import load_keras_model
    from edge.artifacts.images import resize_pixels
    from tests.converters._ensembles import sweep_family

    _, _, run_dir, results, out = sweep_family(tmp_path, SIZES_FAMILY, "sizes")
    assert [r.status for r in results] == ["trained", "trained", "built"], out[-2000:]
    members, ens_id = [r.model_id for r in results[:2]], results[2].model_id
    sizes = {m: tuple(load_keras_model(run_dir / "models" / m / "model.keras").inputs[0].shape[1:3]) for m in members}
    assert sorted(sizes.values()) == [(20, 20), (36, 36)]
    ens = load_keras_model(run_dir / "models" / ens_id / "model.keras")
    assert tuple(ens.inputs[0].shape[1:]) == (28, 28, 1)
    s = splits_for_run(run_dir)
    x = s.x_test[:200]
    got = np.asarray(ens.predict(x.astype(np.float32), verbose=0))
    want = np.mean([np.asarray(keras_softmax(load_keras_model(run_dir / "models" / m / "model.keras"),
                                             resize_pixels(x, sizes[m]))) for m in members], axis=0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)  # the members see what they were trained on
    rec = train_record(run_dir, ens_id)
    assert rec["test_accuracy"] > 0.5 and rec["macs"] == sum(train_record(run_dir, m)["macs"] for m in members)
    for m in members:  # convert the ensemble alone: its model.keras holds its members
        shutil.rmtree(run_dir / "models" / m)
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        rc = main(["convert", str(run_dir), "--profile", "desktop-cpu", "--no-progress"])
    assert rc == 0, buf.getvalue()[-3000:] + err.getvalue()[-3000:]
    arts = Manifest.load(run_dir / "manifest.json").artifacts
    assert len(arts) == DESKTOP_TARGETS and {a.model_id for a in arts} == {ens_id}
    for a in arts:
        assert a.status == "ok", (a.artifact_id, a.reason)
        assert tuple(a.input.shape[1:]) == (28, 28, 1)
        assert a.agreement >= (0.98 if a.precision in ("fp32", "fp16", "dynamic") else 0.9), a.artifact_id


def keras_softmax(model, images: np.ndarray) -> np.ndarray:
    """A member's probabilities on uint8 images (the family's members output logits)."""
    import keras

    return keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(images.astype(np.float32), verbose=0)))


MIXED_PROFILE = """
name = "mixed-board"
arch = "x86_64"
memory_budget_mb = 64

[[build]]
format = "tflite"
precisions = ["int8"]

[[build]]
format = "onnx"
precisions = ["fp32"]

[[runtime]]
backend = "litert"
threads = 1

[[runtime]]
backend = "onnxruntime"
threads = 1
"""


@pytest.mark.slow
def test_a_run_mixing_trained_and_imported_models_converts_both(trained_run, tmp_path, capsys):
    from converters.convert.exporters import export_model
    from tests.converters._fixtures import tiny_model

    run_dir = _copy(trained_run, tmp_path)
    user = tmp_path / "user.onnx"
    export_model(tiny_model(), user, "onnx", "fp32")
    assert main(["import", str(run_dir), str(user), "--no-progress"]) == 0
    profile = tmp_path / "mixed.toml"
    profile.write_text(MIXED_PROFILE)
    rc = main(["convert", str(run_dir), "--profile", str(profile), "--limit-test", str(LIMIT_TEST), "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    m = Manifest.load(run_dir / "manifest.json")
    trained = [d for d in _models(run_dir) if d != "user"]
    assert {a.artifact_id for a in m.artifacts} == (
        {f"{d}.{t}" for d in trained for t in ("tflite-int8", "onnx-fp32")} | {"user.onnx-fp32"})
    assert m.get("user.onnx-fp32").source_sha256 == sha256_file(run_dir / "models" / "user" / "model.onnx")
    assert all(a.status == "ok" for a in m.artifacts if a.precision == "fp32")
    assert "user tflite-int8: TFLiteConverter cannot read ONNX" in out


# --- int8 calibration on a folder of unlabelled images (--calib-images) ----------------------------


def _dark_images(folder: Path, n: int = 12) -> Path:
    """``n`` dark images (pixels 0..40) of other sizes and colour, at two depths: unlabelled calibration images."""
    from PIL import Image

    rng = np.random.default_rng(5)
    (folder / "nested" / "deeper").mkdir(parents=True)
    for i in range(n):
        sub = folder / ("nested/deeper" if i % 3 == 0 else "nested" if i % 3 == 1 else "")
        a = rng.integers(0, 41, (20 + i, 36, 3), dtype=np.uint8)
        Image.fromarray(a).save(sub / f"dark{i}.{'png' if i % 2 else 'jpg'}", quality=95)
    return folder


def _input_scale(path: Path) -> float:
    """The int8 input scale of a TFLite artifact, or the scale of the first QuantizeLinear of an ONNX one."""
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        return float(Interpreter(model_path=str(path)).get_input_details()[0]["quantization"][0])
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    q = next(n for n in g.node if n.op_type == "QuantizeLinear")
    return float(np.ravel(inits[q.input[1]])[0])


@pytest.mark.slow
def test_calib_images_rebuild_only_int8_record_the_set_and_skip_when_unchanged(converted, tmp_path, capsys):
    from converters.convert.calibration import from_split
    from converters.data.datasets import splits_for_run
    from edge.artifacts.images import load_image

    run_dir = _copy(converted[0], tmp_path)
    before = Manifest.load(run_dir / "manifest.json")
    int8 = sorted(a.artifact_id for a in before.artifacts if a.precision == "int8")
    assert len(int8) == 4
    # what the first convert recorded: the run's own calibration split, all of it
    run_set = from_split(splits_for_run(run_dir).x_calib, None, 0)
    assert {aid: before.extra["calibration"][aid]["sha256"] for aid in int8} == dict.fromkeys(int8, run_set.sha256)
    assert set(before.extra["calibration"]) == set(int8)  # fp32/fp16/dynamic artifacts are not calibrated
    scales = {aid: _input_scale(run_dir / before.get(aid).path) for aid in int8}

    folder = _dark_images(tmp_path / "calib")
    (folder / "nested" / "readme.txt").write_text("not an image")
    (folder / "nested" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    state = _state(run_dir)
    argv = ["convert", str(run_dir), "--profile", "desktop-cpu", "--limit-test", str(LIMIT_TEST), "--no-progress",
            "--calib-images", str(folder)]
    # a bad file stops the convert before anything is built, naming the file and --skip-bad
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(folder / "nested" / "broken.png") in err and "--skip-bad" in err
    assert _state(run_dir) == state and Manifest.load(run_dir / "manifest.json") == before

    assert main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert f"skip-bad: skipped {folder / 'nested' / 'broken.png'}" in out and "readme.txt" in out
    rebuilt = sorted(ln.split()[1].rstrip(":") for ln in out.splitlines() if ln.startswith("built "))
    assert rebuilt == int8 and all(f"redo  {aid}: it was calibrated on other images" in out for aid in int8)
    assert "4 built, 10 skipped" in out
    after = Manifest.load(run_dir / "manifest.json")
    for a in before.artifacts:  # the others are untouched
        if a.precision != "int8":
            assert after.get(a.artifact_id) == a and _state(run_dir)[Path(a.path).name] == state[Path(a.path).name]
    # the set: every image of the folder, decoded by the one decoder at the run's 28x28x1, bilinear, path order
    files = sorted(p for p in folder.rglob("dark*"))
    want = from_split(np.stack([load_image(p, (28, 28), 1, "bilinear") for p in files]), None, 0).sha256
    for aid in int8:
        rec = after.extra["calibration"][aid]
        assert (rec["source"], rec["folder"], rec["images"], rec["skipped"], rec["sha256"]) == (
            "folder", str(folder.resolve()), 12, 1, want)
        # calibrated on pixels 0..40, not the run's 0..255: the quantized input range shrinks with them
        assert _input_scale(run_dir / after.get(aid).path) < 0.5 * scales[aid]
    assert f"int8 calibration: all 12 image(s) of the images in {folder.resolve()} (bilinear resize; 1 bad" in out

    # the same set again: nothing rebuilt or rewritten
    state2, manifest2 = _state(run_dir), Manifest.load(run_dir / "manifest.json")
    assert main([*argv, "--skip-bad"]) == 0
    assert "0 built, 14 skipped" in capsys.readouterr().out
    assert _state(run_dir) == state2 and Manifest.load(run_dir / "manifest.json") == manifest2

    # --calib-size 5: a seeded sample of 5, another set; then back to the run's split: int8 rebuilt each time
    result = convert.convert_run(run_dir, ["desktop-cpu"], limit_test=LIMIT_TEST, out=io.StringIO(), progress=False,
                                 calibration=convert.CalibrationOptions(images=folder, size=5, skip_bad=True))
    assert sorted(o.artifact_id for o in result.outcomes if o.action == "built") == int8
    assert result.calibration["images"] == 5 and result.calibration["available"] == 13
    assert "a seeded sample (seed 0) of 5 of the 13 image(s)" in convert.format_summary(result)
    result = convert.convert_run(run_dir, ["desktop-cpu"], limit_test=LIMIT_TEST, out=io.StringIO(), progress=False)
    assert sorted(o.artifact_id for o in result.outcomes if o.action == "built") == int8
    assert result.calibration["source"] == "run" and result.calibration["sha256"] == run_set.sha256


def test_calib_images_errors(converted, tmp_path, capsys):
    run_dir = _copy(converted[0], tmp_path)
    state = _state(run_dir)
    base = ["convert", str(run_dir), "--profile", "desktop-cpu", "--no-progress"]
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    assert main([*base, "--calib-images", str(empty)]) == 2
    assert f"calibration folder {empty} holds no image" in capsys.readouterr().err
    assert main([*base, "--calib-images", str(tmp_path / "nope")]) == 2
    assert f"calibration folder {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert main([*base, "--skip-bad"]) == 2
    assert "--skip-bad applies to a calibration folder only: add --calib-images DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--calib-size", "0"])
    assert "expected a whole number >= 1" in capsys.readouterr().err
    assert _state(run_dir) == state  # nothing was built
    # a profile with no int8 target does not read the folder
    profile = tmp_path / "fp32.toml"
    profile.write_text(ONE_TARGET_PROFILE.replace('precisions = ["int8"]', 'precisions = ["fp32"]'))
    assert main(["convert", str(run_dir), "--profile", str(profile), "--no-progress", "--calib-images", str(empty)]) == 0
    assert f"note: --calib-images {empty} is not used" in capsys.readouterr().out
