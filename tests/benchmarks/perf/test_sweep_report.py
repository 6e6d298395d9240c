"""The sweep report's counting: the front, strict domination, and 'beaten by a smaller model'."""

from __future__ import annotations

import json

import pytest

from benchmarks.perf.sweep_report import Point, build, front_stats


def test_front_and_domination_counts():
    pts = [
        Point("a", macs=10, latency_ms=1.0, accuracy=0.80),
        Point("b", macs=20, latency_ms=2.0, accuracy=0.85),
        Point("c", macs=40, latency_ms=3.0, accuracy=0.84),  # beaten by b on both, and by smaller b
        Point("d", macs=80, latency_ms=4.0, accuracy=0.90),
        Point("e", macs=5, latency_ms=2.0, accuracy=0.80),  # same accuracy as a, slower: not strictly beaten
    ]
    s = front_stats("models", pts)
    assert s.front == ("a", "b", "d")
    assert (s.count, s.on_front, s.dominated, s.beaten_by_smaller) == (5, 3, 1, 1)
    assert s.dominated_share == pytest.approx(0.2)


def test_build_writes_the_report(tmp_path):
    from edge.tables.table import DeviceHeader, LatencyRow, LatencyTable

    def row(mid, fmt, prec, p95, acc, macs):
        return LatencyRow(variant=f"{mid}.{fmt}-{prec}@s", artifact_id=f"{mid}.{fmt}-{prec}", model_id=mid, format=fmt,
                          precision=prec, setting="s", backend="litert", provider="cpu", threads=1, accuracy=acc,
                          eval_count=100, samples=50, mean_ms=p95, std_ms=0.0, min_ms=p95, p50_ms=p95, p90_ms=p95,
                          p95_ms=p95, p99_ms=p95, max_ms=p95, load_ms=1.0, first_inference_ms=1.0, preprocess_ms=0.0,
                          peak_rss_mb=1.0, size_bytes=100, params=10, macs=macs)

    rows = (row("m1", "tflite", "fp32", 0.01, 0.80, 1000), row("m2", "tflite", "fp32", 0.02, 0.85, 4000),
            row("m3", "tflite", "fp32", 0.03, 0.83, 9000), row("m1", "tflite", "int8", 0.005, 0.79, 1000))
    LatencyTable(header=DeviceHeader(profile="p", cpu_model="cpu"), rows=rows).save(tmp_path / "t.json")
    s = build(tmp_path / "t.json", tmp_path / "out", "tflite-fp32", None)
    models, artifacts = s["stats"]
    assert (models["count"], models["on_front"], models["dominated"]) == (3, 2, 1)
    assert artifacts["count"] == 4 and artifacts["on_front"] == 3
    for f in ("report.md", "summary.json", "accuracy_vs_p95.png", "accuracy_vs_macs.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["reference"] == "tflite-fp32"
    with pytest.raises(SystemExit, match="--reference one of"):
        build(tmp_path / "t.json", tmp_path / "out2", "onnx-fp32", None)

    # With the run folder: block kinds from each model's spec.json (no key: conv; no spec: imported)
    run = tmp_path / "run"
    for mid, spec in (("m1", {"filters": [8]}), ("m2", {"filters": [8, 16], "block": "dwsep"}), ("m3", None)):
        (run / "models" / mid).mkdir(parents=True)
        if spec is not None:
            (run / "models" / mid / "spec.json").write_text(json.dumps(spec))
    s = build(tmp_path / "t.json", tmp_path / "out3", "tflite-fp32", run)
    assert s["blocks"] == [
        {"block": "conv", "count": 1, "on_front": 1, "dominated": 0, "dominated_share": 0.0, "best_accuracy": 0.80},
        {"block": "dwsep", "count": 1, "on_front": 1, "dominated": 0, "dominated_share": 0.0, "best_accuracy": 0.85},
        {"block": "imported", "count": 1, "on_front": 0, "dominated": 1, "dominated_share": 1.0, "best_accuracy": 0.83},
    ]
    assert (tmp_path / "out3" / "accuracy_vs_p95_by_block.png").stat().st_size > 0
    assert "| dwsep | 1 | 1 | 0 (0%) | 85.00% |" in (tmp_path / "out3" / "report.md").read_text()
    assert "grid" not in s  # no block kind with two widths and two resolutions


def test_width_resolution_grid_marks_the_cells_on_the_front(tmp_path):
    from benchmarks.perf.sweep_report import width_resolution_grid

    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"input_shape": [28, 28, 1]}))
    pts = []
    for i, (alpha, res, lat, acc) in enumerate([(0.5, None, 1.0, 0.80), (0.5, [36, 36], 2.0, 0.84),
                                                (1.0, None, 1.5, 0.78), (1.0, [36, 36], 3.0, 0.86),
                                                (1.0, [36, 36], 3.5, 0.85)]):
        name = f"m{i}"
        (run / "models" / name).mkdir()
        spec = {"filters": [8], "block": "dwsep", "alpha": alpha, **({"resolution": res} if res else {})}
        (run / "models" / name / "spec.json").write_text(json.dumps(spec))
        pts.append(Point(name, macs=i, latency_ms=lat, accuracy=acc))
    front = front_stats("m", pts).front
    kind, cells = width_resolution_grid(run, pts, front, {p.name: "dwsep" for p in pts})
    assert kind == "dwsep" and front == ("m0", "m1", "m3")
    got = {(c.alpha, c.resolution): (c.model, c.on_front, c.models) for c in cells}
    assert got == {(0.5, "28x28"): ("m0", True, 1), (0.5, "36x36"): ("m1", True, 1),
                   (1.0, "28x28"): ("m2", False, 1), (1.0, "36x36"): ("m3", True, 2)}


def test_pruning_rows_compare_each_child_to_its_parent_and_to_the_plain_member(tmp_path):
    from benchmarks.perf.sweep_report import pruned_children, pruning_rows

    run = tmp_path / "run"
    models = {"plain": ({"filters": [8], "vip": [0]}, None), "vip": ({"filters": [8], "vip": [1]}, None),
              "plain-p": ({"filters": [8], "vip": [0], "prune": 0.5}, ("plain", 0.5)),
              "vip-p": ({"filters": [8], "vip": [1], "prune": 0.5}, ("vip", 0.5))}
    for name, (spec, parent) in models.items():
        (run / "models" / name).mkdir(parents=True)
        (run / "models" / name / "spec.json").write_text(json.dumps(spec))
        rec = {"model_id": name, **({"pruned_from": parent[0], "prune": parent[1]} if parent else {})}
        (run / "models" / name / "train.json").write_text(json.dumps(rec))
    pts = [Point("plain", 4, 1.0, 0.90), Point("vip", 2, 0.5, 0.89), Point("plain-p", 1, 0.5, 0.895),
           Point("vip-p", 1, 0.25, 0.88)]
    children = pruned_children(run, [p.name for p in pts])
    assert children == {"plain-p": ("plain", 0.5, "l1"), "vip-p": ("vip", 0.5, "l1")}
    specs = {n: m[0] for n, m in models.items()}
    rows = {r["child"]: r for r in pruning_rows(pts, children, {"vip": True, "vip-p": True}, specs)}
    assert rows["plain-p"]["speedup"] == pytest.approx(2.0) and "plain" not in rows["plain-p"]
    assert rows["plain-p"]["accuracy_change_points"] == pytest.approx(-0.5)
    assert rows["vip-p"]["speedup"] == pytest.approx(2.0) and rows["vip-p"]["plain"] == "plain"
    assert rows["vip-p"]["speedup_vs_plain"] == pytest.approx(4.0)
    assert rows["vip-p"]["accuracy_change_vs_plain_points"] == pytest.approx(-2.0)
