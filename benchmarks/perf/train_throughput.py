"""Training throughput: the same small specs trained in one process and on a local Ray, timed in one run.

Small models are overhead-bound (Keras set-up, tf.data, callbacks, saving), so two worker processes
with one TensorFlow thread each should beat one process with both cores: the goal is Ray at least
1.3x faster. Each sweep is a fresh `edgekit train` subprocess into its own temporary run folder, so the
times include start-up (TensorFlow's import; for Ray, starting it and its workers), and this module
never imports TensorFlow (benchmarks/ stays importable on a board).

    python -m benchmarks.perf.train_throughput                      # 20 specs of the default family
    python -m benchmarks.perf.train_throughput --limit 4 --epochs 1 --limit-train 1000  # a smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edge.core.errors import StepFailed
from edge.core.textable import format_table

GOAL = 1.3


@dataclass(frozen=True)
class SweepOptions:
    """What each of the two sweeps trains (the command line's options)."""

    family: str = "default"
    limit: int = 20
    epochs: int = 2
    limit_train: int = 6000
    limit_test: int = 2000
    seed: int = 0
    data_dir: str | None = None
    cpus_per_task: float = 1.0


@dataclass(frozen=True)
class SweepTime:
    mode: str
    wall_s: float
    models: int


def train_argv(run_dir: Path, opts: SweepOptions, ray: bool) -> list[str]:
    argv = [sys.executable, "-m", "edgekit.cli", "train", str(run_dir), "--family", opts.family,
            "--limit", str(opts.limit), "--epochs", str(opts.epochs), "--limit-train", str(opts.limit_train),
            "--limit-test", str(opts.limit_test), "--seed", str(opts.seed), "--no-progress"]
    if opts.data_dir:
        argv += ["--data-dir", opts.data_dir]
    if ray:
        argv += ["--ray", "--cpus-per-task", str(opts.cpus_per_task)]
    return argv


def time_sweep(mode: str, argv: list[str], log: Path) -> SweepTime:
    """Run one `edgekit train` to the end; its output goes to ``log``."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    if rc != 0:
        raise StepFailed(f"the {mode} sweep exited with status {rc}; the end of its output:\n{text[-3000:]}")
    models = sum(1 for line in text.splitlines() if line.rstrip().endswith(" trained"))
    return SweepTime(mode, wall, models)


def format_report(times: list[SweepTime], goal: float = GOAL) -> str:
    seq, ray = times
    lines = [format_table(["mode", "models", "wall s", "models/min"],
                          [[t.mode, t.models, f"{t.wall_s:.1f}", f"{60 * t.models / t.wall_s:.1f}"] for t in times],
                          align="lrrr")]
    ratio = seq.wall_s / ray.wall_s
    lines.append(f"ray / sequential speed-up: {ratio:.2f}× (goal ≥ {goal}×){'' if ratio >= goal else ': MISSED'}")
    return "\n".join(lines)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.train_throughput", description=__doc__.splitlines()[0])
    p.add_argument("--family", default="default", help="family to train the first --limit specs of (default: default)")
    p.add_argument("--limit", type=int, default=20, help="specs to train in each sweep (default 20)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per model (default 2)")
    p.add_argument("--limit-train", type=int, default=6000, help="training images (default 6000)")
    p.add_argument("--limit-test", type=int, default=2000, help="test images (default 2000)")
    p.add_argument("--cpus-per-task", type=float, default=1.0, help="Ray CPUs per task (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="dataset folder (default: as `edgekit train` finds it)")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="keep the two run folders and logs in DIR (default: a temporary folder, removed)")
    args = p.parse_args(argv)
    if args.limit < 1 or args.epochs < 1:
        p.error("--limit and --epochs must be >= 1")

    opts = SweepOptions(args.family, args.limit, args.epochs, args.limit_train, args.limit_test, args.seed,
                        args.data_dir, args.cpus_per_task)
    root = args.keep or Path(tempfile.mkdtemp(prefix="edgekit-throughput-"))
    root.mkdir(parents=True, exist_ok=True)
    for name in ("sequential", "ray"):
        shutil.rmtree(root / name, ignore_errors=True)  # fresh run folders: nothing to resume
    print(f"train throughput: the first {args.limit} specs of family {args.family!r}, {args.epochs} epoch(s) on "
          f"{args.limit_train} images, {_cpus()} CPU(s); sequential, then --ray "
          f"(--cpus-per-task {args.cpus_per_task:g})", flush=True)
    try:
        times = []
        for mode in ("sequential", "ray"):
            t = time_sweep(mode, train_argv(root / mode, opts, ray=mode == "ray"), root / f"{mode}.log")
            print(f"  {mode}: {t.models} models in {t.wall_s:.1f}s", flush=True)
            times.append(t)
    except RuntimeError as exc:
        print(f"train_throughput: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    if times[0].models != times[1].models:
        print(f"train_throughput: error: the sweeps trained {times[0].models} and {times[1].models} models",
              file=sys.stderr)
        return 1
    print(format_report(times), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
