"""Tests for benchmarks/evaluate/report.py: table.txt, report.md and the plots, from an evaluation built by hand."""

from __future__ import annotations

import dataclasses

from benchmarks.evaluate import report
from benchmarks.evaluate.placement import Placement
from tests.benchmarks.evaluate._evaluation import ROWS, evaluation


def test_text_table_has_every_policy_the_legend_and_the_context():
    text = report.render_text(evaluation())
    lines = text.splitlines()
    # The headline first: on-time accuracy per policy; then the table with it as its first figure.
    assert lines[0] == ("on-time accuracy (correct and on time, of all requests): adaptive 70.00%, fastest 75.00%, "
                        "oracle 75.00%")
    assert lines[2].split()[:5] == ["policy", "on-time", "acc", "accuracy", "miss"]
    assert "goodput/s" not in lines[2]  # closed loop: goodput is throughput, left out of the table
    assert [ln.split()[0] for ln in lines[4:7]] == ["adaptive", "fastest", "oracle"]
    assert lines[4].split()[1:3] == ["70.00%", "75.00%"]
    assert "V1:20 V2:20" in lines[4] and "V0:40" in lines[5]
    assert f"   V2  acc  83.00%  p95    3.250 ms  {ROWS[2].variant}" in text
    for line in ("placement: daemon on cpu [0], load generator on cpu [1]",
                 "serving floor (fastest variant, daemon clock, p50): 0.250 ms; end to end 0.610 ms",
                 "deadlines: uniform:1:6 ms; arrivals: closed",
                 "overload: 1.2x the most accurate variant's capacity (400/s) = 480 requests/s",
                 "contention: cpu:half: one busy process on each of the daemon's cores; achieved slowdown of served "
                 "inferences (median observed/table inside vs outside the window): 1.50x",
                 "served minus table accuracy per variant (held-out images): V0 -1.00, V1 +2.00, V2 -3.00 points "
                 "(mean -0.67)",
                 f"best static CNN: V1 ({ROWS[1].variant})",
                 "oracle: the whole queue planned (exact); request by request it would read 60.00% on time, "
                 "250.0/s",
                 "oracle's floors: best-static's run (the better of: adaptive's 55.00%; best-static's 60.00%)",
                 "oracle's server: V0 served alone by it misses 25.00% on the daemon's clock; V0's own run missed "
                 "20.00%"):
        assert line in lines, line


def test_context_leaves_out_what_did_not_run():
    ev = dataclasses.replace(evaluation(), placement=Placement(None, None), probes=None, overload=None,
                             held_out=None, best_static=None, achieved_slowdown=None)
    ctx = report.context_lines(ev)
    assert ctx.strip().splitlines()[0] == "deadlines: uniform:1:6 ms; arrivals: closed"
    assert "(median observed/table inside vs outside the window): -" in ctx
    assert "oracle: the whole queue planned" in ctx  # what ran is still said
    ev = dataclasses.replace(ev, oracle=None)
    ctx = report.context_lines(ev)
    for word in ("placement", "serving floor", "overload", "held-out", "best static", "oracle"):
        assert word not in ctx, word


def test_report_writes_the_plots_and_the_markdown(tmp_path):
    paths = report.write_report(evaluation(truncated=True), tmp_path)
    assert sorted(paths) == ["plane", "policies", "report", "timeline"]
    for name in ("plane.png", "policies.png", "timeline.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (tmp_path / "report.md").read_text()
    assert "- date: 2026-01-02T03:04:05+00:00" in md
    assert "- host: Test CPU (2 cores, x86_64, Linux-6.1-x86_64)" in md
    assert "- bundle: `/b/bundle`, selected table: `/b/selected.json`, profile: desktop-cpu" in md
    assert ("- workload: 40 requests per policy, deadlines `uniform:1:6` ms, arrivals `closed`, seed 3, "
            "3 unmeasured warm-up requests") in md
    assert ("- contention: cpu:half (one busy process on each of the daemon's cores while requests 10..29 were "
            "issued; achieved slowdown 1.5x)") in md
    assert "| policy | on-time acc | accuracy |" in md and "| adaptive | 70.00% | 75.00% |" in md
    assert "**on-time accuracy (correct and on time, of all requests): adaptive 70.00%" in md
    assert "![Accuracy-miss plane](plane.png)" in md
    assert "![Timeline](timeline.png)" in md and "![Accuracy and miss rate per policy](policies.png)" in md
    assert f"| V0 | `{ROWS[0].variant}` | 61.00% | 0.200 | 0.260 |" in md
    assert "## Oracle\n\nthe oracle's method\n\nServing overhead added: 0.610 ms end to end, 0.250 ms on the " \
           "daemon's clock (medians; from the probe).\n\nChoice: the whole queue planned (exact); request by " \
           "request it would read 60.00% on time, 250.0/s.\n\nCharged the floors of best-static's run (the better " \
           "of: adaptive's 55.00%; best-static's 60.00%).\n\nIts server model checked: V0 served alone by it " \
           "misses 25.00% on the daemon's clock; V0's own run missed 20.00%." in md
    assert md.rstrip().endswith("Stopped early by the duration limit: adaptive.")


def test_report_without_oracle_or_policies(tmp_path):
    ev = dataclasses.replace(evaluation(complete=False), policies={})
    paths = report.write_report(ev, tmp_path)
    assert list(paths) == ["report"] and not (tmp_path / "timeline.png").exists()
    md = (tmp_path / "report.md").read_text()
    assert "## Oracle" not in md and "Stopped early" not in md and "![" not in md


def test_open_loop_puts_goodput_beside_on_time_accuracy():
    from benchmarks.evaluate.workload import make_workload

    ev = dataclasses.replace(evaluation(), workload=make_workload(200, 40, "uniform:1:6", "poisson:100", 3))
    lines = report.render_text(ev).splitlines()
    assert lines[0].startswith("on-time accuracy (correct and on time, of all requests; goodput/s): "
                               "adaptive 70.00% (70.0/s), fastest 75.00% (150.0/s)")
    assert lines[2].split()[:5] == ["policy", "on-time", "acc", "goodput/s", "accuracy"]
    assert lines[4].split()[1:4] == ["70.00%", "70.0", "75.00%"]


def test_static_policies_are_shown_by_their_label():
    assert report.policy_name(f"static:{ROWS[2].variant}", {r.variant: f"V{j}" for j, r in enumerate(ROWS)}) \
        == "static:V2"
    assert report.policy_name("static:unknown", {}) == "static:unknown"
