"""Tests for converters/data/images.py: image-folder datasets (scan, split, decode, skip-bad, the run's cache),
and the board-side check that a bundle's recorded options give exactly the pixels training saw."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from converters.data.datasets import DataSource, make_splits, splits_for_run
from converters.data.images import (
    CACHE_FILE,
    SPLIT_FILE,
    ImageOptions,
    choose_prep,
    image_data_for_run,
    load_image_folder,
    scan_folder,
    stratified_split,
)
from converters.train.run_folder import open_run_data
from edge.artifacts.images import ImageDecodeError, load_image
from edge.core.errors import MissingError, UsageError


def _img(h: int, w: int, seed: int, mode: str) -> Image.Image:
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(a)
    return im.convert("L") if mode == "L" else im


def make_folder(root: Path, classes: dict[str, int], *, size=(16, 12), mode="RGB", fmt="png", part: str = "",
                seed: int = 0) -> Path:
    """root[/part]/<class>/<i>.<fmt> images of ``size`` (H, W), random pixels."""
    for k, (name, n) in enumerate(classes.items()):
        folder = root / part / name if part else root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _img(size[0], size[1], seed * 1000 + k * 100 + i, mode).save(folder / f"img{i:03d}.{fmt}")
    return root


def _truncate(path: Path) -> None:
    buf = io.BytesIO()
    _img(64, 64, 7, "RGB").save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


# ---------------------------------------------------------------------------------------------- layout

def test_class_names_sorted_as_keras_and_files_sorted(tmp_path):
    make_folder(tmp_path, {"dog": 3, "Cat": 3, "bird": 3, "_x": 3})
    scan = scan_folder(tmp_path)
    assert scan.class_names == tuple(sorted(["dog", "Cat", "bird", "_x"])) == ("Cat", "_x", "bird", "dog")
    assert scan.layout == "flat"
    rels = [r for r, _ in scan.parts["train"]]
    assert rels[:3] == ["Cat/img000.png", "Cat/img001.png", "Cat/img002.png"]
    assert [lab for _, lab in scan.parts["train"]] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


@pytest.mark.slow
def test_class_names_match_keras_image_dataset_from_directory(tmp_path):
    make_folder(tmp_path, {"dog": 2, "Cat": 2, "bird": 2, "Zebra": 2, "10": 2, "9": 2})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    ds = keras.utils.image_dataset_from_directory(tmp_path, image_size=(16, 12), batch_size=4, shuffle=False,
                                                  verbose=False)
    assert tuple(ds.class_names) == scan_folder(tmp_path).class_names


def test_nested_and_non_image_files_and_hidden_entries(tmp_path):
    make_folder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / "deeper").mkdir()
    _img(16, 12, 1, "RGB").save(tmp_path / "a" / "deeper" / "x.PNG")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    (tmp_path / "a" / ".DS_Store").write_text("")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "README.md").write_text("about")
    scan = scan_folder(tmp_path)
    assert scan.class_names == ("a", "b")
    assert "a/deeper/x.PNG" in [r for r, _ in scan.parts["train"]]
    assert set(scan.ignored) == {"a/notes.txt", "README.md"}  # not images by name, or in no class folder: reported


def test_missing_folder(tmp_path):
    with pytest.raises(MissingError, match=r"image folder .*nope does not exist; pass --images DIR"):
        scan_folder(tmp_path / "nope")


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    make_folder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.txt").write_text("no images here")
    with pytest.raises(UsageError) as ei:
        scan_folder(tmp_path)
    assert f"class folder {tmp_path / 'c'} has no images" in str(ei.value)
    assert "add images to it or remove it" in str(ei.value)


def test_single_class_is_an_error_naming_the_folder(tmp_path):
    make_folder(tmp_path, {"only": 3})
    with pytest.raises(UsageError, match=rf"{tmp_path} has a single class folder \(only/\).*add one subfolder per class"):
        scan_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="empty has no class folders; put the images in one subfolder per class"):
        scan_folder(tmp_path / "empty")


def test_class_missing_from_test_is_an_error_naming_the_folder(tmp_path):
    make_folder(tmp_path, {"a": 3, "b": 3, "c": 3}, part="train")
    make_folder(tmp_path, {"a": 1, "b": 1}, part="test")
    with pytest.raises(UsageError) as ei:
        scan_folder(tmp_path)
    msg = str(ei.value)
    assert "class 'c' is missing from" in msg and str(tmp_path / "test" / "c") in msg and "add its test images" in msg


def test_extra_class_in_test_and_mixed_layout_and_no_train(tmp_path):
    make_folder(tmp_path / "x", {"a": 2, "b": 2}, part="train")
    make_folder(tmp_path / "x", {"a": 1, "b": 1, "z": 1}, part="test")
    with pytest.raises(UsageError, match=r"class folder\(s\) \['z'\] that .*train does not have"):
        scan_folder(tmp_path / "x")
    make_folder(tmp_path / "y", {"a": 2, "b": 2}, part="train")
    make_folder(tmp_path / "y", {"cat": 2})
    with pytest.raises(UsageError, match=r"both split folders \(train/\) and other folders \(cat/\)"):
        scan_folder(tmp_path / "y")
    make_folder(tmp_path / "z", {"a": 2, "b": 2}, part="test")
    with pytest.raises(UsageError, match=r"has test/ but no train/ folder"):
        scan_folder(tmp_path / "z")


# ---------------------------------------------------------------------------------------------- split

def test_stratified_split_is_deterministic_per_class_and_seeded(tmp_path):
    make_folder(tmp_path, {"a": 10, "b": 5, "c": 1}, size=(4, 4))
    rows = scan_folder(tmp_path).parts["train"]
    tr1, te1 = stratified_split(rows, 3, 0.2, seed=0)
    tr2, te2 = stratified_split(rows, 3, 0.2, seed=0)
    assert (tr1, te1) == (tr2, te2)
    assert sorted(tr1 + te1) == sorted(rows)
    per_class = [sum(1 for _, lab in te1 if lab == c) for c in range(3)]
    assert per_class == [2, 1, 0]  # 20 % rounded, at least one of a class with 2+, none of a class with 1
    others = {stratified_split(rows, 3, 0.2, seed=s)[1] for s in range(1, 6)}
    assert any(o != te1 for o in others)


def test_split_recorded_in_the_run(tmp_path):
    make_folder(tmp_path / "imgs", {"a": 10, "b": 10}, size=(8, 8))
    run = tmp_path / "run"
    sp = open_run_data(run, DataSource("images", images=ImageOptions(root=tmp_path / "imgs")), progress=False)
    meta = json.loads((run / "run.json").read_text())
    assert meta["dataset"] == "images" and meta["data_dir"] == str((tmp_path / "imgs").resolve())
    assert meta["family"] is None and meta["schedule"] is None
    assert meta["images"]["split"] == "stratified" and meta["images"]["counts"] == {"train": 16, "val": 0, "test": 4}
    assert meta["input_shape"] == [8, 8, 3] and meta["class_names"] == ["a", "b"]
    split = json.loads((run / SPLIT_FILE).read_text())
    assert len(split["test"]) == 4 and len(sp.x_test) == 4
    assert sorted(split["test"]) == sorted(set(split["test"]))
    assert not set(split["test"]) & set(split["train"])
    for rel, img in zip(split["test"], sp.x_test):  # row order = the recorded order
        np.testing.assert_array_equal(load_image(tmp_path / "imgs" / rel, (8, 8), 3), img)


def test_folders_layout_uses_train_val_test_as_given(tmp_path):
    for part, n in (("train", 6), ("val", 2), ("test", 3)):
        make_folder(tmp_path / "imgs", {"a": n, "b": n}, part=part, size=(6, 6), seed=len(part))
    sp = open_run_data(tmp_path / "run", DataSource("images", images=ImageOptions(root=tmp_path / "imgs")),
                       progress=False)
    assert (len(sp.x_train), len(sp.x_val), len(sp.x_test)) == (12, 4, 6)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["images"]["split"] == "folders"
    split = json.loads((tmp_path / "run" / SPLIT_FILE).read_text())
    assert all(r.startswith("val/") for r in split["val"]) and all(r.startswith("test/") for r in split["test"])
    np.testing.assert_array_equal(sp.x_val[0], load_image(tmp_path / "imgs" / split["val"][0], (6, 6), 3))


def test_make_splits_fixed_val_and_limit_train():
    from converters.data.files import Dataset

    x = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
    ds = Dataset(name="t", x_train=x, y_train=np.zeros(20, np.int64), x_test=x[:3], y_test=np.zeros(3, np.int64),
                 class_names=("a", "b"))
    sp = make_splits(ds, calib_size=4, val_idx=np.arange(15, 20), limit_train=6)
    assert list(sp.val_idx) == [15, 16, 17, 18, 19]
    assert len(sp.train_idx) == 6 and not set(sp.train_idx) & set(sp.val_idx)
    assert set(sp.calib_idx) <= set(sp.train_idx)


# ---------------------------------------------------------------------------------------------- size, colour

def test_auto_size_is_most_common_and_auto_channels(tmp_path):
    make_folder(tmp_path / "g", {"a": 3, "b": 3}, size=(10, 8), mode="L")
    make_folder(tmp_path / "g", {"a": 1}, size=(30, 30), mode="L", seed=5)  # overwrites img000 of a
    opts = ImageOptions(root=tmp_path / "g")
    prep = choose_prep(scan_folder(opts.root), opts)
    assert prep.size == (10, 8) and prep.channels == 1
    _img(10, 8, 3, "RGB").save(tmp_path / "g" / "b" / "colour.png")
    assert choose_prep(scan_folder(opts.root), opts).channels == 3
    assert choose_prep(scan_folder(opts.root), ImageOptions(root=opts.root, size=(5, 5), channels=1)).shape == (5, 5, 1)


def test_want_shape_wins_and_conflicts_name_both(tmp_path):
    make_folder(tmp_path, {"a": 2, "b": 2})
    scan = scan_folder(tmp_path)
    assert choose_prep(scan, ImageOptions(root=tmp_path), (32, 32, 3)).shape == (32, 32, 3)
    with pytest.raises(UsageError, match="--image-size 8x8 does not match the model's input size 32x32"):
        choose_prep(scan, ImageOptions(root=tmp_path, size=(8, 8)), (32, 32, 3))
    with pytest.raises(UsageError, match=r"--color gray \(1 channel\(s\)\) does not match the model's 3"):
        choose_prep(scan, ImageOptions(root=tmp_path, channels=1), (32, 32, 3))


def test_options_are_checked():
    with pytest.raises(UsageError, match="--test-fraction must be between 0 and 1"):
        ImageOptions(root=Path("."), test_fraction=1.0)
    with pytest.raises(UsageError, match="unknown resize method"):
        ImageOptions(root=Path("."), resize="fancy")
    with pytest.raises(UsageError, match="channels must be 1"):
        ImageOptions(root=Path("."), channels=4)


# ---------------------------------------------------------------------------------------------- bad files

def test_truncated_jpeg_stops_the_run_naming_the_file(tmp_path):
    make_folder(tmp_path / "imgs", {"a": 3, "b": 3}, fmt="jpg")
    bad = tmp_path / "imgs" / "b" / "img001.jpg"
    _truncate(bad)
    run = tmp_path / "run"
    with pytest.raises(ImageDecodeError) as ei:
        open_run_data(run, DataSource("images", images=ImageOptions(root=tmp_path / "imgs")), progress=False)
    msg = str(ei.value)
    assert str(bad) in msg and "truncated" in msg and "replace or remove it" in msg and "--skip-bad" in msg
    assert not (run / "run.json").exists() and not (run / CACHE_FILE).exists()  # nothing half-made


def test_text_file_named_png_stops_the_run_naming_the_file(tmp_path):
    make_folder(tmp_path, {"a": 3, "b": 3})
    bad = tmp_path / "a" / "fake.png"
    bad.write_text("I am text\n")
    with pytest.raises(ImageDecodeError, match=rf"{bad}: not an image Pillow can identify.*--skip-bad"):
        load_image_folder(ImageOptions(root=tmp_path, size=(8, 8), channels=3), progress=False)


def test_skip_bad_reports_each_file_and_the_count(tmp_path, capsys):
    make_folder(tmp_path / "imgs", {"a": 4, "b": 4}, fmt="jpg")
    _truncate(tmp_path / "imgs" / "a" / "img002.jpg")
    (tmp_path / "imgs" / "b" / "fake.png").write_text("text")
    opts = ImageOptions(root=tmp_path / "imgs", skip_bad=True)
    sp = open_run_data(tmp_path / "run", DataSource("images", images=opts), progress=False)
    out = capsys.readouterr().out
    assert f"skip-bad: skipped {tmp_path / 'imgs' / 'a' / 'img002.jpg'}: cannot be decoded" in out
    assert f"skip-bad: skipped {tmp_path / 'imgs' / 'b' / 'fake.png'}: not an image" in out
    assert "skip-bad: skipped 2 of 9 file(s)" in out
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert sorted(s["file"] for s in meta["images"]["skipped"]) == ["a/img002.jpg", "b/fake.png"]
    assert len(sp.x_train) + len(sp.x_val) + len(sp.x_test) == 7


def test_skip_bad_that_empties_a_class_names_the_folder(tmp_path):
    make_folder(tmp_path, {"a": 2, "b": 2}, part="train")
    make_folder(tmp_path, {"a": 1, "b": 1}, part="test")
    bad = tmp_path / "test" / "b" / "img000.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UsageError, match=rf"no test image is left in {tmp_path / 'test' / 'b'}"):
        load_image_folder(ImageOptions(root=tmp_path, skip_bad=True), progress=False)


# ---------------------------------------------------------------------------------------------- the cache

def test_cache_is_reused_then_refreshed_when_the_folder_changes(tmp_path, capsys):
    make_folder(tmp_path / "imgs", {"a": 5, "b": 5}, size=(8, 8))
    opts = ImageOptions(root=tmp_path / "imgs")
    cache = tmp_path / "run" / CACHE_FILE
    first = image_data_for_run(cache, opts, seed=0, progress=False)
    stamp = cache.stat().st_mtime_ns
    again = image_data_for_run(cache, opts, seed=0, progress=False)
    assert cache.stat().st_mtime_ns == stamp  # read, not decoded and written again
    np.testing.assert_array_equal(first.dataset.x_test, again.dataset.x_test)
    _img(8, 8, 99, "RGB").save(tmp_path / "imgs" / "a" / "new.png")
    capsys.readouterr()
    third = image_data_for_run(cache, opts, seed=0, progress=False)
    assert "decoding again" in capsys.readouterr().out
    assert sum(third.record["counts"].values()) == 11


def test_corrupt_cache_is_decoded_again(tmp_path):
    make_folder(tmp_path / "imgs", {"a": 3, "b": 3}, size=(8, 8))
    run = tmp_path / "run"
    sp = open_run_data(run, DataSource("images", images=ImageOptions(root=tmp_path / "imgs")), progress=False)
    (run / CACHE_FILE).write_bytes(b"PK\x03\x04 not really")
    np.testing.assert_array_equal(splits_for_run(run, progress=False).x_test, sp.x_test)


def test_run_outlives_its_folder_through_the_cache(tmp_path):
    make_folder(tmp_path / "imgs", {"a": 4, "b": 4}, size=(8, 8))
    run = tmp_path / "run"
    sp = open_run_data(run, DataSource("images", images=ImageOptions(root=tmp_path / "imgs")), progress=False)
    (tmp_path / "imgs").rename(tmp_path / "gone")
    np.testing.assert_array_equal(splits_for_run(run, progress=False).x_test, sp.x_test)
    (run / CACHE_FILE).unlink()
    with pytest.raises(MissingError, match=r"image folder .*imgs is gone and its decoded cache .* is missing"):
        splits_for_run(run, progress=False)


# ---------------------------------------------------------------------------------------------- the board side

def _onnx_model(shape: tuple[int, int, int], classes: int) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, w, c = shape
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(0, 0.01, (h * w * c, classes)).astype(np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(classes, np.float32), "B")
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("MatMul", ["f", "W"], ["m"]),
             helper.make_node("Add", ["m", "B"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", h, w, c])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _bundle_of(run: Path, out: Path):
    """A bundle of ``run`` with one hand-made ONNX artifact, built by the real packer, opened as the board does."""
    from converters.pack.packer import build_bundle
    from device_profiles import RuntimeSetting
    from edge.artifacts.manifest import ArtifactRecord, Manifest, artifact_id
    from edge.backends import get_backend
    from edge.bundle.reader import open_bundle
    from edge.core.atomic import sha256_bytes

    meta = json.loads((run / "run.json").read_text())
    data = _onnx_model(tuple(meta["input_shape"]), len(meta["class_names"]))
    aid = artifact_id("tiny", "onnx", "fp32")
    (run / "artifacts").mkdir(exist_ok=True)
    (run / "artifacts" / f"{aid}.onnx").write_bytes(data)
    with get_backend("onnxruntime").load(data, RuntimeSetting("t", "onnxruntime")) as m:
        inp, outp = m.input_spec, m.output_spec
    Manifest(dataset="images", labels=tuple(meta["class_names"])).with_artifact(ArtifactRecord(
        artifact_id=aid, model_id="tiny", format="onnx", precision="fp32", path=f"artifacts/{aid}.onnx",
        sha256=sha256_bytes(data), size_bytes=len(data), input=inp, output=outp, keras_accuracy=0.5,
        host_accuracy=0.5, status="ok", eval_count=4)).save(run / "manifest.json")
    build_bundle(run, "desktop-cpu", out, say=lambda s: None)
    return open_bundle(out)


@pytest.mark.parametrize("case", ["resize-rgb-from-gray", "gray-from-rgb", "area-resize-rgb"])
def test_board_decodes_a_file_exactly_as_training_saw_it(tmp_path, case):
    """THE board-side test: the run's test images (as the training path decoded them, into the bundle's eval
    set) == edge.artifacts.images on the same file with the bundle's recorded options, byte for byte."""
    if case == "resize-rgb-from-gray":  # gray JPEGs of mixed sizes, run at 20x20 RGB
        make_folder(tmp_path / "imgs", {"a": 6, "b": 6}, size=(28, 28), mode="L", fmt="jpg")
        make_folder(tmp_path / "imgs", {"a": 2}, size=(13, 17), mode="L", fmt="jpg", seed=3)
        opts = ImageOptions(root=tmp_path / "imgs", size=(20, 20), channels=3)
    elif case == "gray-from-rgb":  # colour PNGs and a GIF at their own size, run gray
        make_folder(tmp_path / "imgs", {"a": 5, "b": 5}, size=(12, 10), mode="RGB")
        _img(12, 10, 42, "RGB").convert("P").save(tmp_path / "imgs" / "b" / "z.gif")
        opts = ImageOptions(root=tmp_path / "imgs", channels=1)
    else:
        make_folder(tmp_path / "imgs", {"a": 5, "b": 5, "c": 5}, size=(30, 24), mode="RGB", fmt="bmp")
        opts = ImageOptions(root=tmp_path / "imgs", size=(9, 11), resize="area")
    run = tmp_path / "run"
    open_run_data(run, DataSource("images", images=opts), progress=False)
    bundle = _bundle_of(run, tmp_path / "bundle")
    prep = bundle.image_prep
    assert prep is not None and prep.to_dict() == {
        k: json.loads((run / "run.json").read_text())["images"][k] for k in ("resize", "size", "channels")}
    images, labels = bundle.eval_set()
    test_files = json.loads((run / SPLIT_FILE).read_text())["test"]
    assert len(images) == len(test_files) > 0
    for rel, seen in zip(test_files, images):
        board = prep.load(tmp_path / "imgs" / rel)
        assert board.dtype == np.uint8 and board.shape == seen.shape == prep.shape
        np.testing.assert_array_equal(board, seen)


def test_new_run_never_takes_a_cache_asked_for_another_size(tmp_path):
    make_folder(tmp_path / "imgs", {"a": 3, "b": 3}, size=(8, 8))
    opts = ImageOptions(root=tmp_path / "imgs")
    cache = tmp_path / "run" / CACHE_FILE
    assert image_data_for_run(cache, opts, seed=0, want_shape=(6, 6, 3), progress=False).prep.shape == (6, 6, 3)
    assert image_data_for_run(cache, opts, seed=0, progress=False).prep.shape == (8, 8, 3)  # chosen from the folder
    assert image_data_for_run(cache, opts, seed=1, progress=False).record["fingerprint"]  # another seed: decoded again
