"""Tests for converters/data/export_folder.py: a named dataset written out as an image folder."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from converters.data.datasets import FASHION_CLASSES, load_dataset
from converters.data.export_folder import export_folder, folder_names, safe_name
from converters.data.images import ImageOptions, load_image_folder, scan_folder
from edge.artifacts.images import load_image
from edge.core.errors import UsageError
from tests.converters.data.test_datasets import write_idx_set


@pytest.fixture(scope="module")
def idx(tmp_path_factory):
    d = tmp_path_factory.mktemp("idx")
    write_idx_set(d, n_train=40, n_test=20)
    return d


def test_safe_names():
    assert safe_name("T-shirt/top") == "T-shirt_top" and safe_name("Ankle boot") == "Ankle boot"
    assert safe_name("..") == "___" and safe_name("a\\b:c") == "a_b_c"
    assert folder_names(("A/b", "A_b", "a_b")) == ["A_b", "A_b_2", "a_b_3"]
    assert len(set(folder_names(FASHION_CLASSES))) == 10


def test_writes_train_and_test_folders_that_edgekit_reads_back(tmp_path, idx):
    out = tmp_path / "imgs"
    counts = export_folder("fashion_mnist", out, 2, 1, "png", data_dir=str(idx), say=lambda s: None)
    assert counts == {"train": 20, "test": 10}
    assert (out / "train" / "T-shirt_top").is_dir() and (out / "test" / "Ankle boot").is_dir()
    scan = scan_folder(out)
    assert scan.layout == "folders" and scan.class_names == tuple(sorted(folder_names(FASHION_CLASSES)))
    ds = load_dataset("fashion_mnist", idx)
    first = np.flatnonzero(ds.y_train == 0)[0]
    np.testing.assert_array_equal(load_image(out / "train" / "T-shirt_top" / f"train_{first:05d}.png", None, 1),
                                  ds.x_train[first])  # PNG: lossless
    data = load_image_folder(ImageOptions(root=out), progress=False)
    assert data.prep.shape == (28, 28, 1) and data.record["split"] == "folders"
    assert not list(out.rglob("*.tmp"))


def test_flat_jpg_refuses_a_non_empty_folder_unless_forced(tmp_path, idx):
    out = tmp_path / "flat"
    export_folder("fashion_mnist", out, 1, 1, "jpg", flat=True, data_dir=str(idx), size=(32, 32), color="rgb",
                  say=lambda s: None)
    assert sorted(p.name for p in (out / "Bag").iterdir()) == ["test_00006.jpg", "train_00008.jpg"]
    assert load_image(out / "Bag" / "train_00008.jpg", None, 3).shape == (32, 32, 3)
    with pytest.raises(UsageError, match="is not empty; pass a new folder, or --force"):
        export_folder("fashion_mnist", out, 1, 1, "jpg", flat=True, data_dir=str(idx))
    export_folder("fashion_mnist", out, 1, 0, "jpg", flat=True, force=True, data_dir=str(idx), say=lambda s: None)


def test_module_cli(tmp_path, idx):
    p = subprocess.run([sys.executable, "-m", "converters.data.export_folder", "fashion_mnist", str(tmp_path / "o"),
                        "--per-class", "1", "--test-per-class", "1", "--format", "bmp", "--data-dir", str(idx)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "wrote 10 train and 10 test images of 10 classes" in p.stdout
    p = subprocess.run([sys.executable, "-m", "converters.data.export_folder", "fashion_mnist", str(tmp_path / "o"),
                        "--data-dir", str(idx)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "is not empty" in p.stderr
