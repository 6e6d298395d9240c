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
    assert log.is_file() and log.stat().st_size > 0


def test_probe_that_gets_no_answers_says_so(evb, tmp_path, monkeypatch):
    images, labels, _ = load_eval_set(str(evb.bundle))
    monkeypatch.setenv("EDGEKIT_TOKEN", "the-daemon-wants-this")  # and the probe sends no token
    log = tmp_path / "probe.log"
    with pytest.raises(StepFailed, match=re.escape(f"serving probe with {evb.variants[0]} got 0 answers out of 20; "
                                                   f"see {log}")):
        probe_serving(str(evb.bundle), str(evb.table), evb.variants[0], None, "best-effort", images, labels, place(),
                      log, 120.0, None, count=20)
