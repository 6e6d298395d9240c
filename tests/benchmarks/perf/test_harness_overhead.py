"""benchmarks/perf/harness_overhead.py: the bench harness's overhead over a bare invoke loop, on a file or a bundle."""

from __future__ import annotations

from benchmarks.perf import harness_overhead
from tests.benchmarks import _fixtures as fx


def test_harness_overhead_on_a_tflite_file_and_a_bundle(bundle, capsys):
    rc = harness_overhead.main(["--model", str(fx.artifact_file("tiny-b", "tflite", "fp32")), "--rounds", "2", "--runs", "20"])
    out = capsys.readouterr().out
    assert rc == 0 and "bare invoke loop" in out and "ratio" in out
    rc = harness_overhead.main(["--model", str(bundle), "--rounds", "2", "--runs", "20"])
    out = capsys.readouterr().out
    assert rc == 0 and "tiny-b.tflite" in out  # the bundle's tflite artifact with most MACs
    rc = harness_overhead.main(["--model", str(fx.artifact_file("tiny-a", "onnx", "fp32")), "--rounds", "2", "--runs", "20"])
    assert rc == 0 and "CPUExecutionProvider" in capsys.readouterr().out


def test_harness_overhead_explains_without_a_model(capsys):
    assert harness_overhead.main([]) == 2
    assert "ships none" in capsys.readouterr().err
