"""Tests for benchmarks.perf.train_throughput: the report, the two command lines, and no TensorFlow on import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.perf import train_throughput as tt

REPO = Path(__file__).resolve().parents[3]


def test_imports_no_tensorflow():
    code = ("import sys, benchmarks.perf.train_throughput; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'ray')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_two_sweeps_differ_only_by_ray(tmp_path):
    args = tt.SweepOptions(limit_test=1000)
    seq = tt.train_argv(tmp_path / "a", args, ray=False)
    ray = tt.train_argv(tmp_path / "a", args, ray=True)
    assert seq[1:5] == ["-m", "edgekit.cli", "train", str(tmp_path / "a")] and "--ray" not in seq
    assert ray == seq + ["--ray", "--cpus-per-task", "1.0"]
    assert seq[seq.index("--limit") + 1] == "20" and seq[seq.index("--epochs") + 1] == "2"


def test_report_prints_the_speed_up_against_the_goal():
    report = tt.format_report([tt.SweepTime("sequential", 60.0, 20), tt.SweepTime("ray", 40.0, 20)])
    assert "ray / sequential speed-up: 1.50× (goal ≥ 1.3×)" in report and "MISSED" not in report
    assert "20.0" in report and "30.0" in report  # models per minute
    slow = tt.format_report([tt.SweepTime("sequential", 50.0, 20), tt.SweepTime("ray", 40.0, 20)])
    assert "1.25× (goal ≥ 1.3×): MISSED" in slow
