"""Tests for `edgekit train`: run-folder contract, resume, refusal of mixed settings, SIGKILL safety."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from converters.train import sweep as tr
from converters.train.options import QUICK, QUICK_SPLITS, Schedule, SplitOptions, TrainOptions
from converters.train.run_folder import MODEL_TMP_PREFIX
from tests.converters.data.test_datasets import REAL_FASHION

TINY_FAMILY = """
name = "tiny"
mode = "grid"
input_size = [28, 28]
[[space]]
blocks = 1
width = [2, 3, 4]
pool = "max"
vip = ["none", "last"]
"""

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside keras.saving

KEYS_TRAIN = {"model_id", "epochs", "wall_s", "test_accuracy", "val_accuracy", "params", "macs", "seed", "finished"}
KEYS_RUN = {"dataset", "data_dir", "family", "seed", "splits", "input_shape", "class_names"}




def opts(run_dir: Path, family: Path, data_dir: Path | None, **kw) -> TrainOptions:
    base = dict(run_dir=run_dir, family=str(family), dataset="fashion_mnist",
                data_dir=str(data_dir) if data_dir else None, seed=0,
                schedule=Schedule(mode="quick", epochs=1, patience=1, batch_size=64, learning_rate=2e-3),
                splits=SplitOptions(val_fraction=0.1, calib_size=20, limit_train=None, limit_test=None),
                limit=3, progress=False)
    base.update(kw)
    return TrainOptions(**base)


def _quiet(o: TrainOptions):
    import io

    buf = io.StringIO()
    return tr.train_sweep(o, out=buf), buf.getvalue()


def check_run_folder(run_dir: Path, n_models: int) -> None:
    import keras

    from converters.family.keras_build import load_keras_model
    from converters.family.specs import ModelSpec

    run = json.loads((run_dir / "run.json").read_text())
    assert KEYS_RUN <= set(run)
    dirs = sorted((run_dir / "models").iterdir())
    assert len(dirs) == n_models
    for d in dirs:
        assert sorted(p.name for p in d.iterdir()) == ["model.keras", "spec.json", "train.json"]
        rec = json.loads((d / "train.json").read_text())
        assert KEYS_TRAIN <= set(rec) and rec["finished"] is True and rec["model_id"] == d.name
        assert 0.0 <= rec["test_accuracy"] <= 1.0 and rec["params"] > 0 and rec["macs"] > 0
        spec = ModelSpec.from_dict(json.loads((d / "spec.json").read_text()))
        assert spec.model_id == d.name
        model = load_keras_model(d / "model.keras")
        out = keras.ops.convert_to_numpy(model(np.zeros((2, *run["input_shape"]), np.float32)))
        assert out.shape == (2, len(run["class_names"])) and np.isfinite(out).all()
    assert not list(run_dir.rglob(".*.tmp")) and not list(run_dir.rglob(f"{MODEL_TMP_PREFIX}*"))


def _mtimes(run_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def test_sweep_contract_resume_and_half_written(tmp_path, family, data_dir):
    run_dir = tmp_path / "run"
    results, text = _quiet(opts(run_dir, family, data_dir))
    assert [r.status for r in results] == ["trained"] * 3
    assert "epoch 1/1" in text
    check_run_folder(run_dir, 3)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["family"] == str(family.resolve()) and run["input_shape"] == [28, 28, 1]
    assert run["splits"]["calib_size"] == 20

    # The splits a run used can be rebuilt for convert/bundle.
    from converters.data.datasets import splits_for_run

    s = splits_for_run(run_dir)
    assert len(s.x_train) == 270 and len(s.x_val) == 30 and len(s.x_calib) == 20 and len(s.x_test) == 60
    assert json.loads((run_dir / "models" / results[0].model_id / "train.json").read_text())["train_images"] == 270

    # Rerun: nothing is retrained, no file rewritten (run.json included).
    mtimes = _mtimes(run_dir)
    results2, _ = _quiet(opts(run_dir, family, data_dir))
    assert [r.status for r in results2] == ["resumed"] * 3
    assert [r.test_accuracy for r in results2] == [r.test_accuracy for r in results]
    assert _mtimes(run_dir) == mtimes

    # Half-written model (no train.json), a stale temp file, and one more spec: only those are (re)done.
    victim = run_dir / "models" / results[1].model_id
    (victim / "train.json").unlink()
    (victim / ".model.123.tmp.keras").write_bytes(b"partial")
    (run_dir / ".run.json.abc.tmp").write_text("{")
    results3, text3 = _quiet(opts(run_dir, family, data_dir, limit=4))
    assert [r.status for r in results3] == ["resumed", "trained", "resumed", "trained"]
    assert "removed 1 unfinished model folder" in text3
    check_run_folder(run_dir, 4)

    # Table lists every model with accuracy, params, MACs, epochs and time, plus totals.
    table = tr.format_table(results3, 12.0)
    assert "test acc" in table and "MACs" in table and "train s" in table
    assert all(r.model_id in table for r in results3)
    assert "total: 4 models (2 trained now, 2 resumed)" in table


def test_refuses_other_settings_unless_forced(tmp_path, family, data_dir):
    run_dir = tmp_path / "run"
    _quiet(opts(run_dir, family, data_dir, limit=1))
    with pytest.raises(ValueError, match=r"(?s)seed: run has 0, this command asks 1.*--force"):
        _quiet(opts(run_dir, family, data_dir, limit=1, seed=1))
    other = dataclasses.replace(SplitOptions(), calib_size=20, limit_test=30)
    with pytest.raises(ValueError, match="splits: run has"):
        _quiet(opts(run_dir, family, data_dir, limit=1, splits=other))
    results, _ = _quiet(opts(run_dir, family, data_dir, limit=1, seed=1, force=True))
    assert [r.status for r in results] == ["trained"]
    assert json.loads((run_dir / "run.json").read_text())["seed"] == 1


def test_same_seed_same_model(tmp_path, family, data_dir):
    a, _ = _quiet(opts(tmp_path / "a", family, data_dir, limit=1))
    b, _ = _quiet(opts(tmp_path / "b", family, data_dir, limit=1))
    assert a[0].test_accuracy == b[0].test_accuracy and a[0].val_accuracy == b[0].val_accuracy
    from converters.family.keras_build import load_keras_model

    wa = load_keras_model(tmp_path / "a" / "models" / a[0].model_id / "model.keras").get_weights()
    wb = load_keras_model(tmp_path / "b" / "models" / b[0].model_id / "model.keras").get_weights()
    for x, y in zip(wa, wb):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


def _parse(*argv: str) -> TrainOptions:
    p = argparse.ArgumentParser()
    tr.add_arguments(p)
    return tr.options_from_args(p.parse_args(["RUN", *argv]))


def test_cli_options():
    q = _parse()
    assert q.schedule == QUICK and q.splits.limit_train == QUICK_SPLITS.limit_train and q.family == "demo"
    f = _parse("--full", "--epochs", "5", "--batch-size", "32", "--sample", "7", "--seed", "3")
    assert f.schedule.mode == "full" and f.schedule.epochs == 5 and f.schedule.batch_size == 32
    assert f.splits.limit_train is None and f.sample == 7 and f.seed == 3 and f.limit is None
    assert _parse("--all-train").splits.limit_train is None
    assert q.schedule.train_images == 24000 and _parse("--all-train").schedule.train_images is None
    assert _parse("--full").schedule.train_images is None
    assert _parse("--limit-train", "500", "--limit-test", "100").splits.limit_test == 100
    with pytest.raises(SystemExit):
        _parse("--limit", "2", "--sample", "3")
    with pytest.raises(SystemExit):
        _parse("--limit", "0")


def test_all_train_trains_every_spec_on_every_image():
    a = _parse("--all-train", "--epochs", "2")
    assert a.schedule.train_images is None and a.schedule.epochs == 2 and a.splits.limit_train is None
    assert dataclasses.replace(a.schedule, train_images=QUICK.train_images, epochs=QUICK.epochs) == QUICK
    # --limit-train limits the run's images; the quick schedule's per-spec subset stays.
    lim = _parse("--limit-train", "500")
    assert lim.splits.limit_train == 500 and lim.schedule.train_images == 24000


def test_schedule_defaults_recipes_and_validation():
    from converters.family import specs
    from converters.train.options import FULL, LONG, RECIPES
    from edge.core.errors import UsageError

    assert QUICK.train_images == 24000 and QUICK_SPLITS.limit_train is None and FULL.train_images is None
    assert (QUICK.decay, QUICK.augment, QUICK.weight_decay) == ("none", "none", 0.0)
    assert RECIPES == {"long": LONG} and tuple(RECIPES) == specs.RECIPES
    assert (LONG.mode, LONG.decay, LONG.augment, LONG.train_images) == ("long", "cosine", "flip", None)
    assert LONG.weight_decay > 0
    base = dict(mode="quick", epochs=1, patience=1, batch_size=8, learning_rate=1e-3)
    ok = Schedule(**base, decay="cosine", augment="flip", weight_decay=0.0, train_images=1)
    assert ok.train_images == 1
    for kw, pattern in [
        (dict(decay="linear"), r"decay must be one of \['none', 'cosine'\], got 'linear'"),
        (dict(augment="rotate"), r"augment must be one of \['none', 'flip'\], got 'rotate'"),
        (dict(weight_decay=-1e-4), "weight_decay must be >= 0"),
        (dict(weight_decay=float("nan")), "weight_decay must be >= 0"),
        (dict(train_images=0), r"train_images must be >= 1 \(or None for all\), got 0"),
    ]:
        with pytest.raises(UsageError, match=pattern):
            Schedule(**base, **kw)


def test_missing_dataset_is_a_clear_cli_error(tmp_path, family, capsys):
    from edgekit.cli import main

    rc = main(["train", str(tmp_path / "run"), "--family", str(family), "--data-dir", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2 and "edgekit train: error: dataset 'fashion_mnist' not found" in err
    assert "apt-get install dataset-fashion-mnist" in err and "EDGEKIT_FASHION_MNIST" in err


@pytest.mark.skipif(not (REAL_FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_tiny_sweep(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEKIT_FASHION_MNIST", raising=False)
    fam = tmp_path / "flat.toml"
    fam.write_text(TINY_FAMILY.replace('width = [2, 3, 4]', 'width = 8\nhead = "flatten"'))
    o = opts(tmp_path / "run", fam, None, limit=1,
             splits=SplitOptions(calib_size=20, limit_train=1000, limit_test=300))
    results, _ = _quiet(o)
    assert results[0].test_accuracy > 0.4  # far above chance (0.1) after one epoch on 900 images
    check_run_folder(tmp_path / "run", 1)


def test_sigkill_mid_sweep_then_resume(tmp_path, family, data_dir):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgekit.cli", "train", str(run_dir), "--family", str(family),
           "--data-dir", str(data_dir), "--epochs", "1", "--limit", "5", "--calib-size", "20",
           "--batch-size", "32", "--no-progress"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    killed_in = None
    deadline = time.monotonic() + 180
    try:
        # Kill while a model folder exists without train.json, after at least one model finished.
        while time.monotonic() < deadline and proc.poll() is None:
            models = run_dir / "models"
            if models.is_dir():
                done = [d for d in models.iterdir() if (d / "train.json").exists()]
                half = [d for d in models.iterdir() if not (d / "train.json").exists()]
                if done and half:
                    proc.send_signal(signal.SIGKILL)
                    killed_in = half[0].name
                    break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and killed_in is None:
            proc.kill()
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert killed_in is not None, f"never caught the sweep mid-model; output:\n{out[-3000:]}"
    assert proc.returncode == -signal.SIGKILL

    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=300)
    out2 = res.stdout.decode(errors="replace")
    assert res.returncode == 0, out2[-3000:]
    rows = [ln.split() for ln in out2.splitlines() if ln.rstrip().endswith((" trained", " resumed"))]
    assert len(rows) == 5 and killed_in in [r[0] for r in rows], out2[-3000:]
    # The killed model's folder was half-written: the rerun deleted and retrained it (unless the kill
    # landed in the millisecond after its train.json appeared).
    assert "removed 1 unfinished model folder" in out2 or dict((r[0], r[-1]) for r in rows)[killed_in] == "resumed"
    check_run_folder(run_dir, 5)


# ---------------------------------------------------------------------------------------------- image folders

def _image_folder(root: Path, n: int = 12) -> Path:
    """Two classes of 16x16 colour PNGs (a bright top or bottom half) a tiny CNN can tell apart."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("bottom", "top")):
        (root / name).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
            a[(slice(0, 8) if c else slice(8, 16))] += 150
            Image.fromarray(a).save(root / name / f"{i}.png")
    return root


def _image_opts(run_dir: Path, family: Path, images: Path, **kw) -> TrainOptions:
    from converters.data.images import ImageOptions

    return opts(run_dir, family, None, dataset="images", images=ImageOptions(root=images), limit=1, **kw)


@pytest.mark.slow
def test_train_on_an_image_folder_records_and_resumes(tmp_path, family):
    images = _image_folder(tmp_path / "imgs")
    run_dir = tmp_path / "run"
    results, text = _quiet(_image_opts(run_dir, family, images))
    assert [r.status for r in results] == ["trained"]
    assert f"on the images in {images.resolve()} (16x16x3, bilinear resize)" in text
    run = json.loads((run_dir / "run.json").read_text())
    assert run["dataset"] == "images" and run["data_dir"] == str(images.resolve())
    assert run["family"] == str(family.resolve()) and run["schedule"]["epochs"] == 1
    assert run["input_shape"] == [16, 16, 3] and run["class_names"] == ["bottom", "top"]
    assert run["images"]["split"] == "stratified" and run["images"]["cache"] == "images_cache.npz"
    check_run_folder(run_dir, 1)
    from converters.data.datasets import splits_for_run

    assert splits_for_run(run_dir, progress=False).x_test.shape == (4, 16, 16, 3)  # 20 % of 12 per class
    # a rerun naming no data, or the same folder, uses the run's own and rewrites nothing (the cache included);
    # naming other data is refused, naming both
    mtimes = _mtimes(run_dir)
    results2, _ = _quiet(opts(run_dir, family, None, dataset=None, limit=1))
    assert [r.status for r in results2] == ["resumed"]
    assert [r.status for r in _quiet(_image_opts(run_dir, family, images))[0]] == ["resumed"]
    assert _mtimes(run_dir) == mtimes
    with pytest.raises(ValueError, match=r"(?s)dataset: run has 'images', this command asks 'fashion_mnist'"):
        _quiet(opts(run_dir, family, None, limit=1))
    other = _image_folder(tmp_path / "other", n=4)
    with pytest.raises(ValueError, match=r"(?s)was made from the image folder .*imgs with other image options.*other"):
        _quiet(_image_opts(run_dir, family, other))


@pytest.mark.slow
def test_import_only_run_then_train_keeps_imported_models(tmp_path, family):
    from converters.data.datasets import DataSource
    from converters.data.images import ImageOptions
    from converters.train.run_folder import open_run_data

    images = _image_folder(tmp_path / "imgs")
    run_dir = tmp_path / "run"
    splits = SplitOptions(val_fraction=0.1, calib_size=20)  # as opts() trains: the run's splits must match
    open_run_data(run_dir, DataSource("images", images=ImageOptions(root=images)), splits=splits, progress=False)
    assert json.loads((run_dir / "run.json").read_text())["family"] is None
    imp = run_dir / "models" / "my-net"  # what `edgekit import` leaves: its own file, no spec.json
    imp.mkdir(parents=True)
    (imp / "model.onnx").write_bytes(b"onnx bytes")
    rec = {"model_id": "my-net", "finished": True, "test_accuracy": 0.9, "source": {"format": "onnx",
                                                                                     "file": "model.onnx"}}
    (imp / "train.json").write_text(json.dumps(rec))
    results, _ = _quiet(opts(run_dir, family, None, dataset=None, limit=1))
    assert [r.status for r in results] == ["trained"] and results[0].model_id != "my-net"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["family"] == str(family.resolve()) and run["schedule"] is not None and run["dataset"] == "images"
    assert json.loads((imp / "train.json").read_text()) == rec and (imp / "model.onnx").read_bytes() == b"onnx bytes"


def test_cli_image_options():
    from edge.core.errors import UsageError

    o = _parse("--images", "pics", "--image-size", "24x32", "--color", "gray", "--resize", "area", "--skip-bad",
               "--test-fraction", "0.3")
    assert o.dataset == "images" and o.images is not None
    assert (o.images.root, o.images.size, o.images.channels, o.images.resize, o.images.skip_bad,
            o.images.test_fraction) == (Path("pics"), (24, 32), 1, "area", True, 0.3)
    assert _parse("--images", "pics", "--image-size", "64").images.size == (64, 64)
    assert _parse("--images", "pics").images.channels is None and _parse().dataset is None
    assert _parse("--dataset", "mnist").dataset == "mnist"
    with pytest.raises(SystemExit):
        _parse("--images", "pics", "--dataset", "mnist")
    with pytest.raises(SystemExit):
        _parse("--images", "pics", "--image-size", "0x3")
    with pytest.raises(UsageError, match="--image-size, --color only apply to an image folder: add --images DIR"):
        _parse("--image-size", "8", "--color", "rgb")


def test_help_tells_the_truth_about_the_families(capsys):
    from converters.family.toml_file import family_descriptions, load_family

    p = argparse.ArgumentParser()
    tr.add_arguments(p)
    text = " ".join(p.format_help().split())
    assert "(default: demo, what `make demo` trains;" in text and "default (300+" in text
    flat = "".join(text.split())  # argparse wraps lines (and at hyphens)
    for name, description in family_descriptions().items():  # each built-in family as its own file says
        assert "".join(f"{name} ({description})".split()) in flat, name
    assert p.parse_args(["RUN"]).family == "demo"
    assert len(load_family("default").expand()) >= 300 and load_family("demo").name == "demo"
