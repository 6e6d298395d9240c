"""Latency table: JSON/CSV round trip and the clear errors for truncated, foreign or malformed tables."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest

from edge.table import QUANTILES, DeviceHeader, LatencyRow, LatencyTable, TableError


def row(variant: str = "m1.tflite-fp32@litert-xnnpack-t1", p50: float = 1.0, acc: float = 0.8) -> LatencyRow:
    aid, _, setting = variant.partition("@")
    model_id, _, fp = aid.rpartition(".")
    fmt, _, prec = fp.partition("-")
    return LatencyRow(
        variant=variant, artifact_id=aid, model_id=model_id, format=fmt, precision=prec, setting=setting,
        backend="litert" if fmt == "tflite" else "onnxruntime", provider="xnnpack", threads=1,
        accuracy=acc, eval_count=200, samples=120, mean_ms=p50 * 1.05, std_ms=0.1, min_ms=p50 * 0.9, p50_ms=p50,
        p90_ms=p50 * 1.2, p95_ms=p50 * 1.3, p99_ms=p50 * 1.5, max_ms=p50 * 2, load_ms=3.0, first_inference_ms=2.0,
        preprocess_ms=0.01, peak_rss_mb=4.5, size_bytes=12345, params=1000, macs=50000,
    )


def table(profile: str = "desktop-cpu") -> LatencyTable:
    header = DeviceHeader(
        profile=profile, cpu_model="Test CPU", cores=4, governor="performance", os="Linux", machine="x86_64",
        python="3.11", runtime_versions={"litert": "ai-edge-litert 2.3.0"}, date="2026-01-01T00:00:00+00:00",
        bundle="/b", bundle_sha256="ab" * 32, settings={"min_runs": 100, "min_seconds": 2.0},
    )
    return LatencyTable(header=header, rows=(row(), row("m2.onnx-int8@ort-cpu-t1", 2.0, 0.85)))


def test_round_trip(tmp_path):
    t = table()
    p = t.save(tmp_path / "t.json")
    back = LatencyTable.load(p)
    assert back == t
    assert back.kind == "latency" and back.version == 1
    assert LatencyTable.load(p, profile="desktop-cpu") == t
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_csv_export(tmp_path):
    t = table()
    t.save(tmp_path / "t.json")
    with open(tmp_path / "t.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows] == [r.variant for r in t.rows]
    assert list(rows[0]) == [f.name for f in dataclasses.fields(LatencyRow)]
    assert float(rows[1]["p50_ms"]) == 2.0 and int(rows[1]["macs"]) == 50000
    t.save(tmp_path / "only.json", csv_too=False)
    assert not (tmp_path / "only.csv").exists()


def test_truncated_file_is_a_clear_error(tmp_path):
    p = table().save(tmp_path / "t.json")
    p.write_text(p.read_text()[:200])
    with pytest.raises(TableError, match="not valid JSON.*truncated"):
        LatencyTable.load(p)


def test_missing_file(tmp_path):
    with pytest.raises(TableError, match="not found"):
        LatencyTable.load(tmp_path / "nope.json")


def test_wrong_profile(tmp_path):
    p = table("rpi5").save(tmp_path / "t.json")
    with pytest.raises(TableError, match="measured with profile 'rpi5', not 'desktop-cpu'"):
        LatencyTable.load(p, profile="desktop-cpu")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(kind="selected"), "is a 'selected' table"),
        (lambda d: d.update(version=99), "table version 99"),
        (lambda d: d["rows"][0].pop("p50_ms"), "malformed"),
        (lambda d: d["rows"][0].update(bogus=1), "malformed"),
        (lambda d: d.pop("header"), "malformed"),
    ],
)
def test_malformed_tables(tmp_path, mutate, message):
    d = table().to_dict()
    mutate(d)
    p = tmp_path / "t.json"
    p.write_text(json.dumps(d))
    with pytest.raises(TableError, match=message):
        LatencyTable.load(p)


def test_not_an_object(tmp_path):
    p = tmp_path / "t.json"
    p.write_text("[1, 2]")
    with pytest.raises(TableError, match="not a latency table"):
        LatencyTable.load(p)


def test_table_error_is_a_value_error():
    # the CLI prints ValueErrors as "edgekit CMD: error: ..." without a traceback
    assert issubclass(TableError, ValueError)


def test_rows_and_quantiles():
    t = table()
    assert t.row("m2.onnx-int8@ort-cpu-t1").p50_ms == 2.0
    with pytest.raises(TableError, match="unknown variant 'x'"):
        t.row("x")
    t2 = t.with_row(row(p50=5.0))
    assert len(t2.rows) == 2 and t2.row(row().variant).p50_ms == 5.0
    r = t.rows[0]
    assert [r.latency(q) for q in QUANTILES] == [r.mean_ms, r.p50_ms, r.p90_ms, r.p95_ms, r.p99_ms, r.max_ms]
    with pytest.raises(ValueError, match="unknown latency quantile 'p42'"):
        r.latency("p42")
