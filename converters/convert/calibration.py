"""The images int8 artifacts are calibrated on: the run's calibration split, or a folder of unlabelled images.

`edgekit convert --calib-images DIR` decodes the JPEG/PNG/BMP/GIF files under DIR (any depth, no labels)
with the one decoder (edge.artifacts.images.load_image) at the run's input shape and resize method;
`--calib-size N` keeps at most N images. Each set is identified by the sha256 of its pixels: an int8
artifact built from another set is not unchanged (converters.convert.record), so it is rebuilt.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, TextIO

import numpy as np

from edge.core.errors import MissingError, UsageError

RUN = "run"  # CalibrationSet.source: the run's calibration split (edgekit train --calib-size)
FOLDER = "folder"  # CalibrationSet.source: --calib-images DIR


@dataclass(frozen=True)
class CalibrationOptions:
    """Where int8 calibration images come from: ``images`` a folder (None: the run's split), at most ``size``."""

    images: Path | None = None
    size: int | None = None  # None: as many as the run's calib_size (run.json splits)
    skip_bad: bool = False  # leave undecodable files of ``images`` out (each reported) instead of stopping

    def __post_init__(self) -> None:
        if self.size is not None and self.size < 1:
            raise UsageError(f"--calib-size must be >= 1, got {self.size}")
        if self.skip_bad and self.images is None:
            raise UsageError("--skip-bad applies to a calibration folder only: add --calib-images DIR")


@dataclass(frozen=True)
class CalibrationSet:
    """The calibration images (uint8 N, H, W, C: raw pixels, as every artifact takes) and where they came from."""

    images: np.ndarray
    source: str  # RUN | FOLDER
    available: int  # images the source had: the split's size, or the image files found in the folder
    seed: int = 0  # of the sample, when fewer than ``available`` are kept
    folder: str | None = None
    resize: str | None = None  # the resize method a folder's images were decoded with
    skipped: tuple[str, ...] = ()  # files of the folder that could not be decoded (--skip-bad)

    @property
    def count(self) -> int:
        return int(len(self.images))

    @cached_property
    def sha256(self) -> str:
        """The set's identity: its pixels (and shape); the same images in the same order give the same hash."""
        h = hashlib.sha256(repr(tuple(int(v) for v in self.images.shape)).encode())
        h.update(np.ascontiguousarray(self.images, dtype=np.uint8).tobytes())
        return h.hexdigest()

    @property
    def whole_split(self) -> bool:
        """The run's whole calibration split: what every int8 artifact was calibrated on before --calib-images."""
        return self.source == RUN and self.count == self.available

    def record(self) -> dict[str, Any]:
        """What manifest.json's extra "calibration" records for each calibrated artifact."""
        rec: dict[str, Any] = {"source": self.source, "images": self.count, "available": self.available,
                               "sha256": self.sha256, "selection": self.selection, "description": self.describe()}
        if self.folder is not None:
            rec.update(folder=self.folder, resize=self.resize, skipped=len(self.skipped))
        return rec

    @property
    def selection(self) -> str:
        """"all" (every image of the source; of a folder, every one that decoded), or how the sample was drawn."""
        if self.count + len(self.skipped) >= self.available:
            return "all"
        return f"a sample of {self.count} of {self.available}, seeded by the run's seed {self.seed}"

    def describe(self) -> str:
        """'all 64 images of the run's calibration split', 'a seeded sample of 20 of the 400 images in DIR (...)'."""
        if self.source == RUN:
            where = "the run's calibration split"
            how = ""
        else:
            where = f"the images in {self.folder}"
            bad = f"; {len(self.skipped)} bad file(s) skipped" if self.skipped else ""
            how = f" ({self.resize} resize{bad})"
        if self.selection == "all":
            return f"all {self.count} image(s) of {where}{how}"
        return f"a seeded sample (seed {self.seed}) of {self.count} of the {self.available} image(s) of {where}{how}"


def same_set(recorded: Mapping[str, Any] | None, current: CalibrationSet) -> bool:
    """Whether an artifact calibrated as ``recorded`` (manifest extra; None: built before sets were recorded,
    on the run's whole split) was calibrated on ``current``."""
    if recorded is None:
        return current.whole_split
    return recorded.get("sha256") == current.sha256


def _sample(n: int, keep: int, seed: int) -> np.ndarray:
    """The positions of ``keep`` of ``n`` items, a seeded random sample in their original order."""
    return np.sort(np.random.default_rng(seed).choice(n, size=keep, replace=False))


def from_split(x_calib: np.ndarray, size: int | None, seed: int) -> CalibrationSet:
    """The run's calibration split, or a seeded sample of ``size`` of it (an image run's rows are class-sorted:
    the first N would be the first classes)."""
    n = len(x_calib)
    if n == 0:
        raise UsageError("the run's calibration split is empty (edgekit train --calib-size 0?); pass "
                         "--calib-images DIR, a folder of images, to calibrate the int8 artifacts")
    x = x_calib if size is None or size >= n else x_calib[_sample(n, size, seed)]
    return CalibrationSet(images=np.asarray(x, dtype=np.uint8), source=RUN, available=n, seed=seed)


def from_folder(folder: Path, shape: tuple[int, int, int], resize: str, size: int, seed: int, *,
                skip_bad: bool = False, progress: bool = True, out: TextIO | None = None) -> CalibrationSet:
    """At most ``size`` images under ``folder`` (any depth; JPEG, PNG, BMP, GIF), decoded at ``shape`` (H, W, C).

    The set is in relative-path order; with more than ``size`` files, a seeded sample (``seed``: the run's). A file that
    cannot be decoded stops with an error naming it; with ``skip_bad`` it is reported and the next file of the
    sample's order takes its place.
    """
    from converters.data.images import decode_rows, list_images
    from edge.artifacts.images import IMAGE_SUFFIXES, ImagePrep

    out = out or sys.stdout
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MissingError(f"calibration folder {root} {'is not a folder' if root.exists() else 'does not exist'}; "
                           "pass --calib-images a folder of images (any depth, no labels needed)")
    root = root.resolve()
    found, ignored = list_images(root)
    files = sorted(found)  # by relative path: the set's order, and the order the seeded sample draws from
    if not files:
        raise UsageError(f"calibration folder {root} holds no image ({', '.join(IMAGE_SUFFIXES)}) at any depth"
                         + (f"; {len(ignored)} other file(s), e.g. {ignored[0]}" if ignored else "")
                         + "; put images in it, or leave out --calib-images to calibrate on the run's training images")
    if ignored:
        print(f"note: {len(ignored)} file(s) in {root} are not images by name and were not read, e.g. {ignored[0]}",
              file=out, flush=True)
    prep = ImagePrep(size=(int(shape[0]), int(shape[1])), channels=int(shape[2]), resize=resize)
    # Decode in a seeded order; the first `size` that decode are the set (all of them without bad files).
    order = np.random.default_rng(seed).permutation(len(files)) if len(files) > size else np.arange(len(files))
    kept_pos: list[int] = []
    parts: list[np.ndarray] = []
    skipped: list[str] = []
    start = 0
    while len(kept_pos) < size and start < len(order):
        take = order[start:start + size - len(kept_pos)]
        start += len(take)
        rows = [(files[i], 0) for i in take]
        x, _, kept, bad = decode_rows(root, rows, prep, skip_bad=skip_bad, progress=progress, out=out)
        parts.append(x)
        kept_pos += [int(take[k]) for k in kept]
        skipped += [b["file"] for b in bad]
    if not kept_pos:
        raise UsageError(f"no file in calibration folder {root} could be decoded ({len(skipped)} bad file(s) "
                         "skipped, listed above); put JPEG, PNG, BMP or GIF images in it")
    if skipped:
        print(f"skip-bad: skipped {len(skipped)} calibration file(s) in {root} (listed above)", file=out, flush=True)
    x = np.concatenate(parts)[np.argsort(kept_pos)]  # in path order: the set does not depend on how it was read
    return CalibrationSet(images=x, source=FOLDER, available=len(files), seed=seed, folder=str(root), resize=resize,
                          skipped=tuple(skipped))


def for_run(opts: CalibrationOptions, meta: Mapping[str, Any], x_calib: np.ndarray | None, *,
            progress: bool = True, out: TextIO | None = None) -> CalibrationSet:
    """The calibration set ``opts`` asks for in the run described by ``meta`` (run.json); ``x_calib``: the run's
    calibration split (needed without ``opts.images``)."""
    seed = int(meta.get("seed", 0))
    if opts.images is None:
        if x_calib is None:
            raise ValueError("for_run: the run's calibration split is needed without --calib-images")
        return from_split(x_calib, opts.size, seed)
    shape = meta.get("input_shape")
    if not isinstance(shape, (list, tuple)) or len(shape) != 3:
        raise UsageError(f"the run's run.json has no input_shape [H, W, C] ({shape!r}); make the run again")
    images = meta.get("images")
    resize = str(images.get("resize", "bilinear")) if isinstance(images, dict) else "bilinear"
    size = opts.size if opts.size is not None else int((meta.get("splits") or {}).get("calib_size", 500) or 500)
    return from_folder(opts.images, (int(shape[0]), int(shape[1]), int(shape[2])), resize, size, seed,
                       skip_bad=opts.skip_bad, progress=progress, out=out)
