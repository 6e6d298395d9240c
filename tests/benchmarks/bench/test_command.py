"""`edgekit bench` on a tiny real bundle: sane statistics, resume, clear errors, the CLI, and no TensorFlow on import."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench import command as bench
from benchmarks.bench.command import bench_bundle
from benchmarks.bench.measure import BenchOptions
from benchmarks.bench.samples import MAX_STORED_SAMPLES, load_samples, samples_path
from edge.artifacts.manifest import Manifest
from edge.core.atomic import sha256_file
from edge.tables.table import LatencyTable, TableError, decode_correct
from edgekit.cli import main as cli
from tests.benchmarks import _fixtures as fx
from tests.benchmarks._fixtures import FAST

REPO = Path(__file__).resolve().parents[3]


def _profile(tmp_path: Path, name: str, runtimes: str) -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(
        f'name = "{name}"\narch = "x86_64"\nmemory_budget_mb = 512\n'
        '[[build]]\nformat = "tflite"\nprecisions = ["fp32", "int8"]\n'
        '[[build]]\nformat = "onnx"\nprecisions = ["fp32"]\n' + runtimes
    )
    return p


# --------------------------------------------------------------------------- whole bundle


def test_rows_have_sane_statistics(measured, bundle):
    res, out = measured
    t = res.table
    manifest = Manifest.load(bundle / "manifest.json")
    assert len(t.rows) == len(manifest.artifacts) == 6
    assert sorted(res.measured) == sorted(r.variant for r in t.rows) and not res.skipped
    for r in t.rows:
        rec = manifest.get(r.artifact_id)
        assert r.variant == f"{r.artifact_id}@{r.setting}"
        assert r.samples >= FAST.min_runs
        assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.p95_ms <= r.p99_ms <= r.max_ms
        assert r.min_ms <= r.mean_ms <= r.max_ms and r.std_ms >= 0
        # Accuracy on the "select" half of the 64 eval images, with the per-image record that says so.
        assert 0.0 <= r.accuracy <= 1.0 and r.eval_count == 32
        right = decode_correct(r.correct, r.eval_count)
        assert right is not None and right.mean() == pytest.approx(r.accuracy)
        # Same runtime, same machine: the host check on all 64 images agrees within what 32 can resolve.
        assert abs(r.accuracy - rec.host_accuracy) <= 0.25
        assert r.load_ms > 0 and r.first_inference_ms > 0 and r.preprocess_ms > 0
        assert r.peak_rss_mb >= 0
        assert (r.params, r.macs, r.size_bytes) == (rec.params, rec.macs, rec.size_bytes)
        assert r.provider == ("xnnpack" if r.format == "tflite" else "CPUExecutionProvider")
        assert r.threads == 1 and r.setting in ("litert-xnnpack-t1", "ort-cpu-t1")


def test_header_describes_the_device(measured, bundle):
    res, out = measured
    h = LatencyTable.load(out, profile="desktop-cpu").header
    assert h.profile == "desktop-cpu" and h.cores >= 1 and h.cpu_model and h.os and h.python and h.date
    assert h.runtime_versions["litert"].startswith(("ai-edge-litert", "tflite-runtime"))
    assert h.runtime_versions["onnxruntime"].startswith("onnxruntime")
    assert h.bundle_sha256 == sha256_file(bundle / "manifest.json")
    s = h.settings
    assert (s["min_runs"], s["min_seconds"], s["warmup"]) == (5, 0.05, 1)
    assert s["rss_method"] in ("vmhwm-reset", "rss-checkpoints")
    assert s["runtimes"]["litert-xnnpack-t1"] == {"backend": "litert", "threads": 1, "xnnpack": True}
    assert s["runtimes"]["ort-cpu-t1"]["providers"] == ["CPUExecutionProvider"]


def test_rows_record_the_latency_at_rest(measured):
    """Each row's median of single runs after 10 ms idle: what a request that finds the runtime idle pays."""
    res, _ = measured
    assert res.table.header.settings["rest_runs"] == FAST.rest_runs > 0
    for r in res.table.rows:
        assert r.rest_p50_ms > 0
        assert r.gap_p50_ms > 0  # and after 0.5 ms idle each: a request's cadence through the daemon


def test_header_records_a_host_the_profile_does_not_describe(bundle, tmp_path, monkeypatch, capsys):
    """The rpi4 profile on a 2-core x86-64 host: one line at start says so, and the header records why, so that
    'edgekit report' repeats it; a host that fits leaves the field empty."""
    from device_profiles import Host

    monkeypatch.setattr(bench, "host_facts", lambda: Host("x86_64", 2, frozenset()))
    said: list[str] = []
    res = bench_bundle(bundle, tmp_path / "rpi4.json", profile="rpi4", opts=FAST, only=["tiny-a.tflite-fp32"],
                       progress=False, log=said.append)
    why = "rpi4 is an aarch64 board, this host is x86_64; its setting litert-xnnpack-t4 runs 4 threads on 2 cores"
    assert LatencyTable.load(res.path).header.host_mismatch == why
    notes = [m for m in said if "NOT A rpi4" in m]
    assert len(notes) == 1 and notes[0] == (f"note: NOT A rpi4: {why}; times are this host's with the settings of "
                                            "rpi4, not rpi4 times")
    assert said.index(notes[0]) < 3  # at start, before any row

    monkeypatch.setattr(bench, "host_facts", lambda: Host("x86_64", 8, frozenset()))
    res = bench_bundle(bundle, tmp_path / "desk.json", profile="desktop-cpu", opts=FAST, only=["tiny-a.tflite-fp32"],
                       progress=False, log=said.append)
    assert res.table.header.host_mismatch == ""


def test_csv_and_samples_written(measured):
    res, out = measured
    assert out.with_suffix(".csv").read_text().count("\n") == 1 + len(res.table.rows)
    samples = load_samples(out)
    assert samples_path(out).name == "table.samples.npz"
    assert set(samples) == {r.variant for r in res.table.rows}
    for r in res.table.rows:
        s = samples[r.variant]
        assert len(s) == min(r.samples, MAX_STORED_SAMPLES)
        assert s.min() >= r.min_ms * (1 - 1e-6) and s.max() <= r.max_ms * (1 + 1e-6)
        if r.samples <= MAX_STORED_SAMPLES:  # all kept: the same extremes
            assert s.min() == pytest.approx(r.min_ms, rel=1e-6) and s.max() == pytest.approx(r.max_ms, rel=1e-6)


def test_resume_after_interrupt(bundle, tmp_path, monkeypatch):
    out = tmp_path / "t.json"
    real = bench.measure
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(bench, "measure", flaky)
    with pytest.raises(KeyboardInterrupt):
        bench_bundle(bundle, out, profile="desktop-cpu", opts=FAST, progress=False)
    monkeypatch.setattr(bench, "measure", real)
    partial = LatencyTable.load(out)
    assert len(partial.rows) == 2  # every finished row was saved
    assert set(load_samples(out)) == {r.variant for r in partial.rows}

    res = bench_bundle(bundle, out, profile="desktop-cpu", opts=FAST, resume=True, progress=False)
    assert sorted(res.resumed) == sorted(r.variant for r in partial.rows)
    assert len(res.measured) == 4 and len(res.table.rows) == 6
    for r in partial.rows:  # kept as they were, not re-measured
        assert res.table.row(r.variant) == r
    assert len(load_samples(out)) == 6

    again = bench_bundle(bundle, out, profile="desktop-cpu", opts=FAST, resume=True, progress=False)
    assert again.measured == [] and len(again.resumed) == 6


def test_only_and_refusals(bundle, tmp_path):
    out = tmp_path / "t.json"
    res = bench_bundle(bundle, out, opts=FAST, only=["tiny-a.tflite-*"], progress=False)  # profile from the bundle
    assert sorted(r.artifact_id for r in res.table.rows) == ["tiny-a.tflite-fp32", "tiny-a.tflite-int8"]
    with pytest.raises(ValueError, match="already exists; pass --resume"):
        bench_bundle(bundle, out, opts=FAST, progress=False)
    with pytest.raises(ValueError, match="nothing to benchmark"):
        bench_bundle(bundle, tmp_path / "none.json", opts=FAST, only=["no-such-model"], progress=False)
    with pytest.raises(ValueError, match="must name a .json"):
        bench_bundle(bundle, tmp_path / "t.csv", opts=FAST, progress=False)
    with pytest.raises(ValueError, match="--min-runs must be >= 1"):
        bench_bundle(bundle, tmp_path / "x.json", opts=BenchOptions(min_runs=0), progress=False)


def test_resume_refuses_other_profile_bundle_and_truncated(bundle, tmp_path):
    out = tmp_path / "t.json"
    bench_bundle(bundle, out, opts=FAST, only=["tiny-a.tflite-fp32"], progress=False)
    other = _profile(tmp_path, "other-board", '[[runtime]]\nname = "litert-xnnpack-t1"\nbackend = "litert"\n')
    with pytest.raises(TableError, match="profile 'desktop-cpu', not 'other-board'"):
        bench_bundle(bundle, out, profile=other, opts=FAST, resume=True, progress=False)

    b2 = tmp_path / "b2"
    fx.make_tiny_bundle(b2, models=("tiny-a",), n_eval=32)
    with pytest.raises(TableError, match="another bundle"):
        bench_bundle(b2, out, opts=FAST, resume=True, progress=False)

    out.write_text(out.read_text()[:100])
    with pytest.raises(TableError, match="cannot resume.*truncated"):
        bench_bundle(bundle, out, opts=FAST, resume=True, progress=False)
    res = bench_bundle(bundle, out, opts=FAST, overwrite=True, only=["tiny-a.tflite-fp32"], progress=False)
    assert len(res.table.rows) == 1


def test_settings_xnnpack_off_and_provider_fallback(bundle, tmp_path):
    import onnxruntime as ort

    prof = _profile(
        tmp_path,
        "two-ways",
        '[[runtime]]\nname = "xnn"\nbackend = "litert"\nxnnpack = true\n'
        '[[runtime]]\nname = "builtin"\nbackend = "litert"\nxnnpack = false\n'
        '[[runtime]]\nname = "ort-cuda-cpu"\nbackend = "onnxruntime"\nthreads = 2\n'
        'providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]\n',
    )
    res = bench_bundle(bundle, tmp_path / "t.json", profile=prof, opts=FAST, only=["tiny-b.tflite-fp32", "tiny-b.onnx"],
                       progress=False)
    by = {r.variant: r for r in res.table.rows}
    assert by["tiny-b.tflite-fp32@xnn"].provider == "xnnpack"
    assert by["tiny-b.tflite-fp32@builtin"].provider == "builtin"
    assert by["tiny-b.tflite-fp32@xnn"].accuracy == pytest.approx(by["tiny-b.tflite-fp32@builtin"].accuracy, abs=2 / 64)
    ort_row = by["tiny-b.onnx-fp32@ort-cuda-cpu"]
    assert ort_row.threads == 2
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert ort_row.provider == "CPUExecutionProvider"


def test_broken_artifact_is_skipped_not_fatal(bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    m = Manifest.load(b / "manifest.json")
    bad = m.get("tiny-a.tflite-int8")
    (b / bad.path).write_bytes(b"this is not a flatbuffer" * 10)
    rec = dataclasses.replace(bad, sha256=sha256_file(b / bad.path), size_bytes=(b / bad.path).stat().st_size)
    m.with_artifact(rec).save(b / "manifest.json")
    res = bench_bundle(b, tmp_path / "t.json", opts=FAST, only=["tiny-a"], progress=False)
    assert "tiny-a.tflite-int8@litert-xnnpack-t1" in res.skipped
    assert "could not load" in res.skipped["tiny-a.tflite-int8@litert-xnnpack-t1"]
    assert len(res.table.rows) == 2
    assert "tiny-a.tflite-int8@litert-xnnpack-t1" in LatencyTable.load(tmp_path / "t.json").header.settings["skipped"]


def test_real_pipeline_bundles(real_run, tmp_path):
    """Bundles made by `edgekit bundle` from a real train+convert run: every format and precision benchmarks."""
    from converters.pack.packer import build_bundle
    from edge.bundle.reader import open_bundle

    for profile, out, provider in (
        ("rpi4", tmp_path / "rpi4.tar.gz", "xnnpack"),  # an archive, LiteRT with 4 threads
        ("jetson-orin-nano", tmp_path / "jetson", "CPUExecutionProvider"),  # TensorRT -> CUDA -> CPU fallback
    ):
        build_bundle(real_run, profile, out, eval_size=40, force=True, say=lambda *a, **k: None)
        res = bench_bundle(out, tmp_path / f"{profile}.json", profile=profile, opts=FAST, progress=False)
        assert not res.skipped
        assert {r.artifact_id for r in res.table.rows} == {a.artifact_id for a in open_bundle(out).artifacts}
        assert {r.precision for r in res.table.rows} == ({"fp32", "fp16", "dynamic", "int8"} if profile == "rpi4"
                                                         else {"fp32", "fp16", "int8"})
        for r in res.table.rows:
            assert r.provider == provider and r.samples >= FAST.min_runs and 0 <= r.accuracy <= 1
            assert r.p50_ms <= r.p99_ms <= r.max_ms and r.eval_count == 20


# --------------------------------------------------------------------------- CLI


def test_cli_happy_path(bundle, tmp_path, capsys):
    out = tmp_path / "cli.json"
    rc = cli(["bench", str(bundle), "--profile", "desktop-cpu", "--out", str(out), "--min-runs", "5",
              "--min-seconds", "0.05", "--warmup", "1", "--only", "tiny-a.tflite-fp32,tiny-b.onnx", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr()
    assert "wrote" in printed.out
    assert f"next: edgekit select {out} --profile desktop-cpu --out {tmp_path / 'cli-selected.json'}" in printed.out
    # bench's accuracy is the selection half's, and it says so where it prints it
    assert "accuracy: on the bundle's selection half (32 images" in printed.err
    assert len(LatencyTable.load(out).rows) == 2


def test_cli_errors_are_one_line(bundle, tmp_path, capsys):
    broken = tmp_path / "missing-artifact"
    shutil.copytree(bundle, broken)
    (broken / "artifacts" / "tiny-a.tflite-int8.tflite").unlink()
    rc = cli(["bench", str(broken), "--out", str(tmp_path / "x.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "edgekit bench: error:" in err and "missing file artifacts/tiny-a.tflite-int8.tflite" in err
    assert "Traceback" not in err

    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundle, corrupt)
    with open(corrupt / "artifacts" / "tiny-b.onnx-fp32.onnx", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff\xff")
    rc = cli(["bench", str(corrupt), "--out", str(tmp_path / "y.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "corrupt" in err and "Traceback" not in err

    t = tmp_path / "t.json"
    t.write_text('{"kind": "latency", "version": 1, "hea')
    rc = cli(["bench", str(bundle), "--out", str(t), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "edgekit bench: error: cannot resume" in err and "truncated" in err

    rc = cli(["bench", str(tmp_path / "nowhere"), "--out", str(tmp_path / "z.json")])
    assert rc == 2 and "bundle not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- a board's imports


def test_benchmarks_import_no_tensorflow():
    code = (
        "import sys, benchmarks.bench.command, benchmarks.bench.report, benchmarks.bench.stats, benchmarks.bench.sysinfo, "
        "benchmarks.perf.harness_overhead, benchmarks.perf.repeatability, edge.tables.table, edge.backends; "
        "from edge.backends import get_backend; get_backend('litert'); get_backend('onnxruntime'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_variants_that_resize_are_timed_with_their_resize(resolution_run, capsys):
    """The table of a bundle whose variants take 20x20, 28x28 and 36x36 images of its 28x28 ones: the resize is
    measured for the two that resize (and is inside their times), not for the one at the images' size."""
    from benchmarks.bench.command import resize_lines
    from edge.tables.table import LatencyTable

    table = LatencyTable.load(resolution_run["table"])
    assert len(table.rows) == 9
    for r in table.rows:
        resizes = not r.model_id.endswith("-r28")
        assert (r.resize_ms > 0) == resizes, r.variant
        assert r.accuracy > 0.3  # the eval images reach each variant at its size
    text = resize_lines(table.rows)
    assert "resize share of p50" in text and len(text.splitlines()) == 2 + 6
