"""Converting imported models (converters.convert.sources): what each source makes, validated against the source
itself, the input convention recorded for ONNX and TFLite and honoured by the bundle's canary check."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from converters.convert.exporters import export_model
from converters.convert.sources import NO_TFLITE_FROM_ONNX, plan_targets
from device_profiles import BuildTarget
from edge.artifacts.manifest import Manifest
from edge.core.atomic import sha256_file
from edge.core.errors import EdgekitError
from edgekit.cli import main
from tests.converters._fixtures import fashion_subset, tiny_model
from tests.converters.importing._models import write_idx

PROFILE = """
name = "imports-board"
arch = "x86_64"
memory_budget_mb = 256

[[build]]
format = "tflite"
precisions = ["fp32", "int8"]

[[build]]
format = "onnx"
precisions = ["fp32", "fp16", "int8"]

[[runtime]]
backend = "litert"
threads = 1

[[runtime]]
backend = "onnxruntime"
threads = 1
"""


def _cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*map(str, args)])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A run of the real Fashion-MNIST subset with tiny_model imported as .keras, .onnx, .tflite and a SavedModel, all
    behind a layer that makes them take -1..1 (as keras.applications' MobileNetV2 does), imported with
    --input-range=-1..1, then converted for PROFILE."""
    import keras

    root = tmp_path_factory.mktemp("imports")
    xtr, ytr, xte, yte = fashion_subset()
    data_dir = write_idx(root / "fm", xtr, ytr, xte, yte)
    inp = keras.Input((28, 28, 1))
    m11 = keras.Model(inp, tiny_model()(keras.layers.Rescaling(127.5, offset=127.5)(inp)))  # -1..1 back to pixels
    user = root / "user"
    user.mkdir()
    m11.save(user / "tiny.keras")
    export_model(m11, user / "tiny.onnx", "onnx", "fp32")
    export_model(m11, user / "tiny.tflite", "tflite", "fp32")
    m11.export(str(user / "tiny_sm"), format="tf_saved_model", verbose=False)
    (root / "board.toml").write_text(PROFILE)
    run = root / "run"
    rc, out, err = _cli("import", run, user / "tiny.keras", user / "tiny.onnx", user / "tiny.tflite",
                        user / "tiny_sm", "--input-range=-1..1", "--dataset", "fashion_mnist", "--data-dir", data_dir, "--no-progress")
    assert rc == 0, err
    conv = _cli("convert", run, "--profile", root / "board.toml", "--no-progress")
    return root, run, out, conv


@pytest.mark.slow
def test_import_measures_each_format_alike(imported):
    _, run, out, _ = imported
    acc = {m: json.loads((run / "models" / m / "train.json").read_text())["test_accuracy"]
           for m in ("tiny", "tiny-onnx", "tiny-tflite", "tiny_sm")}
    assert acc["tiny"] > 0.6 and max(acc.values()) - min(acc.values()) < 0.01, acc
    assert "WARN" not in out


@pytest.mark.slow
def test_each_source_makes_what_it_allows_and_says_why_not_the_rest(imported):
    _, run, _, (rc, out, err) = imported
    assert rc == 0, err  # a target a source cannot produce is not a failure
    m = Manifest.load(run / "manifest.json")
    built = {a.artifact_id: a for a in m.artifacts}
    assert set(built) == {
        "tiny.tflite-fp32", "tiny.tflite-int8", "tiny.onnx-fp32", "tiny.onnx-fp16", "tiny.onnx-int8",
        "tiny-onnx.onnx-fp32", "tiny-onnx.onnx-fp16", "tiny-onnx.onnx-int8",
        "tiny-tflite.tflite-fp32", "tiny-tflite.onnx-fp32", "tiny-tflite.onnx-fp16", "tiny-tflite.onnx-int8",
        "tiny_sm.tflite-fp32", "tiny_sm.tflite-int8", "tiny_sm.onnx-fp32", "tiny_sm.onnx-fp16", "tiny_sm.onnx-int8"}
    assert all(a.status == "ok" for a in m.artifacts), [(a.artifact_id, a.reason) for a in m.artifacts]
    assert "tiny-onnx tflite-fp32: " + NO_TFLITE_FROM_ONNX in out
    assert "tiny-onnx tflite-int8: " in out
    assert "tiny-tflite tflite-int8: a .tflite is served as given (fp32)" in out
    assert "3 target(s) not built because the model's source cannot produce them (not failures)" in out


@pytest.mark.slow
def test_onnx_and_tflite_artifacts_record_the_convention_keras_folds_it_in(imported):
    _, run, _, _ = imported
    m = Manifest.load(run / "manifest.json")
    for a in m.artifacts:
        if a.model_id in ("tiny", "tiny_sm"):
            assert not a.input.normalized, a.artifact_id  # Keras, SavedModel: raw pixels, the convention is folded in
        else:
            assert (a.input.mean, a.input.std) == ((127.5,), (127.5,)), a.artifact_id
        assert a.agreement >= (0.95 if a.precision == "int8" else 0.995), (a.artifact_id, a.agreement)
    # the ONNX fp32 artifact is the file as given; the TFLite one the .tflite as given
    rec = m.get("tiny-onnx.onnx-fp32")
    assert rec.sha256 == sha256_file(run / "models" / "tiny-onnx" / "model.onnx") and rec.max_abs_diff == 0.0
    assert m.get("tiny-tflite.tflite-fp32").sha256 == sha256_file(run / "models" / "tiny-tflite" / "model.tflite")


@pytest.mark.slow
def test_rerun_skips_and_the_bundle_canary_runs_with_the_convention(imported, tmp_path):
    root, run, _, _ = imported
    rc, out, err = _cli("convert", run, "--profile", root / "board.toml", "--no-progress")
    assert rc == 0 and "17 skipped (unchanged)" in out and "0 built" in out, err
    from converters.pack.packer import build_bundle
    from device_profiles import load_profile
    from edge.bundle.reader import open_bundle
    from edge.bundle.verify import verify_bundle

    out_dir = tmp_path / "bundle"
    build_bundle(run, str(root / "board.toml"), out_dir, eval_size=100, say=lambda s: None)
    bundle = open_bundle(out_dir)
    rows = verify_bundle(bundle, load_profile(str(root / "board.toml")))
    assert rows and all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    # without the recorded convention the same artifact computes something else: the canary would catch it
    from converters.convert.validate import host_setting
    from edge.artifacts.tensors import scores, with_recorded_input
    from edge.backends import get_backend

    aid = "tiny-onnx.onnx-fp32"
    x = bundle.canary().images
    with get_backend("onnxruntime").load(bundle.artifact_path(aid), host_setting("onnx")) as lm:
        plain = scores(lm, x)
        right = scores(with_recorded_input(lm, bundle.artifact(aid).input), x)
    host = dict(np.load(out_dir / "canary.npz"))[f"scores/{aid}"]
    assert np.allclose(right, host, atol=1e-4) and not np.allclose(plain, host, atol=1e-2)


@pytest.mark.slow
def test_plan_of_a_quantized_tflite_source(imported, tmp_path):
    from converters.convert.command import finished_models

    root, run, _, _ = imported
    xtr = fashion_subset()[0]
    q = tmp_path / "q.tflite"
    export_model(tiny_model(), q, "tflite", "int8", calib_images=xtr[:64])
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    rc, _, err = _cli("import", copy, q, "--no-progress")
    assert rc == 0, err
    md = next(m for m in finished_models(copy) if m.model_id == "q")
    targets = [BuildTarget(f, p) for f, p in (("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32"))]
    can, cannot = plan_targets(md, targets)
    assert can == [BuildTarget("tflite", "int8")]
    assert [(u.format, u.precision) for u in cannot] == [("tflite", "fp32"), ("onnx", "fp32")]
    assert "served as given (int8)" in cannot[0].reason and "float .tflite files only" in cannot[1].reason


@pytest.mark.slow
def test_keras_import_with_the_wrong_range_warns(imported, tmp_path):
    _, run, _, _ = imported
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    tiny_model().save(tmp_path / "raw.keras")  # takes raw pixels 0..255, told it takes 0..1: a black image
    rc, out, err = _cli("import", copy, tmp_path / "raw.keras", "--input-range", "0..1", "--no-progress")
    assert rc == 0, err
    warn = [ln for ln in out.splitlines() if ln.startswith("WARN  raw:")]
    assert len(warn) == 1 and "with input convention 0..1 it scores" in warn[0], out
    assert "--input-range=0..255" in warn[0] and "--force" in warn[0]


def test_a_folder_model_travels_to_a_ray_task_and_back_unchanged(tmp_path):
    from converters.convert.sources import model_payload, model_sha256, write_payload
    from converters.importing.savedmodel_source import tree_sha256

    src = tmp_path / "saved_model"
    (src / "variables").mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(b"graph")
    (src / "variables" / "variables.index").write_bytes(b"\x00" * 100)
    dest = tmp_path / "task" / "saved_model"
    dest.parent.mkdir()
    write_payload(model_payload(src), dest, folder=True)
    assert tree_sha256(dest) == tree_sha256(src) == model_sha256(src)
    f = tmp_path / "model.onnx"
    f.write_bytes(b"onnx bytes")
    write_payload(model_payload(f), tmp_path / "task" / "model.onnx", folder=False)
    assert model_sha256(tmp_path / "task" / "model.onnx") == sha256_file(f)


@pytest.mark.parametrize("source, match", [
    ({"format": "pytorch", "file": "m.pt"}, "not an import record edgekit wrote"),
    ({"format": "onnx", "file": "../../elsewhere.onnx"}, "not an import record edgekit wrote"),
    ({"format": "onnx", "file": "model.onnx"}, "model.onnx is missing although"),
])
def test_finished_models_reads_import_records_and_refuses_odd_ones(tmp_path, source, match):
    from converters.convert.command import finished_models

    d = tmp_path / "models" / "m"
    d.mkdir(parents=True)
    (d / "train.json").write_text(json.dumps({"model_id": "m", "finished": True, "source": source}))
    with pytest.raises(EdgekitError, match=match):
        finished_models(tmp_path)


def test_finished_models_knows_each_source(tmp_path):
    from converters.convert.command import finished_models

    for mid, fmt, name in (("k", None, "model.keras"), ("o", "onnx", "model.onnx"), ("t", "tflite", "model.tflite"),
                           ("s", "savedmodel", "saved_model")):
        d = tmp_path / "models" / mid
        d.mkdir(parents=True)
        (d / name).mkdir() if fmt == "savedmodel" else (d / name).write_bytes(b"x")
        rec = {"model_id": mid, "finished": True} | ({"source": {"format": fmt, "file": name}} if fmt else {})
        (d / "train.json").write_text(json.dumps(rec))
    got = {m.model_id: (m.source, m.model_path.name, m.imported) for m in finished_models(tmp_path)}
    assert got == {"k": ("keras", "model.keras", False), "o": ("onnx", "model.onnx", True),
                   "t": ("tflite", "model.tflite", True), "s": ("savedmodel", "saved_model", True)}



@pytest.mark.slow
def test_a_model_of_another_input_size_is_imported_converted_bundled_and_served(tmp_path):
    """A user's 36x36 model (tiny_model behind a Resizing layer) imported as .keras, .onnx and .tflite into a 28x28 run: each
    measured on the run's images resized to 36x36, converted (int8 calibrated at 36x36) and validated, bundled with
    the images at 28x28, and served from a 28x28 image."""
    import keras

    from converters.pack.packer import build_bundle
    from device_profiles import load_profile
    from edge.bundle.reader import open_bundle
    from edge.bundle.verify import verify_bundle
    from edge.runtime.classifier import AdaptiveClassifier
    from tests.converters._fixtures import keras_logits

    xtr, ytr, xte, yte = fashion_subset()
    data_dir = write_idx(tmp_path / "fm", xtr, ytr, xte, yte)
    inp = keras.Input((36, 36, 1))
    big = keras.Model(inp, tiny_model()(keras.layers.Resizing(28, 28)(inp)))
    user = tmp_path / "user"
    user.mkdir()
    big.save(user / "big.keras")
    export_model(big, user / "big.onnx", "onnx", "fp32")
    export_model(big, user / "big.tflite", "tflite", "fp32")
    run = tmp_path / "run"
    rc, out, err = _cli("import", run, user / "big.keras", user / "big.onnx", user / "big.tflite", "--dataset", "fashion_mnist",
                        "--data-dir", data_dir, "--no-progress")
    assert rc == 0, err
    assert out.count("takes 36x36 images: the run's 28x28 images are resized to 36x36 (bilinear") == 3, out
    small_acc = float((keras_logits(tiny_model(), xte).argmax(1) == yte).mean())
    for mid in ("big", "big-onnx", "big-tflite"):
        rec = json.loads((run / "models" / mid / "train.json").read_text())
        assert abs(rec["test_accuracy"] - small_acc) < 0.03, (mid, rec["test_accuracy"], small_acc)
        assert any("resized to 36x36" in n for n in rec["source"]["notes"])
    (tmp_path / "board.toml").write_text(PROFILE)
    rc, out, err = _cli("convert", run, "--profile", tmp_path / "board.toml", "--no-progress")
    assert rc == 0, err + out
    m = Manifest.load(run / "manifest.json")
    assert {a.artifact_id for a in m.artifacts} == {
        f"{mid}.{t}" for mid, ts in (("big", ("tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-fp16", "onnx-int8")),
                                     ("big-onnx", ("onnx-fp32", "onnx-fp16", "onnx-int8")),
                                     ("big-tflite", ("tflite-fp32", "onnx-fp32", "onnx-fp16", "onnx-int8")))
        for t in ts}
    for a in m.artifacts:
        assert a.status == "ok" and tuple(a.input.shape[1:]) == (36, 36, 1), (a.artifact_id, a.reason, a.input)
        assert a.agreement >= (0.95 if a.precision == "int8" else 0.995), (a.artifact_id, a.agreement)
    out_dir = tmp_path / "bundle"
    build_bundle(run, str(tmp_path / "board.toml"), out_dir, eval_size=100, say=lambda s: None)
    bundle = open_bundle(out_dir)
    assert tuple(bundle.input_shape) == (28, 28, 1)
    rows = verify_bundle(bundle, load_profile(str(tmp_path / "board.toml")))
    assert rows and all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    from benchmarks.bench.command import bench_bundle
    from benchmarks.bench.measure import BenchOptions
    from edge.tables.selection import select_subset

    aid = "big-onnx.onnx-int8"
    res = bench_bundle(out_dir, tmp_path / "t.json", profile=str(tmp_path / "board.toml"), only=[aid], progress=False,
                       opts=BenchOptions(min_runs=50, min_seconds=0.05, warmup=5, inputs=8, rest_runs=3),
                       log=lambda m: None)
    (row,) = res.table.rows
    assert row.resize_ms > 0 and row.p50_ms > row.resize_ms  # the table counts the resize serving pays
    select_subset(res.table, significance=0).save(tmp_path / "sel.json")
    images, labels = bundle.eval_set(limit=100)
    assert images.shape[1:] == (28, 28, 1)
    with AdaptiveClassifier.open(str(out_dir), str(tmp_path / "sel.json"), str(tmp_path / "board.toml"),
                                 log=lambda m: None) as clf:
        got = [clf.classify(images[i], deadline_ms=1e6) for i in range(len(images))]
    assert {r.variant for r in got} == {row.variant}
    assert np.mean([r.label == int(y) for r, y in zip(got, labels)]) > small_acc - 0.1
