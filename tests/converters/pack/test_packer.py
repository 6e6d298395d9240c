"""Tests for `edgekit bundle` (converters/pack/packer.py): packing a run for one device profile.

``make_tiny_run`` (a run folder with a tiny Keras model converted to TFLite fp32/fp16/int8 and
ONNX fp32, a manifest and a tiny IDX dataset) is shared with tests/edge/_bundles.py and
tests/test_runtime_extra.py.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from device_profiles import RuntimeSetting, load_profile
from edge.artifacts.manifest import ArtifactRecord, Manifest, TensorSpec, artifact_id
from edge.core.atomic import atomic_write_json, sha256_bytes

H = W = 12
N_TRAIN, N_TEST = 80, 48
MODEL_ID = "tiny-c4"
# (format, precision, status): the fp16 TFLite one plays an artifact that validation rejected.
TINY_ARTIFACTS = (
    ("tflite", "fp32", "ok"),
    ("tflite", "int8", "ok"),
    ("tflite", "fp16", "rejected"),
    ("onnx", "fp32", "ok"),
)


# --------------------------------------------------------------------------- shared helpers


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def _tiny_dataset(folder: Path, seed: int = 0) -> None:
    """Four IDX files of 12x12 images whose class is the row of a bright bar (so a model can learn it)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, H, W)).astype(np.uint8)
        for i, y in enumerate(labels):
            images[i, int(y) + 1, :] = 250
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def _tiny_model(x: np.ndarray, y: np.ndarray):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((H, W, 1))
    z = keras.layers.Rescaling(1 / 255.0)(inp)
    z = keras.layers.Conv2D(4, 3, activation="relu")(z)
    z = keras.layers.MaxPooling2D()(z)
    z = keras.layers.Flatten()(z)
    out = keras.layers.Dense(10)(z)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x.astype(np.float32), y, epochs=3, batch_size=16, verbose=0)
    return model


def _convert(model, fmt: str, precision: str, calib: np.ndarray, path: Path) -> bytes:
    import tensorflow as tf

    if fmt == "onnx":
        import io
        from contextlib import redirect_stdout

        with redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.export(str(path), format="onnx", verbose=False)
        return path.read_bytes()
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        cal = calib.astype(np.float32)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([cal[i : i + 1]] for i in range(len(cal)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = conv.convert()
    path.write_bytes(data)
    return data


def _specs(fmt: str, data: bytes) -> tuple[TensorSpec, TensorSpec]:
    from edge.backends import get_backend

    backend = {"tflite": "litert", "onnx": "onnxruntime"}[fmt]
    with get_backend(backend).load(data, RuntimeSetting("t", backend)) as m:
        return m.input_spec, m.output_spec


def make_tiny_run(root: Path) -> Path:
    """A run folder as `edgekit train` + `edgekit convert` write it, with a tiny model and dataset."""
    from converters.data.datasets import splits_for_run

    run = Path(root)
    (run / "artifacts").mkdir(parents=True, exist_ok=True)
    data_dir = run.parent / f"{run.name}-data"
    _tiny_dataset(data_dir)
    atomic_write_json(run / "run.json", {
        "dataset": "fashion_mnist", "data_dir": str(data_dir), "family": "tiny", "seed": 0,
        "splits": {"val_fraction": 0.1, "calib_size": 16, "limit_train": None, "limit_test": None},
        "input_shape": [H, W, 1], "class_names": [f"c{i}" for i in range(10)],
    })
    splits = splits_for_run(run)
    model = _tiny_model(splits.x_train, splits.y_train)
    keras_pred = np.argmax(model.predict(splits.x_test.astype(np.float32), verbose=0), axis=1)
    keras_acc = float(np.mean(keras_pred == splits.y_test))
    manifest = Manifest(dataset="fashion_mnist", labels=tuple(f"c{i}" for i in range(10)))
    for fmt, prec, status in TINY_ARTIFACTS:
        aid = artifact_id(MODEL_ID, fmt, prec)
        rel = f"artifacts/{aid}.{fmt}"
        data = _convert(model, fmt, prec, splits.x_calib, run / rel)
        inp, out = _specs(fmt, data)
        manifest = manifest.with_artifact(ArtifactRecord(
            artifact_id=aid, model_id=MODEL_ID, format=fmt, precision=prec, path=rel,
            sha256=sha256_bytes(data), size_bytes=len(data), input=inp, output=out,
            keras_accuracy=keras_acc, host_accuracy=keras_acc if status == "ok" else keras_acc - 0.1,
            status=status, reason="" if status == "ok" else "accuracy 10.0 points below Keras (limit 2.0)",
            eval_count=N_TEST,
        ))
    manifest.save(run / "manifest.json")
    return run


def run_ids(run: Path, fmt: str | None = None) -> list[str]:
    m = Manifest.load(run / "manifest.json")
    return [a.artifact_id for a in m.artifacts if fmt is None or a.format == fmt]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("bundle-run") / "run")


def _quiet_build(*args, **kwargs):
    from converters.pack.packer import build_bundle

    lines: list[str] = []
    res = build_bundle(*args, say=lines.append, **kwargs)
    return res, "\n".join(lines)


# --------------------------------------------------------------------------- tests


def test_rpi4_folder_round_trip(tiny_run, tmp_path):
    from edge.backends import get_backend
    from edge.bundle.canary import check_canary
    from edge.bundle.reader import open_bundle

    out = tmp_path / "rpi4"
    res, text = _quiet_build(tiny_run, "rpi4", out, eval_size=30, canary_size=6)
    # Only what rpi4 builds (tflite) and validation accepted.
    assert set(res.included) == {artifact_id(MODEL_ID, "tflite", "fp32"), artifact_id(MODEL_ID, "tflite", "int8")}
    left = dict(res.left_out)
    assert "does not build onnx-fp32" in left[artifact_id(MODEL_ID, "onnx", "fp32")]
    assert "status rejected" in left[artifact_id(MODEL_ID, "tflite", "fp16")]
    assert "--force" in left[artifact_id(MODEL_ID, "tflite", "fp16")]
    assert "left out tiny-c4.tflite-fp16: status rejected" in text
    assert "left out 1 artifact(s): profile rpi4 does not build onnx-fp32" in text
    assert sorted(p.name for p in out.iterdir()) == ["artifacts", "canary.npz", "eval.npz", "manifest.json"]
    assert not list(tmp_path.glob(".rpi4*")), "temp folders left behind"

    m = json.loads((out / "manifest.json").read_text())
    assert m["extra"]["bundle_version"] == 1 and m["extra"]["profile"] == "rpi4"
    assert set(m["extra"]["files"]) == {"eval.npz", "canary.npz"}
    assert m["extra"]["input_shape"] == [H, W, 1] and len(m["extra"]["class_names"]) == 10
    assert all(a["path"] == f"artifacts/{a['artifact_id']}.tflite" for a in m["artifacts"])

    b = open_bundle(out)
    assert b.profile == "rpi4" and b.extra_files == ()
    assert {a.format for a in b.artifacts} == {"tflite"}
    images, labels = b.eval_set()
    assert images.shape == (30, H, W, 1) and images.dtype == np.uint8 and labels.dtype == np.int64
    from converters.data.datasets import splits_for_run

    sp = splits_for_run(tiny_run)
    np.testing.assert_array_equal(images, sp.x_test[:30])
    np.testing.assert_array_equal(labels, sp.y_test[:30])
    assert b.eval_set(limit=5)[0].shape[0] == 5
    can = b.canary()
    assert can.images.shape == (6, H, W, 1) and set(can.scores) == set(res.included)
    with np.load(out / "canary.npz", allow_pickle=False) as z:  # no pickled objects anywhere
        assert sorted(z.files) == sorted(["images", "labels"] + [f"scores/{a}" for a in res.included])
    prof = load_profile("rpi4")
    for a in b.artifacts:
        setting = prof.settings_for(a.format)[0]
        with get_backend(setting.backend).load(b.artifact_path(a.artifact_id), setting) as lm:
            r = check_canary(b, a.artifact_id, lm)
        assert r.ok and r.top1_match == 1.0 and r.max_abs_diff <= r.tolerance, r.message


def test_jetson_archive_only_onnx(tiny_run, tmp_path):
    from edge.backends import get_backend
    from edge.bundle.canary import check_canary
    from edge.bundle.reader import open_bundle

    out = tmp_path / "jetson.tar.gz"
    res, _ = _quiet_build(tiny_run, "jetson-orin-nano", out, eval_size=10)
    assert res.included == (artifact_id(MODEL_ID, "onnx", "fp32"),)
    assert out.is_file() and tarfile.is_tarfile(out)
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json"
        assert all(m.isreg() and m.uid == 0 and not m.uname for m in tar.getmembers())
    assert sorted(names) == sorted(["manifest.json", "eval.npz", "canary.npz", f"artifacts/{res.included[0]}.onnx"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp files left behind"
    b = open_bundle(out)
    assert {a.format for a in b.artifacts} == {"onnx"} and b.profile == "jetson-orin-nano"
    setting = load_profile("desktop-cpu").settings_for("onnx")[0]
    with get_backend("onnxruntime").load(b.artifact_path(res.included[0]), setting) as lm:
        r = check_canary(b, res.included[0], lm)
    assert r.ok, r.message


def test_force_bundles_rejected(tiny_run, tmp_path):
    out = tmp_path / "forced"
    res, text = _quiet_build(tiny_run, "rpi4", out, eval_size=5, force=True)
    fp16 = artifact_id(MODEL_ID, "tflite", "fp16")
    assert fp16 in res.included and res.forced == (fp16,)
    assert "rejected (forced)" in text
    m = json.loads((out / "manifest.json").read_text())
    assert m["extra"]["forced"] == [fp16]


def test_overwrite_rules(tiny_run, tmp_path):
    # A folder that is not a bundle is never replaced.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("x")
    with pytest.raises(ValueError, match="not a bundle.*refusing to overwrite"):
        _quiet_build(tiny_run, "rpi4", precious)
    assert (precious / "thesis.tex").read_text() == "x"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        _quiet_build(tiny_run, "rpi4", f)
    notar = tmp_path / "x.tar.gz"
    notar.write_text("hello")
    with pytest.raises(ValueError, match="not a tar archive"):
        _quiet_build(tiny_run, "rpi4", notar)
    # An older bundle is replaced as a whole (stale files do not survive).
    out = tmp_path / "b"
    _quiet_build(tiny_run, "rpi4", out, eval_size=5)
    (out / "stale.txt").write_text("old")
    _quiet_build(tiny_run, "rpi4", out, eval_size=7)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "manifest.json").read_text())["extra"]["eval_count"] == 7
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_failure_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    import converters.pack.packer as cb

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cb, "_save_npz", boom)
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="disk full"):
        _quiet_build(tiny_run, "rpi4", out)
    assert list(tmp_path.iterdir()) == []


def test_changed_artifact_and_missing_manifest(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(FileNotFoundError, match="has no manifest.json; convert it first"):
        _quiet_build(tmp_path, "rpi4", tmp_path / "x")
    p = run / f"artifacts/{artifact_id(MODEL_ID, 'tflite', 'int8')}.tflite"
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"tflite-int8\.tflite changed since it was converted"):
        _quiet_build(run, "rpi4", tmp_path / "x")
    with pytest.raises(ValueError, match="nothing to bundle"):
        _quiet_build(run, load_profile("rpi4").__class__(
            name="tiny", description="", arch="x86_64", targets=(), settings=(), memory_budget_mb=1), tmp_path / "y")
    assert not (tmp_path / "x").exists()


def test_canary_skipped_without_runtime(tiny_run, tmp_path, monkeypatch):
    import converters.pack.packer as cb
    from edge.backends import BackendUnavailable
    from edge.bundle.canary import CanaryResult, check_canary
    from edge.bundle.reader import open_bundle

    def no_runtime(rec, data, images):
        raise BackendUnavailable("ONNX Runtime is not installed: pip install onnxruntime")

    monkeypatch.setattr(cb, "_host_canary", no_runtime)
    out = tmp_path / "j"
    with pytest.warns(UserWarning, match="no canary for tiny-c4.onnx-fp32"):
        res, text = _quiet_build(tiny_run, "jetson-orin-nano", out, eval_size=5)
    assert res.canary_skipped and "warning: no canary scores for tiny-c4.onnx-fp32" in text
    b = open_bundle(out)
    assert b.canary().scores == {}
    r = check_canary(b, res.included[0], object())
    assert isinstance(r, CanaryResult) and r.skipped and r.ok and "canary skipped" in r.message


def test_select_artifacts_rules():
    from converters.pack.packer import select_artifacts

    spec = TensorSpec("x", (-1, 2), "float32")

    def rec(fmt, prec, status):
        return ArtifactRecord(artifact_id(f"m-{status}", fmt, prec), f"m-{status}", fmt, prec, "p", "0", 1, spec, spec,
                              status=status)

    m = Manifest("d", ("a",), (rec("tflite", "fp32", "ok"), rec("tflite", "int8", "unvalidated"),
                               rec("onnx", "fp16", "ok"), rec("tflite", "dynamic", "rejected")))
    inc, left, forced = select_artifacts(m, load_profile("rpi5"))
    assert [a.precision for a in inc] == ["fp32"]
    why = dict(left)
    assert "edgekit convert" in why["m-unvalidated.tflite-int8"]
    assert "does not build onnx-fp16" in why["m-ok.onnx-fp16"]
    inc, left, forced = select_artifacts(m, load_profile("rpi5"), force=True)
    assert len(inc) == 3 and len(forced) == 2


def test_cli_bundle_then_verify(tiny_run, tmp_path, capsys):
    from edgekit.cli import main

    out = tmp_path / "rpi4.tar.gz"
    assert main(["bundle", str(tiny_run), "--profile", "rpi4", "--out", str(out), "--eval-size", "10"]) == 0
    text = capsys.readouterr().out
    assert "bundle for rpi4: 2 artifacts, 10 eval images, 8 canary images" in text
    assert f"(archive, {out.stat().st_size / 1024:,.1f} KB)" in text and "size (KB)" in text  # one unit
    assert f"next: copy it to the board, then edgekit verify {out} --profile rpi4" in text
    assert main(["verify", str(out), "--profile", "desktop-cpu"]) == 0
    text = capsys.readouterr().out
    assert "checksums ok" in text and "2 ok, 0 failed" in text
    assert main(["bundle", str(tiny_run), "--profile", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err


def test_real_pipeline_bundles(real_run, tmp_path, capsys):
    """train -> convert -> bundle with the real pipeline: rpi4 gets the 4 tflite, jetson the 3 onnx artifacts."""
    from edge.bundle.reader import open_bundle
    from edgekit.cli import main

    for profile, fmt, n, out in (("rpi4", "tflite", 4, tmp_path / "rpi4.tar.gz"),
                                 ("jetson-orin-nano", "onnx", 3, tmp_path / "jetson")):
        # --force: a 1-epoch model's validation verdicts may vary; what is bundled must not.
        assert main(["bundle", str(real_run), "--profile", profile, "--out", str(out), "--eval-size", "50", "--force"]) == 0
        text = capsys.readouterr().out
        assert f"bundle for {profile}: {n} artifacts, 50 eval images" in text
        b = open_bundle(out)
        assert {a.format for a in b.artifacts} == {fmt} and len(b.artifacts) == n
        assert {a.precision for a in b.artifacts} == {t.precision for t in load_profile(profile).targets}
        assert set(b.canary().scores) == {a.artifact_id for a in b.artifacts}
        assert main(["verify", str(out), "--profile", "desktop-cpu"]) == 0, capsys.readouterr()
        assert f"{n} ok, 0 failed" in capsys.readouterr().out


def test_a_bundle_of_variants_at_three_input_sizes_keeps_the_datasets_images(resolution_run, capsys):
    """Eval, canary and calibration images stay 28x28; each artifact takes its own size, and verify's canary
    (which resizes for each) passes for all of them."""
    from edge.bundle.reader import open_bundle
    from edgekit.cli import main

    b = open_bundle(resolution_run["bundle"])
    assert b.input_shape == (28, 28, 1) and b.canary().images.shape[1:] == (28, 28, 1)
    sizes = {a.artifact_id: tuple(a.input.shape[1:3]) for a in b.artifacts}
    assert set(sizes.values()) == {(20, 20), (28, 28), (36, 36)} and len(sizes) == 9
    assert main(["verify", str(resolution_run["bundle"]), "--profile", str(resolution_run["profile"])]) == 0
    assert "9 ok, 0 failed" in capsys.readouterr().out
