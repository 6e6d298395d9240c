"""Fixtures shared by the benchmark tests: a tiny real bundle and one `edgekit bench` of it, once per test module."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench.command import bench_bundle
from tests.benchmarks import _fixtures as fx


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The tiny real bundle of tests.benchmarks._fixtures (two models, TFLite fp32/int8 and ONNX fp32)."""
    return fx.make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture(scope="module")
def measured(bundle, tmp_path_factory):
    """(BenchResult, table path): one `edgekit bench` of ``bundle`` with the FAST options."""
    out = tmp_path_factory.mktemp("bench") / "table.json"
    res = bench_bundle(bundle, out, profile="desktop-cpu", opts=fx.FAST, progress=False)
    return res, out
