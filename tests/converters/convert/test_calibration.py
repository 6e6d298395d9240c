"""Tests for converters.convert.calibration: the calibration set of a run's split or of a folder of unlabelled images
(--calib-images): decoded by the one decoder at the run's shape and resize, sampled, bad files, identity."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from converters.convert import calibration as cal
from edge.artifacts.images import ImageDecodeError, load_image
from edge.core.errors import MissingError, UsageError


def _folder(root, n: int = 6):
    """``n`` images of mixed formats, modes and sizes at any depth, plus a text file and a hidden file."""
    rng = np.random.default_rng(1)
    (root / "a" / "deep").mkdir(parents=True)
    kinds = [("png", "RGB", (20, 30)), ("jpg", "L", (16, 16)), ("bmp", "RGB", (9, 12)), ("gif", "P", (12, 12))]
    for i in range(n):
        ext, mode, (h, w) = kinds[i % len(kinds)]
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(a).convert(mode)
        sub = root / ("a/deep" if i % 3 == 0 else "a" if i % 3 == 1 else "")
        im.save(sub / f"img{i}.{ext}")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"junk")  # hidden: never read
    return root


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.suffix in (".png", ".jpg", ".bmp", ".gif") and not p.name.startswith("."))


def test_a_folder_is_decoded_by_the_one_decoder_at_the_run_shape(tmp_path):
    root = _folder(tmp_path / "calib")
    out = io.StringIO()
    s = cal.from_folder(root, (8, 10, 1), "bicubic", size=100, seed=0, progress=False, out=out)
    want = np.stack([load_image(root / f, (8, 10), 1, "bicubic") for f in _files(root)])  # in path order
    assert s.images.dtype == np.uint8 and np.array_equal(s.images, want)
    assert (s.source, s.count, s.available, s.selection, s.folder) == ("folder", 6, 6, "all", str(root.resolve()))
    assert "1 file(s) in" in out.getvalue() and "notes.txt" in out.getvalue()  # not an image by name: said, not read
    rgb = cal.from_folder(root, (8, 10, 3), "bicubic", size=100, seed=0, progress=False, out=io.StringIO())
    assert rgb.images.shape == (6, 8, 10, 3) and rgb.sha256 != s.sha256
    assert s.describe() == f"all 6 image(s) of the images in {root.resolve()} (bicubic resize)"


def test_more_images_than_calib_size_is_a_seeded_sample_in_path_order(tmp_path):
    root = _folder(tmp_path / "calib", n=12)
    a = cal.from_folder(root, (8, 8, 1), "bilinear", size=5, seed=3, progress=False, out=io.StringIO())
    b = cal.from_folder(root, (8, 8, 1), "bilinear", size=5, seed=3, progress=False, out=io.StringIO())
    c = cal.from_folder(root, (8, 8, 1), "bilinear", size=5, seed=4, progress=False, out=io.StringIO())
    assert a.count == 5 and a.available == 12 and a.sha256 == b.sha256 != c.sha256
    assert a.selection == "a sample of 5 of 12, seeded by the run's seed 3"
    every = {f: load_image(root / f, (8, 8), 1, "bilinear") for f in _files(root)}
    # each image is one of the folder's, none twice, kept in path order
    picked = [next(f for f, x in every.items() if np.array_equal(x, img)) for img in a.images]
    assert picked == sorted(set(picked)) and len(picked) == 5
    rec = a.record()
    assert (rec["source"], rec["images"], rec["available"], rec["sha256"]) == ("folder", 5, 12, a.sha256)


def test_a_bad_file_is_an_error_naming_it_unless_skip_bad(tmp_path):
    root = _folder(tmp_path / "calib", n=4)
    bad = root / "a" / "broken.png"
    good = (root / "img0.png") if (root / "img0.png").exists() else next(root.rglob("*.png"))
    bad.write_bytes(good.read_bytes()[:60])  # truncated
    with pytest.raises(ImageDecodeError) as e:
        cal.from_folder(root, (8, 8, 1), "bilinear", size=100, seed=0, progress=False, out=io.StringIO())
    assert str(bad) in str(e.value) and "--skip-bad" in str(e.value)
    out = io.StringIO()
    s = cal.from_folder(root, (8, 8, 1), "bilinear", size=100, seed=0, skip_bad=True, progress=False, out=out)
    assert s.count == 4 and s.skipped == ("a/broken.png",) and s.selection == "all"
    assert f"skipped {bad}" in out.getvalue() and "skipped 1 calibration file(s)" in out.getvalue()
    assert "1 bad file(s) skipped" in s.describe() and s.record()["skipped"] == 1
    # with fewer wanted than there are files, the next file of the seeded order takes a bad one's place
    for size in range(1, 5):
        got = cal.from_folder(root, (8, 8, 1), "bilinear", size=size, seed=0, skip_bad=True, progress=False,
                              out=io.StringIO())
        assert got.count == size


def test_empty_missing_or_all_bad_folders_are_errors_naming_them(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("x")
    with pytest.raises(UsageError, match=rf"calibration folder {empty} holds no image .* at any depth; 1 other"):
        cal.from_folder(empty, (8, 8, 1), "bilinear", 10, 0, progress=False, out=io.StringIO())
    with pytest.raises(MissingError, match=rf"calibration folder {tmp_path / 'nope'} does not exist"):
        cal.from_folder(tmp_path / "nope", (8, 8, 1), "bilinear", 10, 0, progress=False)
    with pytest.raises(MissingError, match="is not a folder"):
        cal.from_folder(empty / "sub" / "readme.txt", (8, 8, 1), "bilinear", 10, 0, progress=False)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.png").write_bytes(b"not a png")
    with pytest.raises(UsageError, match=rf"no file in calibration folder {junk} could be decoded \(1 bad"):
        cal.from_folder(junk, (8, 8, 1), "bilinear", 10, 0, skip_bad=True, progress=False, out=io.StringIO())


def test_for_run_takes_shape_resize_and_size_from_run_json(tmp_path):
    root = _folder(tmp_path / "calib", n=8)
    meta = {"seed": 2, "input_shape": [6, 7, 3], "splits": {"calib_size": 3},
            "images": {"resize": "nearest", "size": [6, 7], "channels": 3}}
    s = cal.for_run(cal.CalibrationOptions(images=root), meta, None, progress=False, out=io.StringIO())
    assert s.images.shape == (3, 6, 7, 3) and s.resize == "nearest" and s.seed == 2  # the run's calib_size: 3
    s = cal.for_run(cal.CalibrationOptions(images=root, size=50), {**meta, "images": None}, None, progress=False,
                    out=io.StringIO())
    assert s.count == 8 and s.resize == "bilinear"  # a named dataset: bilinear
    x = np.arange(10 * 4, dtype=np.uint8).reshape(10, 2, 2, 1)
    whole = cal.for_run(cal.CalibrationOptions(), meta, x)
    assert whole.source == "run" and np.array_equal(whole.images, x) and whole.whole_split
    assert whole.describe() == "all 10 image(s) of the run's calibration split"
    part = cal.for_run(cal.CalibrationOptions(size=4), meta, x)
    assert part.count == 4 and not part.whole_split and part.sha256 != whole.sha256
    assert part.sha256 == cal.for_run(cal.CalibrationOptions(size=4), meta, x).sha256  # seeded
    assert "a seeded sample (seed 2) of 4 of the 10 image(s)" in part.describe()
    with pytest.raises(UsageError, match="calibration split is empty"):
        cal.from_split(x[:0], None, 0)


def test_same_set_and_options():
    x = np.zeros((5, 2, 2, 1), np.uint8)
    whole, part = cal.from_split(x, None, 0), cal.from_split(np.arange(20, dtype=np.uint8).reshape(5, 2, 2, 1), 2, 0)
    assert cal.same_set(None, whole) and not cal.same_set(None, part)  # built before sets were recorded
    assert cal.same_set(part.record(), part) and not cal.same_set(whole.record(), part)
    with pytest.raises(UsageError, match="--calib-size must be >= 1"):
        cal.CalibrationOptions(size=0)
    with pytest.raises(UsageError, match="--skip-bad applies to a calibration folder only"):
        cal.CalibrationOptions(skip_bad=True)
