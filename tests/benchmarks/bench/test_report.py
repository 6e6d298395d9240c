"""`edgekit report`: Markdown + HTML + PNG plots from one or two latency tables; the Pareto front."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks.bench import report
from benchmarks.bench.command import bench_bundle
from benchmarks.bench.measure import BenchOptions
from benchmarks.bench.samples import samples_path
from benchmarks.bench.stats import cdf_from_percentiles
from edge.tables.selection import pareto_front
from edge.tables.table import LatencyTable
from edgekit.cli import main as cli
from tests.benchmarks import _fixtures as fx
from tests.edge.tables.test_table import row, table

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rep")
    b = fx.make_tiny_bundle(root / "bundle")
    out = root / "desktop.json"
    bench_bundle(b, out, profile="desktop-cpu", opts=BenchOptions(min_runs=5, min_seconds=0.05, warmup=1, inputs=8),
                 progress=False)
    return out


def _other_device(src: Path, dst: Path, factor: float = 7.0) -> Path:
    """A second device's table: same variants, slower, a few accuracy points apart, no samples file."""
    t = LatencyTable.load(src)
    rows = tuple(
        dataclasses.replace(r, **{f"{q}_ms": getattr(r, f"{q}_ms") * factor for q in ("mean", "min", "p50", "p90", "p95", "p99", "max")},
                            accuracy=max(0.0, r.accuracy - 0.01 * i))
        for i, r in enumerate(t.rows)
    )
    return dataclasses.replace(t, header=dataclasses.replace(t.header, profile="rpi5", cpu_model="Cortex-A76"), rows=rows).save(dst)


def test_pareto_front_rules():
    rows = [
        row("a.tflite-fp32@s", p50=1.0, acc=0.70),
        row("b.tflite-fp32@s", p50=2.0, acc=0.65),  # slower and worse: out
        row("c.tflite-fp32@s", p50=3.0, acc=0.80),
        row("d.tflite-fp32@s", p50=3.0, acc=0.75),  # same latency, less accurate: out
        row("e.tflite-fp32@s", p50=4.0, acc=0.80),  # slower, equally accurate: out (strictly increasing)
        row("f.tflite-fp32@s", p50=0.5, acc=0.60),
        row("g.tflite-fp32@s", p50=9.0, acc=0.90),
    ]
    front = pareto_front(rows, lambda r: r.latency("p95"), lambda r: r.accuracy)
    assert [r.model_id for r in front] == ["f", "a", "c", "g"]
    lat = [r.p95_ms for r in front]
    acc = [r.accuracy for r in front]
    assert lat == sorted(lat) and all(x < y for x, y in zip(acc, acc[1:]))
    assert pareto_front([], lambda r: 0, lambda r: 0) == []


def test_cdf_from_percentiles_is_monotone():
    x, y = cdf_from_percentiles({"min": 1, "p50": 2, "p90": 3, "p95": 2.9, "p99": 5, "max": 9})
    assert list(y) == [0, 0.5, 0.9, 0.95, 0.99, 1.0] and all(a <= b for a, b in zip(x, x[1:]))


def test_single_device_report(measured, tmp_path):
    devices = report.load_devices([measured])
    assert devices[0].samples  # the bench wrote the samples sidecar
    paths = report.build_report(devices, tmp_path / "r")
    for key in ("pareto_png", "cdf_png"):
        data = paths[key].read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    md = paths["markdown"].read_text()
    html = paths["html"].read_text()
    front = devices[0].front
    assert front and all(r.variant in md for r in front)
    assert f"Pareto front — desktop-cpu ({len(front)} of 6 variants)" in md
    assert f"![accuracy vs p95 latency]({report.PARETO_PNG})" in md and report.CDF_PNG in md
    assert "## All variants" in md and md.count(" ★ |") == len(front) and "★ marks the variants on it" in md
    assert "measured on the desktop-cpu itself" in md and "with the settings of" not in md  # this host fits
    assert html.startswith("<!DOCTYPE html>") and f'<img src="{report.PARETO_PNG}"' in html
    assert html.count("<table>") == md.count("\n|---|") and "</html>" in html
    for r in devices[0].table.rows:
        assert r.variant in html


def test_two_devices_side_by_side(measured, tmp_path):
    other = _other_device(measured, tmp_path / "rpi5.json")
    assert not samples_path(other).exists()
    devices = report.load_devices([measured, other])
    assert [d.label for d in devices] == ["desktop-cpu", "rpi5"]
    paths = report.build_report(devices, tmp_path / "r2")
    md = paths["markdown"].read_text()
    assert "## Side by side" in md and "| variant | desktop-cpu | rpi5 |" in md
    assert "Pareto front — rpi5" in md and "Cortex-A76" in md
    assert paths["cdf_png"].read_bytes().startswith(PNG)  # rpi5's CDF comes from the percentiles


def test_same_profile_twice_gets_distinct_labels(measured, tmp_path):
    copy = tmp_path / "run2.json"
    copy.write_text(measured.read_text())
    labels = [d.label for d in report.load_devices([measured, copy])]
    assert len(set(labels)) == 2 and all(lab.startswith("desktop-cpu") for lab in labels)


def test_cli_report_and_errors(measured, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli(["report", str(measured), "--out", str(out), "--quantile", "p99"]) == 0
    printed = capsys.readouterr().out
    assert "front of" in printed and (out / report.REPORT_MD).exists() and (out / report.REPORT_HTML).exists()
    assert "Accuracy vs p99 latency" in (out / report.REPORT_MD).read_text()

    trunc = tmp_path / "trunc.json"
    trunc.write_text(measured.read_text()[:150])
    assert cli(["report", str(trunc), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "edgekit report: error:" in err and "truncated" in err and "Traceback" not in err

    empty = dataclasses.replace(table(), rows=()).save(tmp_path / "empty.json")
    assert cli(["report", str(empty), "--out", str(out)]) == 2
    assert "has no rows" in capsys.readouterr().err


def test_selected_table_is_accepted(measured, tmp_path):
    d = json.loads(measured.read_text())
    d["kind"] = "selected"
    d["selection"] = {"quantile": "p95", "epsilon": 0.0}
    p = tmp_path / "selected.json"
    p.write_text(json.dumps(d))
    devices = report.load_devices([p])
    assert devices[0].table.kind == "selected"
    assert report.build_report(devices, tmp_path / "r")["markdown"].exists()


def test_a_table_from_a_host_the_profile_does_not_describe_says_so(measured, tmp_path, capsys):
    """An rpi4 table benched on this x86-64 machine: the title, the text and the Devices table say whose times
    they are ("measured on HOST with the settings of rpi4"), never "on the device"; the command says it first."""
    t = LatencyTable.load(measured)
    why = "rpi4 is an aarch64 board, this host is x86_64; its setting litert-xnnpack-t4 runs 4 threads on 2 cores"
    header = dataclasses.replace(t.header, profile="rpi4", cpu_model="AMD EPYC", machine="x86_64", host_mismatch=why)
    src = dataclasses.replace(t, header=header).save(tmp_path / "rpi4-table.json")
    devices = report.load_devices([src])
    assert devices[0].mismatch == why
    md = report.build_report(devices, tmp_path / "r")["markdown"].read_text()
    title = md.splitlines()[0]
    assert title == "# edgekit latency report — rpi4 settings on AMD EPYC, not a rpi4"
    assert "measured on AMD EPYC (x86_64, " in md and "with the settings of rpi4 (not a rpi4: " + why in md
    assert f"| host is the profile's device | no: {why} |" in md
    assert "on the device" not in md and "measured on the rpi4" not in md
    assert cli(["report", str(src), "--out", str(tmp_path / "cli")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("note: ") and "NOT A rpi4: " + why in first and "not rpi4 times" in first


def test_an_older_table_without_the_field_is_judged_from_its_header(measured, tmp_path):
    """A table written before host_mismatch was recorded: its architecture and cores against the profile."""
    t = LatencyTable.load(measured)
    header = dataclasses.replace(t.header, profile="rpi4", machine="x86_64", cores=2, host_mismatch="",
                                 settings={**t.header.settings, "device": {"usable_cores": 2}})
    old = dataclasses.replace(t, header=header).save(tmp_path / "old.json")
    (d,) = report.load_devices([old])
    assert d.mismatch == ("rpi4 is an aarch64 board, this host is x86_64; "
                          "its setting litert-xnnpack-t4 runs 4 threads on 2 cores")
    arm = dataclasses.replace(header, machine="aarch64", cores=4, settings={"device": {"usable_cores": 4}})
    (d,) = report.load_devices([dataclasses.replace(t, header=arm).save(tmp_path / "pi.json")])
    assert d.mismatch == "" and "on the rpi4 itself" in d.measured_on


def test_all_variants_show_the_latency_at_a_request_cadence_and_at_rest(measured, tmp_path):
    t = LatencyTable.load(measured)
    rows = tuple(dataclasses.replace(r, gap_p50_ms=0.0123 + i, rest_p50_ms=0.0456 + i) for i, r in enumerate(t.rows))
    src = dataclasses.replace(t, rows=rows[:-1] + (dataclasses.replace(rows[-1], gap_p50_ms=0.0, rest_p50_ms=0.0),)
                              ).save(tmp_path / "t.json")
    md = report.build_report(report.load_devices([src]), tmp_path / "r")["markdown"].read_text()
    head = next(line for line in md.splitlines() if line.startswith("| variant | provider"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    gap, rest = cols.index("at 0.5 ms gaps"), cols.index("at rest")
    assert rest == gap + 1
    lines = {r.variant: [c.strip() for c in line.strip("|").split("|")]
             for r in rows for line in md.splitlines() if line.startswith(f"| {r.variant} |")}
    assert lines[rows[0].variant][gap] == "0.0123" and lines[rows[0].variant][rest] == "0.0456"
    assert lines[rows[-1].variant][gap] == "-" and lines[rows[-1].variant][rest] == "-"  # benched without them
