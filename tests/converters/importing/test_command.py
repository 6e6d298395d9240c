"""`edgekit import` end to end: new and existing runs, checks against the run, resume, ids, nothing outside RUN."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

from converters.importing import command as imp
from converters.importing.onnx_source import OnnxSource
from edgekit.cli import main
from tests.converters.importing._models import bright_pixel_set, bright_pixel_weights, onnx_linear, save_onnx


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """8x8 gray images of 10 classes that a linear model with W[k, k] = 1 gets all right."""
    return bright_pixel_set(tmp_path_factory.mktemp("bright") / "fm")


@pytest.fixture
def models(tmp_path) -> Path:
    d = tmp_path / "user"
    d.mkdir()
    save_onnx(onnx_linear(weights=bright_pixel_weights()), d / "bright.onnx")
    save_onnx(onnx_linear(seed=3), d / "random.onnx")
    return d


def _import(capsys, *args) -> tuple[int, str, str]:
    rc = main(["import", *map(str, args), "--no-progress"])
    out, err = capsys.readouterr()
    return rc, out, err


def _train(run: Path, mid: str) -> dict:
    return json.loads((run / "models" / mid / "train.json").read_text())


def test_new_run_needs_its_data_and_nothing_is_created(tmp_path, models, capsys):
    rc, _, err = _import(capsys, tmp_path / "run", models / "bright.onnx")
    assert rc == 2 and f"{tmp_path / 'run'} is a new run" in err and "--images DIR" in err and "--dataset NAME" in err
    assert not (tmp_path / "run").exists()


def test_import_measures_records_and_prints_the_table(tmp_path, models, data_dir, capsys):
    run = tmp_path / "run"
    rc, out, err = _import(capsys, run, models / "bright.onnx", "--dataset", "fashion_mnist", "--data-dir", data_dir)
    assert rc == 0, err
    rec = _train(run, "bright")
    assert rec["finished"] is True and rec["epochs"] == 0 and rec["test_accuracy"] == 1.0
    assert rec["test_images"] == 60 and rec["params"] == 64 * 10 + 10 and rec["macs"] == 0
    src = rec["source"]
    assert (src["format"], src["file"], src["path"]) == ("onnx", "model.onnx", str((models / "bright.onnx").resolve()))
    assert src["sha256"] == OnnxSource(models / "bright.onnx").sha256 and src["input"]["range"] == "0..255"
    assert sorted(p.name for p in (run / "models" / "bright").iterdir()) == ["model.onnx", "train.json"]
    assert "bright  onnx    8x8x1          0..255" in out and "100.00%" in out
    assert f"next: edgekit convert {run} --profile desktop-cpu" in out
    # the run was made for this model: run.json records the dataset as for a trained run
    assert json.loads((run / "run.json").read_text())["dataset"] == "fashion_mnist"


def test_rerun_skips_force_and_a_changed_file_reimport(tmp_path, models, data_dir, capsys):
    run = tmp_path / "run"
    base = ["--dataset", "fashion_mnist", "--data-dir", data_dir]
    assert _import(capsys, run, models / "bright.onnx", *base)[0] == 0
    first = (run / "models" / "bright" / "train.json").read_bytes()
    rc, out, _ = _import(capsys, run, models / "bright.onnx")  # an existing run keeps its data
    assert rc == 0 and "skip  bright: " in out and "already imported, unchanged" in out
    assert (run / "models" / "bright" / "train.json").read_bytes() == first
    rc, out, _ = _import(capsys, run, models / "bright.onnx", "--force")
    assert rc == 0 and "re-imported bright" in out
    save_onnx(onnx_linear(weights=2 * bright_pixel_weights()), models / "bright.onnx")
    rc, out, _ = _import(capsys, run, models / "bright.onnx")
    assert rc == 0 and "re-imported bright" in out
    assert _train(run, "bright")["source"]["sha256"] == OnnxSource(models / "bright.onnx").sha256
    assert sorted(p.name for p in (run / "models").iterdir()) == ["bright"]


def test_other_data_for_an_existing_run_names_both(tmp_path, models, data_dir, capsys):
    run = tmp_path / "run"
    assert _import(capsys, run, models / "bright.onnx", "--dataset", "fashion_mnist", "--data-dir", data_dir)[0] == 0
    rc, _, err = _import(capsys, run, models / "random.onnx", "--dataset", "mnist")
    assert rc == 2 and "fashion_mnist" in err and "mnist" in err and str(run) in err
    assert not (run / "models" / "random").exists()


@pytest.mark.parametrize("model, what", [
    (lambda: onnx_linear((8, 8, 3)), r"takes 8x8x3 images \(H x W x C\) .* has 8x8x1 images: the channels differ"),
    (lambda: onnx_linear((6, 6, 3)), "takes 6x6x3 images .* has 8x8x1 images: the channels differ"),
    (lambda: onnx_linear(classes=5), "outputs 5 class scores but the run .* has 10 classes"),
])
def test_a_model_that_does_not_fit_the_run_names_both(tmp_path, models, data_dir, capsys, model, what):
    run = tmp_path / "run"
    assert _import(capsys, run, models / "bright.onnx", "--dataset", "fashion_mnist", "--data-dir", data_dir)[0] == 0
    bad = save_onnx(model(), models / "odd.onnx")
    rc, _, err = _import(capsys, run, bad)
    assert rc == 2 and str(bad) in err
    assert re.search(what, err), err
    assert not (run / "models" / "odd").exists()


def test_a_model_of_another_size_is_measured_on_the_runs_images_resized(tmp_path, models, data_dir, capsys):
    """A 16x16 model in an 8x8 run: its bright-pixel weights upsampled, so it is right only if the import feeds it the
    run's images resized to 16x16 by the one resize; a 4x4 model is fed them shrunk (area averaging)."""
    from edge.artifacts.images import resize_pixels

    run = tmp_path / "run"
    w16 = resize_pixels(bright_pixel_weights().T.reshape(10, 8, 8, 1).astype(np.uint8) * 255, (16, 16))
    big = save_onnx(onnx_linear((16, 16, 1), weights=w16.reshape(10, -1).T.astype(np.float32) / 255), models / "big.onnx")
    small = save_onnx(onnx_linear((4, 4, 1), seed=2), models / "small.onnx")
    rc, out, err = _import(capsys, run, big, small, "--dataset", "fashion_mnist", "--data-dir", data_dir)
    assert rc == 0, err
    assert "takes 16x16 images: the run's 8x8 images are resized to 16x16 (bilinear" in out
    assert "takes 4x4 images: the run's 8x8 images are resized to 4x4 (area averaging" in out
    assert _train(run, "big")["test_accuracy"] == 1.0
    assert any("resized to 16x16" in n for n in _train(run, "big")["source"]["notes"])
    assert 0.0 <= _train(run, "small")["test_accuracy"] <= 1.0
    assert "16x16x1" in out and "4x4x1" in out  # the table's input column


def test_bad_file_among_several_imports_none(tmp_path, models, data_dir, capsys):
    (models / "broken.onnx").write_bytes(b"\x08\x07garbage")
    rc, _, err = _import(capsys, tmp_path / "run", models / "bright.onnx", models / "broken.onnx",
                         "--dataset", "fashion_mnist", "--data-dir", data_dir)
    assert rc == 2 and str(models / "broken.onnx") in err
    assert not (tmp_path / "run").exists()  # every file is checked before anything is written


def test_ids_from_file_names_stay_unique(tmp_path, models, data_dir, capsys):
    run = tmp_path / "run"
    other = models / "again"
    other.mkdir()
    save_onnx(onnx_linear(seed=5), other / "bright.onnx")
    rc, out, _ = _import(capsys, run, models / "bright.onnx", other / "bright.onnx", models / "random.onnx",
                         "--dataset", "fashion_mnist", "--data-dir", data_dir)
    assert rc == 0
    assert sorted(p.name for p in (run / "models").iterdir()) == ["bright", "bright-onnx", "random"]
    rc, _, err = _import(capsys, run, models / "random.onnx", models / "bright.onnx", "--name", "x")
    assert rc == 2 and "--name names one model" in err
    rc, out, _ = _import(capsys, run, models / "random.onnx", "--name", "my model!")
    assert rc == 0 and (run / "models" / "my-model" / "train.json").is_file()


def test_killed_import_leaves_no_finished_folder_and_the_next_one_cleans_up(tmp_path, models, data_dir, capsys,
                                                                                monkeypatch):
    run = tmp_path / "run"

    def killed(self, model_dir, convention):
        (model_dir / "model.onnx").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(OnnxSource, "write", killed)
    rc, _, err = _import(capsys, run, models / "bright.onnx", "--dataset", "fashion_mnist", "--data-dir", data_dir)
    assert rc == 130 and "rerun the same command to resume" in err
    assert not (run / "models" / "bright" / "train.json").exists()
    monkeypatch.undo()
    rc, out, _ = _import(capsys, run, models / "bright.onnx")
    assert rc == 0 and "imported bright" in out and _train(run, "bright")["test_accuracy"] == 1.0


def test_nothing_is_written_outside_the_run(tmp_path, models, data_dir, capsys, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    (models / "bright.onnx.toml").write_text('input_range = "0..255"\n')
    before = {p: p.stat().st_mtime_ns for p in [*models.rglob("*"), *data_dir.rglob("*")]}
    run = tmp_path / "run"
    rc, _, err = _import(capsys, run, models / "bright.onnx", models / "random.onnx",
                         "--dataset", "fashion_mnist", "--data-dir", data_dir)
    assert rc == 0, err
    assert {p: p.stat().st_mtime_ns for p in [*models.rglob("*"), *data_dir.rglob("*")]} == before
    assert list(tmp.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "tmp", "user"]


def test_near_chance_accuracy_warns_and_names_the_flag(tmp_path, models, data_dir, capsys):
    rc, out, _ = _import(capsys, tmp_path / "run", models / "random.onnx", models / "bright.onnx",
                         "--dataset", "fashion_mnist", "--data-dir", data_dir)
    assert rc == 0
    warn = [ln for ln in out.splitlines() if ln.startswith("WARN")]
    assert len(warn) == 1 and warn[0].startswith("WARN  random: test accuracy") and "near chance" in warn[0]
    assert "--input-range" in warn[0]


def test_a_named_convention_that_fits_clearly_better_is_named(tmp_path, data_dir, capsys):
    """A model made for raw pixels declared -1..1: a bias of 5 outweighs every -1..1 input but no raw one."""
    model = tmp_path / "raw.onnx"
    save_onnx(onnx_linear(weights=bright_pixel_weights(), bias=np.eye(10, dtype=np.float32)[0] * 5), model)
    rc, out, _ = _import(capsys, tmp_path / "run", model, "--input-range=-1..1",
                         "--dataset", "fashion_mnist", "--data-dir", data_dir)
    assert rc == 0
    warn = [ln for ln in out.splitlines() if ln.startswith("WARN")]
    assert len(warn) == 1 and warn[0].startswith("WARN  raw: with input convention -1..1 it scores 10.00% on 60")
    assert "--input-range=0..255 100.00%" in warn[0] and "--force" in warn[0]
    probe = _train(tmp_path / "run", "raw")["source"]["probe"]
    assert probe == {"range": "0..255", "accuracy": 1.0, "declared_accuracy": 0.1, "images": 60}


def test_sidecar_and_flag_conventions_are_recorded(tmp_path, models, data_dir, capsys):
    run = tmp_path / "run"
    (models / "edgekit.toml").write_text('input_range = "-1..1"\n')
    rc, out, _ = _import(capsys, run, models / "bright.onnx", "--dataset", "fashion_mnist", "--data-dir", data_dir)
    assert rc == 0 and "-1..1" in out
    inp = _train(run, "bright")["source"]["input"]
    assert (inp["mean"], inp["std"], inp["from"]) == ([127.5], [127.5], str(models / "edgekit.toml"))
    # the flag wins over the sidecar; a new convention is a changed import
    rc, out, _ = _import(capsys, run, models / "bright.onnx", "--input-range=0..1")
    assert rc == 0 and "re-imported bright" in out
    assert _train(run, "bright")["source"]["input"]["std"] == [255.0]
    rc, _, _ = _import(capsys, run, models / "bright.onnx", "--input-range", "-1..1")  # argparse takes -1..1
    assert rc == 0


def test_an_image_folder_run_is_decoded_at_the_models_size(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for k in range(10):
        (root / f"class{k}").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / f"class{k}" / f"{i}.png")
    model = save_onnx(onnx_linear(seed=1), tmp_path / "m.onnx")
    rc, out, err = _import(capsys, tmp_path / "run", model, "--images", root)
    assert rc == 0, err
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert tuple(meta["input_shape"]) == (8, 8, 1) and meta["class_names"][:2] == ["class0", "class1"]
    assert _train(tmp_path / "run", "m")["test_images"] > 0


def test_options_are_typed_and_checked():
    with pytest.raises(ValueError, match="not both"):
        imp.ImportOptions(Path("r"), (Path("m.onnx"),), dataset="mnist", images=Path("d"))
    with pytest.raises(ValueError, match="at least one model"):
        imp.ImportOptions(Path("r"), ())
    assert imp.safe_id("My Net (v2).final") == "My-Net-v2-.final" and imp.safe_id("../..") == "model"
