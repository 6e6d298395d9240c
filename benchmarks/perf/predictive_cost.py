"""What a bundle's compact predictive test costs on the board, measured side by side in one run.

    .venv/bin/python -m benchmarks.perf.predictive_cost BUNDLE --table SELECTED.json [--profile P] [--rounds 7]

- **size**: predictive.npz beside the whole bundle (folder bytes, or the archive's), against the goal of at
  most 5 %;
- **start**: the runtime's start (``AdaptiveClassifier.open``: open and verify the bundle, load, canary-check
  and warm every variant of the table) on the bundle as it is, and on a copy of it without the test, in
  alternating rounds, pinned to one core; the medians and their difference, against the goal of at most 50 ms
  added. The copy differs only in its manifest (no ``predictive_test`` entry, no listed predictive.npz).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.perf.image_decode import pin_one_core
from edge.bundle.predictive import PREDICTIVE_NAME
from edge.bundle.reader import MANIFEST_NAME, open_bundle
from edge.core.errors import EdgekitError, UsageError

GOAL_SIZE = 0.05  # the test's file at most this share of the bundle
GOAL_START_MS = 50.0  # ... and at most this much added to the runtime's start


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def without_test(root: Path, dest: Path) -> Path:
    """A copy of the bundle folder ``root`` whose manifest names no predictive test."""
    shutil.copytree(root, dest)
    (dest / PREDICTIVE_NAME).unlink()
    m = json.loads((dest / MANIFEST_NAME).read_text())
    m["extra"].pop("predictive_test", None)
    m["extra"]["files"].pop(PREDICTIVE_NAME, None)
    (dest / MANIFEST_NAME).write_text(json.dumps(m))
    return dest


def start_seconds(bundle: Path, table: str, profile: str | None) -> tuple[float, int]:
    from edge.runtime.classifier import AdaptiveClassifier

    t0 = time.perf_counter()
    clf = AdaptiveClassifier.open(str(bundle), table, profile, log=lambda m: None)
    dt = time.perf_counter() - t0
    n = len(clf.serving_variants)
    clf.close(drain=False)
    return dt, n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="bundle folder or .tar.gz built with --predictive-test")
    p.add_argument("--table", required=True, help="selected table")
    p.add_argument("--profile", default=None)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    try:
        b = open_bundle(args.bundle, verify=True)
        if not b.has_predictive_test:
            raise UsageError(f"{args.bundle} has no predictive test: build it with 'edgekit bundle --predictive-test'")
        tests = b.predictive_test()
        test_bytes, total = (b.root / PREDICTIVE_NAME).stat().st_size, _size(Path(args.bundle))
        print(f"predictive test: {len(tests)} artifacts, {PREDICTIVE_NAME} {test_bytes / 1024:.1f} KB of the "
              f"bundle's {total / 1024:.1f} KB: {100 * test_bytes / total:.2f} % (goal <= {100 * GOAL_SIZE:.0f} %: "
              f"{'met' if test_bytes <= GOAL_SIZE * total else 'NOT met'})")
        core = pin_one_core()
        with tempfile.TemporaryDirectory() as tmp:
            bare = without_test(b.root, Path(tmp) / "bundle")
            with_s, without_s = [], []
            start_seconds(b.root, args.table, args.profile)  # first touch of every file, not counted
            for _ in range(args.rounds):
                dt, n_with = start_seconds(b.root, args.table, args.profile)
                with_s.append(dt)
                dt, n_without = start_seconds(bare, args.table, args.profile)
                without_s.append(dt)
        mw, mo = statistics.median(with_s) * 1e3, statistics.median(without_s) * 1e3
        print(f"runtime start (AdaptiveClassifier.open, core {core}, {args.rounds} alternating rounds, medians): "
              f"with the test {mw:.1f} ms ({n_with} variants served), without {mo:.1f} ms ({n_without}); "
              f"added {mw - mo:+.1f} ms, ratio {mw / mo:.3f} (goal <= {GOAL_START_MS:.0f} ms added: "
              f"{'met' if mw - mo <= GOAL_START_MS else 'NOT met'})")
        print(f"  ranges: with {min(with_s) * 1e3:.1f}-{max(with_s) * 1e3:.1f} ms, "
              f"without {min(without_s) * 1e3:.1f}-{max(without_s) * 1e3:.1f} ms")
    except EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
