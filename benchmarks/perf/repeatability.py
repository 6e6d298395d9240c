"""Repeatability: benchmark the same bundle twice and compare each variant's p50 (goal: within 10% above 0.5 ms).

    .venv/bin/python -m benchmarks.perf.repeatability BUNDLE [--profile P] [--out DIR] [bench options]
    .venv/bin/python -m benchmarks.perf.repeatability --tables A.json B.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.bench.command import bench_bundle
from benchmarks.bench.measure import DEFAULT_MIN_RUNS, DEFAULT_MIN_SECONDS, DEFAULT_WARMUP, BenchOptions
from edge.core.errors import EdgekitError
from edge.core.textable import format_table
from edge.tables.table import LatencyTable, TableError

TOLERANCE = 0.10
SLOW_MS = 0.5


def compare(a: LatencyTable, b: LatencyTable, tolerance: float = TOLERANCE,
            slow_ms: float = SLOW_MS) -> tuple[list[dict], bool]:
    """Per variant in both tables: p50 of each, their ratio, and whether it counts and passes."""
    rows, ok = [], True
    for ra in a.rows:
        try:
            rb = b.row(ra.variant)
        except TableError:
            continue
        ratio = rb.p50_ms / ra.p50_ms if ra.p50_ms > 0 else float("inf")
        counts = min(ra.p50_ms, rb.p50_ms) >= slow_ms
        passed = abs(ratio - 1.0) <= tolerance
        if counts and not passed:
            ok = False
        rows.append({"variant": ra.variant, "p50_a": ra.p50_ms, "p50_b": rb.p50_ms, "ratio": ratio, "counts": counts,
                     "ok": passed})
    return rows, ok


def print_comparison(rows: list[dict], ok: bool, tolerance: float = TOLERANCE, slow_ms: float = SLOW_MS) -> None:
    def verdict(r: dict) -> str:
        if not r["counts"]:
            return f"(< {slow_ms} ms, not judged)"
        return "ok" if r["ok"] else f"OFF BY MORE THAN {tolerance:.0%}"

    print(format_table(["variant", "p50 run 1", "p50 run 2", "ratio", "verdict"],
                       [[r["variant"], f"{r['p50_a']:.4f}", f"{r['p50_b']:.4f}", f"{r['ratio']:.3f}", verdict(r)]
                        for r in rows], align="lrrrl"))
    judged = [r for r in rows if r["counts"]]
    bad = [r for r in judged if not r["ok"]]
    print(
        f"{len(judged)} variants slower than {slow_ms} ms judged: {len(judged) - len(bad)} within {tolerance:.0%}, "
        f"{len(bad)} not"
        + ("" if judged else " (none is slow enough to judge)")
    )
    print("repeatability: PASS" if ok else "repeatability: FAIL")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf.repeatability", description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?", help="bundle folder or .tar.gz to benchmark twice")
    ap.add_argument("--tables", nargs=2, metavar=("A", "B"), help="compare two existing tables instead of benchmarking")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--out", default=None, metavar="DIR",
                    help="where to keep run1.json and run2.json (default: a temp folder)")
    ap.add_argument("--min-runs", type=int, default=DEFAULT_MIN_RUNS)
    ap.add_argument("--min-seconds", type=float, default=DEFAULT_MIN_SECONDS)
    ap.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--only", action="append", default=[], metavar="PATTERN")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE)
    ap.add_argument("--slow-ms", type=float, default=SLOW_MS,
                    help="judge only variants with p50 at least this (default %(default)s)")
    args = ap.parse_args(argv)
    try:
        if args.tables:
            a, b = (LatencyTable.load(p) for p in args.tables)
        elif args.bundle:
            out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="edgekit-repeat-"))
            opts = BenchOptions(min_runs=args.min_runs, min_seconds=args.min_seconds, warmup=args.warmup,
                                eval_limit=args.eval_limit)
            only = [s.strip() for pat in args.only for s in pat.split(",") if s.strip()]
            tables = []
            for k in (1, 2):
                print(f"run {k}/2 -> {out / f'run{k}.json'}", file=sys.stderr)
                res = bench_bundle(args.bundle, out / f"run{k}.json", profile=args.profile, opts=opts, overwrite=True,
                                   only=only)
                tables.append(res.table)
            a, b = tables
        else:
            ap.error("give a BUNDLE, or --tables A B")
    except EdgekitError as exc:
        print(f"repeatability: error: {exc}", file=sys.stderr)
        return 2
    rows, ok = compare(a, b, args.tolerance, args.slow_ms)
    if not rows:
        print("repeatability: error: the two tables share no variant", file=sys.stderr)
        return 2
    print_comparison(rows, ok, args.tolerance, args.slow_ms)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
