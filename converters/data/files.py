"""The dataset files edgekit reads (IDX, CIFAR-10 python) and the Dataset they load into.

No TensorFlow: the CIFAR-10 pickles go through a restricted unpickler that only rebuilds numpy arrays.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from edge.core.errors import EdgekitError


class DatasetNotFound(EdgekitError, FileNotFoundError):
    """No source for a dataset worked; the message lists every way to get it."""


class DatasetFormatError(EdgekitError, ValueError):
    """A dataset file exists but is corrupt, truncated or not the expected format (names the file)."""


class ShapeInfo:
    """input_shape and num_classes, derived from x_train and class_names."""

    x_train: np.ndarray
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True, eq=False)
class Dataset(ShapeInfo):
    """A whole dataset: uint8 images (N, H, W, C), int64 labels (N,) and class names."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str = ""


# ---------------------------------------------------------------------------------------------- IDX

_IDX_TYPES = {0x08: np.uint8}
_IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, gzip.BadGzipFile, ValueError) as exc:
        raise DatasetFormatError(
            f"{path}: corrupt or truncated gzip file ({exc}); delete it and get the dataset again"
        ) from None


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Parse one IDX file (gzipped or not); checks magic number, dimensions and exact file length."""
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise DatasetFormatError(f"{path}: too short for an IDX file ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise DatasetFormatError(
            f"{path}: bad IDX magic number {data[:4].hex()} (expected 0000 08 0N); not an IDX file")
    type_code, nd = data[2], data[3]
    if type_code not in _IDX_TYPES:
        raise DatasetFormatError(
            f"{path}: unsupported IDX element type 0x{type_code:02x} (only unsigned bytes, 0x08, are used)")
    if ndim is not None and nd != ndim:
        raise DatasetFormatError(f"{path}: IDX file has {nd} dimensions, expected {ndim}")
    if nd == 0:
        raise DatasetFormatError(f"{path}: IDX file has 0 dimensions")
    header = 4 + 4 * nd
    if len(data) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=nd, offset=4))
    if any(d == 0 for d in dims[1:]):
        raise DatasetFormatError(f"{path}: IDX dimensions {dims} contain a zero")
    expected = header + int(np.prod(dims, dtype=np.int64)) * np.dtype(_IDX_TYPES[type_code]).itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DatasetFormatError(
            f"{path}: IDX file {what}: dims {dims} need {expected} bytes, file has {len(data)}; "
            "delete it and get the dataset again")
    arr = np.frombuffer(data, dtype=_IDX_TYPES[type_code], offset=header).reshape(dims)
    return arr.copy()  # own writable memory, not a view of the decompressed bytes


def _find_idx_file(folder: Path, key: str) -> Path | None:
    for stem in _IDX_FILES[key]:
        for name in (stem + ".gz", stem):
            p = folder / name
            if p.is_file():
                return p
    return None


def idx_folder_ok(folder: Path) -> bool:
    """True when ``folder`` holds the four IDX files of a dataset."""
    return folder.is_dir() and all(_find_idx_file(folder, k) is not None for k in _IDX_FILES)


def load_idx_dataset(folder: str | os.PathLike, name: str = "fashion_mnist",
                     class_names: Iterable[str] | None = None) -> Dataset:
    """Read the four IDX files (train/t10k images/labels, .gz or raw) in ``folder``."""
    folder = Path(folder)
    paths = {}
    for key in _IDX_FILES:
        p = _find_idx_file(folder, key)
        if p is None:
            raise DatasetNotFound(
                f"{folder}: missing {_IDX_FILES[key][0]}[.gz]; an IDX dataset folder needs "
                + ", ".join(v[0] + "[.gz]" for v in _IDX_FILES.values()))
        paths[key] = p
    x_train = read_idx(paths["train_images"], ndim=3)
    y_train = read_idx(paths["train_labels"], ndim=1)
    x_test = read_idx(paths["test_images"], ndim=3)
    y_test = read_idx(paths["test_labels"], ndim=1)
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(10))
    for xs, ys, xk, yk in ((x_train, y_train, "train_images", "train_labels"),
                           (x_test, y_test, "test_images", "test_labels")):
        if len(xs) != len(ys):
            raise DatasetFormatError(
                f"{paths[xk]} has {len(xs)} images but {paths[yk]} has {len(ys)} labels")
        if len(ys) and int(ys.max()) >= len(names):
            raise DatasetFormatError(
                f"{paths[yk]}: label {int(ys.max())} out of range for {len(names)} classes")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetFormatError(
            f"{paths['train_images']} images are {x_train.shape[1:]} but {paths['test_images']} "
            f"are {x_test.shape[1:]}")
    return Dataset(name=name, x_train=x_train[..., None], y_train=y_train.astype(np.int64),
                   x_test=x_test[..., None], y_test=y_test.astype(np.int64),
                   class_names=names, source=str(folder))


# ---------------------------------------------------------------------------------------------- CIFAR-10

CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_META = "batches.meta"


def _numpy_attr(*candidates: str) -> Callable[..., Any]:
    import importlib

    for dotted in candidates:
        mod, _, attr = dotted.rpartition(".")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {candidates} found in this numpy")


def _safe_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError("object dtype refused")
    return dt


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy.ndarray may be reconstructed")
    real = _numpy_attr("numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct")
    return real(subtype, shape, dtype)


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("object dtype refused")
    real = _numpy_attr("numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer")
    return real(buf, dtype, shape, order)


def _safe_codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 protocol-2 pickles spell bytes as _codecs.encode(str, "latin1").
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only _codecs.encode(str, 'latin1') is allowed")
    return obj.encode("latin-1", errors)


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy", "ndarray"): np.ndarray,  # type: ignore[dict-item]
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _safe_codecs_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: dicts, lists, str, bytes, int and plain numpy arrays; nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        fn = _ALLOWED_GLOBALS.get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: CIFAR batches only contain dicts, lists, bytes, "
                "str, int and numpy arrays")
        return fn


def safe_unpickle(data: bytes, origin: str = "<bytes>") -> Any:
    """Unpickle ``data`` allowing only plain containers and numpy arrays; raises DatasetFormatError otherwise."""
    try:
        # encoding="bytes": the official batches were written by Python 2 (str -> bytes keys).
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DatasetFormatError(f"{origin}: refused to unpickle: {exc}") from None
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, MemoryError) as exc:
        raise DatasetFormatError(f"{origin}: corrupt pickle ({type(exc).__name__}: {exc})") from None


def _str_keys(d: Any, origin: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise DatasetFormatError(f"{origin}: expected a dict, found {type(d).__name__}")
    return {(k.decode("latin-1") if isinstance(k, bytes) else str(k)): v for k, v in d.items()}


def _cifar_batch(data: bytes, origin: str) -> tuple[np.ndarray, np.ndarray]:
    d = _str_keys(safe_unpickle(data, origin), origin)
    if "data" not in d or "labels" not in d:
        raise DatasetFormatError(f"{origin}: not a CIFAR-10 batch (keys {sorted(d)}; need data, labels)")
    x, labels = d["data"], d["labels"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(
            f"{origin}: 'data' must be a uint8 array (N, 3072), found "
            f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if not isinstance(labels, (list, np.ndarray)):
        raise DatasetFormatError(f"{origin}: 'labels' must be a list of ints")
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetFormatError(f"{origin}: {len(x)} images but labels have shape {y.shape} ({y.dtype})")
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        raise DatasetFormatError(f"{origin}: labels outside 0..9")
    # Rows are channel-planar (R plane, G plane, B plane): CHW -> HWC.
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), y.astype(np.int64)


def _cifar_members(source: Path) -> Callable[[str], tuple[bytes, str]]:
    """A reader of batch files by name from the archive or the extracted folder."""
    if source.is_dir():
        folder = source / CIFAR_FOLDER if (source / CIFAR_FOLDER).is_dir() else source

        def read_dir(name: str) -> tuple[bytes, str]:
            p = folder / name
            if not p.is_file():
                raise DatasetFormatError(f"{folder}: missing {name}; not a complete {CIFAR_FOLDER} folder")
            return p.read_bytes(), str(p)

        return read_dir
    try:
        tar = tarfile.open(source, "r:*")
        members = {}
        for m in tar.getmembers():
            if m.isfile():
                members[m.name.rsplit("/", 1)[-1]] = m
        wanted = {}
        for name in (*_CIFAR_TRAIN, _CIFAR_TEST, _CIFAR_META):
            if name not in members:
                raise DatasetFormatError(f"{source}: archive has no {CIFAR_FOLDER}/{name}")
            fh = tar.extractfile(members[name])
            assert fh is not None
            wanted[name] = fh.read()
        tar.close()
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise DatasetFormatError(f"{source}: corrupt or truncated archive ({exc}); download it again") from None

    def read_tar(name: str) -> tuple[bytes, str]:
        return wanted[name], f"{source}:{name}"

    return read_tar


def cifar_source_ok(path: Path) -> bool:
    """True when ``path`` is a CIFAR-10 archive, or a folder holding the batches, their folder or the archive."""
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return True
    return path.is_dir() and ((path / _CIFAR_META).is_file() or (path / CIFAR_FOLDER).is_dir()
                              or (path / CIFAR_ARCHIVE).is_file())


def load_cifar10(source: str | os.PathLike) -> Dataset:
    """Read CIFAR-10 from ``cifar-10-python.tar.gz``, a ``cifar-10-batches-py`` folder or a folder holding either."""
    source = Path(source)
    if source.is_dir() and not (source / _CIFAR_META).is_file() and not (source / CIFAR_FOLDER).is_dir():
        if (source / CIFAR_ARCHIVE).is_file():
            source = source / CIFAR_ARCHIVE
        else:
            raise DatasetNotFound(f"{source}: contains neither {CIFAR_ARCHIVE} nor {CIFAR_FOLDER}/")
    read = _cifar_members(source)
    xs, ys = zip(*(_cifar_batch(*read(n)) for n in _CIFAR_TRAIN))
    x_test, y_test = _cifar_batch(*read(_CIFAR_TEST))
    meta_bytes, origin = read(_CIFAR_META)
    meta = _str_keys(safe_unpickle(meta_bytes, origin), origin)
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise DatasetFormatError(f"{origin}: 'label_names' must be a list of 10 names")
    class_names = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    return Dataset(name="cifar10", x_train=np.concatenate(xs), y_train=np.concatenate(ys),
                   x_test=x_test, y_test=y_test, class_names=class_names, source=str(source))

