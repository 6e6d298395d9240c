"""What resizing costs a variant at another input size than its bundle's images, measured side by side in one run.

    .venv/bin/python -m benchmarks.perf.resize_cost BUNDLE --table TABLE.json [--profile P] [--rounds 7]
        [--daemon [--spin-us N]]

For each input size of the table's variants that differs from the bundle's images (a family's
``resolution``), on the bundle's own evaluation images, pinned to one core:

- **cv2**: a bare call of the library the kit resizes with, on the same image: OpenCV's ``cv2.resize``
  with the interpolation the kit picks (area when shrinking, bilinear when enlarging), in its fastest
  form (positional arguments, 10 % faster than ``interpolation=``), allocating its result;
- **cv2 dst**: the same call into a preallocated result (``dst``), the form serving calls;
- **kit**: the kit's resize as serving calls it, ``edge.artifacts.images.resizer`` (``resize_pixels``
  prepared once per variant and image shape, into the variant's buffer), against **cv2 dst**: the goal
  is at most 1.2 (like for like: both write into a buffer). Its ratio to the allocating call is printed too;
- **resize_pixels**: one call of ``edge.artifacts.images.resize_pixels`` per image (what training, the
  canary and the bundle call), checks included, against the allocating **cv2** call;
- **Pillow**: the same resize with Pillow (bilinear), the library the kit decodes files with, for scale;
- **invoke**: each variant of that size's table p50 (resize, input preparation and invoke, as
  ``edgekit bench`` times a variant that resizes), and the resize's share of it.

Then every variant of the table is served in process (``AdaptiveClassifier``, a static policy, requests
back to back from the bundle's images at their own size) and, with ``--daemon``, by ``edgekit serve``
(pinned to one core, the client on the other, one binary request at a time at rest: no contention, no
queue), and its median inference time over bench's own loop (side by side) and over the table's p50 is
printed: a variant that resizes should stay within 1.1 of its table, because the table already counts the
resize. For the daemon a third side runs bench's loop sleeping, before each run, as long as the daemon's
core waits between two requests (the client's round trip less the invoke): an invoke after an idle gap
pays cold caches, which the table's back-to-back p50 leaves out for every variant, resizing or not. With
``--spin-us N`` a fourth side is a second daemon of the same variant busy polling N µs after each answer
(``edgekit serve --spin-us``): its core stays awake between requests, as bench's back-to-back loop's does, so
its served median is compared with that loop and with the table's p50, the latency the runtime predicts a
request with after a spin. The bare and kit loops alternate over ``--rounds`` rounds; medians are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from benchmarks.perf.image_decode import pin_one_core
from edge.artifacts.images import resize_pixels, resizer
from edge.core.errors import EdgekitError, UsageError
from edge.serve.http.spin import check_spin_us

GOAL_KIT = 1.2  # the kit's resize at most this many times a bare library call
GOAL_SERVED = 1.1  # a resizing variant's served median over its table p50


def _flag(images: Sequence[np.ndarray], size: tuple[int, int]) -> int:
    import cv2

    shrink = size[0] * size[1] < images[0].shape[0] * images[0].shape[1]
    return cv2.INTER_AREA if shrink else cv2.INTER_LINEAR


def bare_resize(images: Sequence[np.ndarray], size: tuple[int, int]) -> float:
    """Seconds per image for a bare ``cv2.resize`` call on each (H, W, C) image, allocating its result."""
    import cv2

    h, w = size
    flag = _flag(images, size)
    t0 = time.perf_counter()
    for img in images:
        cv2.resize(img, (w, h), None, 0, 0, flag)  # positional: OpenCV's fastest form of the call
    return (time.perf_counter() - t0) / len(images)


def bare_resize_dst(images: Sequence[np.ndarray], size: tuple[int, int]) -> float:
    """Seconds per image for a bare ``cv2.resize`` call into one preallocated result."""
    import cv2

    h, w = size
    flag = _flag(images, size)
    dst = np.empty((h, w, images[0].shape[-1]), np.uint8)
    t0 = time.perf_counter()
    for img in images:
        cv2.resize(img, (w, h), dst, 0, 0, flag)
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
    """Seconds per image for the kit's resize as serving calls it: ``resizer``, prepared once (not timed)."""
    resize = resizer(images[0].shape, size)
    t0 = time.perf_counter()
    for img in images:
        resize(img)
    return (time.perf_counter() - t0) / len(images)


def pixels_resize(images: Sequence[np.ndarray], size: tuple[int, int]) -> float:
    """Seconds per image for one ``resize_pixels`` call per image (checks included, allocating)."""
    t0 = time.perf_counter()
    for img in images:
        resize_pixels(img, size)
    return (time.perf_counter() - t0) / len(images)


FNS = (bare_resize, bare_resize_dst, kit_resize, pixels_resize, pillow_resize)


def resize_rounds(images: Sequence[np.ndarray], size: tuple[int, int], rounds: int) -> dict:
    """{function: seconds per image}, the medians over rounds in alternating order."""
    times: dict = {fn: [] for fn in FNS}
    for r in range(rounds):
        for fn in (FNS if r % 2 == 0 else FNS[::-1]):
            times[fn].append(fn(images, size))
    return {fn: statistics.median(times[fn]) for fn in FNS}


class BenchSide:
    """One variant run as ``edgekit bench`` times it (``benchmarks.bench.measure.timed_loop`` over the bundle's
    images, each sample the resize, the input preparation and the invoke), so that serving can be compared with
    the table's measurement side by side, in one run, rather than with a table measured at another time."""

    def __init__(self, b, profile: str | None, row, images: np.ndarray):
        from device_profiles import load_profile
        from edge.artifacts.tensors import prepare_input, with_recorded_input
        from edge.backends import get_backend
        from edge.runtime.scheduler import InputPreparer

        prof = load_profile(profile or b.profile)
        setting = prof.setting(row.setting)
        rec = b.artifact(row.artifact_id)
        self.model = with_recorded_input(get_backend(setting.backend).load(b.artifact_path(row.artifact_id), setting),
                                         rec.input)
        resizes = tuple(images.shape[1:3]) != tuple(int(v) for v in rec.input.shape[1:3])
        self.prepare = InputPreparer(rec.input) if resizes else None
        self.inputs = [np.ascontiguousarray(img[None]) if resizes else prepare_input(img[None], rec.input)
                       for img in images[:64]]

    def round_ms(self, runs: int, idle_s: float = 0.0) -> list[float]:
        """``runs`` samples of bench's timed loop: back to back, as the table's p50, or with ``idle_s`` asleep
        before each run (the core idles between a daemon's requests as long as their round trip outside the
        invoke: a control for what that idling costs every variant, resizing or not)."""
        from benchmarks.bench.measure import timed_loop

        if idle_s <= 0:
            ns = timed_loop(self.model, self.inputs, min_runs=runs, min_seconds=0.0, prepare=self.prepare)
            return list(ns / 1e6)
        out = []
        for i in range(runs):
            time.sleep(idle_s)
            out.append(float(timed_loop(self.model, self.inputs, min_runs=1, min_seconds=0.0, start=i,
                                        prepare=self.prepare)[0]) / 1e6)
        return out

    def close(self) -> None:
        self.model.close()


def side_by_side(bench: BenchSide, serves: dict[str, Callable[[int], list[float]]], rounds: int, per_round: int,
                 bench_cpus: set[int] | None = None, idle_s: float = 0.0) -> dict[str, float]:
    """The median ms of each side: every one of ``serves`` (by name), ``bench`` (bench's back-to-back loop) and,
    with ``idle_s``, ``idle`` (bench's loop idling ``idle_s`` before each run); ``rounds`` rounds of
    ``per_round`` samples per side, the order rotated every round, bench rounds on ``bench_cpus`` when given
    (the daemon's core, idle meanwhile)."""
    samples: dict[str, list[float]] = {name: [] for name in [*serves, "bench", "idle"]}
    order = ["bench", *serves] + (["idle"] if idle_s > 0 else [])
    own = os.sched_getaffinity(0) if bench_cpus else None
    for r in range(rounds):
        for side in order[r % len(order):] + order[:r % len(order)]:
            if side in serves:
                samples[side] += serves[side](per_round)
                continue
            if bench_cpus:
                os.sched_setaffinity(0, bench_cpus)
            try:
                samples[side] += bench.round_ms(per_round, idle_s if side == "idle" else 0.0)
            finally:
                if own is not None:
                    os.sched_setaffinity(0, own)
    return {side: float(np.median(v)) for side, v in samples.items() if v}


@dataclass(frozen=True)
class Served:
    """One variant served alone: ``serve(n)`` sends n requests and returns the inference_ms of each, ``close``
    stops serving; ``gap_s`` is how long the server's core idles between two requests (0: back to back)."""

    serve: Callable[[int], list[float]]
    close: Callable[[], None]
    gap_s: float = 0.0


def inproc_server(bundle: str, table_path: str, profile: str | None, variant: str, images: np.ndarray) -> Served:
    """``variant`` served alone in process, back to back."""
    from edge.runtime.classifier import AdaptiveClassifier

    clf = AdaptiveClassifier.open(bundle, table_path, profile, policy=f"static:{variant}")
    state = {"i": 0}

    def serve(n: int) -> list[float]:
        out = []
        for _ in range(n):
            i = state["i"] = state["i"] + 1
            out.append(clf.classify(images[i % len(images)], deadline_ms=1e6).inference_ms)
        return out

    serve(20)
    return Served(serve, lambda: clf.close(drain=False))


def daemon_server(bundle: str, table_path: str, profile: str | None, variant: str, images: np.ndarray,
                  server: set[int] | None, spin_us: int = 0) -> Served:
    """``variant`` (a static policy) behind ``edgekit serve`` pinned to ``server`` (busy polling ``spin_us`` after
    each answer, if any), one binary request at a time from this process; the inference_ms are the daemon's, the
    gap the median of the warm-up requests' round trips less their invoke."""
    import tempfile
    from pathlib import Path

    from benchmarks.evaluate.daemon_proc import Daemon, serve_argv
    from edge.v2.client import ClientConnection
    from edge.v2.client_codec import decode_infer_response, encode_infer_request

    logs = Path(tempfile.mkdtemp(prefix="edgekit-resize-"))
    argv = serve_argv(bundle, table_path, f"static:{variant}", profile, "best-effort", None, spin_us)
    d = Daemon(argv, logs / "daemon.log", cpus=server)
    d.start()
    conn = ClientConnection(d.host, d.port)
    bodies = [encode_infer_request(images[i: i + 1], 60_000, binary=True) for i in range(len(images))]
    state = {"i": 0}

    gaps: list[float] = []  # per request: the client's round trip less the invoke (s), the daemon's core's gap

    def serve(n: int) -> list[float]:
        out = []
        pc = time.perf_counter
        for _ in range(n):
            i = state["i"] = state["i"] + 1
            t0 = pc()
            raw = conn.request("POST", "/v2/models/edgekit/infer", *bodies[i % len(bodies)])
            rtt = pc() - t0
            r = decode_infer_response(*raw)
            if not r.ok:
                raise UsageError(f"the daemon answered {r.status}: {r.error}")
            out.append(float(r.params["inference_ms"]))
            gaps.append(rtt - out[-1] / 1e3)
        return out

    def close() -> None:
        conn.close()
        d.stop()

    try:
        serve(50)
    except BaseException:
        close()
        raise
    return Served(serve, close, float(np.median(gaps)))


@dataclass(frozen=True)
class ServedRatios:
    """Served over each reference, for the variants that resize: ``bench`` (bench's back-to-back loop, side by
    side), ``idle`` (bench idling as the daemon's core does), ``gap`` (the table's ``gap_p50_ms``), ``spin`` (a
    daemon busy polling, over bench's back-to-back loop: its core kept awake as that loop's is); [] where not run."""

    bench: list[float]
    idle: list[float]
    gap: list[float]
    spin: list[float]


@dataclass(frozen=True)
class ResizeCostOptions:
    """What one run of the benchmark measures (its command line, checked)."""

    bundle: str
    table: str
    profile: str | None = None
    images: int = 256  # evaluation images per round
    rounds: int = 15  # alternating rounds of bare and kit resizes
    requests: int = 400  # requests per variant served (and bench runs beside them)
    serve_rounds: int = 8  # alternating rounds of serving and bench's timed loop per variant
    daemon: bool = False  # also serve each variant through edgekit serve
    spin_us: int = 0  # with daemon: also through a daemon busy polling this long after each answer

    def __post_init__(self) -> None:
        for name in ("images", "rounds", "requests", "serve_rounds"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        check_spin_us(self.spin_us, "--spin-us")
        if self.spin_us and not self.daemon:
            raise UsageError("--spin-us busy-polls the daemon: add --daemon")


def served_rows(a: ResizeCostOptions, b, table, images: np.ndarray, via: str, server: set[int] | None
                ) -> ServedRatios:
    """Print each variant's served median over its bench median (side by side) and over its table p50, and
    for the daemon over bench idling as long as the daemon's core does between requests and over the table's
    latency at a request's cadence (``gap_p50_ms``, when the table has it), and with ``--spin-us`` a daemon busy
    polling beside the sleeping one; returns those ratios of the variants that resize."""
    out = ServedRatios([], [], [], [])
    per_round = max(1, a.requests // a.serve_rounds)
    spin_us = a.spin_us if via == "daemon" else 0
    for row in sorted(table.rows, key=lambda r: r.p50_ms):
        bench = BenchSide(b, a.profile, row, images)
        servers: dict[str, Served] = {}  # "serve" (sleeping between requests) and, with --spin-us, "spin"
        try:
            if via == "daemon":
                servers["serve"] = daemon_server(a.bundle, a.table, a.profile, row.variant, images, server)
                if spin_us:
                    servers["spin"] = daemon_server(a.bundle, a.table, a.profile, row.variant, images, server, spin_us)
            else:
                servers["serve"] = inproc_server(a.bundle, a.table, a.profile, row.variant, images)
            gap = servers["serve"].gap_s
            med = side_by_side(bench, {name: srv.serve for name, srv in servers.items()}, a.serve_rounds,
                               per_round, server if via == "daemon" else None, gap)
        finally:
            for srv in servers.values():
                srv.close()
            bench.close()
        got, ref, idle, spun = med["serve"], med["bench"], med.get("idle"), med.get("spin")
        resizes = row.resize_ms > 0
        cadence = via == "daemon" and row.gap_p50_ms > 0
        if resizes:
            out.bench.append(got / ref)
            out.idle.extend([got / idle] if idle else [])
            out.gap.extend([got / row.gap_p50_ms] if cadence else [])
            out.spin.extend([spun / ref] if spun else [])
        also = (f", bench idling {gap * 1e6:.0f} us before each run {idle * 1e3:.1f} us: {got / idle:.2f}"
                if idle else "")
        at_gap = f"; at 0.5 ms gaps {row.gap_p50_ms * 1e3:.1f} us: {got / row.gap_p50_ms:.2f}" if cadence else ""
        busy = (f"; busy polling {spin_us} us: served {spun * 1e3:.1f} us, over bench {spun / ref:.2f}, over table "
                f"p50 {spun / row.p50_ms:.2f}") if spun else ""
        print(f"  {row.variant}: served {got * 1e3:.1f} us, bench {ref * 1e3:.1f} us: {got / ref:.2f}{also}  "
              f"(table p50 {row.p50_ms * 1e3:.1f} us: {got / row.p50_ms:.2f}{at_gap}){busy}"
              f"{'  resizes' if resizes else ''}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="a bundle (folder or .tar.gz) whose variants take other input sizes")
    p.add_argument("--table", required=True, help="its selected table (edgekit select) or one with all its variants")
    p.add_argument("--profile", default=None, help="device profile (default: the bundle's)")
    p.add_argument("--images", type=int, default=256, help="evaluation images per round (default 256)")
    p.add_argument("--rounds", type=int, default=15, help="alternating rounds of bare and kit resizes (default 15)")
    p.add_argument("--requests", type=int, default=400,
                   help="requests per variant served (and bench runs beside them) (default 400)")
    p.add_argument("--serve-rounds", type=int, default=8,
                   help="alternating rounds of serving and bench's timed loop per variant (default 8)")
    p.add_argument("--daemon", action="store_true", help="also serve each variant through edgekit serve")
    p.add_argument("--spin-us", type=int, default=0,
                   help="with --daemon, also serve each variant through a daemon busy polling this many us after "
                        "each answer (edgekit serve --spin-us), side by side with the sleeping one (default 0: not)")
    args = p.parse_args(argv)
    try:
        a = ResizeCostOptions(args.bundle, args.table, args.profile, args.images, args.rounds, args.requests,
                              args.serve_rounds, args.daemon, args.spin_us)
    except UsageError as exc:
        p.error(str(exc))
    try:
        return run(a)
    except EdgekitError as exc:
        print(f"resize_cost: {exc}", file=sys.stderr)
        return 2


def run(a: ResizeCostOptions) -> int:
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
    print(f"{'size':>9}  {'cv2 us':>7}  {'dst us':>7}  {'kit us':>7}  {'kit/dst':>7}  {'kit/cv2':>7}  "
          f"{'pixels us':>9}  {'pix/cv2':>7}  {'Pillow us':>9}  variants (table p50 ms, resize share)")
    ratios = []
    for hw in others:
        t = resize_rounds(list(images), hw, a.rounds)
        bare, dst, kit, pix, pil = (t[fn] for fn in FNS)
        ratios.append(kit / dst)
        rows = sorted(by_size[hw], key=lambda r: r.p50_ms)
        shares = ", ".join(f"{r.variant} ({r.p50_ms:.4f}, {r.resize_ms / r.p50_ms:.0%})" for r in rows if r.p50_ms)
        print(f"{hw[0]:>4}x{hw[1]:<4}  {bare * 1e6:7.2f}  {dst * 1e6:7.2f}  {kit * 1e6:7.2f}  {kit / dst:7.2f}  "
              f"{kit / bare:7.2f}  {pix * 1e6:9.2f}  {pix / bare:7.2f}  {pil * 1e6:9.2f}  {shares}")
    worst = max(ratios)
    print(f"goal kit resize (as serving calls it) <= {GOAL_KIT}x a bare cv2.resize call into a buffer: worst "
          f"{worst:.2f} -> {'met' if worst <= GOAL_KIT else 'NOT met'}")
    print(f"served in process, back to back, beside bench's own timed loop on the same core: {a.serve_rounds} "
          f"alternating rounds, {a.requests} requests each side; median served / median bench (and / table p50)")
    served = served_rows(a, b, table, images, "inproc", None).bench
    if served:
        print(f"goal served/table <= {GOAL_SERVED} for the variants that resize (side by side): worst "
              f"{max(served):.2f} -> {'met' if max(served) <= GOAL_SERVED else 'NOT met'}")
    if a.daemon:
        server = {cores[0]} if len(cores) > 1 else None
        if server is not None:
            os.sched_setaffinity(0, {cores[1]})  # the client on the other core
        print(f"served by the daemon at rest (daemon on cpu {sorted(server or [])}, client on cpu "
              f"{sorted(os.sched_getaffinity(0)) if server else 'the same'}, bench rounds on the daemon's cpu while "
              f"it idles), one request at a time; median inference_ms / median bench, / bench idling before "
              f"each run as long as the daemon's core between requests (and / table p50)")
        r = served_rows(a, b, table, images, "daemon", server)
        if r.bench:
            print(f"goal daemon served/table <= {GOAL_SERVED} for the variants that resize (side by side): worst "
                  f"{max(r.bench):.2f} -> {'met' if max(r.bench) <= GOAL_SERVED else 'NOT met'}")
        if r.idle:
            print(f"  the same with bench idling as the daemon's core does between requests (what the table's "
                  f"back-to-back p50 leaves out, for every variant): worst {max(r.idle):.2f} "
                  f"({'within' if max(r.idle) <= GOAL_SERVED else 'above'} {GOAL_SERVED})")
        if r.gap:
            print(f"goal daemon served/table at a request's cadence (the table's gap_p50_ms, which the runtime "
                  f"predicts a daemon's requests with) <= {GOAL_SERVED} for the variants that resize: worst "
                  f"{max(r.gap):.2f} -> {'met' if max(r.gap) <= GOAL_SERVED else 'NOT met'}")
        if r.spin:
            print(f"goal daemon served/table <= {GOAL_SERVED} for the variants that resize, the daemon busy polling "
                  f"{a.spin_us} us (its core kept awake between requests, as bench's back-to-back loop; side by "
                  f"side): worst {max(r.spin):.2f} -> {'met' if max(r.spin) <= GOAL_SERVED else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
