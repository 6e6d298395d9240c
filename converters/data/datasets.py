"""Datasets by name: where each is found (and how to get it), loading it, and deterministic splits for a run.

The file formats themselves are read in ``converters.data.files``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from converters.data.files import (
    CIFAR_ARCHIVE,
    CIFAR_FOLDER,
    Dataset,
    DatasetNotFound,
    ShapeInfo,
    cifar_source_ok,
    idx_folder_ok,
    load_cifar10,
    load_idx_dataset,
)
from edge.core.errors import UsageError

if TYPE_CHECKING:
    from converters.data.images import ImageData, ImageOptions

__all__ = [
    "DATASETS",
    "DataSource",
    "DatasetInfo",
    "Splits",
    "dataset_info",
    "load_dataset",
    "data_for_run",
    "load_source",
    "make_splits",
    "splits_for_run",
]


@dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset may be found and how it is laid out."""

    name: str
    kind: str  # "idx" or "cifar10"
    env_var: str
    system_dirs: tuple[str, ...]
    apt_package: str | None
    keras_module: str
    folder_names: tuple[str, ...]  # sub-folder names tried under a data dir
    class_names: tuple[str, ...] = ()


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# system_dirs is module state on purpose: tests replace it to simulate a machine without the package.
DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist", kind="idx", env_var="EDGEKIT_FASHION_MNIST",
        system_dirs=("/usr/share/datasets/fashion-mnist",), apt_package="dataset-fashion-mnist",
        keras_module="fashion_mnist", folder_names=("fashion_mnist", "fashion-mnist", "FashionMNIST"),
        class_names=FASHION_CLASSES),
    "mnist": DatasetInfo(
        name="mnist", kind="idx", env_var="EDGEKIT_MNIST",
        system_dirs=("/usr/share/datasets/mnist",), apt_package=None,
        keras_module="mnist", folder_names=("mnist", "MNIST"),
        class_names=tuple(str(i) for i in range(10))),
    "cifar10": DatasetInfo(
        name="cifar10", kind="cifar10", env_var="EDGEKIT_CIFAR10",
        system_dirs=("/usr/share/datasets/cifar-10", "/usr/share/datasets/cifar10"), apt_package=None,
        keras_module="cifar10", folder_names=("cifar10", "cifar-10")),
}

IMAGES = "images"  # the dataset name of a run made from an image folder


@dataclass(frozen=True)
class DataSource:
    """Where a new run's data comes from: a named dataset (DATASETS) or an image folder."""

    dataset: str = "fashion_mnist"  # a DATASETS name, or "images"
    data_dir: str | None = None
    images: ImageOptions | None = None  # set when dataset == "images"

    def __post_init__(self) -> None:
        if (self.dataset == IMAGES) != (self.images is not None):
            raise UsageError(f"DataSource: images must be set exactly when dataset == {IMAGES!r} "
                             f"(dataset={self.dataset!r}, images={self.images!r})")


GENERIC_ENV = "EDGEKIT_DATA_DIR"
NO_DOWNLOAD_ENV = "EDGEKIT_NO_DOWNLOAD"


@dataclass(frozen=True, eq=False)
class Splits(ShapeInfo):
    """Train / validation / calibration / test parts of a dataset; the *_idx arrays index the original sets."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    train_idx: np.ndarray  # into Dataset.x_train
    val_idx: np.ndarray  # into Dataset.x_train
    calib_idx: np.ndarray  # into Dataset.x_train, a subset of train_idx
    test_idx: np.ndarray  # into Dataset.x_test


# ---------------------------------------------------------------------------------------------- lookup

def _candidate_ok(info: DatasetInfo, path: Path) -> Path | None:
    """The usable location at or under ``path`` for this dataset, or None."""
    ok = idx_folder_ok if info.kind == "idx" else cifar_source_ok
    for p in (path, *(path / f for f in info.folder_names)):
        if ok(p):
            return p
    return None


def _load_from(info: DatasetInfo, path: Path) -> Dataset:
    if info.kind == "idx":
        return load_idx_dataset(path, name=info.name, class_names=info.class_names)
    return load_cifar10(path)


def _options(info: DatasetInfo) -> str:
    what = ("the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, gzipped or not)"
            if info.kind == "idx" else f"{CIFAR_ARCHIVE} or its extracted {CIFAR_FOLDER}/ folder")
    opts = []
    if info.apt_package:
        opts.append(f"install the Debian package: sudo apt-get install {info.apt_package} "
                    f"(files go to {info.system_dirs[0]})")
    else:
        opts.append(f"put {what} in {info.system_dirs[0]}")
    opts += [
        f"pass --data-dir DIR (data_dir=DIR) pointing at {what}",
        f"set {info.env_var}=DIR, or {GENERIC_ENV}=DIR with a {info.folder_names[0]}/ sub-folder",
        f"be online: Keras' downloader (keras.datasets.{info.keras_module}.load_data) fetches it "
        f"into ~/.keras/datasets (unset {NO_DOWNLOAD_ENV})",
    ]
    return "\n".join(f"  {i}. {o}" for i, o in enumerate(opts, 1))


def _not_found(info: DatasetInfo, tried: list[str]) -> DatasetNotFound:
    return DatasetNotFound(
        f"dataset {info.name!r} not found. Tried:\n" + "\n".join(f"  - {t}" for t in tried)
        + "\nGet it in one of these ways:\n" + _options(info))


def _from_keras(info: DatasetInfo) -> Dataset:
    import importlib

    module = importlib.import_module(f"keras.datasets.{info.keras_module}")
    (x_train, y_train), (x_test, y_test) = module.load_data()
    x_train, x_test = np.asarray(x_train, np.uint8), np.asarray(x_test, np.uint8)
    if x_train.ndim == 3:
        x_train, x_test = x_train[..., None], x_test[..., None]
    names = info.class_names or ("airplane", "automobile", "bird", "cat", "deer",
                                 "dog", "frog", "horse", "ship", "truck")
    return Dataset(name=info.name, x_train=x_train, y_train=np.asarray(y_train).reshape(-1).astype(np.int64),
                   x_test=x_test, y_test=np.asarray(y_test).reshape(-1).astype(np.int64),
                   class_names=tuple(names), source=f"keras.datasets.{info.keras_module}")


def dataset_info(name: str) -> DatasetInfo:
    key = name.lower().replace("-", "_")
    if key in ("fashion", "fmnist"):
        key = "fashion_mnist"
    if key not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; available: {sorted(DATASETS)}")
    return DATASETS[key]


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool | None = None) -> Dataset:
    """Load a dataset by name from: ``data_dir``, the env var, the system folder, then Keras' downloader.

    An explicit ``data_dir`` or dataset env var that does not hold the data is an error (never
    silently replaced by other data). ``download=None`` means "unless EDGEKIT_NO_DOWNLOAD is set".
    """
    info = dataset_info(name)
    tried: list[str] = []
    explicit: list[tuple[str, Path]] = []
    if data_dir is not None:
        explicit.append(("--data-dir", Path(data_dir).expanduser()))
    elif os.environ.get(info.env_var):
        explicit.append((f"${info.env_var}", Path(os.environ[info.env_var]).expanduser()))
    for label, path in explicit:
        found = _candidate_ok(info, path)
        if found is None:
            tried.append(f"{label} {path}: {'does not exist' if not path.exists() else 'no dataset files there'}")
            raise _not_found(info, tried)
        return _load_from(info, found)
    tried.append(f"--data-dir: not given; ${info.env_var}: not set")

    generic = os.environ.get(GENERIC_ENV)
    candidates: list[tuple[str, Path]] = []
    if generic:
        candidates.append((f"${GENERIC_ENV}", Path(generic).expanduser()))
    else:
        tried.append(f"${GENERIC_ENV}: not set")
    candidates += [("system folder", Path(d)) for d in info.system_dirs]
    for label, path in candidates:
        # A generic data root must hold a named sub-folder; a system folder is the data itself.
        found = (_candidate_ok(info, path) if label != f"${GENERIC_ENV}" else
                 next((p for p in (path / f for f in info.folder_names) if _candidate_ok(info, p)), None))
        if found is not None:
            return _load_from(info, found)
        tried.append(f"{label} {path}: {'does not exist' if not path.exists() else 'no dataset files there'}")

    if download is None:
        download = os.environ.get(NO_DOWNLOAD_ENV, "") in ("", "0")
    if not download:
        tried.append(f"Keras downloader: disabled ({NO_DOWNLOAD_ENV} set or download=False)")
        raise _not_found(info, tried)
    try:
        return _from_keras(info)
    except Exception as exc:  # offline, no keras, or a broken cache: all mean "try another way"
        tried.append(f"Keras downloader keras.datasets.{info.keras_module}: {type(exc).__name__}: {exc}")
        raise _not_found(info, tried) from None


# ---------------------------------------------------------------------------------------------- splits

def make_splits(ds: Dataset, val_fraction: float = 0.1, calib_size: int = 500, seed: int = 0,
                limit_train: int | None = None, limit_test: int | None = None,
                val_idx: np.ndarray | None = None) -> Splits:
    """Deterministic train/val/calib/test split for ``seed``.

    ``limit_train`` keeps a seeded random subset of the official train set *before* the validation
    split; val is ``val_fraction`` of that; calib is drawn from the train part only (never val or
    test); ``limit_test`` keeps a seeded random subset of the official test set. ``val_idx`` (an image
    folder's val/ rows of ``ds.x_train``) is the validation set as given: ``val_fraction`` is not used
    and ``limit_train`` applies to the other rows.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if calib_size < 0:
        raise UsageError(f"calib_size must be >= 0, got {calib_size}")
    for label, v in (("limit_train", limit_train), ("limit_test", limit_test)):
        if v is not None and v < 1:
            raise UsageError(f"{label} must be a positive number of images, got {v}")
    # Separate streams so changing one limit does not reshuffle the other parts.
    ss = np.random.SeedSequence([int(seed), 0xED6E])
    r_pool, r_val, r_calib, r_test = (np.random.default_rng(s) for s in ss.spawn(4))

    n_train = len(ds.x_train)
    if val_idx is not None:
        val_idx = np.sort(np.asarray(val_idx, dtype=np.int64))
        rest = np.setdiff1d(np.arange(n_train), val_idx)
        train_idx = rest
        if limit_train is not None and limit_train < len(rest):
            train_idx = np.sort(r_pool.choice(rest, size=limit_train, replace=False))
        if len(train_idx) == 0:
            raise UsageError("no training images are left besides the validation folder's")
    else:
        pool = np.arange(n_train)
        if limit_train is not None and limit_train < n_train:
            pool = np.sort(r_pool.choice(n_train, size=limit_train, replace=False))
        n_val = int(round(len(pool) * val_fraction))
        if val_fraction > 0 and n_val == 0 and len(pool) > 1:
            n_val = 1
        if n_val >= len(pool):
            raise UsageError(f"val_fraction {val_fraction} leaves no training images out of {len(pool)}")
        perm = r_val.permutation(len(pool))
        val_idx = np.sort(pool[perm[:n_val]])
        train_idx = np.sort(pool[perm[n_val:]])
    n_calib = min(calib_size, len(train_idx))
    calib_idx = np.sort(r_calib.choice(train_idx, size=n_calib, replace=False)) if n_calib else train_idx[:0]

    n_test = len(ds.x_test)
    test_idx = np.arange(n_test)
    if limit_test is not None and limit_test < n_test:
        test_idx = np.sort(r_test.choice(n_test, size=limit_test, replace=False))

    return Splits(
        x_train=ds.x_train[train_idx], y_train=ds.y_train[train_idx],
        x_val=ds.x_train[val_idx], y_val=ds.y_train[val_idx],
        x_calib=ds.x_train[calib_idx],
        x_test=ds.x_test[test_idx], y_test=ds.y_test[test_idx],
        class_names=ds.class_names,
        train_idx=train_idx, val_idx=val_idx, calib_idx=calib_idx, test_idx=test_idx,
    )


def load_source(source: DataSource, *, seed: int = 0, want_shape: tuple[int, int, int] | None = None,
                cache: Path | None = None, progress: bool = True,
                out: TextIO | None = None) -> tuple[Dataset, np.ndarray | None, ImageData | None]:
    """A new run's data: (Dataset, the fixed val rows or None, the ImageData of an image folder or None).

    An image folder is decoded into (or read from a matching) ``cache`` file when one is given.
    """
    if source.images is None:
        return load_dataset(source.dataset, source.data_dir), None, None
    from converters.data.images import image_data_for_run, load_image_folder

    if cache is None:
        data = load_image_folder(source.images, seed=seed, want_shape=want_shape, progress=progress, out=out)
    else:
        data = image_data_for_run(cache, source.images, seed=seed, want_shape=want_shape, progress=progress, out=out)
    return data.dataset, data.val_idx, data


def data_for_run(run_dir: str | os.PathLike, meta: dict | None = None, *, progress: bool = True,
                 out: TextIO | None = None) -> tuple[Dataset, np.ndarray | None]:
    """The Dataset a run was made from (an image run's from its cache), and its fixed val rows or None."""
    from edge.core.atomic import read_json

    run_dir = Path(run_dir)
    if meta is None:
        meta = read_json(run_dir / "run.json", what="run file (written by `edgekit train` or `edgekit import`)")
    if meta.get("dataset") != IMAGES:
        return load_dataset(meta["dataset"], meta.get("data_dir")), None
    from converters.data.images import CACHE_FILE, image_data_for_run, options_from_record

    rec = meta.get("images")
    if not isinstance(rec, dict) or not meta.get("data_dir"):
        raise UsageError(f"{run_dir / 'run.json'} says dataset 'images' but has no \"images\" record or data_dir; "
                         "make the run again")
    data = image_data_for_run(run_dir / str(rec.get("cache", CACHE_FILE)), options_from_record(meta["data_dir"], rec),
                              seed=int(meta.get("seed", 0)), progress=progress, out=out, existing_run=True)
    names = list(data.dataset.class_names)
    if meta.get("class_names") and list(meta["class_names"]) != names:
        raise UsageError(f"the image folder {meta['data_dir']} now has classes {names}, but {run_dir} was made with "
                         f"{list(meta['class_names'])}; restore the folder or make a new run")
    return data.dataset, data.val_idx


def splits_for_run(run_dir: str | os.PathLike, *, progress: bool = True, out: TextIO | None = None) -> Splits:
    """Re-create the exact splits a run used, from ``RUN/run.json`` (an image run's pixels from its cache)."""
    from edge.core.atomic import read_json

    run_dir = Path(run_dir)
    meta = read_json(run_dir / "run.json", what="run file (written by `edgekit train` or `edgekit import`)")
    sp = meta.get("splits", {})
    ds, val_idx = data_for_run(run_dir, meta, progress=progress, out=out)
    return make_splits(ds, val_fraction=float(sp.get("val_fraction", 0.1)),
                       calib_size=int(sp.get("calib_size", 500)), seed=int(meta.get("seed", 0)),
                       limit_train=sp.get("limit_train"), limit_test=sp.get("limit_test"), val_idx=val_idx)
