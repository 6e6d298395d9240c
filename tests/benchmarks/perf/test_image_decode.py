"""Tests for benchmarks/perf/image_decode.py: a quick run on ~20 files of its own."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from benchmarks.perf.image_decode import list_images, measure
from edge.core.errors import UsageError


def _folder(root, n=20):
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        a = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        Image.fromarray(a).save(d / (f"{i}.jpg" if i % 3 else f"{i}.png"))
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def test_measure_compares_both_loops_on_the_same_pixels(tmp_path):
    files = list_images(_folder(tmp_path))
    assert len(files) == 20
    res = measure(files, (32, 32), 3, "bilinear", repeat=2)
    assert res["same_pixels"] is True
    assert len(res["kit_images_per_s"]) == len(res["bare_images_per_s"]) == 2
    assert res["kit_median"] > 0 and res["bare_median"] > 0
    assert res["ratio"] == pytest.approx(res["kit_median"] / res["bare_median"])


def test_cli_prints_the_ratio_and_writes_json(tmp_path):
    _folder(tmp_path / "imgs")
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "benchmarks.perf.image_decode", "--images", str(tmp_path / "imgs"),
                        "--size", "16", "--color", "gray", "--repeat", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "20 files from" in p.stdout and "ratio edgekit / bare:" in p.stdout and "goal >= 0.8x" in p.stdout
    res = json.loads(out.read_text())
    assert res["files"] == 20 and res["size"] == [16, 16] and res["channels"] == 1 and res["same_pixels"]


def test_empty_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(UsageError, match="no image files.*converters.data.export_folder"):
        list_images(tmp_path)
