"""Image-folder datasets: one subfolder per class (optional train/ val/ test/), decoded once per run into a cache.

The pixels come from the one decoder, edge.artifacts.images.load_image, so the board prepares a file exactly
as training saw it. Each file is decoded straight into its row of one preallocated uint8 array at the run's
size: a large folder is never held in memory at full size.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from converters.data.files import Dataset
from edge.artifacts.images import (
    IMAGE_SUFFIXES,
    ImageDecodeError,
    ImagePrep,
    image_header,
    is_image_file,
    load_image,
    resample,
)
from edge.core.atomic import atomic_write_json, atomic_writer
from edge.core.errors import MissingError, UsageError

CACHE_FILE = "images_cache.npz"  # RUN/images_cache.npz: the run's decoded pixels (train, val, test)
SPLIT_FILE = "images_split.json"  # RUN/images_split.json: which file went to which part, for people
CACHE_VERSION = 1
# Folder names that give the split instead of naming classes ("validation" is torchvision's and TFDS' name).
PART_DIRS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
PARTS = ("train", "val", "test")
SKIP_HINT = "or pass --skip-bad to skip every such file (each one is reported)"
SUFFIXES = " ".join(IMAGE_SUFFIXES)


@dataclass(frozen=True)
class ImageOptions:
    """How a folder of images becomes a run's dataset."""

    root: Path
    size: tuple[int, int] | None = None  # (height, width); None: the most common size in the folder (header reads)
    channels: int | None = None  # 1 or 3; None: 1 if every image is grayscale, else 3
    resize: str = "bilinear"
    skip_bad: bool = False
    test_fraction: float = 0.2  # used only when there is no test/ subfolder

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(int(v) for v in self.size) < 1):
            raise UsageError(f"image size must be two positive numbers (height, width), got {self.size!r}")
        if self.channels not in (None, 1, 3):
            raise UsageError(f"image channels must be 1 (gray) or 3 (rgb), got {self.channels!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise UsageError(f"--test-fraction must be between 0 and 1, got {self.test_fraction}")
        resample(self.resize)


@dataclass(frozen=True)
class FolderScan:
    """What an image folder holds: class names (sorted, as Keras does) and the image files of each part."""

    root: Path
    class_names: tuple[str, ...]
    layout: str  # "folders" (train/ [val/] [test/]) or "flat" (class folders at the root)
    parts: dict[str, tuple[tuple[str, int], ...]]  # part -> (path relative to root, label), sorted
    ignored: tuple[str, ...] = ()  # files that are not images by name (relative paths)
    stats: tuple[tuple[str, int, int], ...] = field(default=(), repr=False)  # (rel, size, mtime_ns) of every image

    @property
    def fingerprint(self) -> str:
        """sha256 over the class names and every image's path, size and mtime: changes when the folder does."""
        h = hashlib.sha256(json.dumps([self.layout, list(self.class_names)]).encode())
        for rel, size, mtime in self.stats:
            h.update(f"\0{rel}\0{size}\0{mtime}".encode())
        return h.hexdigest()


@dataclass(frozen=True, eq=False)
class ImageData:
    """A decoded image folder: the Dataset (train holds train + val rows), val rows, and what run.json records."""

    dataset: Dataset
    val_idx: np.ndarray | None  # rows of dataset.x_train that came from val/; None: no val/ folder
    prep: ImagePrep
    record: dict[str, Any]  # run.json's "images"
    files: dict[str, list[str]]  # part -> relative paths, in row order


# ---------------------------------------------------------------------------------------------- scanning

def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_images(folder: Path, root: Path, ignored: list[str]) -> list[str]:
    """Image files under ``folder`` (recursively, sorted, as Keras walks), relative to ``root``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        # Plain strings, not a Path per file: a folder of 100,000 images is listed in well under a second.
        prefix = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        for name in sorted(filenames):
            if _is_hidden(name):
                continue
            (found if is_image_file(name) else ignored).append(prefix + name)
    return found


def list_images(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(the image files under ``folder`` at any depth, the other files there), both sorted as Keras walks,
    relative to ``folder`` with '/'; hidden files and folders are left out. An unlabelled folder: no classes."""
    root = Path(folder).expanduser()
    ignored: list[str] = []
    return _walk_images(root, root, ignored), ignored


def _subdirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not _is_hidden(e.name))


def _loose_files(folder: Path, root: Path, ignored: list[str]) -> None:
    for e in sorted(os.scandir(folder), key=lambda e: e.name):
        if not e.is_dir() and not _is_hidden(e.name):
            ignored.append(Path(e.path).relative_to(root).as_posix())


def scan_folder(root: str | os.PathLike) -> FolderScan:
    """List an image folder; every layout problem is an error naming the folder and saying what to do."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingError(f"image folder {root} {'is not a folder' if root.exists() else 'does not exist'}; "
                           "pass --images DIR with one subfolder per class")
    root = root.resolve()
    top = _subdirs(root)
    split_dirs = [d for d in top if d.lower() in PART_DIRS]
    ignored: list[str] = []
    if split_dirs:
        others = [d for d in top if d.lower() not in PART_DIRS]
        if others:
            raise UsageError(
                f"{root} has both split folders ({', '.join(s + '/' for s in split_dirs)}) and other folders "
                f"({', '.join(o + '/' for o in others[:5])}); put every class folder under train/ (and val/, test/), "
                "or remove the split folders to have edgekit split the classes")
        by_part: dict[str, Path] = {}
        for d in split_dirs:
            part = PART_DIRS[d.lower()]
            if part in by_part:
                raise UsageError(f"{root} has two folders for the {part} split ({by_part[part].name}/ and {d}/); "
                                 "keep one")
            by_part[part] = root / d
        if "train" not in by_part:
            raise UsageError(f"{root} has {', '.join(s + '/' for s in split_dirs)} but no train/ folder; "
                             "add train/<class>/ folders with the training images")
        layout = "folders"
        _loose_files(root, root, ignored)
    else:
        by_part = {"train": root}
        layout = "flat"

    class_names = tuple(_subdirs(by_part["train"]))
    where = by_part["train"]
    if not class_names:
        raise UsageError(f"{where} has no class folders; put the images in one subfolder per class "
                         f"({where}/<class>/*.jpg)")
    if len(class_names) == 1:
        raise UsageError(f"{where} has a single class folder ({class_names[0]}/); a classifier needs at least "
                         "two: add one subfolder per class")
    parts: dict[str, tuple[tuple[str, int], ...]] = {}
    stats: list[tuple[str, int, int]] = []
    for part in PARTS:
        if part not in by_part:
            continue
        base = by_part[part]
        _loose_files(base, root, ignored)
        have = _subdirs(base)
        extra = sorted(set(have) - set(class_names))
        if extra:
            raise UsageError(f"{base} has class folder(s) {extra} that {where} does not have; every split folder "
                             f"must hold the same classes: add them to {where} or remove them")
        rows: list[tuple[str, int]] = []
        for label, name in enumerate(class_names):
            folder = base / name
            if not folder.is_dir():
                raise UsageError(f"class {name!r} is missing from {base}: expected the folder {folder}; add its "
                                 f"{part} images there (or remove the class from every split folder)")
            files = _walk_images(folder, root, ignored)
            if not files:
                raise UsageError(f"class folder {folder} has no images ({SUFFIXES}); add images to it or remove it")
            rows += [(f, label) for f in files]
        parts[part] = tuple(rows)
    base_dir = str(root)
    for rel, _ in (r for rows in parts.values() for r in rows):
        st = os.stat(os.path.join(base_dir, rel))
        stats.append((rel, st.st_size, st.st_mtime_ns))
    return FolderScan(root=root, class_names=class_names, layout=layout, parts=parts, ignored=tuple(ignored),
                      stats=tuple(stats))


# ---------------------------------------------------------------------------------------------- the split

def stratified_split(rows: tuple[tuple[str, int], ...], num_classes: int, test_fraction: float,
                     seed: int) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]:
    """(train, test) rows: ``test_fraction`` of each class (rounded, at least 1 of a class with 2 or more images,
    never all of one), drawn with a generator seeded by ``seed`` and the class; the same rows and seed give
    the same split. Both keep the input order."""
    labels = np.array([lab for _, lab in rows], dtype=np.int64)
    test = np.zeros(len(rows), dtype=bool)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        n = len(idx)
        k = int(round(n * test_fraction))
        k = min(max(k, 1 if n >= 2 else 0), n - 1) if n else 0
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1A6E, c]))
        test[idx[rng.permutation(n)[:k]]] = True
    return (tuple(r for r, t in zip(rows, test) if not t), tuple(r for r, t in zip(rows, test) if t))


# ---------------------------------------------------------------------------------------------- size and colour

def choose_prep(scan: FolderScan, opts: ImageOptions, want_shape: tuple[int, int, int] | None = None) -> ImagePrep:
    """The run's size and channels: ``want_shape`` (a model's input), else the options, else from the headers."""
    size, channels = opts.size, opts.channels
    if want_shape is not None:
        h, w, c = (int(v) for v in want_shape)
        if size is not None and tuple(size) != (h, w):
            raise UsageError(f"--image-size {size[0]}x{size[1]} does not match the model's input size {h}x{w}; "
                             "leave out --image-size or pass the model's")
        if channels is not None and channels != c:
            raise UsageError(f"--color {'gray' if channels == 1 else 'rgb'} ({channels} channel(s)) does not match "
                             f"the model's {c} input channel(s); leave out --color or pass the model's")
        size, channels = (h, w), c
    if size is None or channels is None:
        sizes: Counter[tuple[int, int]] = Counter()
        all_gray = True
        for rel, _ in (r for rows in scan.parts.values() for r in rows):
            try:
                h, w, gray = image_header(scan.root / rel)
            except (ImageDecodeError, OSError):
                continue  # reported (or skipped) when it is decoded
            sizes[(h, w)] += 1
            all_gray = all_gray and gray
        if not sizes:
            raise UsageError(f"no image in {scan.root} can be read; check the files are JPEG, PNG, BMP or GIF")
        if size is None:
            size = max(sizes.items(), key=lambda kv: (kv[1], kv[0][0] * kv[0][1], kv[0]))[0]
        if channels is None:
            channels = 1 if all_gray else 3
    return ImagePrep(size=(int(size[0]), int(size[1])), channels=int(channels), resize=opts.resize)


# ---------------------------------------------------------------------------------------------- decoding

def decode_rows(root: Path, rows: list[tuple[str, int]], prep: ImagePrep, *, skip_bad: bool, progress: bool,
                out: TextIO) -> tuple[np.ndarray, np.ndarray, list[int], list[dict[str, str]]]:
    """Decode ``rows`` in order into one (N, H, W, C) uint8 array; returns (x, y, kept row numbers, skipped).

    A bad file stops with an error naming it, or with ``skip_bad`` is reported (``out``) and left out.
    """
    from edge.core.progress import progress_bar

    x = np.empty((len(rows), *prep.shape), dtype=np.uint8)
    y = np.empty(len(rows), dtype=np.int64)
    kept: list[int] = []
    skipped: list[dict[str, str]] = []
    bar = progress_bar(len(rows), enabled=progress and bool(rows), unit="image", desc="decode")
    try:
        base_dir = str(root)
        for i, (rel, label) in enumerate(rows):
            path = os.path.join(base_dir, rel)
            try:
                load_image(path, prep.size, prep.channels, prep.resize, out=x[len(kept)])
            except (ImageDecodeError, OSError) as exc:
                reason = exc.reason if isinstance(exc, ImageDecodeError) else f"cannot be read ({exc})"
                if not skip_bad:
                    raise ImageDecodeError(str(path), reason, hint=f"replace or remove it, {SKIP_HINT}") from None
                skipped.append({"file": rel, "error": reason})
                bar.write(f"skip-bad: skipped {path}: {reason}", file=out)
            else:
                y[len(kept)] = label
                kept.append(i)
            bar.update(1)
    finally:
        bar.close()
    return x[:len(kept)], y[:len(kept)], kept, skipped


def _check_classes(root: Path, scan: FolderScan, part: str, labels: np.ndarray, base: str) -> None:
    counts = np.bincount(labels, minlength=len(scan.class_names))
    empty = [scan.class_names[c] for c in np.flatnonzero(counts == 0)]
    if empty:
        folders = ", ".join(str(root / base / c) for c in empty)
        raise UsageError(f"after skipping bad files, no {part} image is left in {folders}; add readable images "
                         "there or remove the class")


def _part_dir(scan: FolderScan, part: str) -> str:
    if scan.layout == "flat":
        return ""
    names = [d for d in _subdirs(scan.root) if PART_DIRS.get(d.lower()) == part]
    return names[0] if names else part


def load_image_folder(opts: ImageOptions, *, seed: int = 0, want_shape: tuple[int, int, int] | None = None,
                      progress: bool = True, out: TextIO | None = None, scan: FolderScan | None = None) -> ImageData:
    """Scan, split and decode an image folder (no cache): train rows, then val, then test, in one array."""
    out = out or sys.stdout
    scan = scan or scan_folder(opts.root)
    prep = choose_prep(scan, opts, want_shape)
    train = scan.parts["train"]
    val = scan.parts.get("val", ())
    if "test" in scan.parts:
        test, split = scan.parts["test"], "folders"
    else:
        train, test = stratified_split(train, len(scan.class_names), opts.test_fraction, seed)
        split = "stratified"
    rows = [*train, *val, *test]
    n_train, n_val = len(train), len(val)
    x, y, kept, skipped = decode_rows(scan.root, rows, prep, skip_bad=opts.skip_bad, progress=progress, out=out)
    if skipped:
        print(f"skip-bad: skipped {len(skipped)} of {len(rows)} file(s) in {scan.root} (listed above and in the "
              "run's run.json)", file=out, flush=True)
    kept_a = np.asarray(kept, dtype=np.int64)
    k_train = int(np.sum(kept_a < n_train))
    k_val = int(np.sum((kept_a >= n_train) & (kept_a < n_train + n_val)))
    parts_rows = {"train": slice(0, k_train), "val": slice(k_train, k_train + k_val),
                  "test": slice(k_train + k_val, len(kept))}
    _check_classes(scan.root, scan, "train", y[parts_rows["train"]], _part_dir(scan, "train"))
    if val:
        _check_classes(scan.root, scan, "validation", y[parts_rows["val"]], _part_dir(scan, "val"))
    if split == "folders":
        _check_classes(scan.root, scan, "test", y[parts_rows["test"]], _part_dir(scan, "test"))
    if k_train + k_val == len(kept):
        raise UsageError(f"no test image is left in {scan.root}; add images (or a test/ folder)")
    files = {p: [rows[i][0] for i in kept_a[parts_rows[p]]] for p in PARTS}
    test_rows = parts_rows["test"]
    ds = Dataset(name="images", x_train=x[:k_train + k_val], y_train=y[:k_train + k_val],
                 x_test=x[test_rows], y_test=y[test_rows], class_names=scan.class_names, source=str(scan.root))
    record = {
        **prep.to_dict(),
        "test_fraction": opts.test_fraction,
        "skip_bad": opts.skip_bad,
        "split": split,
        "layout": scan.layout,
        "counts": {p: len(files[p]) for p in PARTS},
        "skipped": skipped,
        "ignored": list(scan.ignored),
        "fingerprint": scan.fingerprint,
        "cache": CACHE_FILE,
    }
    if scan.ignored:
        shown = ", ".join(scan.ignored[:5]) + (f" and {len(scan.ignored) - 5} more" if len(scan.ignored) > 5 else "")
        print(f"note: {len(scan.ignored)} file(s) in {scan.root} are not images by name ({SUFFIXES}) and were "
              f"not read: {shown}", file=out, flush=True)
    val_idx = np.arange(k_train, k_train + k_val, dtype=np.int64) if val else None
    return ImageData(dataset=ds, val_idx=val_idx, prep=prep, record=record, files=files)


# ---------------------------------------------------------------------------------------------- the run's cache

def _request(opts: ImageOptions, want_shape: tuple[int, int, int] | None) -> list[Any]:
    """The size and channels asked for (None: chosen from the folder), as the cache key records them."""
    if want_shape is not None:
        return [[int(want_shape[0]), int(want_shape[1])], int(want_shape[2])]
    return [[int(v) for v in opts.size] if opts.size else None, opts.channels]


def _cache_key(record: dict[str, Any], seed: int, root: Path, request: list[Any]) -> dict[str, Any]:
    keys = ("size", "channels", "resize", "test_fraction", "skip_bad", "fingerprint")
    return {"version": CACHE_VERSION, "root": str(root), "seed": int(seed), "request": request,
            **{k: record.get(k) for k in keys}}


def write_cache(path: Path, data: ImageData, seed: int, request: list[Any] | None = None) -> None:
    """RUN/images_cache.npz (atomic, no pickle) and RUN/images_split.json."""
    ds = data.dataset
    request = request if request is not None else [list(data.prep.size), data.prep.channels]
    meta = {"key": _cache_key(data.record, seed, Path(ds.source), request), "record": data.record,
            "class_names": list(ds.class_names), "files": data.files}
    arrays = {"x_train": ds.x_train, "y_train": ds.y_train, "x_test": ds.x_test, "y_test": ds.y_test,
              "val_idx": data.val_idx if data.val_idx is not None else np.zeros(0, np.int64),
              "has_val": np.array(data.val_idx is not None),
              "meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
    with atomic_writer(path) as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    atomic_write_json(path.parent / SPLIT_FILE, {"root": ds.source, "split": data.record["split"], **data.files})


def read_cache(path: Path) -> tuple[ImageData, dict[str, Any]] | None:
    """(the cached ImageData, the key it was made under), or None when the file is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test", "val_idx", "has_val")}
        rec, key = meta["record"], meta["key"]
        prep = ImagePrep.from_dict(rec)
        ds = Dataset(name="images", x_train=arrays["x_train"], y_train=arrays["y_train"], x_test=arrays["x_test"],
                     y_test=arrays["y_test"], class_names=tuple(meta["class_names"]), source=key["root"])
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, EOFError, zipfile.BadZipFile):
        return None  # never trusted half-way: decoded again
    val_idx = arrays["val_idx"] if bool(arrays["has_val"]) else None
    return ImageData(dataset=ds, val_idx=val_idx, prep=prep, record=rec, files=meta["files"]), key


def _cache_ok(key: dict[str, Any], opts: ImageOptions, seed: int, scan: FolderScan | None,
              want_shape: tuple[int, int, int] | None, strict: bool = False) -> bool:
    """Whether a cache made under ``key`` holds what these options give. ``strict`` (a new run): asked for
    the same way too, so a size chosen from the folder is never taken for one a model asked for."""
    want = {"version": CACHE_VERSION, "seed": int(seed), "resize": opts.resize, "test_fraction": opts.test_fraction,
            "skip_bad": opts.skip_bad}
    if any(key.get(k) != v for k, v in want.items()):
        return False
    if scan is not None and (key.get("fingerprint") != scan.fingerprint or key.get("root") != str(scan.root)):
        return False
    if strict and key.get("request") != _request(opts, want_shape):
        return False
    size = (want_shape[0], want_shape[1]) if want_shape else opts.size
    channels = want_shape[2] if want_shape else opts.channels
    if size is not None and [int(v) for v in size] != list(key.get("size") or []):
        return False
    return channels is None or int(channels) == key.get("channels")


def image_data_for_run(cache: Path, opts: ImageOptions, *, seed: int, want_shape: tuple[int, int, int] | None = None,
                       progress: bool = True, out: TextIO | None = None,
                       existing_run: bool = False) -> ImageData:
    """The run's decoded images: from ``cache`` when it matches the folder and options, else decoded again
    (and the cache rewritten). ``existing_run`` (a run opened again, with its recorded options): a folder
    that is gone is fine while the cache holds the data. A new run takes a cache only if it was asked for
    the same way (the same size, or both chosen from the folder)."""
    out = out or sys.stdout
    root = Path(opts.root).expanduser()
    if not root.is_dir() and existing_run:
        got = read_cache(cache)
        if got is not None and _cache_ok(got[1], opts, seed, None, want_shape):
            return got[0]
        raise MissingError(f"the run's image folder {root} is gone and its decoded cache {cache} is "
                           f"{'missing or unreadable' if got is None else 'for other options'}; put the folder back")
    scan = scan_folder(root)
    got = read_cache(cache) if cache.is_file() else None
    if got is not None and _cache_ok(got[1], opts, seed, scan, want_shape, strict=not existing_run):
        return got[0]
    if got is not None:
        print(f"note: {scan.root} or the image options changed since {cache} was written; decoding again",
              file=out, flush=True)
    data = load_image_folder(opts, seed=seed, want_shape=want_shape, progress=progress, out=out, scan=scan)
    write_cache(cache, data, seed, _request(opts, want_shape) if not existing_run else None)
    return data


def options_from_record(root: str, rec: dict[str, Any]) -> ImageOptions:
    """The ImageOptions a run was made with, from run.json's data_dir and "images"."""
    return ImageOptions(root=Path(root), size=tuple(rec["size"]), channels=int(rec["channels"]),  # type: ignore[arg-type]
                        resize=str(rec["resize"]), skip_bad=bool(rec["skip_bad"]),
                        test_fraction=float(rec["test_fraction"]))
