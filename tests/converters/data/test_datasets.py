"""Tests for converters.data.datasets and converters.data.files: IDX and CIFAR-10 parsers, lookup order,
restricted unpickling, splits (the parser tests load through the lookup, so the two share one file)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from converters.data import datasets as dsm
from converters.data.datasets import load_dataset, make_splits, splits_for_run
from converters.data.files import (
    Dataset,
    DatasetFormatError,
    DatasetNotFound,
    load_cifar10,
    read_idx,
    safe_unpickle,
)

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------------------ file builders

def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx_set(folder: Path, n_train: int = 30, n_test: int = 12, gz: bool = True,
                  hw: tuple[int, int] = (28, 28), seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3 % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def py2_pickle(obj) -> bytes:
    """Emit a pickle the way Python 2's cPickle (protocol 2) wrote the official CIFAR-10 batches."""
    out = bytearray(b"\x80\x02")

    def s(b: bytes) -> None:
        out.extend(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b)

    def i(v: int) -> None:
        out.extend(b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v))

    def emit(o) -> None:
        if isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                emit(k)
                emit(v)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                emit(v)
            out.extend(b"e")
        elif isinstance(o, bytes):
            s(o)
        elif isinstance(o, int):
            i(o)
        elif isinstance(o, np.ndarray):
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            i(0)
            out.extend(b"\x85")
            s(b"b")
            out.extend(b"\x87R(")
            i(1)
            out.extend(b"(")
            for d in o.shape:
                i(d)
            out.extend(b"tcnumpy\ndtype\n")
            s(b"u1")
            i(0)
            i(1)
            out.extend(b"\x87R(")
            i(3)
            s(b"|")
            out.extend(b"NNN")
            i(-1)
            i(-1)
            i(0)
            out.extend(b"tb\x89")
            s(o.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(o))

    emit(obj)
    out.extend(b".")
    return bytes(out)


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_files(per_batch: int = 4, py2: bool = True, seed: int = 0) -> tuple[dict[str, bytes], dict]:
    """The six batches + meta of a tiny CIFAR-10, and the expected NHWC arrays."""
    rng = np.random.default_rng(seed)
    files, xs, ys = {}, [], []
    dump = py2_pickle if py2 else (lambda o: pickle.dumps(o, protocol=2))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        d = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
             b"filenames": [f"img{j}.png".encode() for j in range(per_batch)]}
        files[name] = dump(d)
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.array(labels, np.int64))
    files["batches.meta"] = dump({b"num_cases_per_batch": per_batch,
                                  b"label_names": [n.encode() for n in CIFAR_NAMES], b"num_vis": 3072})
    expect = {"x_train": np.concatenate(xs[:5]), "y_train": np.concatenate(ys[:5]),
              "x_test": xs[5], "y_test": ys[5]}
    return files, expect


def write_cifar_folder(root: Path, files: dict[str, bytes]) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def write_cifar_tar(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def no_system(monkeypatch, tmp_path):
    """A machine without the Debian package, offline, with no dataset env vars."""
    for info in dsm.DATASETS.values():
        monkeypatch.delenv(info.env_var, raising=False)
        monkeypatch.setitem(dsm.DATASETS, info.name,
                            dataclasses.replace(info, system_dirs=(str(tmp_path / "nosys" / info.name),)))
    monkeypatch.delenv(dsm.GENERIC_ENV, raising=False)
    monkeypatch.setenv(dsm.NO_DOWNLOAD_ENV, "1")


# ------------------------------------------------------------------------------------ IDX

@pytest.mark.parametrize("gz", [True, False])
def test_idx_dataset_round_trip(tmp_path, gz, no_system):
    arrays = write_idx_set(tmp_path / "fm", gz=gz)
    ds = load_dataset("fashion_mnist", tmp_path / "fm")
    assert ds.x_train.shape == (30, 28, 28, 1) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (12, 28, 28, 1)
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert ds.class_names[0] == "T-shirt/top" and len(ds.class_names) == 10
    assert ds.input_shape == (28, 28, 1) and ds.num_classes == 10


def test_read_idx_accepts_dot_names_and_subfolder(tmp_path, no_system):
    arrays = write_idx_set(tmp_path / "root" / "mnist", gz=False)
    for p in (tmp_path / "root" / "mnist").iterdir():
        p.rename(p.with_name(p.name.replace("-idx", ".idx")))
    ds = load_dataset("mnist", tmp_path / "root")
    assert ds.class_names == tuple(str(i) for i in range(10))
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x08\x00" + b[2:], "magic"),
    (lambda b: b[:2] + b"\x0d" + b[3:], "element type"),
    (lambda b: b[:-5], "truncated"),
    (lambda b: b + b"\x00", "trailing"),
    (lambda b: b[:6], "header"),
    (lambda b: b[:3], "too short"),
])
def test_read_idx_rejects_corrupt_files(tmp_path, mutate, message):
    good = idx_bytes(np.zeros((3, 4, 5), np.uint8))
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(mutate(good))
    with pytest.raises(DatasetFormatError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_wrong_ndim_and_truncated_gzip(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(idx_bytes(np.zeros((3, 4), np.uint8)))
    with pytest.raises(DatasetFormatError, match="2 dimensions, expected 1"):
        read_idx(path, ndim=1)
    gz = tmp_path / "y-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8)))[:-10])
    with pytest.raises(DatasetFormatError, match="gzip") as err:
        read_idx(gz)
    assert str(gz) in str(err.value)


def test_idx_label_count_and_range_checked(tmp_path, no_system):
    write_idx_set(tmp_path / "fm", gz=False)
    (tmp_path / "fm" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(29, np.uint8)))
    with pytest.raises(DatasetFormatError, match="30 images but .* 29 labels"):
        load_dataset("fashion_mnist", tmp_path / "fm")
    (tmp_path / "fm" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(30, 12, np.uint8)))
    with pytest.raises(DatasetFormatError, match="label 12 out of range"):
        load_dataset("fashion_mnist", tmp_path / "fm")


# ------------------------------------------------------------------------------------ lookup order

def test_missing_dataset_message_lists_every_option(no_system):
    with pytest.raises(DatasetNotFound) as err:
        load_dataset("fashion_mnist")
    msg = str(err.value)
    for needle in ("apt-get install dataset-fashion-mnist", "EDGEKIT_FASHION_MNIST", "--data-dir",
                   "online", "keras.datasets.fashion_mnist", "EDGEKIT_DATA_DIR"):
        assert needle in msg, needle
    assert isinstance(err.value, FileNotFoundError)


def test_explicit_path_that_is_wrong_is_an_error_not_a_fallback(tmp_path, no_system, monkeypatch):
    write_idx_set(tmp_path / "env")
    monkeypatch.setenv("EDGEKIT_FASHION_MNIST", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFound, match=r"--data-dir .*empty: no dataset files there"):
        (tmp_path / "empty").mkdir()
        load_dataset("fashion_mnist", tmp_path / "empty")


def test_lookup_order_env_then_generic_then_system(tmp_path, no_system, monkeypatch):
    a = write_idx_set(tmp_path / "env", seed=1)
    b = write_idx_set(tmp_path / "generic" / "fashion-mnist", seed=2)
    c = write_idx_set(Path(dsm.DATASETS["fashion_mnist"].system_dirs[0]), seed=3)
    monkeypatch.setenv(dsm.GENERIC_ENV, str(tmp_path / "generic"))
    monkeypatch.setenv("EDGEKIT_FASHION_MNIST", str(tmp_path / "env"))
    np.testing.assert_array_equal(load_dataset("fashion_mnist").x_test[..., 0], a["t10k-images-idx3-ubyte"])
    monkeypatch.delenv("EDGEKIT_FASHION_MNIST")
    np.testing.assert_array_equal(load_dataset("fashion_mnist").x_test[..., 0], b["t10k-images-idx3-ubyte"])
    monkeypatch.delenv(dsm.GENERIC_ENV)
    ds = load_dataset("fashion-mnist")
    np.testing.assert_array_equal(ds.x_test[..., 0], c["t10k-images-idx3-ubyte"])
    assert ds.source == dsm.DATASETS["fashion_mnist"].system_dirs[0]


def test_keras_fallback_is_tried_last_and_failure_reported(no_system, monkeypatch):
    monkeypatch.delenv(dsm.NO_DOWNLOAD_ENV)

    def offline(info):
        raise OSError("URL fetch failure: Name or service not known")

    monkeypatch.setattr(dsm, "_from_keras", offline)
    with pytest.raises(DatasetNotFound, match="Keras downloader .*URL fetch failure"):
        load_dataset("mnist")
    fake = Dataset("mnist", np.zeros((2, 28, 28, 1), np.uint8), np.zeros(2, np.int64),
                   np.zeros((1, 28, 28, 1), np.uint8), np.zeros(1, np.int64), tuple("0123456789"))
    monkeypatch.setattr(dsm, "_from_keras", lambda info: fake)
    assert load_dataset("mnist") is fake


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; available"):
        load_dataset("imagenet")


# ------------------------------------------------------------------------------------ CIFAR-10

@pytest.mark.parametrize("layout", ["tar", "tar-parent", "folder", "folder-parent"])
@pytest.mark.parametrize("py2", [True, False])
def test_cifar10_layouts(tmp_path, layout, py2, no_system):
    files, expect = cifar_files(py2=py2)
    if layout.startswith("tar"):
        path = write_cifar_tar(tmp_path / "c", files)
    else:
        path = write_cifar_folder(tmp_path / "c", files)
    if layout.endswith("parent"):
        path = path.parent
    ds = load_dataset("cifar10", path)
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_train.dtype == np.uint8
    for key, arr in expect.items():
        np.testing.assert_array_equal(getattr(ds, key), arr)
    assert ds.class_names == tuple(CIFAR_NAMES)


def test_cifar_chw_to_hwc_pixel_order(tmp_path):
    files, _ = cifar_files(per_batch=1)
    row = np.zeros((1, 3072), np.uint8)
    row[0, 0] = 10  # R of pixel (0, 0)
    row[0, 1024 + 33] = 20  # G of pixel (1, 1)
    row[0, 2048 + 1023] = 30  # B of pixel (31, 31)
    files["data_batch_1"] = py2_pickle({b"labels": [3], b"data": row})
    ds = load_cifar10(write_cifar_folder(tmp_path, files))
    img = ds.x_train[0]
    assert img[0, 0, 0] == 10 and img[1, 1, 1] == 20 and img[31, 31, 2] == 30
    assert int(img.sum()) == 60


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/edgekit-pwned",))


@pytest.mark.parametrize("payload", [
    pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2),
    pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=5),
    pickle.dumps({b"labels": [1], b"data": np.array([object()], dtype=object)}, protocol=2),
    b"cbuiltins\neval\n(S'1+1'\ntR.",
])
def test_malicious_pickle_is_refused(tmp_path, payload):
    with pytest.raises(DatasetFormatError, match="refused"):
        safe_unpickle(payload, "evil")
    files, _ = cifar_files()
    files["data_batch_3"] = payload
    with pytest.raises(DatasetFormatError, match=r"data_batch_3: refused"):
        load_cifar10(write_cifar_tar(tmp_path, files))
    assert not Path("/tmp/edgekit-pwned").exists()


def test_cifar_corrupt_archive_and_wrong_content(tmp_path):
    files, _ = cifar_files()
    tar = write_cifar_tar(tmp_path / "t", files)
    tar.write_bytes(tar.read_bytes()[:200])
    with pytest.raises(DatasetFormatError, match="cifar-10-python.tar.gz"):
        load_cifar10(tar)
    files["test_batch"] = py2_pickle({b"labels": [1, 2], b"data": np.zeros((2, 10), np.uint8)})
    with pytest.raises(DatasetFormatError, match=r"test_batch.*\(N, 3072\)"):
        load_cifar10(write_cifar_folder(tmp_path / "f", files))
    del files["test_batch"]
    with pytest.raises(DatasetFormatError, match="no cifar-10-batches-py/test_batch"):
        load_cifar10(write_cifar_tar(tmp_path / "m", files))


# ------------------------------------------------------------------------------------ splits

def _synthetic(n_train=1000, n_test=300) -> Dataset:
    rng = np.random.default_rng(7)
    return Dataset("synthetic", rng.integers(0, 256, (n_train, 4, 4, 1), dtype=np.uint8),
                   rng.integers(0, 10, n_train).astype(np.int64),
                   rng.integers(0, 256, (n_test, 4, 4, 1), dtype=np.uint8),
                   rng.integers(0, 10, n_test).astype(np.int64), tuple("0123456789"))


def test_splits_deterministic_and_disjoint():
    ds = _synthetic()
    a = make_splits(ds, val_fraction=0.2, calib_size=100, seed=3, limit_train=600, limit_test=100)
    b = make_splits(ds, val_fraction=0.2, calib_size=100, seed=3, limit_train=600, limit_test=100)
    c = make_splits(ds, val_fraction=0.2, calib_size=100, seed=4, limit_train=600, limit_test=100)
    for f in ("train_idx", "val_idx", "calib_idx", "test_idx"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.val_idx, c.val_idx)
    assert len(a.train_idx) == 480 and len(a.val_idx) == 120 and len(a.calib_idx) == 100
    assert len(a.test_idx) == 100
    assert not set(a.train_idx) & set(a.val_idx)
    assert set(a.calib_idx) <= set(a.train_idx) and not set(a.calib_idx) & set(a.val_idx)
    np.testing.assert_array_equal(a.x_train, ds.x_train[a.train_idx])
    np.testing.assert_array_equal(a.x_calib, ds.x_train[a.calib_idx])
    np.testing.assert_array_equal(a.y_test, ds.y_test[a.test_idx])
    # Calib and val come from the official train set; the test split is a different array entirely.
    assert a.x_calib.dtype == np.uint8 and a.x_calib.shape[1:] == (4, 4, 1)
    assert a.input_shape == (4, 4, 1) and a.num_classes == 10


def test_splits_defaults_and_validation():
    ds = _synthetic(n_train=100, n_test=20)
    s = make_splits(ds)
    assert len(s.val_idx) == 10 and len(s.train_idx) == 90 and len(s.calib_idx) == 90
    assert len(s.test_idx) == 20
    with pytest.raises(ValueError, match="val_fraction"):
        make_splits(ds, val_fraction=1.0)
    with pytest.raises(ValueError, match="limit_train"):
        make_splits(ds, limit_train=0)


def test_splits_for_run_reads_run_json(tmp_path, no_system):
    import json

    write_idx_set(tmp_path / "fm", n_train=50)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({
        "dataset": "fashion_mnist", "data_dir": str(tmp_path / "fm"), "family": "demo", "seed": 5,
        "splits": {"val_fraction": 0.2, "calib_size": 7, "limit_train": 40, "limit_test": 5}}))
    s = splits_for_run(tmp_path / "run")
    ref = make_splits(load_dataset("fashion_mnist", tmp_path / "fm"), 0.2, 7, 5, 40, 5)
    np.testing.assert_array_equal(s.calib_idx, ref.calib_idx)
    assert len(s.x_val) == 8 and len(s.x_calib) == 7 and len(s.x_test) == 5


def test_datasets_module_does_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys, converters.data.datasets as d; d.make_splits; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not (REAL_FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("EDGEKIT_FASHION_MNIST", raising=False)
    monkeypatch.delenv(dsm.GENERIC_ENV, raising=False)
    ds = load_dataset("fashion_mnist")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    s = make_splits(ds, limit_train=12000, limit_test=2000, calib_size=500)
    assert len(s.x_train) + len(s.x_val) == 12000 and len(s.x_calib) == 500 and len(s.x_test) == 2000
