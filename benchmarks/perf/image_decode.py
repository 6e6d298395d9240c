"""Image decoding speed: edgekit's decode + colour + resize (edge.artifacts.images) vs a bare Pillow loop, same files.

    .venv/bin/python -m benchmarks.perf.image_decode --images DIR [--size 32x32] [--color rgb] [--repeat 5]

Both loops read the same image files (every .jpg/.jpeg/.png/.bmp/.gif under DIR, sorted), pinned to one
core, interleaved in ABBA order so drift hits both alike, after one untimed pass that warms the page cache.
The bare loop is what a user would write: ``Image.open``, ``convert``, ``resize``, ``np.asarray``. The
kit's path adds its checks (format, mode, truncation) and writes into a preallocated uint8 batch, as the
dataset loader does. It prints images/s of each (median over rounds) and their ratio, and the ratio of
the best rounds (the least disturbed on a shared machine); the goal is a ratio of at least 0.8.
To make a folder: ``python -m converters.data.export_folder fashion_mnist DIR``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.artifacts.images import RESIZE_METHODS, is_image_file, load_image, resample
from edge.core.errors import EdgekitError, UsageError

GOAL = 0.8


def list_images(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p) and not p.name.startswith("."))
    if not files:
        raise UsageError(f"no image files (.jpg .jpeg .png .bmp .gif) under {root}; pass --images DIR with some "
                         "(python -m converters.data.export_folder fashion_mnist DIR writes a folder)")
    return files


def pin_one_core() -> int | None:
    """Run on one core (the first this process may use), so the numbers do not depend on a busy neighbour."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def kit_loop(files: list[Path], size: tuple[int, int], channels: int, resize: str) -> tuple[float, np.ndarray]:
    """Seconds for edgekit's path over ``files``, into one preallocated batch (returned)."""
    out = np.empty((len(files), size[0], size[1], channels), dtype=np.uint8)
    t0 = time.perf_counter()
    for i, f in enumerate(files):
        load_image(f, size, channels, resize, out=out[i])
    return time.perf_counter() - t0, out


def bare_loop(files: list[Path], size: tuple[int, int], channels: int, resize: str) -> tuple[float, list[np.ndarray]]:
    """Seconds for the bare Pillow loop over ``files`` (open, convert, resize, np.asarray)."""
    from PIL import Image

    mode, wh, flt = ("L" if channels == 1 else "RGB"), (size[1], size[0]), resample(resize)
    arrays = []
    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            arrays.append(np.asarray(im.convert(mode).resize(wh, resample=flt)))
    return time.perf_counter() - t0, arrays


def measure(files: list[Path], size: tuple[int, int], channels: int, resize: str, repeat: int) -> dict[str, Any]:
    kit_loop(files, size, channels, resize)  # warm: page cache, Pillow's plugins, allocator
    _, bare = bare_loop(files, size, channels, resize)
    _, mine = kit_loop(files, size, channels, resize)
    same = all(np.array_equal(m.reshape(b.shape), b) for m, b in zip(mine, bare))
    kit_s: list[float] = []
    bare_s: list[float] = []
    for r in range(repeat):
        order = (kit_loop, bare_loop) if r % 2 == 0 else (bare_loop, kit_loop)
        for fn in order:
            t, _ = fn(files, size, channels, resize)
            (kit_s if fn is kit_loop else bare_s).append(t)
    n = len(files)
    kit_ips = [n / t for t in kit_s]
    bare_ips = [n / t for t in bare_s]
    ratio = statistics.median(kit_ips) / statistics.median(bare_ips)
    return {"files": n, "size": list(size), "channels": channels, "resize": resize, "repeat": repeat,
            "kit_images_per_s": kit_ips, "bare_images_per_s": bare_ips,
            "kit_median": statistics.median(kit_ips), "bare_median": statistics.median(bare_ips),
            "ratio": ratio, "ratio_best": max(kit_ips) / max(bare_ips), "goal": GOAL, "same_pixels": same}


def _size(text: str) -> tuple[int, int]:
    try:
        vals = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW or N, got {text!r}") from None
    if len(vals) == 1:
        vals *= 2
    if len(vals) != 2 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW or N, got {text!r}")
    return vals[0], vals[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.image_decode", description=__doc__.split("\n")[0])
    p.add_argument("--images", type=Path, required=True, help="a folder of image files (searched recursively)")
    p.add_argument("--size", type=_size, default=(32, 32), metavar="HxW|N", help="output size (default 32x32)")
    p.add_argument("--color", choices=["gray", "rgb"], default="rgb", help="output channels (default rgb)")
    p.add_argument("--resize", choices=list(RESIZE_METHODS), default="bilinear")
    p.add_argument("--repeat", type=int, default=7, help="timed rounds of each loop (default 7)")
    p.add_argument("--limit", type=int, help="use only the first N files")
    p.add_argument("--json", type=Path, help="also write the numbers to this file")
    a = p.parse_args(argv)
    try:
        files = list_images(a.images)[: a.limit]
        core = pin_one_core()
        res = measure(files, a.size, 1 if a.color == "gray" else 3, a.resize, max(1, a.repeat))
    except EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res["core"] = core
    print(f"{res['files']} files from {a.images} -> {a.size[0]}x{a.size[1]}x{res['channels']} ({a.resize}), "
          f"one core ({core}), {res['repeat']} rounds each, ABBA")
    print(f"  edgekit (edge.artifacts.images): {res['kit_median']:9.0f} images/s  "
          f"(rounds: {', '.join(f'{v:.0f}' for v in res['kit_images_per_s'])})")
    print(f"  bare Pillow loop:                {res['bare_median']:9.0f} images/s  "
          f"(rounds: {', '.join(f'{v:.0f}' for v in res['bare_images_per_s'])})")
    met = "met" if res["ratio"] >= GOAL else "MISSED"
    print(f"  ratio edgekit / bare: {res['ratio']:.2f}x of the medians (goal >= {GOAL}x: {met}), "
          f"{res['ratio_best']:.2f}x of the best rounds; same pixels: {res['same_pixels']}")
    if a.json:
        from edge.core.atomic import atomic_write_json

        atomic_write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
