"""Write a named dataset out as an image folder (OUT/train/<class>/*.jpg, OUT/test/<class>/*.jpg), for users and tests.

    python -m converters.data.export_folder fashion_mnist OUT --per-class 100 --test-per-class 20 --format jpg

Class folder names are made filesystem-safe ("T-shirt/top" -> "T-shirt_top"); each file is written atomically;
a non-empty OUT is refused unless --force (which writes over files of the same name and leaves the others).
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from edge.core.atomic import atomic_write_bytes
from edge.core.errors import EdgekitError, UsageError

FORMATS = {"jpg": "JPEG", "png": "PNG", "bmp": "BMP", "gif": "GIF"}


def safe_name(name: str) -> str:
    """A class name as a folder name: path separators and other unsafe characters become "_"."""
    s = re.sub(r"[^\w.\- ]", "_", name.strip()).strip(" ")
    if s in ("", ".", ".."):
        s = "_" + s.replace(".", "_")
    return s


def folder_names(class_names: tuple[str, ...]) -> list[str]:
    """Safe, distinct folder names, one per class. An image-folder run labels the classes in the folders'
    sorted order (as Keras does), which need not be the dataset's own label order."""
    names: list[str] = []
    for c in class_names:
        n, k = safe_name(c), 2
        while n.lower() in (m.lower() for m in names):  # distinct on case-insensitive filesystems too
            n, k = f"{safe_name(c)}_{k}", k + 1
        names.append(n)
    return names


def _encode(img: np.ndarray, fmt: str, size: tuple[int, int] | None, color: str) -> bytes:
    from PIL import Image

    im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    im = im.convert("L" if color == "gray" else "RGB") if color != "keep" else im
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), resample=Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, FORMATS[fmt], **({"quality": 95} if fmt == "jpg" else {}))
    return buf.getvalue()


def _pick(y: np.ndarray, num_classes: int, per_class: int) -> list[np.ndarray]:
    return [np.flatnonzero(y == c)[:per_class] for c in range(num_classes)]


def export_folder(dataset: str, out: Path, per_class: int, test_per_class: int, fmt: str = "jpg", *,
                  flat: bool = False, force: bool = False, data_dir: str | None = None,
                  size: tuple[int, int] | None = None, color: str = "keep",
                  say: Callable[[str], None] = print) -> dict[str, int]:
    """Write the first ``per_class`` training and ``test_per_class`` test images of each class; returns counts."""
    from converters.data.datasets import load_dataset

    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; available: {sorted(FORMATS)}")
    if per_class < 1 or test_per_class < 0:
        raise UsageError(f"--per-class must be >= 1 and --test-per-class >= 0, got {per_class}, {test_per_class}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is not a folder; pass a new folder for the images")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"{out} is not empty; pass a new folder, or --force to write into it")
    ds = load_dataset(dataset, data_dir)
    names = folder_names(ds.class_names)
    counts = {"train": 0, "test": 0}
    for part, x, y, n in (("train", ds.x_train, ds.y_train, per_class), ("test", ds.x_test, ds.y_test, test_per_class)):
        if n == 0:
            continue
        for c, rows in enumerate(_pick(y, len(names), n)):
            folder = out / names[c] if flat else out / part / names[c]
            for i in rows:
                atomic_write_bytes(folder / f"{part}_{int(i):05d}.{fmt}", _encode(x[i], fmt, size, color))
                counts[part] += 1
    say(f"wrote {counts['train']} train and {counts['test']} test images of {len(names)} classes of {dataset} "
        f"to {out} ({'one folder per class' if flat else 'train/ and test/'}, {fmt})")
    return counts


def _size(text: str) -> tuple[int, int]:
    vals = [int(v) for v in text.lower().split("x")]
    return (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m converters.data.export_folder", description=__doc__.split("\n")[0])
    p.add_argument("dataset", help="fashion_mnist, mnist or cifar10")
    p.add_argument("out", type=Path, help="the folder to write (new, or empty)")
    p.add_argument("--per-class", type=int, default=100, help="training images per class (default 100)")
    p.add_argument("--test-per-class", type=int, default=20, help="test images per class (default 20)")
    p.add_argument("--format", choices=sorted(FORMATS), default="jpg")
    p.add_argument("--flat", action="store_true",
                   help="no train/ and test/: OUT/<class>/ holds both (edgekit then makes the split)")
    p.add_argument("--size", type=_size, metavar="HxW|N", help="resize the images to this size (bilinear)")
    p.add_argument("--color", choices=["keep", "gray", "rgb"], default="keep", help="write gray or RGB files")
    p.add_argument("--data-dir", help="where the dataset files are (as for edgekit train)")
    p.add_argument("--force", action="store_true", help="write into a non-empty OUT")
    a = p.parse_args(argv)
    try:
        export_folder(a.dataset, a.out, a.per_class, a.test_per_class, a.format, flat=a.flat, force=a.force,
                      data_dir=a.data_dir, size=a.size, color=a.color)
    except EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
