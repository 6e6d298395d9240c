"""Shared session-scoped test fixtures.

``real_run``: a tiny run made by the real pipeline (``edgekit train`` of one demo spec on 300
real Fashion-MNIST images for one epoch, then ``edgekit convert`` for rpi4 and jetson-orin-nano,
i.e. every format and precision), built once per session in a few seconds. Skipped when the
real Fashion-MNIST is not installed.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

REAL_RUN_PROFILES = ("rpi4", "jetson-orin-nano")  # together they build all 7 format/precision targets


@pytest.fixture(scope="session")
def real_run(tmp_path_factory) -> Path:
    from converters.convert.command import convert_run
    from converters.data.files import DatasetNotFound
    from converters.train.options import Schedule, SplitOptions, TrainOptions
    from converters.train.sweep import train_sweep

    run = tmp_path_factory.mktemp("real-run") / "run"
    log = io.StringIO()
    opts = TrainOptions(
        run_dir=run, family="demo", limit=1,
        schedule=Schedule(mode="quick", epochs=1, patience=1, batch_size=64, learning_rate=2e-3),
        splits=SplitOptions(calib_size=32, limit_train=300, limit_test=100), progress=False,
    )
    try:
        train_sweep(opts, out=log)
    except DatasetNotFound as exc:
        pytest.skip(f"the real Fashion-MNIST is not installed: {exc}")
    convert_run(run, list(REAL_RUN_PROFILES), out=log, progress=False)
    return run


RESOLUTION_PROFILE = """
name = "restest"
description = "test profile: LiteRT fp32 and int8, ONNX fp32"
arch = "x86_64"
memory_budget_mb = 2048
workers = 1

[[build]]
format = "tflite"
precisions = ["fp32", "int8"]

[[build]]
format = "onnx"
precisions = ["fp32"]

[[runtime]]
name = "litert-xnnpack-t1"
backend = "litert"
threads = 1
xnnpack = true

[[runtime]]
name = "ort-cpu-t1"
backend = "onnxruntime"
threads = 1
providers = ["CPUExecutionProvider"]
"""

RESOLUTION_FAMILY = """
name = "restest"
mode = "grid"
input_size = [28, 28]
pool = "stride"
head = "flatten"

[[space]]
filters = [4]
resolution = [20, 28, 36]
"""
RESOLUTIONS = {"c1-f4-k3-stride-d0-vip0-ps0-flatten-r20": 20, "c1-f4-k3-stride-d0-vip0-ps0-flatten-r28": 28,
               "c1-f4-k3-stride-d0-vip0-ps0-flatten-r36": 36}


@pytest.fixture(scope="session")
def resolution_run(tmp_path_factory):
    """A run whose variants take 20x20, 28x28 and 36x36 images of the 28x28 Fashion-MNIST, through the real
    pipeline: train (300 images, one epoch), convert, bundle, bench and select with a small profile.
    Returns a dict of the paths (run, profile, bundle, table, selected)."""
    from converters.convert.command import convert_run
    from converters.data.files import DatasetNotFound
    from converters.train.options import Schedule, SplitOptions, TrainOptions
    from converters.train.sweep import train_sweep
    from edgekit.cli import main

    root = tmp_path_factory.mktemp("resolution")
    (root / "res.toml").write_text(RESOLUTION_FAMILY)
    profile = root / "restest.toml"
    profile.write_text(RESOLUTION_PROFILE)
    run, log = root / "run", io.StringIO()
    opts = TrainOptions(
        run_dir=run, family=str(root / "res.toml"),
        schedule=Schedule(mode="quick", epochs=1, patience=1, batch_size=32, learning_rate=3e-3),
        splits=SplitOptions(calib_size=32, limit_train=600, limit_test=200), progress=False,
    )
    try:
        train_sweep(opts, out=log)
    except DatasetNotFound as exc:
        pytest.skip(f"the real Fashion-MNIST is not installed: {exc}")
    convert_run(run, [str(profile)], out=log, progress=False)
    paths = {"run": run, "profile": profile, "bundle": root / "bundle", "table": root / "table.json",
             "selected": root / "selected.json", "log": log}
    assert main(["bundle", str(run), "--profile", str(profile), "--out", str(paths["bundle"]), "--force"]) == 0
    assert main(["bench", str(paths["bundle"]), "--profile", str(profile), "--out", str(paths["table"]),
                 "--min-runs", "30", "--min-seconds", "0.05", "--rest-runs", "2", "--no-progress"]) == 0
    assert main(["select", str(paths["table"]), "--profile", str(profile), "--significance", "0",
                 "--out", str(paths["selected"])]) == 0
    return paths
