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
