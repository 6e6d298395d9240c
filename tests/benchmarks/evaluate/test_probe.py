"""Tests for benchmarks/evaluate/probe.py: the serving-floor probe against the real daemon."""

from __future__ import annotations

import re

import pytest

from benchmarks.evaluate.loadgen import load_eval_set
from benchmarks.evaluate.placement import place
from benchmarks.evaluate.probe import probe_serving
from edge.core.errors import StepFailed
from tests.benchmarks._eval_fixtures import make_eval_bundle


@pytest.fixture(scope="module")
def evb(tmp_path_factory):
    return make_eval_bundle(tmp_path_factory.mktemp("probe"))


def test_probe_measures_the_floor_on_both_clocks(evb, tmp_path):
    images, labels, _ = load_eval_set(str(evb.bundle))
    log = tmp_path / "probe.log"
    p = probe_serving(str(evb.bundle), str(evb.table), evb.variants[0], None, "best-effort", images, labels, place(),
                      log, 120.0, None, count=40)
    assert p.floor_ms > 0 and p.inference_p50_ms > 0 and p.throughput_rps > 0
    # The end-to-end clock holds the daemon's: per request e2e >= total, so the medians keep that order.
    assert p.e2e_overhead_ms >= p.floor_ms
    # The daemon's own time on its core per request besides the inference: measured, and less than a round trip.
    assert p.busy_ms is not None and 0 < p.busy_ms < 1000.0 / p.throughput_rps
    assert log.is_file() and log.stat().st_size > 0


def test_probe_result_takes_the_servers_work_per_request_less_the_inference(tmp_path):
    from benchmarks.evaluate.loadgen import RequestRecord
    from benchmarks.evaluate.probe import probe_result

    recs = [RequestRecord(i, 0, 0, 10.0, 0.0, 0.0, e2e_ms=0.5, status=200, inference_ms=0.1, total_ms=0.3)
            for i in range(4)]
    p = probe_result(recs, 0.002, 4, "a probe", tmp_path / "log", busy_ns=4 * 250_000)  # 0.25 ms a request
    assert p.busy_ms == pytest.approx(0.15) and p.floor_ms == pytest.approx(0.2)
    assert probe_result(recs, 0.002, 4, "a probe", tmp_path / "log").busy_ms is None


def test_probe_that_gets_no_answers_says_so(evb, tmp_path, monkeypatch):
    images, labels, _ = load_eval_set(str(evb.bundle))
    monkeypatch.setenv("EDGEKIT_TOKEN", "the-daemon-wants-this")  # and the probe sends no token
    log = tmp_path / "probe.log"
    with pytest.raises(StepFailed, match=re.escape(f"serving probe with {evb.variants[0]} got 0 answers out of 20; "
                                                   f"see {log}")):
        probe_serving(str(evb.bundle), str(evb.table), evb.variants[0], None, "best-effort", images, labels, place(),
                      log, 120.0, None, count=20)
