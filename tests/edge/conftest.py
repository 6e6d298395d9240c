"""Fixtures shared by the bundle, archive, canary and verify tests: one real bundle folder per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.edge._bundles import build_desktop_bundle


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> Path:
    """A desktop-cpu bundle (tflite + onnx) as a folder, built once for the session."""
    return build_desktop_bundle(tmp_path_factory.mktemp("edge-bundle"))


@pytest.fixture
def folder(bundles, tmp_path) -> Path:
    """A copy of ``bundles`` the test may damage."""
    dst = tmp_path / "bundle"
    shutil.copytree(bundles, dst)
    return dst
