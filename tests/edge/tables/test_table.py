"""Latency table: JSON/CSV round trip and the clear errors for truncated, foreign or malformed tables."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import socket
import threading
import time

import pytest

import edge.tables.table
from edge.tables.table import (
    MAX_TABLE_BYTES,
    MAX_TABLE_ITEMS,
    QUANTILES,
    DeviceHeader,
    LatencyRow,
    LatencyTable,
    SelectedTable,
    TableError,
)


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
    assert list(rows[0]) == [f.name for f in dataclasses.fields(LatencyRow) if f.name != "correct"]
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


# --------------------------------------------------------------------------- only a regular file, within the cap


def _load_in_thread(load, path, timeout: float = 5.0):
    """(exception raised, seconds taken) of ``load(path)`` run in a thread; never hangs the test run."""
    box: dict = {}

    def target():
        try:
            load(path)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            box["exc"] = exc

    t0 = time.monotonic()
    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(timeout)
    took = time.monotonic() - t0
    if th.is_alive():  # a blocked open of a FIFO: give it a writer so the thread ends
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        th.join(timeout)
        pytest.fail(f"loading {path} blocked for over {timeout} s")
    return box.get("exc"), took


@pytest.mark.parametrize("load", [LatencyTable.load, SelectedTable.load], ids=["latency", "selected"])
def test_fifo_fails_fast(tmp_path, load):
    fifo = tmp_path / "t.json"
    os.mkfifo(fifo)
    exc, took = _load_in_thread(load, fifo)
    assert isinstance(exc, TableError), exc
    assert took < 1.0
    msg = str(exc)
    assert str(fifo) in msg and "FIFO" in msg and "not a regular file" in msg and "JSON file written by 'edgekit" in msg


def test_dev_zero_is_refused_without_reading(monkeypatch):
    reads = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    with pytest.raises(TableError, match="/dev/zero is a character device, not a regular file; pass the"):
        SelectedTable.load("/dev/zero")
    assert reads == []


def test_directory_and_socket_are_refused(tmp_path):
    with pytest.raises(TableError, match="is a directory, not a regular file; pass the latency table JSON file"):
        LatencyTable.load(tmp_path)
    sock_path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(sock_path))
        with pytest.raises(TableError, match="is a socket, not a regular file"):
            SelectedTable.load(sock_path)
    finally:
        sock.close()


def test_link_to_a_regular_file_is_fine(tmp_path):
    p = table().save(tmp_path / "t.json")
    (tmp_path / "link.json").symlink_to(p)
    assert LatencyTable.load(tmp_path / "link.json") == table()


def test_oversize_file_is_refused(tmp_path, monkeypatch):
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:  # sparse: costs no disk
        fh.truncate(MAX_TABLE_BYTES + 1)
    with pytest.raises(TableError, match=f"larger than the {MAX_TABLE_BYTES} byte cap"):
        LatencyTable.load(big)
    # A valid table over a smaller cap is refused too, naming the cap.
    p = table().save(tmp_path / "t.json")
    monkeypatch.setattr(edge.tables.table, "MAX_TABLE_BYTES", 100)
    with pytest.raises(TableError, match="larger than the 100 byte cap"):
        LatencyTable.load(p)


def test_too_many_json_values_refused_before_parsing(tmp_path):
    p = tmp_path / "t.json"
    p.write_text("[" + "[]," * MAX_TABLE_ITEMS + "[]]")  # under 1 MB, but millions of objects once parsed
    with pytest.raises(TableError, match=f"more than {MAX_TABLE_ITEMS} JSON values"):
        LatencyTable.load(p)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "nests JSON arrays or objects too deeply"),
        ('{"kind": "latency", "version": 1, "header": {"profile": "p", "settings": ' + "[" * 50_000 + "]" * 50_000 + "}, \"rows\": []}",
         "too deeply"),
        ('{"kind": "latency", "version": ' + "9" * 10_000 + "}", "number too long"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
    ids=["nested", "nested-in-header", "huge-int", "not-utf8"],
)
def test_unparsable_files(tmp_path, text, message):
    p = tmp_path / "t.json"
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    with pytest.raises(TableError, match=message):
        LatencyTable.load(p)


# --------------------------------------------------------------------------- every key checked, no value echoed


SECRET = "s3cr3t-TOKEN-4f9a1c"


def _load_dict(tmp_path, d) -> LatencyTable:
    p = tmp_path / "t.json"
    p.write_text(json.dumps(d))
    return LatencyTable.load(p)


def _set(path: tuple, value):
    def mutate(d):
        obj = d
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_set(("rows", 0, "accuracy"), None), r"row 0 \('m1.tflite-fp32@litert-xnnpack-t1'\): key 'accuracy' must be a number \(got null\)"),
        (_set(("rows", 0, "accuracy"), "x"), "key 'accuracy' must be a number"),
        (_set(("rows", 0, "accuracy"), True), r"key 'accuracy' must be a number \(got a boolean\)"),
        (_set(("rows", 0, "accuracy"), 10**400), "key 'accuracy' must be a number within the float range"),
        (_set(("rows", 1, "p95_ms"), math.inf), r"row 1 .*key 'p95_ms' must be a finite number \(got infinity\)"),
        (_set(("rows", 0, "threads"), 1.5), "key 'threads' must be an integer"),
        (_set(("rows", 0, "threads"), True), "key 'threads' must be an integer"),
        (_set(("rows", 0, "macs"), 2**70), "key 'macs' must be an integer within 64 bits"),
        (_set(("rows", 0, "variant"), [1]), r"row 0: key 'variant' must be a string \(got an array\)"),
        (_set(("rows", 0, "model_id"), {"a": 1}), "key 'model_id' must be a string"),
        (_set(("rows",), {"a": 1}), "key 'rows' must be an array"),
        (_set(("rows", 0), [1, 2]), r"row 0 must be a JSON object \(got an array\)"),
        (_set(("header",), [1]), "'header' must be a JSON object"),
        (_set(("header", "cores"), "4"), "'header': key 'cores' must be an integer"),
        (_set(("header", "runtime_versions"), {"litert": 2}), "key 'runtime_versions' must be an object whose values are strings"),
        (_set(("header", "settings"), []), "key 'settings' must be an object"),
        (_set(("header", "bogus"), 1), "'header' has an unknown key 'bogus'"),
        (_set(("bogus",), 1), "the top level has an unknown key 'bogus'"),
        (_set(("selection",), {}), "the top level has an unknown key 'selection'"),
        (lambda d: d["rows"][0].pop("accuracy"), "row 0 .* lacks the required key 'accuracy'"),
        (lambda d: d["header"].pop("profile"), "'header' lacks the required key 'profile'"),
        (lambda d: d.pop("rows"), "lacks the required key 'rows'"),
        (_set(("version",), True), "has no valid table version"),
        (_set(("kind",), None), "not an edgekit table"),
    ],
)
def test_wrong_types_name_the_key(tmp_path, mutate, message):
    d = table().to_dict()
    mutate(d)
    with pytest.raises(TableError, match=message) as err:
        _load_dict(tmp_path, d)
    assert "re-run 'edgekit bench'" in str(err.value) or "pass the latency table" in str(err.value)


def test_missing_optional_keys_take_defaults(tmp_path):
    d = table().to_dict()
    d["header"] = {"profile": "p"}
    del d["rows"][0]["macs"]
    t = _load_dict(tmp_path, d)
    assert t.header.cores == 0 and t.rows[0].macs == 0


def test_numbers_are_floats_and_nan_marks_unmeasured(tmp_path):
    d = table().to_dict()
    d["rows"][0]["accuracy"] = 1  # an integer is a number
    d["rows"][1]["accuracy"] = math.nan  # what 'edgekit bench' writes without an evaluation set
    t = _load_dict(tmp_path, d)
    assert t.rows[0].accuracy == 1.0 and isinstance(t.rows[0].accuracy, float)
    assert math.isnan(t.rows[1].accuracy)


@pytest.mark.parametrize(
    "mutate",
    [
        _set(("rows", 0, "accuracy"), SECRET),
        _set(("rows", 0, "variant"), [SECRET]),
        _set(("rows", 0, "threads"), {"k": SECRET}),
        _set(("rows",), SECRET),
        _set(("rows", 0), SECRET),
        _set(("header",), SECRET),
        _set(("header", "runtime_versions"), {"x": [SECRET]}),
        _set(("kind",), SECRET),
        _set(("version",), SECRET),
        lambda d: d.update(kind=SECRET, version=SECRET),
    ],
)
def test_messages_never_echo_values(tmp_path, mutate):
    d = table().to_dict()
    mutate(d)
    with pytest.raises(TableError) as err:
        _load_dict(tmp_path, d)
    assert SECRET not in str(err.value)
    assert "t.json" in str(err.value)


@pytest.mark.parametrize("content", [f"password={SECRET}\n", f'{{"token": "{SECRET}"}}', f'["{SECRET}"]'])
def test_a_secret_file_is_not_echoed(tmp_path, content):
    p = tmp_path / "secret"
    p.write_text(content)
    for load in (LatencyTable.load, SelectedTable.load):
        with pytest.raises(TableError) as err:
            load(p)
        assert SECRET not in str(err.value) and str(p) in str(err.value)
