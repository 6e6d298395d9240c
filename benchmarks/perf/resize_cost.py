"""What resizing costs a variant at another input size than its bundle's images, measured side by side in one run.

    .venv/bin/python -m benchmarks.perf.resize_cost BUNDLE --table TABLE.json [--profile P] [--rounds 7]

For each input size of the table's variants that differs from the bundle's images (a family's
``resolution``), on the bundle's own evaluation images, pinned to one core:

- **bare**: a bare call of the library the kit resizes with, on the same image: OpenCV's ``cv2.resize``
  with the interpolation the kit picks (area when shrinking, bilinear when enlarging), in its fastest
  form (positional arguments, 10 % faster than ``interpolation=``);
- **Pillow**: the same resize with Pillow (bilinear), the library the kit decodes files with, for scale;
- **kit**: ``edge.artifacts.images.resize_pixels`` (what training, the canary, the benchmark and serving
  call), and the ratio kit/bare, against the goal of at most 1.2;
- **invoke**: each variant of that size's table p50 (resize, input preparation and invoke, as
  ``edgekit bench`` times a variant that resizes), and the resize's share of it.

Then every variant of the table is served in process (``AdaptiveClassifier``, a static policy, requests
back to back from the bundle's images at their own size) and, with ``--daemon``, by ``edgekit serve``
(pinned to one core, the client on the other, one binary request at a time at rest: no contention, no
queue), and its median inference time over the table's p50 is printed: a variant that resizes should
stay within 1.1 of its table, because the table already counts the resize. The bare and kit loops
alternate over ``--rounds`` rounds; medians are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Sequence

import numpy as np

from benchmarks.perf.image_decode import pin_one_core
from edge.artifacts.images import resize_pixels
from edge.core.errors import EdgekitError, UsageError

GOAL_KIT = 1.2  # the kit's resize at most this many times a bare library call
GOAL_SERVED = 1.1  # a resizing variant's served median over its table p50


def bare_resize(images: Sequence[np.ndarray], size: tuple[int, int]) -> float:
    """Seconds per image for a bare ``cv2.resize`` call on each (H, W, C) image."""
    import cv2

    h, w = size
    shrink = h * w < images[0].shape[0] * images[0].shape[1]
    flag = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    t0 = time.perf_counter()
    for img in images:
        cv2.resize(img, (w, h), None, 0, 0, flag)  # positional: OpenCV's fastest form of the call
    return (time.perf_counter() - t0) / len(images)


def pillow_resize(images: Sequence[np.ndarray], size: tuple[int, int]) -> float:
    """Seconds per image for Pillow's bilinear resize (``fromarray``, ``resize``, ``np.asarray``)."""
    from PIL import Image

    h, w = size
    t0 = time.perf_counter()
    for img in images:
        im = Image.fromarray(img[:, :, 0], "L") if img.shape[-1] == 1 else Image.fromarray(img, "RGB")
        np.asarray(im.resize((w, h), Image.Resampling.BILINEAR))
    return (time.perf_counter() - t0) / len(images)


def kit_resize(images: Sequence[np.ndarray], size: tuple[int, int]) -> float:
    t0 = time.perf_counter()
    for img in images:
        resize_pixels(img, size)
    return (time.perf_counter() - t0) / len(images)


def resize_rounds(images: Sequence[np.ndarray], size: tuple[int, int], rounds: int) -> tuple[float, float, float]:
    """(bare, kit, Pillow) seconds per image, the medians over rounds in alternating order."""
    fns = (bare_resize, kit_resize, pillow_resize)
    times: dict = {fn: [] for fn in fns}
    for r in range(rounds):
        for fn in (fns if r % 2 == 0 else fns[::-1]):
            times[fn].append(fn(images, size))
    return tuple(statistics.median(times[fn]) for fn in fns)  # type: ignore[return-value]


def served_ratio(bundle: str, table_path: str, profile: str | None, variant: str, images: np.ndarray,
                 requests: int) -> float:
    """Median inference_ms over the table's p50 for ``variant`` served alone in process, back to back."""
    from edge.runtime.classifier import AdaptiveClassifier
    from edge.tables.table import SelectedTable

    table = SelectedTable.load(table_path)
    clf = AdaptiveClassifier.open(bundle, table_path, profile, policy=f"static:{variant}")
    try:
        for i in range(20):
            clf.classify(images[i % len(images)], deadline_ms=1e6)
        times = [clf.classify(images[i % len(images)], deadline_ms=1e6).inference_ms for i in range(requests)]
    finally:
        clf.close(drain=False)
    return float(np.median(times)) / table.row(variant).p50_ms


def daemon_ratio(bundle: str, table_path: str, profile: str | None, variant: str, images: np.ndarray,
                 requests: int, server: set[int] | None) -> float:
    """Median ``inference_ms`` the daemon reports over the table's p50 for ``variant`` (a static policy),
    one binary request at a time; the daemon pinned to ``server`` (the caller on another core)."""
    import tempfile
    from pathlib import Path

    from benchmarks.evaluate.daemon_proc import Daemon, serve_argv
    from edge.tables.table import SelectedTable
    from edge.v2.client import ClientConnection
    from edge.v2.client_codec import decode_infer_response, encode_infer_request

    logs = Path(tempfile.mkdtemp(prefix="edgekit-resize-"))
    d = Daemon(serve_argv(bundle, table_path, f"static:{variant}", profile, "best-effort", None), logs / "daemon.log",
               cpus=server)
    d.start()
    try:
        conn = ClientConnection(d.host, d.port)
        bodies = [encode_infer_request(images[i: i + 1], 60_000, binary=True) for i in range(len(images))]
        times = []
        for i in range(requests + 50):
            r = decode_infer_response(*conn.request("POST", "/v2/models/edgekit/infer", *bodies[i % len(bodies)]))
            if not r.ok:
                raise UsageError(f"the daemon answered {r.status}: {r.error}")
            if i >= 50:
                times.append(float(r.params["inference_ms"]))
        conn.close()
    finally:
        d.stop()
    return float(np.median(times)) / SelectedTable.load(table_path).row(variant).p50_ms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="a bundle (folder or .tar.gz) whose variants take other input sizes")
    p.add_argument("--table", required=True, help="its selected table (edgekit select) or one with all its variants")
    p.add_argument("--profile", default=None, help="device profile (default: the bundle's)")
    p.add_argument("--images", type=int, default=256, help="evaluation images per round (default 256)")
    p.add_argument("--rounds", type=int, default=15, help="alternating rounds of bare and kit resizes (default 15)")
    p.add_argument("--requests", type=int, default=400, help="requests per variant served in process (default 400)")
    p.add_argument("--daemon", action="store_true", help="also serve each variant through edgekit serve")
    a = p.parse_args(argv)
    try:
        return run(a)
    except EdgekitError as exc:
        print(f"resize_cost: {exc}", file=sys.stderr)
        return 2


def run(a: argparse.Namespace) -> int:
    from edge.bundle.reader import open_bundle
    from edge.tables.table import SelectedTable

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    core = pin_one_core()
    b = open_bundle(a.bundle, verify=False)
    table = SelectedTable.load(a.table)
    source = tuple(b.input_shape)
    images = b.eval_set(limit=a.images)[0]
    if not len(images):
        raise UsageError(f"{a.bundle} has no evaluation images")
    by_size: dict[tuple[int, int], list] = {}
    for row in table.rows:
        hw = tuple(int(v) for v in b.artifact(row.artifact_id).input.shape[1:3])
        by_size.setdefault(hw, []).append(row)
    others = sorted(s for s in by_size if s != source[:2])
    print(f"bundle {a.bundle}: images {source[0]}x{source[1]}x{source[2]}, {len(images)} per round, "
          f"{a.rounds} rounds, pinned to core {core}")
    if not others:
        print("no variant of the table takes another input size: nothing resizes")
        return 0
    print(f"{'size':>9}  {'cv2 us':>8}  {'kit us':>8}  {'kit/cv2':>8}  {'Pillow us':>9}  "
          "variants (table p50 ms, resize share)")
    ratios = []
    for hw in others:
        bare, kit, pil = resize_rounds(list(images), hw, a.rounds)
        ratios.append(kit / bare)
        rows = sorted(by_size[hw], key=lambda r: r.p50_ms)
        shares = ", ".join(f"{r.variant} ({r.p50_ms:.4f}, {r.resize_ms / r.p50_ms:.0%})" for r in rows if r.p50_ms)
        print(f"{hw[0]:>4}x{hw[1]:<4}  {bare * 1e6:8.2f}  {kit * 1e6:8.2f}  {kit / bare:8.2f}  {pil * 1e6:9.2f}  "
              f"{shares}")
    worst = max(ratios)
    print(f"goal kit resize <= {GOAL_KIT}x a bare cv2.resize call: worst {worst:.2f} -> "
          f"{'met' if worst <= GOAL_KIT else 'NOT met'}")
    print(f"served in process, back to back ({a.requests} requests each): median inference / table p50")
    served = []
    for row in sorted(table.rows, key=lambda r: r.p50_ms):
        ratio = served_ratio(a.bundle, a.table, a.profile, row.variant, images, a.requests)
        resizes = row.resize_ms > 0
        if resizes:
            served.append(ratio)
        print(f"  {row.variant}: {ratio:.2f}{'  (resizes)' if resizes else ''}")
    if served:
        print(f"goal served/table <= {GOAL_SERVED} for the variants that resize: worst {max(served):.2f} -> "
              f"{'met' if max(served) <= GOAL_SERVED else 'NOT met'}")
    if a.daemon:
        server = {cores[0]} if len(cores) > 1 else None
        if server is not None:
            os.sched_setaffinity(0, {cores[1]})  # the client on the other core
        print(f"served by the daemon at rest (daemon on cpu {sorted(server or [])}, client on cpu "
              f"{sorted(os.sched_getaffinity(0)) if server else 'the same'}), one request at a time, "
              f"{a.requests} each: median inference / table p50")
        via = []
        for row in sorted(table.rows, key=lambda r: r.p50_ms):
            ratio = daemon_ratio(a.bundle, a.table, a.profile, row.variant, images, a.requests, server)
            if row.resize_ms > 0:
                via.append(ratio)
            print(f"  {row.variant}: {ratio:.2f}{'  (resizes)' if row.resize_ms > 0 else ''}")
        if via:
            print(f"goal daemon served/table <= {GOAL_SERVED} for the variants that resize: worst {max(via):.2f} -> "
                  f"{'met' if max(via) <= GOAL_SERVED else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
